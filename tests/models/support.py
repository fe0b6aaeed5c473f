"""Helpers for driving algorithms in-process as the worker's task runner does."""

from __future__ import annotations

import time
import uuid
from collections.abc import Iterator
from typing import Any

from gpuworker.algorithm import TaskContext


def task(seconds: float = 60.0) -> TaskContext:
    """A fresh task context with a deadline ``seconds`` from now."""
    return TaskContext(uuid.uuid4().hex, time.monotonic() + seconds)


def drain(stream: Iterator[Any]) -> tuple[list[Any], Any]:
    """Every piece of a ``stream()`` generator, and the summary it returns."""
    pieces = []
    while True:
        try:
            pieces.append(next(stream))
        except StopIteration as end:
            return pieces, end.value


def joined(pieces: list[dict[str, Any]]) -> str:
    return "".join(piece["text"] for piece in pieces)


RUN_TO_RUN_USAGE = ("prompt_tokens_details", "gpu_seconds")


def answer_of(result: dict[str, Any]) -> dict[str, Any]:
    """A result without what differs from run to run: the worker's ``timing``, how many of its
    prompt tokens it found in the prefix cache, and the device time it took."""
    answer = {name: value for name, value in result.items() if name != "timing"}
    if isinstance(answer.get("usage"), dict):
        answer["usage"] = {name: value for name, value in answer["usage"].items() if name not in RUN_TO_RUN_USAGE}
    return answer
