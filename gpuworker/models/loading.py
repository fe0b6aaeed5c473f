"""Loading a model and its tokenizer once: where from, onto which device, in which dtype."""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import structlog
import torch

from gpuworker.models.options import ModelOptions

log = structlog.get_logger(__name__)

DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


class ModelLoadError(Exception):
    """The model or its tokenizer cannot be found or loaded."""


class Pretrained(Protocol):
    """What :func:`load_model` builds a model with: a transformers auto class (``AutoModel``, say)."""

    def from_pretrained(self, location: str, /, *args: Any, **kwargs: Any) -> Any: ...


@dataclass(frozen=True, slots=True)
class ModelSource:
    """What ``from_pretrained`` is given: a local directory or a hub name, and the name shown in status.

    ``max_tokens`` is the longest input the model was trained on, where that is
    shorter than its configuration says; none means the configuration's.
    """

    location: str
    name: str
    local: bool
    max_tokens: int | None = None


def select_device(name: str) -> torch.device:
    """The device named in the options; ``auto`` is the first visible GPU if CUDA is usable, else the CPU.

    A worker started with ``--gpu N`` sees only GPU N, as ``cuda:0``.
    """
    if name == "auto":
        return torch.device("cuda:0" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(name)
    except RuntimeError:
        raise ModelLoadError(f"unknown device {name!r}") from None
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ModelLoadError(f"device {name!r} was asked for but CUDA is not available")
    return device


def set_cpu_threads(threads: int | None) -> None:
    """Limit torch's intra-op threads (one process per worker, so this is the worker's setting).

    Small models on shared CPUs run faster on fewer threads.
    """
    if threads is not None:
        torch.set_num_threads(threads)


def select_dtype(name: str, device: torch.device) -> torch.dtype:
    """The dtype named in the options; ``auto`` is bfloat16 on GPUs that have it, float16 on
    other GPUs, and float32 on CPU (where half precision is slower, not faster)."""
    if name != "auto":
        return DTYPES[name]
    if device.type == "cuda":
        return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
    if device.type == "mps":
        return torch.float16
    return torch.float32


def locate(model: str) -> ModelSource:
    """A local directory when ``model`` is one, else a hub name."""
    path = Path(model).expanduser()
    if path.is_dir():
        return ModelSource(str(path.resolve()), path.name, local=True)
    if model.startswith(("/", "./", "../", "~")) or path.suffix == ".gguf":
        raise ModelLoadError(f"model directory {model!r} does not exist")
    return ModelSource(model, model, local=False)


def pretrained_kwargs(options: ModelOptions, source: ModelSource) -> dict[str, Any]:
    """Keyword arguments shared by the tokenizer's and the model's ``from_pretrained``."""
    kwargs: dict[str, Any] = {"trust_remote_code": options.trust_remote_code}
    if not source.local:
        kwargs["local_files_only"] = options.offline
        if options.revision is not None:
            kwargs["revision"] = options.revision
    return kwargs


def load_tokenizer(source: ModelSource, options: ModelOptions) -> Any:
    from transformers import AutoTokenizer

    try:
        return AutoTokenizer.from_pretrained(source.location, **pretrained_kwargs(options, source))
    except (OSError, ValueError) as exc:
        raise ModelLoadError(_explain("tokenizer", source, options, exc)) from exc


def load_model(
    auto_class: Pretrained, source: ModelSource, options: ModelOptions, device: torch.device, dtype: torch.dtype
) -> Any:
    """``auto_class.from_pretrained`` on ``device`` in ``dtype``, in eval mode, with timing logged."""
    started = time.perf_counter()
    log.info("model_loading", model=source.name, location=source.location, device=str(device), dtype=str(dtype))
    try:
        # device_map puts the weights straight onto the device, without a full copy in host memory first.
        model = auto_class.from_pretrained(
            source.location, dtype=dtype, device_map=str(device), **pretrained_kwargs(options, source)
        )
    except (OSError, ValueError) as exc:
        raise ModelLoadError(_explain("model", source, options, exc)) from exc
    model.eval()
    log.info("model_loaded", model=source.name, seconds=round(time.perf_counter() - started, 3), **weights_info(model))
    return model


class ResidentModel:
    """A model and its tokenizer, loaded once onto their device: the sequence every built-in
    model algorithm starts its life with (CPU threads, device, dtype, tokenizer, weights)."""

    def __init__(self, auto_class: Pretrained, source: ModelSource, options: ModelOptions) -> None:
        set_cpu_threads(options.cpu_threads)
        self.source = source
        self.device = select_device(options.device)
        self.dtype = select_dtype(options.dtype, self.device)
        self.tokenizer = load_tokenizer(source, options)
        self.model = load_model(auto_class, source, options, self.device, self.dtype)

    def describe_model(self) -> dict[str, Any]:
        """Model, device, dtype and size, as the broker's status service shows them."""
        return {
            "model": self.source.name,
            **device_info(self.device),
            "dtype": str(self.dtype).removeprefix("torch."),
            **weights_info(self.model),
        }


def _explain(what: str, source: ModelSource, options: ModelOptions, exc: Exception) -> str:
    where = f"from {source.location}" if source.local else "from the hub"
    message = f"cannot load the {what} of {source.name!r} {where}: {exc}"
    if not source.local and options.offline:
        message += " (offline: hub names load from the local cache only)"
    return message


def weights_info(model: Any) -> dict[str, int]:
    """Parameter count and bytes held by the weights."""
    parameters = list(model.parameters())
    return {
        "parameters": sum(p.numel() for p in parameters),
        "weights_bytes": sum(p.numel() * p.element_size() for p in parameters),
    }


def context_length(config: Any, tokenizer: Any, fallback: int = 2048) -> int:
    """The longest sequence the model takes: its position embeddings, else the tokenizer's limit."""
    for name in ("max_position_embeddings", "n_positions", "max_sequence_length", "seq_length"):
        value = getattr(config, name, None)
        if isinstance(value, int) and value > 0:
            return value
    limit = getattr(tokenizer, "model_max_length", None)
    if isinstance(limit, int) and 0 < limit < 1_000_000:
        return limit
    return fallback


def device_info(device: torch.device) -> dict[str, Any]:
    """The device as status shows it, with the GPU's name and total memory where there is one."""
    info: dict[str, Any] = {"device": str(device)}
    if device.type == "cuda":
        properties = torch.cuda.get_device_properties(device)
        info["gpu_name"] = properties.name
        info["gpu_total_memory_bytes"] = int(properties.total_memory)
    return info
