"""`llmapi up`, what `make run` starts: the printed curl line gets a real answer, the README's
embeddings example works with the offline embedding model, the demo key survives restarts, the
database is where every command looks, and a taken port is one line."""

from __future__ import annotations

import ast
import json
import math
import re
import shutil
import signal
import socket
import stat
import subprocess
import sys
import time
from pathlib import Path

import pytest
import requests

from broker.client import Client
from commands.demo_key import key_file
from commands.up import prepare_accounts
from config.settings import Settings
from gpuworker.models.demo_embedding import DEMO_EMBEDDING_INSTALL, find_demo_embedding
from tests.fixtures.tiny_model import build_tiny_llama
from tests.harness import DEMO_KEY, ROOT, free_port, fresh_environment, to_toml, wait_until


def test_up_prints_a_key_and_a_curl_line_that_works_and_stops_cleanly_with_no_progress_bar_in_the_log(tmp_path):
    model = build_tiny_llama(tmp_path / "model")
    port = free_port()
    endpoint = f"tcp://127.0.0.1:{free_port()}"
    config = tmp_path / "llmapi.toml"
    config.write_text(
        to_toml(
            {
                "broker": {"endpoint": endpoint, "heartbeat_interval": 0.2},
                "frontend": {"port": port},
                "admin": {"port": free_port()},
                "accounts": {"database_url": f"sqlite:///{tmp_path / 'data' / 'accounts.db'}"},
                "worker": {"options": {"model": str(model), "cpu_threads": 1}},
            }
        )
    )
    log = tmp_path / "up.log"
    up = subprocess.Popen(
        [sys.executable, "-m", "commands.cli", "up", "--config", str(config), "--workers", "1"],
        cwd=ROOT,
        stdout=subprocess.PIPE,
        stderr=log.open("w"),
        text=True,
    )
    try:
        banner = ""
        while "stop: Ctrl-C" not in banner:
            line = up.stdout.readline()
            assert line, f"up ended early: {banner}"
            banner += line
        curl = re.search(r"(curl .*?--data '.*?')", banner, re.S).group(1)
        wait_until(lambda: _ready(port), timeout=60, what="the stack to be ready")
        answer = subprocess.run(["bash", "-c", curl + " --silent"], capture_output=True, text=True, timeout=60)
        assert isinstance(json.loads(answer.stdout)["message"], str)
        if find_demo_embedding() is not None:
            # The configuration's worker model is the chat workers', not the embedding worker's.
            with Client(endpoint) as client:
                embedding_workers = wait_until(lambda: client.status()["services"]["embed"]["workers"], timeout=120,
                                               what="the embedding worker")
            assert [worker["model"] for worker in embedding_workers] == ["all-minilm-l6-v2"]
        started = time.monotonic()
        up.send_signal(signal.SIGINT)
        assert up.wait(30) == 0
        assert time.monotonic() - started < 20
        # transformers draws a "Loading weights" bar on every load unless the worker turns it off.
        assert "model_loaded" in log.read_text() and "%|" not in log.read_text()
    finally:
        if up.poll() is None:
            up.kill()


def _ready(port: int) -> bool:
    try:
        return requests.get(f"http://127.0.0.1:{port}/readyz", timeout=1).ok
    except requests.ConnectionError:
        return False


CONSOLE = re.compile(r"console:\s+(http://127\.0\.0\.1:\d+/admin/)")
# A request line's latency: milliseconds below a second, else seconds.
LATENCY = r"(\d+ ms|\d+\.\d\d s)"
ADMIN_TOKEN = re.compile(r"\s(llmadm_\w+)")
README = ROOT / "README.md"


def start_up(cwd: Path, env: dict[str, str], *args: str) -> tuple[subprocess.Popen[str], str]:
    """`llmapi up ARGS` as `make run` starts it, and its banner once printed."""
    up = subprocess.Popen(
        [sys.executable, "-m", "commands.cli", "up", *args],
        cwd=cwd,
        env=env,
        stdout=subprocess.PIPE,
        stderr=(cwd.parent / "up.log").open("a"),
        text=True,
    )
    banner = ""
    while "stop: Ctrl-C" not in banner:
        line = up.stdout.readline()  # type: ignore[union-attr]
        if not line:
            up.kill()
            raise AssertionError(f"up ended before its banner: {banner}{(cwd.parent / 'up.log').read_text()}")
        banner += line
    return up, banner


def start_echo_up(tmp_path: Path) -> tuple[subprocess.Popen[str], str, int, dict[str, str], Path]:
    """`llmapi up` with one echo worker, in a fresh environment under ``tmp_path``, on free ports:
    it, its banner, its HTTP port, the environment and the directory it runs in."""
    env = fresh_environment(tmp_path)
    work = tmp_path / "work"
    work.mkdir()
    port = free_port()
    up, banner = start_up(work, env, "--algorithm", "echo", "--workers", "1", "--port", str(port),
                          "--endpoint", f"tcp://127.0.0.1:{free_port()}", "--admin-port", str(free_port()))
    return up, banner, port, env, work


def stop(up: subprocess.Popen[str]) -> None:
    up.send_signal(signal.SIGINT)
    assert up.wait(30) == 0


@pytest.mark.timeout(300)
def test_a_first_run_answers_the_first_request_after_the_banner_and_keeps_its_demo_key_across_starts(tmp_path):
    env = fresh_environment(tmp_path)
    work, elsewhere = tmp_path / "work", tmp_path / "elsewhere"
    work.mkdir()
    elsewhere.mkdir()
    port = free_port()
    args = ("--algorithm", "echo", "--workers", "1", "--port", str(port), "--endpoint", f"tcp://127.0.0.1:{free_port()}",
            "--admin-port", str(free_port()))
    data = tmp_path / "xdg-data" / "llmapi"

    up, banner = start_up(work, env, *args)
    try:
        secret = DEMO_KEY.search(banner).group(1)  # type: ignore[union-attr]
        headers = {"Authorization": f"Bearer {secret}"}
        first = requests.post(f"http://127.0.0.1:{port}/api/", headers=headers, json={"text": "hi"}, timeout=60)
        assert first.status_code in (200, 503), first.text  # queued until the worker registers; never 404
        assert f"database:  sqlite:///{data / 'llmapi-accounts.db'}" in banner
        assert f"kept in {data / 'llmapi-demo-key'}" in banner
        status = re.search(r"status:\s+(\S+) status", banner).group(1)  # type: ignore[union-attr]
        assert shutil.which(status) or Path(status).is_file()
        console, admin_token = CONSOLE.search(banner).group(1), ADMIN_TOKEN.search(banner).group(1)  # type: ignore[union-attr]
        assert requests.get(console, timeout=10).url.endswith("/admin/sign-in?next=/admin/")
        listed = requests.get(console + "api/keys", headers={"Authorization": f"Bearer {admin_token}"}, timeout=10)
        assert [key["email"] for key in listed.json()["keys"]] == ["demo@localhost"]
    finally:
        stop(up)
    assert (data / "llmapi-demo-key").read_text() == secret + "\n"
    assert stat.S_IMODE((data / "llmapi-demo-key").stat().st_mode) == 0o600

    up, banner = start_up(work, env, *args)
    try:
        assert DEMO_KEY.search(banner).group(1) == secret  # type: ignore[union-attr]
        refused = requests.get(console + "api/keys", headers={"Authorization": f"Bearer {admin_token}"}, timeout=10)
        assert refused.status_code == 401  # each start's admin token replaces the last one's
    finally:
        stop(up)

    up, banner = start_up(work, env, *args, "--new-demo-key")
    stop(up)
    new_secret = DEMO_KEY.search(banner).group(1)  # type: ignore[union-attr]
    assert new_secret != secret

    listed = subprocess.run(
        [sys.executable, "-m", "commands.cli", "accounts", "list", "--json"],
        cwd=elsewhere, env=env, capture_output=True, text=True, timeout=60, check=True,
    )
    assert [(key["id"], key["email"], key["prefix"]) for key in json.loads(listed.stdout)] == [
        (1, "demo@localhost", new_secret[:15])
    ]
    assert list(elsewhere.iterdir()) == [] and list(work.iterdir()) == []


# What `llmapi up` writes on the terminal besides its banner: lines that start with their time.
TERMINAL_LINE = re.compile(r"\d\d:\d\d:\d\d \S.*")


@pytest.mark.timeout(300)
def test_up_shows_one_short_line_per_request_on_the_terminal_and_no_secret(tmp_path):
    up, banner, port, _, _ = start_echo_up(tmp_path)
    terminal = tmp_path / "up.log"  # start_up's stderr; its stdout after the banner says nothing
    secret = DEMO_KEY.search(banner).group(1)  # type: ignore[union-attr]
    wrong = "llmapi_" + "Wr0ng" * 9
    url = f"http://127.0.0.1:{port}"
    try:
        sent = _post_until_answered(url, secret)  # 503 until the worker is there, then 200
        sent.append(requests.post(f"{url}/api/", headers={"Authorization": f"Bearer {wrong}"},
                                  json={"text": "hi"}, timeout=10))
        assert sent[-1].status_code == 401
        embedded = _embed(url, secret) if find_demo_embedding() is not None else None
        wait_until(lambda: len(_lines_of(terminal, "/api/")) >= len(sent), timeout=10, what="the requests' lines")
    finally:
        stop(up)
    output = terminal.read_text()
    # One line per request, in the order they were answered, and no other line of theirs.
    lines = _lines_of(terminal, "/api/")
    assert [line.split()[1] for line in lines] == [str(response.status_code) for response in sent]
    assert re.fullmatch(rf"\d\d:\d\d:\d\d 200 POST /api/ {re.escape(secret[:15])} {LATENCY}", lines[-2])
    assert re.fullmatch(rf"\d\d:\d\d:\d\d 401 POST /api/ - invalid_key {LATENCY}", lines[-1])
    if embedded is not None:
        (line,) = _lines_of(terminal, "/v1/embeddings")
        tokens = embedded.json()["usage"]["total_tokens"]
        assert re.fullmatch(rf"\d\d:\d\d:\d\d 200 POST /v1/embeddings {re.escape(secret[:15])} {tokens} tok {LATENCY}",
                            line)
    # Nothing else of the stack's info events: no worker's or broker's line for a request, no JSON.
    assert [line for line in output.splitlines() if not TERMINAL_LINE.fullmatch(line)] == []
    for response in sent:
        assert response.headers["X-Request-Id"] not in output
    assert secret not in output and wrong not in output and "Wr0ng" not in output
    assert ADMIN_TOKEN.search(banner).group(1) not in output  # type: ignore[union-attr]


def _post_until_answered(url: str, secret: str) -> list[requests.Response]:
    """The README's first request, sent until the worker is there to answer it: every response."""
    sent: list[requests.Response] = []

    def answered() -> bool:
        sent.append(requests.post(f"{url}/api/", headers={"Authorization": f"Bearer {secret}"},
                                  json={"text": "What is the capital of France?"}, timeout=30))
        assert sent[-1].status_code in (200, 503), sent[-1].text
        return sent[-1].status_code == 200

    wait_until(answered, timeout=60, interval=0.5, what="an answer")
    return sent


def _embed(url: str, secret: str) -> requests.Response:
    headers = {"Authorization": f"Bearer {secret}"}
    wait_until(lambda: "embed" in served_models(int(url.rsplit(":", 1)[1]), secret), timeout=120, interval=0.5,
               what="the embedding worker to be ready")
    response = requests.post(f"{url}/v1/embeddings", headers=headers, json={"model": "embed", "input": "hi"},
                             timeout=60)
    assert response.status_code == 200, response.text
    return response


def _lines_of(terminal: Path, path: str) -> list[str]:
    return [line for line in terminal.read_text().splitlines() if f" {path} " in line]


@pytest.mark.parametrize("taken", ["--port", "--endpoint", "--admin-port"])
def test_up_on_a_taken_address_says_so_in_one_line_and_changes_nothing(tmp_path, taken):
    database = f"sqlite:///{tmp_path / 'accounts.db'}"
    settings = Settings().updated("accounts", database_url=database)
    before = prepare_accounts(settings, key_file(settings, None), new_key=False)
    with socket.socket() as holder:
        holder.bind(("127.0.0.1", 0))
        holder.listen()
        port = holder.getsockname()[1]
        addresses = {"--port": str(free_port()), "--endpoint": f"tcp://127.0.0.1:{free_port()}",
                     "--admin-port": str(free_port())}
        addresses[taken] = f"tcp://127.0.0.1:{port}" if taken == "--endpoint" else str(port)
        result = subprocess.run(
            [sys.executable, "-m", "commands.cli", "up", "--algorithm", "echo", "--database-url", database,
             *(item for pair in addresses.items() for item in pair)],
            cwd=ROOT, capture_output=True, text=True, timeout=60,
        )
    assert (result.returncode, result.stdout) == (1, "")
    assert result.stderr.count("\n") == 1
    assert f"127.0.0.1:{port}" in result.stderr and "is already in use" in result.stderr and taken in result.stderr
    after = prepare_accounts(settings, key_file(settings, None), new_key=False)
    assert (after.secret, after.new) == (before.secret, False)


@pytest.mark.timeout(300)
@pytest.mark.skipif(find_demo_embedding() is None, reason=f"the demo embedding model is not installed ({DEMO_EMBEDDING_INSTALL})")
def test_up_answers_the_readme_embeddings_example_with_the_offline_model(tmp_path):
    up, banner, port, env, work = start_echo_up(tmp_path)
    try:
        assert f"embeddings: model 'embed' (all-minilm-l6-v2) on http://127.0.0.1:{port}/v1/embeddings" in banner
        secret = DEMO_KEY.search(banner).group(1)  # type: ignore[union-attr]
        headers = {"Authorization": f"Bearer {secret}"}
        wait_until(lambda: "embed" in served_models(port, secret), timeout=120, what="the embedding worker to be ready")
        example = _readme_python_block("client.embeddings.create")
        client = re.search(r"^client = OpenAI\(.*\)$", README.read_text(), re.M).group(0)  # type: ignore[union-attr]
        client = client.replace("localhost:8000", f"localhost:{port}").replace("<key>", secret)
        printed = subprocess.run([sys.executable, "-c", f"from openai import OpenAI\n{client}\n{example}"],
                                 cwd=work, env=env, capture_output=True, text=True, timeout=60)
        related, unrelated = (float(line) for line in printed.stdout.split())
        assert (related, unrelated) == (pytest.approx(0.62, abs=0.02), pytest.approx(-0.05, abs=0.02)), printed.stderr

        texts = ast.literal_eval(re.search(r"^texts = (\[.*\])$", example, re.M).group(1))  # type: ignore[union-attr]
        answer = requests.post(f"http://127.0.0.1:{port}/v1/embeddings", headers=headers,
                               json={"model": "embed", "input": texts}, timeout=60)
        assert answer.status_code == 200, answer.text
        vectors = [item["embedding"] for item in answer.json()["data"]]
        assert [len(vector) for vector in vectors] == [384] * len(texts)
        assert all(math.isclose(math.fsum(x * x for x in vector), 1.0, abs_tol=1e-4) for vector in vectors)
        guitar, strumming, stocks = vectors
        assert _dot(guitar, strumming) > _dot(guitar, stocks) + 0.5
    finally:
        stop(up)


def _readme_python_block(containing: str) -> str:
    (block,) = [block for block in re.findall(r"```python\n(.*?)```", README.read_text(), re.S) if containing in block]
    return block


def served_models(port: int, secret: str) -> set[str]:
    """The models ``llmapi up`` on ``port`` lists to the key ``secret`` (none while it does not answer)."""
    try:
        listed = requests.get(f"http://127.0.0.1:{port}/v1/models", headers={"Authorization": f"Bearer {secret}"},
                              timeout=5)
    except requests.ConnectionError:
        return set()
    return {model["id"] for model in listed.json()["data"]} if listed.ok else set()


def _dot(a: list[float], b: list[float]) -> float:
    return math.fsum(x * y for x, y in zip(a, b))
