"""A generation request (the wire's :class:`~broker.contract.generation.GenerationRequest`)
as the decoder's parameters, within this worker's configured bounds.

The request's shape is checked once, by the contract; here only what this worker
configures: the longest answer, the hottest temperature, how many stop strings and how
long. A rejection is an :class:`~broker.errors.InvalidInput` (wire code INVALID_INPUT,
HTTP 400) whose message names the field, the allowed range and what was sent.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from broker.contract.generation import GenerationRequest
from broker.errors import InvalidInput
from gpuworker.models.options import GenerationOptions


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

    messages: tuple[dict[str, Any], ...] | None = None
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
    # The caller's key's limits this worker judges (the contract's key_limits).
    key_limits: Mapping[str, int] = field(default_factory=dict)

    @property
    def greedy(self) -> bool:
        return self.temperature == 0


def generation_params(payload: Any, options: GenerationOptions) -> GenerationParams:
    """The parameters of the request ``payload``, defaults from ``options``, bounds enforced."""
    request = GenerationRequest.from_wire(payload)
    return GenerationParams(
        prompt=prompt_of(request),
        max_new_tokens=_bounded("max_new_tokens" if request.max_new_tokens is not None else "max_tokens",
                                request.token_budget, options.max_new_tokens_limit),
        temperature=_temperature(request, options),
        top_p=options.default_top_p if request.top_p is None else request.top_p,
        stop=_stops(request, options),
        seed=request.seed,
        json_schema=request.json_schema,
        tools=_tools(request),
        top_logprobs=(request.top_logprobs or 0) if request.logprobs else None,
        key_limits=request.key_limits,
    )


def prompt_of(request: GenerationRequest) -> Prompt:
    if request.messages is not None:
        return Prompt(messages=tuple(message.for_template() for message in request.messages))
    if request.prompt is not None:
        return Prompt(text=request.prompt, raw=True)
    return Prompt(text=request.text)


def _bounded(name: str, value: int | None, high: int) -> int | None:
    if value is not None and value > high:
        raise InvalidInput(f"'{name}' must be an integer from 0 to {high} (got {value!r})")
    return value


def _temperature(request: GenerationRequest, options: GenerationOptions) -> float:
    if request.temperature is None:
        return options.default_temperature
    if request.temperature > options.max_temperature:
        raise InvalidInput(
            f"'temperature' must be a number from 0 to {options.max_temperature:g} (got {request.temperature:g})"
        )
    return request.temperature


def _stops(request: GenerationRequest, options: GenerationOptions) -> tuple[str, ...]:
    stops = request.stops
    if len(stops) > options.max_stop_strings:
        raise InvalidInput(f"'stop' may hold at most {options.max_stop_strings} strings (got {len(stops)})")
    for stop in stops:
        if len(stop) > options.max_stop_chars:
            raise InvalidInput(
                f"each 'stop' string may be at most {options.max_stop_chars} characters (got {len(stop)})"
            )
    return tuple(dict.fromkeys(stops))


def _tools(request: GenerationRequest) -> Tools | None:
    offered = request.offered_tools
    if not offered:
        return None
    choice = request.tool_choice
    name = choice if isinstance(choice, str) else choice.function.name
    return Tools(tuple(tool.model_dump(exclude_none=True) for tool in offered), name)
