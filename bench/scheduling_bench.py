"""What continuous batching buys, on the CPU: head of line, mixed lengths, and prefix reuse.

    .venv/bin/python -m bench.scheduling_bench [--seconds 8]

(a) **Head of line**: a short streamed request (8 tokens) sent while 8 long
    streams (400 tokens each, closed loop) run on one tiny-model worker, against
    the same request on an idle worker: its time to first token.
(b) **Mixed lengths**: 32 streamed requests sent at once, ``max_tokens`` drawn
    from {8, 64, 512}: p50/p99 time to first token and tokens/s in all.
Both run through the full HTTP stack (frontend, SQLite accounts, broker, one
text-generation worker on the tests' tiny Llama), once with continuous
batching and once with the worker's ``continuous = false`` (a request that
arrives while others decode waits for them all: batching per dispatch, as
before), in the same run.
(c) **Prefix reuse**, in-process, on the offline demo model (SmolLM2-135M):
    two chats sharing a system prompt of about 1,000 tokens; the second's time
    to first token against the first's (the first computes the whole prompt,
    the second finds its prefix cached).
(d) **The Responses API against chat completions**: the same streamed ask
    through both routes, interleaved: requests/s and time to first token.
"""

from __future__ import annotations

import argparse
import asyncio
import random
import statistics
import tempfile
import time
from pathlib import Path

from bench import stream_load
from bench.batch_bench import PROMPT, GenerationStack
from bench.common import percentile
from config.logs import configure_logging
from config.settings import LoggingSettings

WORKER = {"cpu_threads": 1, "max_batch": 64, "max_new_tokens_limit": 600}


async def _stream(port: int, request: bytes) -> stream_load.StreamSample:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        return await stream_load._one(reader, writer, request)
    finally:
        writer.close()


async def head_of_line(stack: GenerationStack, rounds: int = 6) -> dict[str, float]:
    """Time to first token of a short request alone, and while 8 long streams run."""
    short = stream_load.chat_request("default", "Hello", 8, stack.secret)
    long = stream_load.chat_request("default", PROMPT, 400, stack.secret)
    idle = [(await _stream(stack.port, short)).first for _ in range(rounds)]
    stop_at = time.perf_counter() + 3600
    background: list[stream_load.StreamSample] = []
    clients = [asyncio.ensure_future(stream_load._client(stack.port, long, stop_at, background)) for _ in range(8)]
    await asyncio.sleep(1.0)  # let the long streams start and settle
    busy = []
    for _ in range(rounds):
        busy.append((await _stream(stack.port, short)).first)
        await asyncio.sleep(0.2)
    for client in clients:
        client.cancel()
    await asyncio.gather(*clients, return_exceptions=True)
    return {"idle_ms": percentile(idle, 0.5) * 1000, "busy_ms": percentile(busy, 0.5) * 1000,
            "busy_max_ms": max(busy) * 1000}


async def mixed_lengths(port: int, secret: str, streams: int = 32, service: str = "default") -> dict[str, float]:
    """``streams`` streams of 8, 64 or 512 tokens (drawn with a fixed seed) sent at once."""
    rng = random.Random(1)
    budgets = [rng.choice((8, 64, 512)) for _ in range(streams)]
    started = time.perf_counter()
    samples = await asyncio.gather(
        *(_stream(port, stream_load.chat_request(service, PROMPT, n, secret)) for n in budgets)
    )
    elapsed = time.perf_counter() - started
    firsts = [sample.first for sample in samples if sample.status == 200]
    return {
        "ttft_p50_ms": percentile(firsts, 0.5) * 1000,
        "ttft_p99_ms": percentile(firsts, 0.99) * 1000,
        "tokens_per_s": sum(sample.tokens for sample in samples) / elapsed,
        "failed": sum(sample.status != 200 for sample in samples),
    }


def responses_against_chat(model: str, seconds: float = 2.0, rounds: int = 7) -> dict[str, dict[str, float]]:
    """The same greedy ask (32 tokens, 4 closed-loop clients) through chat completions and
    through the Responses API, interleaved ``rounds`` times for ``seconds`` each (the order
    alternating): medians of requests/s and of time to first token."""
    with tempfile.TemporaryDirectory() as scratch:
        stack = GenerationStack(Path(scratch), model, WORKER)
        try:
            stack.measure(1, 1.0, 8)
            routes = {"chat": stream_load.chat_request, "responses": stream_load.responses_request}
            runs: dict[str, list[dict[str, float]]] = {"chat": [], "responses": []}
            for round_ in range(rounds):
                for name in sorted(routes, reverse=bool(round_ % 2)):
                    runs[name].append(stack.measure(4, seconds, 32, routes[name]))
        finally:
            stack.stop()
    return {
        route: {name: statistics.median(run[name] for run in found) for name in ("requests_per_s", "ttft_p50_ms")}
        for route, found in runs.items()
    }


def through_http(model: str) -> dict[str, dict[str, dict[str, float]]]:
    results = {}
    for name, continuous in (("continuous", True), ("per dispatch", False)):
        with tempfile.TemporaryDirectory() as scratch:
            stack = GenerationStack(Path(scratch), model, {**WORKER, "continuous": str(continuous).lower()})
            try:
                asyncio.run(_stream(stack.port, stream_load.chat_request("default", "warm", 4, stack.secret)))
                results[name] = {
                    "head_of_line": asyncio.run(head_of_line(stack)),
                    "mixed": asyncio.run(mixed_lengths(stack.port, stack.secret)),
                }
            finally:
                stack.stop()
    return results


def prefix_reuse() -> dict[str, float]:
    """Time to first token of two chats sharing a ~1,000-token system prompt, on the demo model."""
    from gpuworker.algorithm import Batch, Row
    from gpuworker.models.generation import TextGeneration
    from tests.models.support import task

    generator = TextGeneration(cpu_threads=2, warmup_tokens=0)
    system = " ".join(f"Rule {n}: answer briefly, politely and only with facts you are sure of." for n in range(70))

    def first_token_seconds(question: str) -> tuple[float, int]:
        request = {"messages": [{"role": "system", "content": system}, {"role": "user", "content": question}],
                   "max_new_tokens": 4, "temperature": 0}
        started, first = time.perf_counter(), []
        answer = {}

        def send(_row, kind, value, *_tokens):
            if kind == "piece" and not first:
                first.append(time.perf_counter() - started)
            elif kind != "piece":
                answer.update(value)

        generator.serve_batch(Batch([Row(request, task(), True, send)]))
        return first[0], answer["usage"]["prompt_tokens"]

    cold, prompt_tokens = first_token_seconds("What is the capital of France?")
    warm, _ = first_token_seconds("What is the capital of Spain?")
    cached = generator.prefixes.counters.cached_tokens
    return {"prompt_tokens": prompt_tokens, "cached_tokens": cached, "cold_ms": cold * 1000, "warm_ms": warm * 1000}


def report(http: dict, prefix: dict, routes: dict) -> str:
    on, off = http["continuous"], http["per dispatch"]
    lines = [
        "(a) head of line: a short request (8 tokens) while 8 long streams (400 tokens) run",
        "",
        "| scheduling | idle worker: first token p50 ms | beside 8 long streams: p50 ms | max ms | ratio |",
        "| --- | ---: | ---: | ---: | ---: |",
    ]
    for name, row in (("continuous", on), ("per dispatch (before)", off)):
        hol = row["head_of_line"]
        lines.append(f"| {name} | {hol['idle_ms']:.1f} | {hol['busy_ms']:.1f} | {hol['busy_max_ms']:.1f} | "
                     f"{hol['busy_ms'] / hol['idle_ms']:.1f}x |")
    lines += ["", "(b) mixed lengths: 32 streams of 8, 64 or 512 tokens sent at once", "",
              "| scheduling | first token p50 ms | p99 ms | tokens/s in all | failed |", "| --- | ---: | ---: | ---: | ---: |"]
    for name, row in (("continuous", on), ("per dispatch (before)", off)):
        mixed = row["mixed"]
        lines.append(f"| {name} | {mixed['ttft_p50_ms']:.0f} | {mixed['ttft_p99_ms']:.0f} | "
                     f"{mixed['tokens_per_s']:.0f} | {mixed['failed']} |")
    lines += ["", f"(c) prefix reuse, demo model: a {prefix['prompt_tokens']}-token prompt, "
              f"{prefix['cached_tokens']} of them found cached the second time", "",
              "| request | first token ms |", "| --- | ---: |",
              f"| first (whole prompt computed) | {prefix['cold_ms']:.0f} |",
              f"| second (prefix cached) | {prefix['warm_ms']:.0f} |",
              f"| speed-up | {prefix['cold_ms'] / prefix['warm_ms']:.1f}x |"]
    chat, responses = routes["chat"], routes["responses"]
    lines += ["", "(d) the Responses API against chat completions: the same streamed ask, 4 clients", "",
              "| route | requests/s | first token p50 ms |", "| --- | ---: | ---: |",
              f"| chat completions | {chat['requests_per_s']:.1f} | {chat['ttft_p50_ms']:.1f} |",
              f"| responses | {responses['requests_per_s']:.1f} | {responses['ttft_p50_ms']:.1f} |",
              f"| ratio | {responses['requests_per_s'] / chat['requests_per_s']:.2f}x | "
              f"{responses['ttft_p50_ms'] / chat['ttft_p50_ms']:.2f}x |"]
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.parse_args()
    configure_logging(LoggingSettings(level="warning"), "scheduling-bench")
    from tests.fixtures.tiny_model import build_tiny_llama

    with tempfile.TemporaryDirectory() as scratch:
        model = str(build_tiny_llama(Path(scratch) / "tiny-llama"))
        http = through_http(model)
        routes = responses_against_chat(model)
    print(report(http, prefix_reuse(), routes))


if __name__ == "__main__":
    main()
