"""The grammars of structured answers, built for llguidance: JSON valid against a schema,
and one forced tool call. Pure text (no model, no torch), so that frontends can check a
request's schemas before admitting it, with the very grammar a worker will enforce."""

from __future__ import annotations

import json
from typing import Any

from gpuworker.models.tools import CLOSE, OPEN

# Compact JSON: the model cannot pad an answer with whitespace.
_COMPACT = {"whitespace_flexible": False, "item_separator": ", ", "key_separator": ": "}


def json_schema_grammar(schema: dict[str, Any]) -> str:
    """The grammar of JSON documents valid against ``schema``."""
    import llguidance

    return llguidance.grammar_from("json_schema", json.dumps({**schema, "x-guidance": _COMPACT}))


def tool_call_grammar(tools: list[dict[str, Any]]) -> str:
    """The grammar of one Hermes-format call to one of ``tools`` (OpenAI ``function`` tools),
    its arguments valid against that function's parameters."""
    import llguidance

    calls = [
        {
            "type": "object",
            "properties": {
                "name": {"const": tool["function"]["name"]},
                "arguments": tool["function"].get("parameters") or {"type": "object"},
            },
            "required": ["name", "arguments"],
            "additionalProperties": False,
        }
        for tool in tools
    ]
    call = json.dumps({"anyOf": calls, "x-guidance": _COMPACT})
    lark = f'start: "{OPEN}\\n" call "\\n{CLOSE}"\ncall: %json {call}'
    return llguidance.grammar_from("lark", lark)


def grammar_problem(grammar: str) -> str | None:
    """Why ``grammar`` cannot be used (an unsupported keyword, say), or None."""
    from llguidance import LLMatcher

    failed, messages = LLMatcher.validate_grammar_with_warnings(grammar)
    if not (failed or messages):
        return None
    return "; ".join(messages) or "invalid grammar"
