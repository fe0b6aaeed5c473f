"""Tool calls in a model's output: finding them, and holding them out of the streamed text.

Models of the Hermes and Qwen families (and others trained on their format)
write each call as ``<tool_call>{"name": ..., "arguments": {...}}</tool_call>``.
A model without that training may answer a call as a bare JSON object
``{"name": ..., "arguments": {...}}`` (or a list of them): that is accepted
too, when it is the whole answer and names one of the offered tools.
:func:`parse` splits an answer into its text and its calls;
:class:`CallSplitter` lets the text before the first call stream while the
calls themselves are held for the end.
"""

from __future__ import annotations

import json
import re
import uuid
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

OPEN = "<tool_call>"
CLOSE = "</tool_call>"
_BLOCK = re.compile(re.escape(OPEN) + r"\s*(.*?)\s*(?:" + re.escape(CLOSE) + r"|$)", re.DOTALL)


@dataclass(frozen=True, slots=True)
class ToolCall:
    """One call: the function's name and its arguments as a JSON text (as OpenAI's API carries them)."""

    name: str
    arguments: str
    id: str = ""

    def as_openai(self) -> dict[str, Any]:
        return {"id": self.id, "type": "function", "function": {"name": self.name, "arguments": self.arguments}}


def parse(text: str, tool_names: Iterable[str]) -> tuple[str, list[ToolCall]]:
    """The text of ``text`` outside any call, and the calls to one of ``tool_names`` it holds."""
    names = set(tool_names)
    if OPEN in text:
        calls = [call for block in _BLOCK.findall(text) if (call := _call(block, names)) is not None]
        if calls:
            return text[: text.index(OPEN)].strip(), calls
    bare = _bare_calls(text.strip(), names)
    return ("", bare) if bare else (text, [])


def _bare_calls(text: str, names: set[str]) -> list[ToolCall]:
    if not text.startswith(("{", "[")):
        return []
    try:
        value = json.loads(text)
    except ValueError:
        return []
    items = value if isinstance(value, list) else [value]
    calls = [_from_object(item, names) for item in items]
    return [call for call in calls if call is not None] if all(calls) else []


def _call(block: str, names: set[str]) -> ToolCall | None:
    try:
        return _from_object(json.loads(block), names)
    except ValueError:
        return None


def _from_object(value: Any, names: set[str]) -> ToolCall | None:
    if not isinstance(value, dict) or value.get("name") not in names:
        return None
    arguments = value.get("arguments", value.get("parameters", {}))
    if isinstance(arguments, str):
        try:
            arguments = json.loads(arguments)
        except ValueError:
            return None
    if not isinstance(arguments, dict):
        return None
    return ToolCall(value["name"], json.dumps(arguments, ensure_ascii=False), f"call_{uuid.uuid4().hex[:24]}")


class CallSplitter:
    """Passes streamed text on until a call may begin; what follows is held for :func:`parse`.

    Text that could be the start of ``<tool_call>`` is held until it is clear.
    """

    def __init__(self) -> None:
        self.calling = False
        self._held = ""

    def feed(self, text: str) -> str:
        """The part of ``text`` that is plain content, safe to stream now."""
        if self.calling:
            return ""
        pending = self._held + text
        if OPEN in pending:
            self.calling = True
            self._held = ""
            return pending[: pending.index(OPEN)]
        sizes = range(min(len(OPEN) - 1, len(pending)), 0, -1)
        keep = next((size for size in sizes if pending.endswith(OPEN[:size])), 0)
        self._held = pending[len(pending) - keep:]
        return pending[: len(pending) - keep]

    def flush(self) -> str:
        held, self._held = ("" if self.calling else self._held), ""
        return held
