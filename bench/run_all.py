"""Run every benchmark and write docs/benchmarks.md (a Markdown table) and
docs/benchmarks.png (throughput and latency against concurrency).

    make bench        # or: .venv/bin/python -m bench.run_all [--seconds 5]
"""

from __future__ import annotations

import argparse
import asyncio
import platform
import subprocess
import sys
import tempfile
from pathlib import Path

import requests

from bench import batch_bench, bus_bench, http_bench, path_bench
from tests.harness import ROOT, free_port, wait_until

CONCURRENCY = [1, 4, 16, 64]


def http_sweep(seconds: float) -> list[dict]:
    rows = []
    bare_port = free_port()
    bare = subprocess.Popen([sys.executable, "-m", "bench.bare_tornado", str(bare_port)], cwd=ROOT)
    with tempfile.TemporaryDirectory() as tmp:
        stack, port, secret = http_bench.start_full_stack(Path(tmp))
        try:
            wait_until(lambda: requests.post(f"http://127.0.0.1:{bare_port}/api/", data=http_bench.BODY, timeout=1).ok)
            for clients in CONCURRENCY:
                bare_row = http_bench.measure(bare_port, {}, clients, seconds)
                full_row = http_bench.measure(port, {"Authorization": f"Bearer {secret}"}, clients, seconds)
                rows.append({"path": "bare Tornado (reference)", "concurrency": clients, **bare_row})
                rows.append({"path": "HTTP full stack", "concurrency": clients, **full_row})
        finally:
            stack.stop()
            bare.terminate()
            bare.wait()
    return rows


def bus_sweep(seconds: float) -> list[dict]:
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        stack = bus_bench.start_stack(Path(tmp), "echo", "echo", 1)
        try:
            for in_flight in CONCURRENCY:
                latencies = asyncio.run(bus_bench.closed_loop(stack.endpoint, "echo", {"text": "x"}, in_flight, seconds))
                rows.append(
                    {"path": "ZeroMQ direct client", "concurrency": in_flight, "requests_per_s": len(latencies) / seconds,
                     **bus_bench.summary(latencies)}
                )
        finally:
            stack.stop()
    return rows


def model_figures() -> str:
    """bench.model_bench's report: tokens/s and time to first token, in-process and through the bus."""
    result = subprocess.run(
        [sys.executable, "-m", "bench.model_bench", "--runs", "3"], cwd=ROOT, capture_output=True, text=True, timeout=900
    )
    return result.stdout.strip() or f"model_bench failed: {result.stderr.strip()[-500:]}"


def structured_figures() -> str:
    """bench.structured_bench's table: tokens/s with and without a JSON schema held during decoding."""
    result = subprocess.run(
        [sys.executable, "-m", "bench.structured_bench", "--runs", "3"], cwd=ROOT, capture_output=True, text=True,
        timeout=900,
    )
    return result.stdout.strip() or f"structured_bench failed: {result.stderr.strip()[-500:]}"


def batching_figures(seconds: float) -> str:
    """bench.batch_bench's table: 16 concurrent HTTP streams against one alone, tiny model, CPU."""
    from tests.fixtures.tiny_model import build_tiny_llama

    with tempfile.TemporaryDirectory() as tmp:
        model = str(build_tiny_llama(Path(tmp) / "tiny-llama"))
        rows = batch_bench.sweep(model, {"cpu_threads": 1}, [1, 16], seconds, 64)
    return batch_bench.report(rows)


def scheduling_figures() -> str:
    """bench.scheduling_bench's tables: head of line, mixed lengths (continuous against per dispatch), prefix reuse."""
    result = subprocess.run(
        [sys.executable, "-m", "bench.scheduling_bench"], cwd=ROOT, capture_output=True, text=True, timeout=1200
    )
    return result.stdout.strip() or f"scheduling_bench failed: {result.stderr.strip()[-500:]}"


def markdown(
    where: str,
    rows: list[dict],
    saturation: list[dict],
    echo: list[dict],
    models: str,
    batching: str,
    structured: str,
    scheduling: str,
) -> str:
    lines = [
        "# Benchmarks",
        "",
        f"Written by `make bench` on {platform.machine()} with {platform.python_implementation()} "
        f"{platform.python_version()}; every process of the stack and the load generator share the machine.",
        "",
        "![throughput and latency against concurrency](benchmarks.png)",
        "",
        where,
        "## Throughput and latency (echo algorithm)",
        "",
        "| path | concurrency | requests/s | p50 ms | p99 ms |",
        "| --- | ---: | ---: | ---: | ---: |",
    ]
    lines += [
        f"| {r['path']} | {r['concurrency']} | {r['requests_per_s']:.0f} | {r['p50_ms']:.2f} | {r['p99_ms']:.2f} |"
        for r in rows
    ]
    lines += ["", "## Broker CPU per request (echo, direct client)", "", "| case | requests/s | broker CPU µs/request |", "| --- | ---: | ---: |"]
    lines += [f"| {r['case']} | {r['requests_per_s']:.0f} | {r['broker_cpu_us_per_request']:.0f} |" for r in echo]
    lines += ["", "## Saturation of sleep-50ms workers", "", "| case | achieved/s | ideal/s | fraction |", "| --- | ---: | ---: | ---: |"]
    lines += [f"| {r['case']} | {r['requests_per_s']:.1f} | {r['ideal_per_s']} | {r['fraction_of_ideal']:.3f} |" for r in saturation]
    lines += ["", "## Models: through the bus against in-process (`bench.model_bench`)", "", "```", models, "```"]
    lines += [
        "",
        "## Batching: concurrent streams through HTTP (`bench.batch_bench`, tiny model, CPU)",
        "",
        "Greedy streamed `/v1/chat/completions` of 64 tokens from closed-loop clients; the worker decodes",
        "concurrent streams as rows of one batch.",
        "",
        batching,
        "",
        "## Continuous batching (`bench.scheduling_bench`, tiny model and demo model, CPU)",
        "",
        "Through HTTP with one tiny-model worker, with continuous batching and with the worker's",
        "`continuous = false` (a request that arrives while others decode waits for them all, as before;",
        "its finished rows still leave at once, which the batches before did not), in the same run; then",
        "the prefix cache on the offline demo model, in-process.",
        "",
        scheduling,
        "",
        "## Structured output (`bench.structured_bench`, in-process, CPU)",
        "",
        "Greedy answers with the same budget, free and held to a JSON schema by the grammar (llguidance).",
        "",
        structured,
        "",
        "## On a GPU",
        "",
        "`bench.gpu_check` measures the same paths on an H100 or H200: see [benchmarks-gpu.md](benchmarks-gpu.md).",
    ]
    return "\n".join(lines) + "\n"


def chart(rows: list[dict], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, (throughput, latency) = plt.subplots(1, 2, figsize=(11, 4))
    for name in dict.fromkeys(r["path"] for r in rows):
        mine = [r for r in rows if r["path"] == name]
        x = [r["concurrency"] for r in mine]
        (line,) = throughput.plot(x, [r["requests_per_s"] for r in mine], marker="o", label=name)
        color = line.get_color()
        latency.plot(x, [r["p50_ms"] for r in mine], marker="o", color=color, label=f"{name} p50")
        latency.plot(x, [r["p99_ms"] for r in mine], marker="x", linestyle="--", color=color, label=f"{name} p99")
    for axis, title, unit in ((throughput, "Throughput", "requests/s"), (latency, "Latency", "ms")):
        axis.set_xscale("log", base=2)
        axis.set_xlabel("requests in flight")
        axis.set_ylabel(unit)
        axis.set_title(title)
        axis.grid(True, alpha=0.3)
    latency.set_yscale("log")
    throughput.legend(fontsize=8)
    latency.legend(fontsize=7)
    figure.tight_layout()
    figure.savefig(path, dpi=110)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--seconds", type=float, default=4.0)
    parser.add_argument("--out", type=Path, default=ROOT / "docs")
    args = parser.parse_args()
    kept = path_bench.BENCHMARKS.read_text() if path_bench.BENCHMARKS.exists() else ""
    # First, on a machine the other benchmarks have not yet warmed: its figures are compared run to run.
    where = path_bench.section(args.seconds, 3, kept)
    rows = bus_sweep(args.seconds) + http_sweep(args.seconds)
    echo = bus_bench.echo_figures(args.seconds)
    saturation = bus_bench.saturation_figures([1, 4], args.seconds)
    text = markdown(
        where,
        rows, saturation, echo, model_figures(), batching_figures(args.seconds), structured_figures(),
        scheduling_figures(),
    )
    (args.out / "benchmarks.md").write_text(text)
    chart(rows, args.out / "benchmarks.png")
    print(text)


if __name__ == "__main__":
    main()
