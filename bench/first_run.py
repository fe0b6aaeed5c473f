"""What a first-time user waits for: ``llmapi up`` with the default demo model, started on a
fresh data directory (an empty home and XDG directories, no configuration file, as
tests/ops/test_up.py's first run), timed from its start to its banner and to the first answer
of the README's chat example, then that example's latency repeated ``--runs`` times (median
and p90), once per ``--workers`` count, each on a fresh directory of its own (so each first
answer includes converting the demo model).

    .venv/bin/python -m bench.first_run [--runs 20] [--workers 1 2]

The request is the README's first ``client.chat.completions.create(...)`` call, read from
README.md, sent as the OpenAI client sends it (one keep-alive connection). Its figures depend
on the machine being quiet: run it alone.
"""

from __future__ import annotations

import argparse
import ast
import os
import queue
import re
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any

import requests

from bench.common import percentile
from broker.client import Client
from commands.up import EMBEDDING_SERVICE
from tests.harness import DEMO_KEY, ROOT, free_port, fresh_environment

README = ROOT / "README.md"
BANNER_END = "stop: Ctrl-C"
BANNER_SECONDS = 300.0
# A first start converts the demo model (about 30 s on two cores); a slow machine gets ten times that.
FIRST_ANSWER_SECONDS = 600.0
REQUEST_SECONDS = 120.0
RETRY_SECONDS = 0.25
DEFAULT_SERVICE = "default"


@dataclass
class FirstRun:
    """One ``llmapi up --workers N`` from a fresh directory: seconds from its start to its banner
    and to its first answer, then the seconds of each later answer."""

    workers: int
    banner: float
    first_answer: float
    latencies: list[float]
    answer: str
    # Seconds until every one of ``together`` copies of the example, sent at once, was answered.
    together: int = 0
    all_answered: list[float] = field(default_factory=list)

    @property
    def median(self) -> float:
        return statistics.median(self.latencies)

    @property
    def p90(self) -> float:
        return percentile(self.latencies, 0.90)


def readme_chat_request() -> dict[str, Any]:
    """The body of the README's first non-streamed ``client.chat.completions.create(...)`` call."""
    for block in re.findall(r"```python\n(.*?)```", README.read_text(), re.S):
        for node in ast.walk(ast.parse(block)):
            if isinstance(node, ast.Call) and ast.unparse(node.func) == "client.chat.completions.create":
                body = {keyword.arg: ast.literal_eval(keyword.value) for keyword in node.keywords if keyword.arg}
                if not body.get("stream"):
                    return body
    raise SystemExit(f"no client.chat.completions.create(...) example in {README}")


def first_run(workers: int, runs: int, together: int, body: dict[str, Any], directory: Path) -> FirstRun:
    """Start ``llmapi up --workers N`` in a fresh ``directory``, time it, and stop it."""
    port, endpoint = free_port(), f"tcp://127.0.0.1:{free_port()}"
    env = fresh_environment(directory)
    (directory / "work").mkdir()
    terminal = directory / "up.log"
    started = time.monotonic()
    up = subprocess.Popen(
        [sys.executable, "-m", "commands.cli", "up", "--workers", str(workers), "--port", str(port),
         "--endpoint", endpoint, "--admin-port", str(free_port())],
        cwd=directory / "work", env=env, stdout=subprocess.PIPE, stderr=terminal.open("w"), text=True,
    )
    try:
        banner = _read_banner(up, terminal)
        banner_seconds = time.monotonic() - started
        secret = DEMO_KEY.search(banner)
        if secret is None:
            raise RuntimeError(f"the banner shows no demo key:\n{banner}")
        with requests.Session() as session:
            session.headers["Authorization"] = f"Bearer {secret.group(1)}"
            url = f"http://127.0.0.1:{port}/v1/chat/completions"
            answer = _first_answer(session, url, body, up, terminal)
            first_seconds = time.monotonic() - started
            # Timed once every worker is ready: one still loading would take the CPU from the others.
            _wait_for_workers(endpoint, workers)
            latencies = [_timed(session, url, body) for _ in range(runs)]
            all_answered = [_together(session.headers["Authorization"], url, body, together) for _ in range(runs // 4 or 1)]
    finally:
        _stop(up)
    return FirstRun(workers, banner_seconds, first_seconds, latencies, answer, together, all_answered)


def _wait_for_workers(endpoint: str, workers: int) -> None:
    """Until ``workers`` chat workers, and the embedding worker if up started one, are registered."""
    deadline = time.monotonic() + FIRST_ANSWER_SECONDS
    with Client(endpoint, timeout=5) as client:
        while time.monotonic() < deadline:
            services = client.status()["services"]
            ready = {name: len(service["workers"]) for name, service in services.items()}
            if ready.get(DEFAULT_SERVICE, 0) >= workers and ready.get(EMBEDDING_SERVICE, 1) >= 1:
                return
            time.sleep(RETRY_SECONDS)
    raise RuntimeError(f"fewer than {workers} workers ready after {FIRST_ANSWER_SECONDS} s")


def _together(authorization: str | bytes, url: str, body: dict[str, Any], copies: int) -> float:
    """Seconds until ``copies`` of the request, sent at once on connections of their own, are all answered."""

    def one() -> float:
        with requests.Session() as session:
            session.headers["Authorization"] = authorization
            return _timed(session, url, body)

    started = time.perf_counter()
    with ThreadPoolExecutor(copies) as pool:
        list(pool.map(lambda _: one(), range(copies)))
    return time.perf_counter() - started


def _read_banner(up: subprocess.Popen[str], terminal: Path) -> str:
    """Up's stdout until its banner ends, read by a thread so that a silent up cannot hang the bench."""
    lines: queue.Queue[str] = queue.Queue()
    if up.stdout is None:
        raise RuntimeError("up was started without a pipe for its stdout")
    threading.Thread(target=_pump, args=(up.stdout, lines), daemon=True).start()
    banner = ""
    deadline = time.monotonic() + BANNER_SECONDS
    while BANNER_END not in banner:
        try:
            banner += lines.get(timeout=max(0.0, deadline - time.monotonic()))
        except queue.Empty:
            raise RuntimeError(f"no banner after {BANNER_SECONDS} s:\n{banner}{_tail(terminal)}") from None
        if up.poll() is not None and lines.empty() and BANNER_END not in banner:
            raise RuntimeError(f"up ended ({up.returncode}) before its banner:\n{banner}{_tail(terminal)}")
    return banner


def _pump(stream: IO[str], lines: queue.Queue[str]) -> None:
    for line in iter(stream.readline, ""):
        lines.put(line)


def _first_answer(
    session: requests.Session, url: str, body: dict[str, Any], up: subprocess.Popen[str], terminal: Path
) -> str:
    """The first 200's answer, asked again while the stack answers 503 (no worker ready yet)."""
    deadline = time.monotonic() + FIRST_ANSWER_SECONDS
    while time.monotonic() < deadline:
        if up.poll() is not None:
            raise RuntimeError(f"up ended ({up.returncode}) before answering:{_tail(terminal)}")
        try:
            response = session.post(url, json=body, timeout=REQUEST_SECONDS)
        except requests.ConnectionError:
            response = None
        if response is not None and response.status_code == 200:
            return str(response.json()["choices"][0]["message"]["content"])
        if response is not None and response.status_code != 503:
            raise RuntimeError(f"the README's chat example got {response.status_code}: {response.text}")
        time.sleep(RETRY_SECONDS)
    raise RuntimeError(f"no answer after {FIRST_ANSWER_SECONDS} s:{_tail(terminal)}")


def _timed(session: requests.Session, url: str, body: dict[str, Any]) -> float:
    started = time.perf_counter()
    response = session.post(url, json=body, timeout=REQUEST_SECONDS)
    elapsed = time.perf_counter() - started
    if response.status_code != 200:
        raise RuntimeError(f"the README's chat example got {response.status_code}: {response.text}")
    return elapsed


def _stop(up: subprocess.Popen[str]) -> None:
    if up.poll() is None:
        up.send_signal(signal.SIGINT)
        try:
            up.wait(60)
        except subprocess.TimeoutExpired:
            up.kill()
            up.wait()


def _tail(terminal: Path, lines: int = 20) -> str:
    return "\n" + "\n".join(terminal.read_text(errors="replace").splitlines()[-lines:])


def table(results: list[FirstRun], runs: int) -> str:
    rows = [
        "| workers | start to banner | start to first answer | median answer | p90 answer | all of several at once |",
        "|---:|---:|---:|---:|---:|---:|",
    ]
    for result in results:
        rows.append(
            f"| {result.workers} | {result.banner:.1f} s | {result.first_answer:.1f} s "
            f"| {result.median:.2f} s | {result.p90:.2f} s "
            f"| {result.together} in {statistics.median(result.all_answered):.2f} s |"
        )
    return "\n".join(rows) + (
        f"\n\n(the README's chat example; median and p90 of {runs} answers after the first; then the median of"
        f" {runs // 4 or 1} times, the seconds until every one of several sent at once was answered)"
    )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--runs", type=int, default=20, metavar="N", help="answers timed after the first (20)")
    parser.add_argument("--workers", type=int, nargs="+", default=[1, 2], metavar="N",
                        help="worker counts, one fresh start each (1 2)")
    parser.add_argument("--together", type=int, default=4, metavar="K",
                        help="copies of the example sent at once after the timed runs (4)")
    args = parser.parse_args(argv)
    if args.runs < 1 or min(args.workers) < 1:
        parser.error("--runs and --workers must be at least 1")
    body = readme_chat_request()
    load = ", ".join(f"{figure:.2f}" for figure in os.getloadavg())
    print(f"llmapi up, first run: {os.cpu_count()} CPUs, load average {load}; request: {body}", flush=True)
    results = []
    for workers in args.workers:
        with tempfile.TemporaryDirectory(prefix="llmapi-first-run-") as directory:
            result = first_run(workers, args.runs, args.together, body, Path(directory))
        print(f"--workers {workers}: banner after {result.banner:.1f} s, first answer after "
              f"{result.first_answer:.1f} s: {result.answer!r}", flush=True)
        results.append(result)
    print()
    print(table(results, args.runs))
    return 0


if __name__ == "__main__":
    sys.exit(main())
