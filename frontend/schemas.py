"""The HTTP API's request and response bodies as typed models.

They are the one source for validating requests (an error names the
offending field as OpenAI's ``param``), for the worker request each one
becomes, and for ``/openapi.json``. Responses are built as plain dicts on
the hot path (``frontend.openai_format``); the response models here
describe them, and the tests check every answer against them and against
OpenAI's own specification.

OpenAI request fields fall in three groups:

* used: ``model``, ``messages``/``prompt``/``input``, ``max_tokens``
  (``max_completion_tokens``), ``temperature``, ``top_p``, ``n``,
  ``stream``, ``stream_options``, ``stop``, ``seed``, ``encoding_format``;
* accepted and ignored, because they cannot change the answer
  (:data:`IGNORED`): ``user``, ``metadata``, ``service_tier``,
  ``parallel_tool_calls``, and a message's ``name``;
* accepted only with the value that means "not used" (the ``NEUTRAL``
  tables, per endpoint), such as ``store: false``, ``tool_choice: "none"``,
  ``modalities: ["text"]``, zero penalties, or null; any other value, and
  any other field, is refused with a 400 that names it.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from frontend import errors

IGNORED = ("user", "metadata", "service_tier", "parallel_tool_calls")

# Field -> the values that mean "not used" (null always does): accepted, and ignored, only with one of them.
CHAT_NEUTRAL: dict[str, tuple[Any, ...]] = {
    "store": (False,),
    "tool_choice": ("none",),
    "tools": ([],),
    "functions": ([],),
    "function_call": ("none",),
    "modalities": (["text"],),
    "response_format": ({"type": "text"},),
    "logprobs": (False,),
    "top_logprobs": (0,),
    "logit_bias": ({},),
    "presence_penalty": (0,),
    "frequency_penalty": (0,),
    "audio": (),
    "prediction": (),
    "reasoning_effort": (),
    "verbosity": (),
    "web_search_options": (),
}
COMPLETION_NEUTRAL: dict[str, tuple[Any, ...]] = {
    "best_of": (1,),
    "echo": (False,),
    "suffix": ("",),
    "logprobs": (),
    "logit_bias": ({},),
    "presence_penalty": (0,),
    "frequency_penalty": (0,),
}
EMBEDDING_NEUTRAL: dict[str, tuple[Any, ...]] = {"dimensions": ()}

Text = Annotated[str, Field(max_length=1_000_000)]
Stop = str | Annotated[list[Annotated[str, Field(min_length=1)]], Field(min_length=1, max_length=4)]


class _Body(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True)


def _neutral(body: dict[str, Any], neutral: dict[str, tuple[Any, ...]]) -> dict[str, Any]:
    """``body`` without the neutral fields it may carry; ApiError for a non-neutral one."""
    for name, values in neutral.items():
        value = body.get(name)
        if value is not None and not any(value == v and type(value) is not bool or value is v for v in values):
            raise errors.unsupported_parameter(name, f"'{name}' = {value!r} is not supported by this server")
    return {name: value for name, value in body.items() if name not in neutral}


# -- /api/ -----------------------------------------------------------------------------------------


class TextRequest(BaseModel):
    """The Django server's body; other fields are passed to the algorithm as they are."""

    model_config = ConfigDict(extra="allow")
    text: str


class TextAnswer(BaseModel):
    message: Any = Field(description="The algorithm's `output`, else its whole result")
    request_id: str
    finish_reason: str | None = Field(None, description="Why generation ended, when the algorithm says")


class ErrorDetail(BaseModel):
    code: str
    message: str


class ErrorBody(BaseModel):
    error: ErrorDetail
    request_id: str


# -- OpenAI requests -------------------------------------------------------------------------------


class TextPart(_Body):
    type: Literal["text"]
    text: Text


class ChatMessage(_Body):
    role: Literal["system", "developer", "user", "assistant"]
    content: Text | Annotated[list[TextPart], Field(min_length=1)]
    name: str | None = Field(None, description="Accepted and ignored")

    @property
    def text(self) -> str:
        return self.content if isinstance(self.content, str) else "".join(part.text for part in self.content)


class StreamOptions(_Body):
    include_usage: bool = False


class _Generation(_Body):
    """Fields shared by chat and text completions."""

    model: str = Field(min_length=1, max_length=256)
    max_tokens: int | None = Field(None, ge=0)
    max_completion_tokens: int | None = Field(None, ge=0)
    temperature: float | None = Field(None, ge=0, le=2)
    top_p: float | None = Field(None, gt=0, le=1)
    n: int | None = Field(None, ge=1)
    stream: bool = False
    stream_options: StreamOptions | None = None
    stop: Stop | None = None
    seed: int | None = Field(None, ge=0, le=2**63 - 1)
    user: str | None = None
    metadata: dict[str, str] | None = None
    service_tier: str | None = None
    parallel_tool_calls: bool | None = None

    @model_validator(mode="after")
    def _one_token_budget(self) -> _Generation:
        if None not in (self.max_tokens, self.max_completion_tokens) and self.max_tokens != self.max_completion_tokens:
            raise ValueError("'max_tokens' and 'max_completion_tokens' disagree; send one of them")
        return self

    @property
    def token_budget(self) -> int | None:
        return self.max_tokens if self.max_tokens is not None else self.max_completion_tokens

    def sampling(self) -> dict[str, Any]:
        """The worker request's generation parameters."""
        fields = {"temperature": self.temperature, "top_p": self.top_p, "seed": self.seed}
        request = {name: value for name, value in fields.items() if value is not None}
        if self.token_budget is not None:
            request["max_tokens"] = self.token_budget
        if self.stop is not None:
            request["stop"] = [self.stop] if isinstance(self.stop, str) else self.stop
        return request


class ChatCompletionRequest(_Generation):
    messages: Annotated[list[ChatMessage], Field(min_length=1)]

    def worker_request(self) -> dict[str, Any]:
        messages = [{"role": "system" if m.role == "developer" else m.role, "content": m.text} for m in self.messages]
        return {"messages": messages, **self.sampling()}

    @property
    def text_length(self) -> int:
        return sum(len(message.text) for message in self.messages)


class CompletionRequest(_Generation):
    prompt: Text | Annotated[list[Text], Field(min_length=1, max_length=1)]

    @property
    def text(self) -> str:
        return self.prompt if isinstance(self.prompt, str) else self.prompt[0]

    def worker_request(self) -> dict[str, Any]:
        return {"prompt": self.text, **self.sampling()}

    @property
    def text_length(self) -> int:
        return len(self.text)


class EmbeddingRequest(_Body):
    model: str = Field(min_length=1, max_length=256)
    input: Text | Annotated[list[Text], Field(min_length=1, max_length=2048)]
    encoding_format: Literal["float", "base64"] = "float"
    user: str | None = None

    @property
    def texts(self) -> list[str]:
        return [self.input] if isinstance(self.input, str) else self.input

    def worker_request(self) -> dict[str, Any]:
        return {"input": self.texts}

    @property
    def text_length(self) -> int:
        return sum(len(text) for text in self.texts)


_NEUTRAL_BY_REQUEST = {
    ChatCompletionRequest: CHAT_NEUTRAL,
    CompletionRequest: COMPLETION_NEUTRAL,
    EmbeddingRequest: EMBEDDING_NEUTRAL,
}


def parse(kind: type[BaseModel], body: dict[str, Any]) -> Any:
    """``body`` as a ``kind``; an ApiError 400 that names the offending field otherwise."""
    try:
        return kind.model_validate(_neutral(body, _NEUTRAL_BY_REQUEST.get(kind, {})))
    except ValidationError as exc:
        raise _invalid(exc) from None


def _invalid(exc: ValidationError) -> errors.ApiError:
    problem = exc.errors(include_url=False)[0]
    location = [str(part) for part in problem["loc"]]
    param = location[0] if location else None
    if problem["type"] == "extra_forbidden":
        return errors.unsupported_parameter(param, f"'{param}' is not supported by this server")
    where = _dotted(location)
    message = problem["msg"].removeprefix("Value error, ")
    return errors.invalid_parameter(param, f"'{where}': {message}" if where else message)


def _dotted(location: list[str]) -> str:
    return "".join(f"[{part}]" if part.isdigit() else f".{part}" for part in location).lstrip(".")


# -- OpenAI responses (described, for the document and the tests) --------------------------------


class Usage(BaseModel):
    prompt_tokens: int
    completion_tokens: int
    total_tokens: int


class AssistantMessage(BaseModel):
    role: Literal["assistant"]
    content: str | None
    refusal: str | None


class ChatChoice(BaseModel):
    index: int
    message: AssistantMessage
    logprobs: None
    finish_reason: Literal["stop", "length"]


class ChatCompletion(BaseModel):
    id: str
    object: Literal["chat.completion"]
    created: int
    model: str
    choices: list[ChatChoice]
    usage: Usage


class ChunkDelta(BaseModel):
    role: Literal["assistant"] | None = None
    content: str | None = None


class ChunkChoice(BaseModel):
    index: int
    delta: ChunkDelta
    logprobs: None
    finish_reason: Literal["stop", "length"] | None


class ChatCompletionChunk(BaseModel):
    id: str
    object: Literal["chat.completion.chunk"]
    created: int
    model: str
    choices: list[ChunkChoice]
    usage: Usage | None = None


class CompletionChoice(BaseModel):
    index: int
    text: str
    logprobs: None
    finish_reason: Literal["stop", "length"] | None


class Completion(BaseModel):
    """A text completion, whole or one streamed chunk of it."""

    id: str
    object: Literal["text_completion"]
    created: int
    model: str
    choices: list[CompletionChoice]
    usage: Usage | None = None


class Embedding(BaseModel):
    object: Literal["embedding"]
    index: int
    embedding: list[float] | str


class EmbeddingUsage(BaseModel):
    prompt_tokens: int
    total_tokens: int


class EmbeddingList(BaseModel):
    object: Literal["list"]
    data: list[Embedding]
    model: str
    usage: EmbeddingUsage


class Model(BaseModel):
    id: str
    object: Literal["model"]
    created: int
    owned_by: str


class ModelList(BaseModel):
    object: Literal["list"]
    data: list[Model]


class OpenAIErrorDetail(BaseModel):
    message: str
    type: str
    param: str | None
    code: str | None


class OpenAIError(BaseModel):
    error: OpenAIErrorDetail
