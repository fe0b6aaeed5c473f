"""The grammar of JSON valid against a schema, built for llguidance. Pure text (no model, no
torch), so that a frontend checks a request's schemas before admitting it with the very
grammar a worker will enforce."""

from __future__ import annotations

import json
from typing import Any

# Compact JSON: the model cannot pad an answer with whitespace.
COMPACT_JSON = {"whitespace_flexible": False, "item_separator": ", ", "key_separator": ": "}


def json_schema_grammar(schema: dict[str, Any]) -> str:
    """The grammar of JSON documents valid against ``schema``."""
    import llguidance

    grammar: str = llguidance.grammar_from("json_schema", json.dumps({**schema, "x-guidance": COMPACT_JSON}))
    return grammar


def grammar_problem(grammar: str) -> str | None:
    """Why ``grammar`` cannot be used (an unsupported keyword, say), or None."""
    from llguidance import LLMatcher

    failed, messages = LLMatcher.validate_grammar_with_warnings(grammar)
    if not (failed or messages):
        return None
    return "; ".join(messages) or "invalid grammar"
