"""Streams through the full HTTP stack, alone and many at once: what batching buys.

The stack (frontend, SQLite accounts, broker, one text-generation worker on
the tiny random Llama of the tests) serves greedy streamed
``/v1/chat/completions`` to closed-loop clients: one alone, then many
together. A batching worker decodes concurrent streams together, so tokens/s
in all should grow with the clients while one stream alone stays as fast.

    .venv/bin/python -m bench.batch_bench [--seconds 5] [--clients 16] [--tokens 64]
"""

from __future__ import annotations

import argparse
import asyncio
import tempfile
from pathlib import Path
from typing import Any

import requests

from bench import stream_load
from broker.client import Client
from config.logs import configure_logging
from config.settings import LoggingSettings
from tests.harness import Stack, accounts_database, free_port, wait_until

PROMPT = "Write a long story about a lighthouse keeper and a storm."


class GenerationStack:
    """Frontend, broker and one text-generation worker for ``model`` with ``options``, in ``tmp``."""

    def __init__(self, tmp: Path, model: str, options: dict[str, Any], gpu: bool = False, start_timeout: float = 300) -> None:
        database, self.secret = accounts_database(tmp)
        self.port = free_port()
        self.stack = Stack(
            tmp,
            {
                "frontend": {"port": self.port, "request_timeout": 300.0},
                "accounts": {"database_url": database},
                "logging": {"level": "warning"},
            },
        )
        self.stack.broker()
        extra = ["--gpu", "0"] if gpu else []
        for name, value in {"model": model, **options}.items():
            extra += ["--option", f"{name}={value}"]
        worker = self.stack.worker("default", "text-generation", *extra)
        self.stack.start("frontend", "frontend")
        with Client(self.stack.endpoint, timeout=30) as client:

            def ready() -> list[dict[str, Any]]:
                if not worker.alive():
                    raise SystemExit(f"the worker exited; its log:\n{worker.log()[-3000:]}")
                entry = client.status()["services"].get("default", {})
                return [w for w in entry.get("workers", []) if w["state"] == "idle"]

            (self.worker_info,) = wait_until(ready, timeout=start_timeout, interval=0.5, what="the worker")
        base = f"http://127.0.0.1:{self.port}"
        wait_until(lambda: requests.get(base + "/readyz", timeout=2).ok, timeout=60, what="the frontend")

    def measure(self, clients: int, seconds: float, max_tokens: int, route=stream_load.chat_request) -> dict[str, float]:
        """Streaming figures of ``clients`` closed-loop clients for ``seconds``; ``route`` builds the
        request (chat completions by default, or the Responses API's)."""
        samples, elapsed = asyncio.run(stream_load.run(self.port, route("default", PROMPT, max_tokens, self.secret), clients, seconds))
        return {**stream_load.figures(samples, elapsed), "requests_per_s": len(samples) / elapsed}

    def stop(self) -> None:
        self.stack.stop()


def sweep(model: str, options: dict[str, Any], clients: list[int], seconds: float, tokens: int) -> list[dict[str, float]]:
    """Streaming figures for each number of clients, on the CPU."""
    with tempfile.TemporaryDirectory() as scratch:
        stack = GenerationStack(Path(scratch), model, options)
        try:
            stack.measure(1, 1.0, tokens)  # warm the frontend and the worker
            return [{"clients": n, **stack.measure(n, seconds, tokens)} for n in clients]
        finally:
            stack.stop()


def report(rows: list[dict[str, float]]) -> str:
    alone = rows[0]["tokens_per_s"]
    lines = ["| clients | tokens/s in all | vs one alone | first token p50 ms | p99 ms | streams |", "| ---: | ---: | ---: | ---: | ---: | ---: |"]
    for row in rows:
        lines.append(
            f"| {row['clients']} | {row['tokens_per_s']:.0f} | {row['tokens_per_s'] / alone:.1f}x | "
            f"{row['ttft_p50_ms']:.0f} | {row['ttft_p99_ms']:.0f} | {row['requests']} |"
        )
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seconds", type=float, default=5.0)
    parser.add_argument("--clients", type=int, default=16, help="concurrent streams, after one alone")
    parser.add_argument("--tokens", type=int, default=64, help="max_tokens of each stream")
    args = parser.parse_args()
    configure_logging(LoggingSettings(level="warning"), "batch-bench")
    from tests.fixtures.tiny_model import build_tiny_llama

    with tempfile.TemporaryDirectory() as scratch:
        model = str(build_tiny_llama(Path(scratch) / "tiny-llama"))
        rows = sweep(model, {"cpu_threads": 1}, [1, args.clients], args.seconds, args.tokens)
    print(report(rows))


if __name__ == "__main__":
    main()
