"""A text-generation request as the wire carries it, from a frontend or a direct client to a
worker: built by the frontend from any of its HTTP bodies (chat, completions, responses), and
validated once, by the worker, with :meth:`GenerationRequest.from_wire`; and what the worker
answers: a :class:`GenerationResult` (streamed: :class:`GenerationPiece` pieces, then a result
without ``output``), which the frontend formats.

The shapes and fixed bounds are here; the bounds a worker configures (the longest answer,
the hottest temperature, how many stop strings) are checked by the worker against its own
options. Fields this contract does not know are ignored, so a newer frontend may send a field
an older worker does not read; a new field is always optional, with the old behaviour as its
default.
"""

from __future__ import annotations

import json
import math
from typing import Annotated, Any, Literal

from pydantic import Field, field_validator, model_validator

from broker.contract.wire import Answer, Wire, WireRequest

MAX_SEED = 2**63 - 1
MAX_TOP_LOGPROBS = 20


class CalledFunction(Wire):
    name: str
    # OpenAI sends arguments as a JSON string; chat templates read them as an object.
    arguments: dict[str, Any] = Field(default_factory=dict)

    @field_validator("arguments", mode="before")
    @classmethod
    def _parsed(cls, value: Any) -> Any:
        if isinstance(value, str):
            try:
                return json.loads(value)
            except ValueError:
                raise ValueError("the arguments must be a JSON object") from None
        return value


class ToolCall(Wire):
    """An assistant's earlier call of a function."""

    id: str = ""
    type: Literal["function"] = "function"
    function: CalledFunction


class Message(Wire):
    role: Literal["system", "user", "assistant", "tool"]
    content: str | None = None
    tool_calls: list[ToolCall] | None = None
    tool_call_id: str | None = None

    @model_validator(mode="after")
    def _has_content(self) -> Message:
        if self.content is None and not (self.role == "assistant" and self.tool_calls):
            raise ValueError("a message needs a string 'content' (only an assistant's tool calls may omit it)")
        return self

    def for_template(self) -> dict[str, Any]:
        """The message as chat templates read it: an assistant's calls and a tool's call id kept."""
        message: dict[str, Any] = {"role": self.role, "content": self.content or ""}
        if self.role == "assistant" and self.tool_calls:
            message["tool_calls"] = [call.model_dump() for call in self.tool_calls]
        if self.role == "tool" and self.tool_call_id is not None:
            message["tool_call_id"] = self.tool_call_id
        return message


class FunctionSpec(Wire):
    name: str
    description: str | None = None
    parameters: dict[str, Any] | None = None


class Tool(Wire):
    """A function offered to the model (an OpenAI ``function`` tool)."""

    type: Literal["function"]
    function: FunctionSpec


class FunctionName(Wire):
    name: str


class NamedToolChoice(Wire):
    type: Literal["function"] = "function"
    function: FunctionName


class JsonSchema(Wire):
    name: str | None = None
    schema_: dict[str, Any] = Field(alias="schema")


class ResponseFormat(Wire):
    type: Literal["text", "json_object", "json_schema"]
    json_schema: JsonSchema | None = None

    @model_validator(mode="after")
    def _schema_given(self) -> ResponseFormat:
        check_schema_given(self.type, self.json_schema)
        return self


def check_schema_given(kind: str, schema: object | None) -> None:
    """A response format has its schema with, and only with, type json_schema."""
    if (kind == "json_schema") != (schema is not None):
        raise ValueError("'json_schema' is given with, and only with, type json_schema")


NonEmpty = Annotated[str, Field(min_length=1)]


class GenerationRequest(WireRequest):
    """What to continue, exactly one of a chat (``messages``), one user turn (``text``) or raw
    text (``prompt``), and how to sample its continuation."""

    messages: Annotated[list[Message], Field(min_length=1)] | None = None
    text: str | None = None
    prompt: str | None = None
    # The answer's token budget (the Django server's clients call it max_new_tokens).
    max_tokens: Annotated[int, Field(ge=0)] | None = None
    max_new_tokens: Annotated[int, Field(ge=0)] | None = None
    temperature: Annotated[float, Field(ge=0)] | None = None
    top_p: Annotated[float, Field(gt=0, le=1)] | None = None
    stop: NonEmpty | list[NonEmpty] | None = None
    seed: Annotated[int, Field(ge=0, le=MAX_SEED)] | None = None
    response_format: ResponseFormat | None = None
    tools: list[Tool] | None = None
    tool_choice: Literal["none", "auto", "required"] | NamedToolChoice = "auto"
    # True, or (as older completions clients send it) a count of alternatives: any but 0 is True.
    logprobs: bool | Annotated[int, Field(ge=0)] = False
    top_logprobs: Annotated[int, Field(ge=0, le=MAX_TOP_LOGPROBS)] | None = None

    @model_validator(mode="after")
    def _consistent(self) -> GenerationRequest:
        self.check_one_of({"messages": "a chat", "prompt": "raw text to continue", "text": "one user message"})
        if None not in (self.max_tokens, self.max_new_tokens) and self.max_tokens != self.max_new_tokens:
            raise ValueError("'max_new_tokens' and its alias 'max_tokens' disagree; send one of them")
        if isinstance(self.tool_choice, NamedToolChoice) and self.tool_choice.function.name not in self.tool_names:
            raise ValueError("'tool_choice' names a function that is not among 'tools'")
        return self

    @property
    def token_budget(self) -> int | None:
        return self.max_tokens if self.max_tokens is not None else self.max_new_tokens

    @property
    def stops(self) -> list[str]:
        return [self.stop] if isinstance(self.stop, str) else list(self.stop or ())

    @property
    def tool_names(self) -> list[str]:
        return [tool.function.name for tool in self.tools or ()]

    @property
    def offered_tools(self) -> list[Tool]:
        """The tools the prompt shows the model (none when ``tool_choice`` is ``none``)."""
        return [] if self.tool_choice == "none" else list(self.tools or ())

    @property
    def json_schema(self) -> dict[str, Any] | None:
        """The JSON Schema the answer must be valid against ({} for any JSON object), if any."""
        form = self.response_format
        if form is None or form.type == "text":
            return None
        if form.type == "json_object":
            return {"type": "object"}
        assert form.json_schema is not None
        return form.json_schema.schema_

    @property
    def text_length(self) -> int:
        """The characters of the prompt's texts."""
        if self.messages is None:
            return len(self.text or self.prompt or "")
        return sum(len(message.content or "") for message in self.messages)


# -- answers -----------------------------------------------------------------------------------


def count_or_unknown(value: Any) -> int | None:
    """``value`` when it is a count (a whole number, not a bool, not negative), else None: unknown."""
    return value if isinstance(value, int) and not isinstance(value, bool) and value >= 0 else None


class Usage(Answer):
    prompt_tokens: int | None = None
    completion_tokens: int | None = None
    # Of the prompt's tokens, those the worker took from its prefix cache (OpenAI's name).
    prompt_tokens_details: CachedTokens | None = None
    # The request's share of its worker's device time (gpuworker.models.device_time).
    gpu_seconds: float | None = None
    # Of a migrated stream, the tokens an earlier worker streamed that this one went on from:
    # its gpu_seconds are this worker's alone (the frontend adds the earlier workers').
    resumed_tokens: int | None = None

    @field_validator("gpu_seconds", mode="before")
    @classmethod
    def _measured(cls, value: Any) -> float | None:
        """A time that is no finite count of seconds is unknown, and the tokens beside it stay billed."""
        number = isinstance(value, int | float) and not isinstance(value, bool)
        return float(value) if number and 0 <= value < math.inf else None

    @field_validator("resumed_tokens", mode="before")
    @classmethod
    def _count(cls, value: Any) -> int | None:
        """A count that is no count is unknown: the tokens and time beside it stay billed."""
        return count_or_unknown(value)

    @property
    def cached_tokens(self) -> int | None:
        return None if self.prompt_tokens_details is None else self.prompt_tokens_details.cached_tokens


class CachedTokens(Answer):
    cached_tokens: int


class AlternativeLogprob(Answer):
    token: str
    logprob: float
    bytes: list[int] | None = None


class TokenLogprob(AlternativeLogprob):
    """A token of the answer, its log-probability and the most likely alternatives."""

    top_logprobs: list[AlternativeLogprob] = Field(default_factory=list)


class MadeCall(Answer):
    """A function call the model made, as OpenAI shows it (its arguments a JSON string)."""

    id: str
    type: Literal["function"] = "function"
    function: MadeFunctionCall


class MadeFunctionCall(Answer):
    name: str
    arguments: str


class Timing(Answer):
    """The worker's own timing of the request, in milliseconds, for the frontends' metrics."""

    deadline_left_ms: float
    first_token_ms: float
    decode_ms: float

    def queue_seconds(self, timeout: float) -> float:
        """How long the request waited for its worker, from the ``timeout`` (seconds) it was sent with."""
        return max(0.0, timeout - self.deadline_left_ms / 1000)

    def first_token_seconds(self, timeout: float) -> float:
        """From the request's arrival to its first token."""
        return self.queue_seconds(timeout) + self.first_token_ms / 1000


class GenerationPiece(Answer):
    """One piece of a streamed answer; usage so far rides on each, so that a stream cut short
    is billed for what reached the frontend."""

    text: str = ""
    usage: Usage | None = None
    logprobs: list[TokenLogprob] | None = None


class GenerationResult(Answer):
    """A whole answer, or a stream's closing summary (whose text was in its pieces)."""

    output: str = ""
    finish_reason: str | None = None
    usage: Usage = Field(default_factory=Usage)
    tool_calls: list[MadeCall] | None = None
    logprobs: list[TokenLogprob] | None = None
    # Why the worker cut the answer short ("deadline", "cancelled"), if it did.
    interrupted: str | None = None
    timing: Timing | None = None

    @field_validator("interrupted", mode="before")
    @classmethod
    def _any_reason(cls, value: Any) -> str | None:
        """Any true value says the answer was cut short, whatever an algorithm calls it."""
        return (value if isinstance(value, str) else str(value)) if value else None
