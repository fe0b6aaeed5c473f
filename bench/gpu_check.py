"""The device check: text generation on GPU 0, from one stream to 64 concurrent HTTP clients.

On a CUDA machine, with the project's dependencies importable and nothing to download:

    python3 -m bench.gpu_check [--tokens 128] [--runs 3] [--seconds 8]

In one run (about four minutes on an H100 or H200) it:

1. builds the tests' tiny random Llama and a random Llama of about 1B
   parameters (16 layers, hidden 2048, bf16) on the spot;
2. times, in this process, transformers' own `generate` (eager, no compile)
   and the workers' decoder (eager) at batch 1, 8, 32 and 64, and the
   prefill of the prompt, for reference;
3. starts a broker and four workers pinned to GPU 0 (`--gpu 0`): each model
   decoded eagerly and compiled (`compile=off` / `compile=on`);
4. through the broker, with the direct client, asks each worker for greedy
   answers whole and streamed: tokens/s and time to first token, and
   checks that the streamed pieces join to the whole answer;
5. starts the HTTP frontend and streams `/v1/chat/completions` from 1, 8
   and 64 concurrent closed-loop clients to the compiled 1B worker:
   tokens/s in all and p50/p99 time to first token; then 64 streams of
   mixed lengths (8, 64 or 512 tokens) sent at once, and a 2,000-token
   shared prefix: the first token of a chat that computes it and of one
   that finds it in the prefix cache.

It ends with a Markdown table of every figure (for docs/benchmarks.md).
Exit status: 0 when every check passed; 1 when one failed (a model not on
the GPU, a failed request, streamed pieces that do not join to the whole
answer, a compiled worker that fell back to eager); 2 when there is no CUDA
device. `--allow-cpu` runs the same steps on the CPU (the 1B model is then
replaced by the tiny one), to try the script itself.
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import requests

from bench import scheduling_bench, stream_load
from bench.model_bench import Sample, timed_stream, timed_whole
from broker.client import Client
from config.logs import configure_logging
from config.settings import LoggingSettings
from tests.harness import Process, Stack, accounts_database, free_port, wait_until

PROMPT = "Write a long story about a lighthouse keeper and a storm."
MiB = 2**20
REFERENCE_BATCHES = (1, 8, 32, 64)
HTTP_CLIENTS = (1, 8, 64)


class Report:
    """Figures as they are measured, printed at once and gathered for the final table."""

    def __init__(self) -> None:
        self.rows: list[tuple[str, str]] = []
        self.failures: list[str] = []

    def add(self, what: str, figure: str) -> None:
        print(f"  {what}: {figure}", flush=True)
        self.rows.append((what, figure))

    def fail(self, what: str) -> None:
        print(f"  FAILED: {what}", flush=True)
        self.failures.append(what)

    def table(self) -> str:
        return "\n".join(["| measured | figure |", "| --- | --- |", *(f"| {what} | {figure} |" for what, figure in self.rows)])


def cuda_name() -> str | None:
    import torch

    return torch.cuda.get_device_name(0) if torch.cuda.is_available() else None


def build_models(tmp: Path, gpu: bool) -> dict[str, Path]:
    from tests.fixtures.tiny_model import ONE_BILLION_SHAPE, build_random_llama, build_tiny_llama

    models = {"tiny": build_tiny_llama(tmp / "tiny")}
    if gpu:
        started = time.perf_counter()
        models["1b"] = build_random_llama(tmp / "1b", ONE_BILLION_SHAPE, device="cuda", dtype="bfloat16")
        print(f"built the random 1B Llama in {time.perf_counter() - started:.1f} s", flush=True)
    return models


def start_workers(stack: Stack, models: dict[str, Path], gpu: bool, max_batch: int) -> dict[str, Process]:
    """One worker per model and decoding mode, all starting at once (compiling in parallel)."""
    workers = {}
    for name, path in models.items():
        for mode in ("off", "on"):
            extra = ["--gpu", "0"] if gpu else []
            # Room for 4,096 tokens in each of the compiled path's rows: the shared-prefix check's prompt fits.
            options = {"model": path, "compile": mode, "max_batch": max_batch, "max_new_tokens_limit": 2048,
                       "max_batch_tokens": max_batch * 4096}
            for key, value in options.items():
                extra += ["--option", f"{key}={value}"]
            workers[f"{name}-{'compiled' if mode == 'on' else 'eager'}"] = stack.worker(
                f"{name}-{'compiled' if mode == 'on' else 'eager'}", "text-generation", *extra
            )
    return workers


def wait_ready(stack: Stack, service: str, process: Process, timeout: float) -> dict[str, Any]:
    with Client(stack.endpoint, timeout=30) as client:

        def ready() -> list[dict[str, Any]]:
            if not process.alive():
                raise SystemExit(f"the {service} worker exited; its log:\n{process.log()[-3000:]}")
            entry = client.status()["services"].get(service, {})
            return [w for w in entry.get("workers", []) if w["state"] == "idle"]

        (worker,) = wait_until(ready, timeout=timeout, interval=0.5, what=f"the {service} worker")
    return worker


def describe(worker: dict[str, Any]) -> str:
    gpu = f" ({worker['gpu_name']})" if "gpu_name" in worker else ""
    memory = f", {worker['gpu_memory_bytes'] / MiB:.0f} MiB of GPU memory" if "gpu_memory_bytes" in worker else ""
    return (
        f"{worker['parameters'] / 1e6:.1f}M parameters on {worker['device']}{gpu}, {worker['dtype']}, "
        f"compiled={worker['compiled']}, capacity {worker['capacity']}{memory}"
    )


def through_broker(stack: Stack, service: str, tokens: int, runs: int, report: Report) -> None:
    """Whole and streamed greedy answers from one worker: tokens/s and time to first token."""
    request = {"text": PROMPT, "max_new_tokens": tokens, "temperature": 0}
    with Client(stack.endpoint, timeout=600) as client:
        whole_answer = client.request(service, request)
        pieces = list(client.stream(service, request))
        joined = "".join(piece["text"] for piece in pieces[:-1])
        counts = ("prompt_tokens", "completion_tokens")  # cached prompt tokens differ from one request to the next
        if joined != whole_answer["output"] or any(pieces[-1]["usage"][n] != whole_answer["usage"][n] for n in counts):
            report.fail(f"{service}: the streamed pieces do not join to the whole answer")
        whole = [timed_whole(lambda: client.request(service, request)) for _ in range(runs)]
        streamed = [timed_stream(client.stream(service, request)) for _ in range(runs)]
    whole_rate, stream_rate = _rate(whole), _rate(streamed)
    report.add(f"{service}, whole answer through the broker", f"{whole_rate:.1f} tokens/s")
    report.add(
        f"{service}, streamed through the broker",
        f"{stream_rate:.1f} tokens/s ({stream_rate / whole_rate:.2f}x whole), first token "
        f"{statistics.median(s.first for s in streamed) * 1000:.1f} ms",
    )


def _rate(samples: list[Sample]) -> float:
    return statistics.median(sample.tokens / sample.total for sample in samples)


def in_process_reference(path: Path, tokens: int, report: Report) -> None:
    """transformers' generate and the worker's decoder, eager, in this process, at growing batch sizes."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from gpuworker.models.decoding import Decoder
    from gpuworker.models.generation import GREEDY

    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    tokenizer = AutoTokenizer.from_pretrained(path)
    tokenizer.padding_side = "left"
    model = AutoModelForCausalLM.from_pretrained(path, dtype=torch.bfloat16 if device.type == "cuda" else torch.float32).to(device).eval()
    decoder = Decoder(model, device, tokenizer.pad_token_id, False, max(REFERENCE_BATCHES), 4096, 1 << 20)
    prompt_ids = tokenizer(PROMPT)["input_ids"]
    chat = tokenizer.apply_chat_template([{"role": "user", "content": PROMPT}], add_generation_prompt=True, tokenize=False)
    chat_ids = tokenizer(chat, add_special_tokens=False, return_tensors="pt")["input_ids"].to(device)
    with torch.inference_mode():
        prefills = [_timed(device, lambda: model(input_ids=chat_ids, logits_to_keep=1)) for _ in range(6)][1:]
    report.add(
        "in-process eager prefill of the chat prompt",
        f"{statistics.median(prefills) * 1000:.1f} ms ({chat_ids.shape[1]} tokens): the floor of time to first token",
    )
    _decode(decoder, [_FixedRow(prompt_ids, 4, GREEDY)])
    for batch in REFERENCE_BATCHES:
        encoded = tokenizer([PROMPT] * batch, return_tensors="pt", padding=True).to(device)
        with torch.inference_mode():
            model.generate(**encoded, max_new_tokens=4, min_new_tokens=4, do_sample=False)
            seconds = _timed(device, lambda: model.generate(**encoded, max_new_tokens=tokens, min_new_tokens=tokens, do_sample=False))
        generate_rate = batch * tokens / seconds
        rows = [_FixedRow(prompt_ids, tokens, GREEDY) for _ in range(batch)]
        seconds = _timed(device, lambda: _decode(decoder, rows))
        report.add(
            f"in-process eager, batch {batch}",
            f"transformers generate {generate_rate:.0f} tokens/s in all; the worker's decoder {batch * tokens / seconds:.0f}",
        )
    model = decoder = None  # dropped before the cache is emptied, so their memory goes back
    if device.type == "cuda":
        torch.cuda.empty_cache()


def _decode(decoder: Any, rows: list[_FixedRow]) -> None:
    """Decode ``rows`` together to their end: their prompts at once, then a step at a time."""
    decoder.prefill([(decoder.seat(row), len(row.input_ids)) for row in rows])
    while decoder.decoding:
        decoder.step()


def _timed(device: Any, work) -> float:
    import torch

    if device.type == "cuda":
        torch.cuda.synchronize()
    started = time.perf_counter()
    work()
    if device.type == "cuda":
        torch.cuda.synchronize()
    return time.perf_counter() - started


class _FixedRow:
    """A decoder row that takes exactly ``tokens`` tokens."""

    constraint = None
    gpu_seconds = 0.0

    def __init__(self, input_ids: list[int], tokens: int, params: Any) -> None:
        self.input_ids, self.max_new_tokens, self.params, self.taken = input_ids, tokens, params, 0

    def accept(self, token: int, scores: Any = None) -> bool:
        self.taken += 1
        return self.taken >= self.max_new_tokens


def over_http(stack: Stack, secret: str, service: str, tokens: int, seconds: float, report: Report) -> None:
    """Streamed chat completions from 1, 8 and 64 closed-loop HTTP clients."""
    frontend = stack.start("frontend", "frontend")
    port = stack.settings.frontend.port
    base = f"http://127.0.0.1:{port}"
    wait_until(lambda: requests.get(base + "/healthz", timeout=2).ok, timeout=60, what="the frontend")
    request = stream_load.chat_request(service, PROMPT, tokens, secret)
    asyncio.run(stream_load.run(port, request, 1, 1.0))
    for clients in HTTP_CLIENTS:
        samples, elapsed = asyncio.run(stream_load.run(port, request, clients, seconds))
        figures = stream_load.figures(samples, elapsed)
        report.add(
            f"HTTP, {clients} concurrent streams, {service}",
            f"{figures['tokens_per_s']:.0f} tokens/s in all; first token p50 {figures['ttft_p50_ms']:.0f} ms, "
            f"p99 {figures['ttft_p99_ms']:.0f} ms; {figures['requests']} streams, {figures['failed']} failed",
        )
        if figures["failed"]:
            report.fail(f"HTTP with {clients} clients: {figures['failed']} requests failed")
    mixed = asyncio.run(scheduling_bench.mixed_lengths(port, secret, max(HTTP_CLIENTS), service))
    report.add(
        f"HTTP, {max(HTTP_CLIENTS)} streams of mixed lengths (8, 64, 512) sent at once, {service}",
        f"{mixed['tokens_per_s']:.0f} tokens/s in all; first token p50 {mixed['ttft_p50_ms']:.0f} ms, "
        f"p99 {mixed['ttft_p99_ms']:.0f} ms; {mixed['failed']} failed",
    )
    if mixed["failed"]:
        report.fail(f"HTTP mixed lengths: {mixed['failed']} requests failed")
    frontend.stop()


def shared_prefix(stack: Stack, service: str, report: Report) -> None:
    """First token of two chats sharing a ~2,000-token system prompt: computed, then found cached."""
    system = " ".join(f"Rule {n}: keep every answer short, kind and true." for n in range(58))
    with Client(stack.endpoint, timeout=600) as client:
        firsts, usages = [], []
        for question in ("Where is Paris?", "Where is Madrid?"):
            request = {"messages": [{"role": "system", "content": system}, {"role": "user", "content": question}],
                       "max_new_tokens": 8, "temperature": 0}
            started = time.perf_counter()
            pieces = client.stream(service, request)
            next(pieces)
            firsts.append(time.perf_counter() - started)
            usages.append(list(pieces)[-1]["usage"])
    cached = usages[1].get("prompt_tokens_details", {}).get("cached_tokens", 0)
    report.add(
        f"{service}, first token of a chat with a {usages[0]['prompt_tokens']}-token prompt",
        f"{firsts[0] * 1000:.1f} ms computed, {firsts[1] * 1000:.1f} ms with {cached} tokens of it cached "
        f"({firsts[0] / firsts[1]:.1f}x)",
    )
    if not cached:
        report.fail(f"{service}: the second chat found nothing of its prompt in the prefix cache")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--tokens", type=int, default=128, help="new tokens per answer")
    parser.add_argument("--runs", type=int, default=3, help="timed requests per kind, through the broker")
    parser.add_argument("--seconds", type=float, default=8.0, help="seconds of load per HTTP concurrency")
    parser.add_argument("--start-timeout", type=float, default=300.0, help="seconds a worker may take to be ready")
    parser.add_argument("--allow-cpu", action="store_true", help="run without a GPU (to try the script)")
    args = parser.parse_args()
    configure_logging(LoggingSettings(level="warning"), "gpu-check")
    started = time.perf_counter()
    gpu_name = cuda_name()
    if gpu_name is None and not args.allow_cpu:
        print("no CUDA device here: nothing to check (--allow-cpu runs the steps on the CPU)")
        return 2
    gpu = gpu_name is not None
    import torch
    import transformers

    print(f"GPU 0: {gpu_name or 'none, running on the CPU'}; torch {torch.__version__}, transformers {transformers.__version__}")
    report = Report()
    with tempfile.TemporaryDirectory() as scratch:
        tmp = Path(scratch)
        models = build_models(tmp, gpu)
        database, secret = accounts_database(tmp)
        stack = Stack(
            tmp,
            {
                "logging": {"level": "warning"},
                "broker": {"max_timeout": 600.0},
                "frontend": {"port": free_port(), "request_timeout": 300.0},
                "accounts": {"database_url": database},
            },
        )
        big = "1b" if gpu else "tiny"
        # Alone on the machine, before the workers start compiling.
        _step(report, "in-process reference", lambda: in_process_reference(models[big], min(args.tokens, 64), report))
        stack.broker()
        workers = start_workers(stack, models, gpu, max(max(HTTP_CLIENTS), max(REFERENCE_BATCHES)))
        try:
            for service, process in workers.items():
                _step(report, service, lambda: _check_worker(stack, service, process, args, gpu, report))
                if service.endswith("eager"):
                    process.stop()
            _step(report, "shared prefix", lambda: shared_prefix(stack, f"{big}-compiled", report))
            _step(report, "HTTP", lambda: over_http(stack, secret, f"{big}-compiled", args.tokens, args.seconds, report))
        finally:
            stack.stop()
    print(f"\nthe check took {time.perf_counter() - started:.0f} s on {gpu_name or 'the CPU'}\n")
    print(report.table())
    print("\nall checks passed" if not report.failures else "\nFAILED:\n  " + "\n  ".join(report.failures))
    return 1 if report.failures else 0


def _check_worker(stack: Stack, service: str, process: Process, args: argparse.Namespace, gpu: bool, report: Report) -> None:
    waited = time.perf_counter()
    worker = wait_ready(stack, service, process, args.start_timeout)
    print(f"\n{service}: {describe(worker)}; ready after {time.perf_counter() - waited:.0f} s more", flush=True)
    if gpu and not worker["device"].startswith("cuda"):
        report.fail(f"{service}: the model is on {worker['device']}, not the GPU")
    if service.endswith("compiled") and not worker["compiled"]:
        report.fail(f"{service}: compilation failed and the worker decodes eagerly (see its log)")
        print(process.log()[-3000:])
    through_broker(stack, service, args.tokens, args.runs, report)


def _step(report: Report, what: str, work) -> None:
    print(f"\n== {what}", flush=True)
    try:
        work()
    except (Exception, SystemExit) as exc:  # one failed step is reported, and the others still run
        report.fail(f"{what}: {type(exc).__name__}: {str(exc)[-2000:]}")


if __name__ == "__main__":
    sys.exit(main())
