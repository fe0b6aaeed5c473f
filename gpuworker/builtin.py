"""Algorithms that need no model, for tests, benchmarks and smoke checks."""

from __future__ import annotations

from collections.abc import Generator
from typing import Any

from broker.errors import InvalidInput
from gpuworker.algorithm import TaskContext


def _text_of(request: dict[str, Any]) -> str:
    text = request.get("text")
    if not isinstance(text, str):
        raise InvalidInput("the request needs a string field 'text'")
    return text


class EchoAlgorithm:
    """Answers ``{"output": text}``; streams the text word by word."""

    def __init__(self, logger: Any = None, model_names: list[str] | None = None) -> None:
        self.model_names = model_names or []

    def describe(self) -> dict[str, Any]:
        return {"model": "echo", "device": "cpu"}

    def handle(self, request: dict[str, Any], context: TaskContext) -> dict[str, Any]:
        return {"output": _text_of(request)}

    def stream(self, request: dict[str, Any], context: TaskContext) -> Generator[dict[str, Any], None, dict[str, Any]]:
        for word in _text_of(request).split(" "):
            if context.cancelled.is_set():
                return {"finish_reason": "cancelled"}
            yield {"text": word}
        return {"finish_reason": "stop"}


class SleepAlgorithm:
    """Sleeps ``sleep_ms`` (default ``ms``) then echoes: a stand-in for a slow GPU task.

    ``ms`` is the default duration and ``max_ms`` the longest a request may
    ask for. A cancelled task stops sleeping at once.
    """

    def __init__(
        self, logger: Any = None, model_names: list[str] | None = None, ms: int = 50, max_ms: int = 60_000
    ) -> None:
        self.ms = ms
        self.max_ms = max_ms

    def describe(self) -> dict[str, Any]:
        return {"model": f"sleep-{self.ms}ms", "device": "cpu"}

    def handle(self, request: dict[str, Any], context: TaskContext) -> dict[str, Any]:
        text = _text_of(request)
        ms = request.get("sleep_ms", self.ms)
        if not isinstance(ms, int) or isinstance(ms, bool) or not 0 <= ms <= self.max_ms:
            raise InvalidInput(f"sleep_ms must be an integer from 0 to {self.max_ms}")
        finished = not context.cancelled.wait(ms / 1000)
        return {"output": text, "slept_ms": ms, "finished": finished}
