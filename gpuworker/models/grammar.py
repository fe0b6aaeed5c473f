"""The grammar of one forced tool call, in the Hermes format this worker's prompts use,
built for llguidance (JSON answers' grammar is the contract's, shared with frontends)."""

from __future__ import annotations

import json
from typing import Any

from broker.contract.grammar import COMPACT_JSON
from gpuworker.models.tools import CLOSE, OPEN


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
    call = json.dumps({"anyOf": calls, "x-guidance": COMPACT_JSON})
    lark = f'start: "{OPEN}\\n" call "\\n{CLOSE}"\ncall: %json {call}'
    return llguidance.grammar_from("lark", lark)
