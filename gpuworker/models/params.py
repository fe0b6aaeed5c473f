"""A text-generation request's fields, checked against the configured bounds.

Every rejection is an :class:`~broker.errors.InvalidInput` (wire code
INVALID_INPUT, HTTP 400) whose message names the field, the allowed range
and what was sent. Fields this module does not know are ignored, so a
frontend may pass a client's body through.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from typing import Any

from broker.errors import InvalidInput
from gpuworker.models.options import GenerationOptions

ROLES = ("system", "user", "assistant", "tool")
MAX_SEED = 2**63 - 1
MAX_TOP_LOGPROBS = 20
TOOL_CHOICES = ("none", "auto", "required")


@dataclass(frozen=True, slots=True)
class Tools:
    """Functions offered to the model (OpenAI ``function`` tools) and how it may use them:
    ``choice`` is ``auto`` (it may call one), ``required`` (it must call one) or the
    name of the one function it must call."""

    functions: tuple[dict[str, Any], ...]
    choice: str

    @property
    def names(self) -> list[str]:
        return [tool["function"]["name"] for tool in self.functions]

    @property
    def forced(self) -> tuple[dict[str, Any], ...]:
        """The functions a call is forced among (none when the model may answer in text)."""
        if self.choice == "auto":
            return ()
        if self.choice == "required":
            return self.functions
        return tuple(tool for tool in self.functions if tool["function"]["name"] == self.choice)


@dataclass(frozen=True, slots=True)
class Prompt:
    """What to continue: a chat (``messages``), one user turn (``text``) or raw text (``prompt``)."""

    messages: tuple[dict[str, str], ...] | None = None
    text: str | None = None
    raw: bool = False


@dataclass(frozen=True, slots=True)
class GenerationParams:
    """A checked request: the prompt and how to sample its continuation."""

    prompt: Prompt
    max_new_tokens: int | None  # none: the configured default, cut to fit the context
    temperature: float
    top_p: float
    stop: tuple[str, ...]
    seed: int | None
    # The JSON Schema the answer must be valid against ({} for any JSON object), if any.
    json_schema: dict[str, Any] | None = None
    tools: Tools | None = None
    # Alternatives to report with each token's log-probability (None: no log-probabilities).
    top_logprobs: int | None = None

    @property
    def greedy(self) -> bool:
        return self.temperature == 0


def parse_generation_request(request: dict[str, Any], options: GenerationOptions) -> GenerationParams:
    """The generation parameters of ``request``, defaults from ``options``, bounds enforced."""
    return GenerationParams(
        prompt=parse_prompt(request),
        max_new_tokens=_max_new_tokens(request, options),
        temperature=_number(request, "temperature", options.default_temperature, 0.0, options.max_temperature),
        top_p=_top_p(request, options.default_top_p),
        stop=_stop(request, options),
        seed=_seed(request),
        json_schema=_json_schema(request),
        tools=_tools(request),
        top_logprobs=_top_logprobs(request),
    )


def parse_prompt(request: dict[str, Any]) -> Prompt:
    given = [name for name in ("messages", "prompt", "text") if request.get(name) is not None]
    if len(given) != 1:
        raise InvalidInput(
            "the request needs exactly one of 'messages' (a chat), 'prompt' (raw text to continue) "
            f"or 'text' (one user message); it has {given or 'none'}"
        )
    (name,) = given
    if name == "messages":
        return Prompt(messages=_messages(request["messages"]))
    value = request[name]
    if not isinstance(value, str):
        raise InvalidInput(f"'{name}' must be a string")
    return Prompt(text=value, raw=name == "prompt")


def _messages(value: Any) -> tuple[dict[str, Any], ...]:
    if not isinstance(value, list) or not value:
        raise InvalidInput("'messages' must be a non-empty list of {\"role\", \"content\"} objects")
    return tuple(_message(index, message) for index, message in enumerate(value))


def _message(index: int, message: Any) -> dict[str, Any]:
    """One message as the chat template reads it; an assistant's tool calls and a tool's answer kept."""
    if not isinstance(message, dict):
        raise InvalidInput(f"messages[{index}] must be an object with 'role' and 'content'")
    role, content = message.get("role"), message.get("content")
    if role not in ROLES:
        raise InvalidInput(f"messages[{index}].role must be one of {', '.join(ROLES)} (got {role!r})")
    calls = message.get("tool_calls") if role == "assistant" else None
    if not isinstance(content, str) and not (calls and content is None):
        raise InvalidInput(f"messages[{index}].content must be a string")
    checked: dict[str, Any] = {"role": role, "content": content or ""}
    if calls:
        checked["tool_calls"] = [_tool_call(index, call) for call in calls]
    if role == "tool" and isinstance(message.get("tool_call_id"), str):
        checked["tool_call_id"] = message["tool_call_id"]
    return checked


def _tool_call(index: int, call: Any) -> dict[str, Any]:
    """An assistant's earlier call, with its arguments as an object, as chat templates expect."""
    function = call.get("function") if isinstance(call, dict) else None
    if not isinstance(function, dict) or not isinstance(function.get("name"), str):
        raise InvalidInput(f"messages[{index}].tool_calls must be function calls with a name")
    arguments = function.get("arguments", "{}")
    try:
        arguments = json.loads(arguments) if isinstance(arguments, str) else arguments
    except ValueError:
        raise InvalidInput(f"messages[{index}].tool_calls arguments must be a JSON object") from None
    called = {"name": function["name"], "arguments": arguments}
    return {"id": call.get("id", ""), "type": "function", "function": called}


def _max_new_tokens(request: dict[str, Any], options: GenerationOptions) -> int | None:
    new, alias = request.get("max_new_tokens"), request.get("max_tokens")
    if new is not None and alias is not None and new != alias:
        raise InvalidInput("'max_new_tokens' and its alias 'max_tokens' disagree; send one of them")
    name = "max_new_tokens" if new is not None else "max_tokens"
    return _integer(request, name, 0, options.max_new_tokens_limit)


def _integer(request: dict[str, Any], name: str, low: int, high: int) -> int | None:
    value = request.get(name)
    if value is None:
        return None
    if not isinstance(value, int) or isinstance(value, bool) or not low <= value <= high:
        raise InvalidInput(f"'{name}' must be an integer from {low} to {high} (got {value!r})")
    return value


def _number(request: dict[str, Any], name: str, default: float, low: float, high: float) -> float:
    value = request.get(name)
    if value is None:
        return default
    if (
        not isinstance(value, (int, float))
        or isinstance(value, bool)
        or not math.isfinite(value)
        or not low <= value <= high
    ):
        raise InvalidInput(f"'{name}' must be a number from {low:g} to {high:g} (got {value!r})")
    return float(value)


def _top_p(request: dict[str, Any], default: float) -> float:
    top_p = _number(request, "top_p", default, 0.0, 1.0)
    if top_p == 0:
        raise InvalidInput("'top_p' must be greater than 0 and at most 1 (got 0)")
    return top_p


def _stop(request: dict[str, Any], options: GenerationOptions) -> tuple[str, ...]:
    value = request.get("stop")
    if value is None:
        return ()
    stops = [value] if isinstance(value, str) else value
    if not isinstance(stops, list) or not all(isinstance(s, str) and s for s in stops):
        raise InvalidInput("'stop' must be a non-empty string or a list of non-empty strings")
    if len(stops) > options.max_stop_strings:
        raise InvalidInput(f"'stop' may hold at most {options.max_stop_strings} strings (got {len(stops)})")
    for stop in stops:
        if len(stop) > options.max_stop_chars:
            raise InvalidInput(
                f"each 'stop' string may be at most {options.max_stop_chars} characters (got {len(stop)})"
            )
    return tuple(dict.fromkeys(stops))


def _json_schema(request: dict[str, Any]) -> dict[str, Any] | None:
    """``response_format``: none or text, any JSON object, or JSON valid against a schema."""
    value = request.get("response_format")
    if value is None or value == {"type": "text"}:
        return None
    if value == {"type": "json_object"}:
        return {"type": "object"}
    schema = value.get("json_schema", {}).get("schema") if isinstance(value, dict) else None
    if not (isinstance(value, dict) and value.get("type") == "json_schema" and isinstance(schema, dict)):
        raise InvalidInput(
            "'response_format' must be {\"type\": \"text\"}, {\"type\": \"json_object\"} or "
            "{\"type\": \"json_schema\", \"json_schema\": {\"schema\": {...}}}"
        )
    return schema


def _tools(request: dict[str, Any]) -> Tools | None:
    tools, choice = request.get("tools"), request.get("tool_choice", "auto")
    if not tools or choice == "none":
        return None
    if not isinstance(tools, list) or not all(_is_function(tool) for tool in tools):
        raise InvalidInput(
            "'tools' must be a list of {\"type\": \"function\", \"function\": {\"name\", \"parameters\"}}"
        )
    if isinstance(choice, dict):
        choice = (choice.get("function") or {}).get("name")
        if choice not in [tool["function"]["name"] for tool in tools]:
            raise InvalidInput("'tool_choice' names a function that is not among 'tools'")
    elif choice not in TOOL_CHOICES:
        raise InvalidInput(f"'tool_choice' must be one of {', '.join(TOOL_CHOICES)} or a named function")
    return Tools(tuple(tools), choice)


def _is_function(tool: Any) -> bool:
    function = tool.get("function") if isinstance(tool, dict) else None
    return (
        tool.get("type") == "function"
        and isinstance(function, dict)
        and isinstance(function.get("name"), str)
        and isinstance(function.get("parameters", {}), dict)
    )


def _top_logprobs(request: dict[str, Any]) -> int | None:
    if not request.get("logprobs"):
        return None
    return _integer(request, "top_logprobs", 0, MAX_TOP_LOGPROBS) or 0


def _seed(request: dict[str, Any]) -> int | None:
    value = request.get("seed")
    if value is None:
        return None
    if not isinstance(value, int) or isinstance(value, bool) or not 0 <= value <= MAX_SEED:
        raise InvalidInput(f"'seed' must be an integer from 0 to {MAX_SEED} (got {value!r})")
    return value
