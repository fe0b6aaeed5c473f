"""Where the time of one request goes: the full HTTP path (key check, admission, broker,
echo worker, usage record) against a bare Tornado JSON echo at 64 and 1 connections, in
one interleaved run; each process's CPU per request on the full path; the broker's CPU per
request with a direct client, plaintext and CURVE. Each figure is printed beside the one
kept in docs/benchmarks.md (the previous commit's), which ``--write`` then replaces.

    .venv/bin/python -m bench.path_bench [--seconds 5] [--rounds 3] [--write]
    .venv/bin/python -m bench.path_bench --against HEAD~1 [--seconds 5] [--rounds 5]

``--against REV`` runs the full path of commit REV too (checked out in a temporary git
worktree, its stack started by its own code), interleaved with this tree's in every round,
and prints both side by side: on a shared machine, figures kept from another day move more
than most changes do.

The load comes from ``wrk`` where it is installed (a C load generator takes less of the
machine from the servers), else from bench.loadgen; the table says which. The frontend
logs at info, writing its access log, as a server does by default.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import requests

from bench import bus_bench, http_bench
from bench.common import cpu_seconds
from tests.harness import ROOT, Stack, free_port, wait_until

CONNECTIONS = (64, 1)
HEADING = "## Where the time goes (`bench.path_bench`)"
BENCHMARKS = ROOT / "docs" / "benchmarks.md"
PROCESSES = ("frontend", "broker", "worker")
_ROW = re.compile(r"^\| (?P<figure>[^|]+?) \| (?P<now>[^|]+?) \|", re.M)


@dataclass
class Load:
    """One closed-loop run's outcome: requests answered, in how many seconds, their latencies."""

    requests: int
    seconds: float
    p50_ms: float
    p99_ms: float

    @property
    def per_second(self) -> float:
        return self.requests / self.seconds


def wrk_load(port: int, headers: dict[str, str], connections: int, seconds: float) -> Load:
    """``connections`` keep-alive connections posting the benchmark body for ``seconds``, by wrk."""
    with tempfile.NamedTemporaryFile("w", suffix=".lua") as script:
        body = http_bench.BODY.decode().replace("\\", "\\\\").replace('"', '\\"')
        script.write(f'wrk.method = "POST"\nwrk.body = "{body}"\nwrk.headers["Content-Type"] = "application/json"\n')
        script.flush()
        extra = [item for name, value in headers.items() for item in ("-H", f"{name}: {value}")]
        printed = subprocess.run(
            ["wrk", "-t1", f"-c{connections}", f"-d{max(1, round(seconds))}s", "--latency", "-s", script.name, *extra,
             f"http://127.0.0.1:{port}/api/"],
            capture_output=True, text=True, check=True, timeout=seconds + 30,
        ).stdout
    if "Non-2xx" in printed or "Socket errors" in printed:
        raise RuntimeError(f"wrk saw failures:\n{printed}")
    answered = re.search(r"(\d+) requests in ([\d.]+)(ms|s|m)\b", printed)
    if answered is None:
        raise RuntimeError(f"wrk printed no count:\n{printed}")
    elapsed = float(answered.group(2)) * {"ms": 0.001, "s": 1.0, "m": 60.0}[answered.group(3)]
    return Load(int(answered.group(1)), elapsed, _wrk_percentile(printed, "50%"), _wrk_percentile(printed, "99%"))


def _wrk_percentile(printed: str, which: str) -> float:
    found = re.search(rf"^\s+{which}\s+([\d.]+)(us|ms|s)\s*$", printed, re.M)
    if found is None:
        raise RuntimeError(f"wrk printed no {which} latency:\n{printed}")
    return float(found.group(1)) * {"us": 0.001, "ms": 1.0, "s": 1000.0}[found.group(2)]


def python_load(port: int, headers: dict[str, str], connections: int, seconds: float) -> Load:
    measured = http_bench.measure(port, headers, connections, seconds)
    return Load(round(measured["requests_per_s"] * seconds), seconds, measured["p50_ms"], measured["p99_ms"])


LoadGenerator = Callable[[int, dict[str, str], int, float], Load]


def load_generator() -> tuple[str, LoadGenerator]:
    """wrk where it is installed, else bench.loadgen, and its name."""
    return ("wrk", wrk_load) if shutil.which("wrk") else ("bench.loadgen", python_load)


@dataclass
class FullPath:
    """A full stack to load: its HTTP port, an API key's secret and its processes' pids by role."""

    port: int
    secret: str
    pids: dict[str, int]


def path_figures(seconds: float, rounds: int, load: LoadGenerator, against: str | None = None) -> dict[str, float]:
    """The full path against bare Tornado, interleaved, ``rounds`` times at each concurrency:
    medians of requests/s, latency and each process's CPU µs per request. With ``against`` (a
    commit), that commit's full path runs in every round too; its figures are named with it."""
    samples: dict[str, list[float]] = {}

    def sample(figure: str, value: float) -> None:
        samples.setdefault(figure, []).append(value)

    bare_port = free_port()
    with tempfile.TemporaryDirectory() as tmp, contextlib.ExitStack() as running:
        bare = subprocess.Popen([sys.executable, "-m", "bench.bare_tornado", str(bare_port)], cwd=ROOT)
        running.callback(bare.wait)
        running.callback(bare.terminate)
        stack, port, secret = http_bench.start_full_stack(Path(tmp), "info")
        running.callback(stack.stop)
        paths = {"": FullPath(port, secret, _pids(stack))}
        if against is not None:
            paths[f" ({against})"] = running.enter_context(full_path_of(against))
        wait_until(lambda: requests.post(f"http://127.0.0.1:{bare_port}/api/", data=http_bench.BODY, timeout=1).ok)
        load_before = os.getloadavg()[0]
        for _ in range(rounds):
            for connections in CONNECTIONS:
                at = f"{connections} connection{'s' if connections > 1 else ''}"
                reference = load(bare_port, {}, connections, seconds)
                sample(f"bare Tornado requests/s, {at}", reference.per_second)
                for of, path in paths.items():
                    before = {role: cpu_seconds(pid) for role, pid in path.pids.items()}
                    full = load(path.port, {"Authorization": f"Bearer {path.secret}"}, connections, seconds)
                    spent = {role: cpu_seconds(pid) - before[role] for role, pid in path.pids.items()}
                    sample(f"full path / bare Tornado, {at}{of}", full.per_second / reference.per_second)
                    sample(f"full path requests/s, {at}{of}", full.per_second)
                    sample(f"full path p50 ms, {at}{of}", full.p50_ms)
                    sample(f"full path p99 ms, {at}{of}", full.p99_ms)
                    for role, seconds_spent in spent.items():
                        sample(f"{role} CPU µs/request, {at}{of}", seconds_spent / full.requests * 1e6)
        load_after = os.getloadavg()[0]
    figures = {figure: statistics.median(values) for figure, values in samples.items()}
    figures["load average (1 min) before"] = load_before
    figures["load average (1 min) after"] = load_after
    return figures


def _pids(stack: Stack) -> dict[str, int]:
    return {process.args[0]: process.pid for process in stack.processes if process.args[0] in PROCESSES}


# Run in a worktree of another commit, by that commit's Python code: its full stack, described on
# one line of JSON, kept up until stdin closes. It uses only what bench.http_bench has long had.
# Its arguments are the roles whose processes are measured.
_SERVE_FULL_PATH = """
import json, sys, tempfile
from pathlib import Path
from bench import http_bench
with tempfile.TemporaryDirectory() as tmp:
    stack, port, secret = http_bench.start_full_stack(Path(tmp), "info")
    try:
        pids = {process.args[0]: process.pid for process in stack.processes if process.args[0] in sys.argv[1:]}
        print("full path", json.dumps({"port": port, "secret": secret, "pids": pids}), flush=True)
        sys.stdin.read()
    finally:
        stack.stop()
"""


def _described(server: subprocess.Popen[str], commit: str) -> dict[str, Any]:
    """The line describing the full stack that ``server`` started (what it logs before is skipped)."""
    assert server.stdout is not None
    for line in server.stdout:
        if line.startswith("full path {"):
            described: dict[str, Any] = json.loads(line.removeprefix("full path "))
            return described
    raise RuntimeError(f"the full stack of {commit} did not start")


@contextlib.contextmanager
def full_path_of(commit: str) -> Iterator[FullPath]:
    """The full stack of ``commit``, from a temporary git worktree, run by that commit's code."""
    with tempfile.TemporaryDirectory() as tmp:
        tree = Path(tmp) / "tree"
        subprocess.run(["git", "-C", str(ROOT), "worktree", "add", "--detach", "-q", str(tree), commit], check=True)
        try:
            server = subprocess.Popen([sys.executable, "-c", _SERVE_FULL_PATH, *PROCESSES], cwd=tree, text=True,
                                      stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                      env={**os.environ, "PYTHONPATH": str(tree)})
            try:
                described = _described(server, commit)
                yield FullPath(described["port"], described["secret"], described["pids"])
            finally:
                if server.stdin is not None:
                    server.stdin.close()
                server.wait(30)
        finally:
            subprocess.run(["git", "-C", str(ROOT), "worktree", "remove", "--force", str(tree)], check=True)


def broker_figures(seconds: float, rounds: int) -> dict[str, float]:
    """The broker's CPU µs per echo request from a direct client, plaintext and CURVE, and their ratio."""
    figures = {}
    for row in bus_bench.curve_figures(seconds * rounds, rounds):
        case = row["case"].split(" (median")[0]
        if "broker_cpu_us_per_request" in row:
            figures[f"broker CPU µs/request, {case}"] = row["broker_cpu_us_per_request"]
        else:
            figures[f"broker CPU per request, {case}"] = row["broker_cpu_per_request_ratio"]
    return figures


def previous_figures(markdown: str) -> dict[str, str]:
    """The figures of this section as ``markdown`` (docs/benchmarks.md) keeps them, by name."""
    section = _section(markdown)
    rows = [] if section is None else _ROW.finditer(section)
    return {row["figure"]: row["now"] for row in rows if row["figure"] not in ("figure", "---")}


def _section(markdown: str) -> str | None:
    start = markdown.find(HEADING)
    if start < 0:
        return None
    end = markdown.find("\n## ", start + len(HEADING))
    return markdown[start:] if end < 0 else markdown[start:end]


def report(figures: dict[str, float], previous: dict[str, str], generator: str) -> str:
    """This section in Markdown: each figure now, and as previously kept."""
    lines = [
        HEADING,
        "",
        f"Medians of interleaved runs, load from {generator}; the frontend logs at info. Targets: full path",
        "at least 0.5x bare Tornado at 64 connections and 0.3x at one; the broker at most 50 µs a request",
        "at 64 in flight (plaintext), and CURVE at most 1.15x plaintext. `previous` is the figure this file",
        "held before. Figures kept from another day move with the machine's load more than most",
        "changes move them: `python -m bench.path_bench --against HEAD~1` measures two commits interleaved.",
        "",
        "| figure | now | previous |",
        "| --- | ---: | ---: |",
    ]
    lines += [f"| {figure} | {_shown(figure, value)} | {previous.get(figure, '-')} |" for figure, value in figures.items()]
    return "\n".join(lines) + "\n"


def _shown(figure: str, value: float) -> str:
    if "/ bare" in figure or "against plaintext" in figure or "load average" in figure:
        return f"{value:.2f}"
    return f"{value:.2f}" if "ms" in figure else f"{value:.0f}"


def replace_section(markdown: str, section: str) -> str:
    """``markdown`` with this benchmark's section replaced by ``section`` (or added at the end)."""
    old = _section(markdown)
    return markdown.rstrip("\n") + "\n\n" + section if old is None else markdown.replace(old, section)


def section(seconds: float, rounds: int, kept: str) -> str:
    """This benchmark's section, measured now, with the figures ``kept`` (docs/benchmarks.md) held."""
    name, load = load_generator()
    figures = path_figures(seconds, rounds, load) | broker_figures(seconds, rounds)
    return report(figures, previous_figures(kept), name)


def side_by_side(seconds: float, rounds: int, against: str) -> str:
    """The full path's figures for this tree and for commit ``against``, measured interleaved."""
    name, load = load_generator()
    return side_by_side_report(path_figures(seconds, rounds, load, against), against, name, rounds)


def side_by_side_report(figures: dict[str, float], against: str, generator: str, rounds: int) -> str:
    """A table of each figure of this tree beside commit ``against``'s, and their ratio."""
    suffix = f" ({against})"
    lines = [f"Medians of {rounds} interleaved rounds, load from {generator}.", "",
             f"| figure | this tree | {against} | ratio |", "| --- | ---: | ---: | ---: |"]
    for figure, value in figures.items():
        theirs = figures.get(figure + suffix)
        if theirs is not None:
            ratio = f"{value / theirs:.2f}" if theirs else "-"
            lines.append(f"| {figure} | {_shown(figure, value)} | {_shown(figure, theirs)} | {ratio} |")
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seconds", type=float, default=5.0, help="length of each measured run")
    parser.add_argument("--rounds", type=int, default=3, help="interleaved runs of each case (the median is kept)")
    parser.add_argument("--write", action="store_true", help=f"replace this section of {BENCHMARKS.name}")
    parser.add_argument("--against", metavar="REV", help="also run commit REV's full path, interleaved")
    args = parser.parse_args()
    if args.against is not None:
        if args.write:
            parser.error("--against compares two trees; --write keeps this tree's figures alone")
        print(side_by_side(args.seconds, args.rounds, args.against))
        return
    kept = BENCHMARKS.read_text() if BENCHMARKS.exists() else ""
    measured = section(args.seconds, args.rounds, kept)
    print(measured)
    if args.write:
        BENCHMARKS.write_text(replace_section(kept, measured))


if __name__ == "__main__":
    main()
