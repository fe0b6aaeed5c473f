"""The HTTP API's request and response bodies as typed models.

They are the one source for validating requests (an error names the
offending field as OpenAI's ``param``), for the worker request each one
becomes, and for ``/openapi.json``. Responses are built as plain dicts on
the hot path (``frontend.openai_format``); the response models here
describe them, and the tests check every answer against them and against
OpenAI's own specification.

OpenAI request fields fall in three groups (``docs/openai.md`` has the
table per endpoint):

* used, such as ``model``, ``messages``/``prompt``/``input``,
  ``max_tokens``, ``temperature``, ``stream``, ``tools``,
  ``response_format``;
* accepted and ignored, because they cannot change the answer: ``user``,
  ``metadata``, ``service_tier``, ``parallel_tool_calls``, a message's
  ``name``, and what answers carry and clients send back (``refusal``);
* accepted only with the value that means "not used" (the ``NEUTRAL``
  tables, per endpoint), such as ``store: false``, ``modalities:
  ["text"]``, zero penalties, or null; any other value, and any other field,
  is refused with a 400 that names it.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal, NoReturn

from pydantic import BaseModel, ConfigDict, Discriminator, Field, Tag, ValidationError, model_validator

from accounts.records import UsageRow
from broker.contract import generation as contract
from broker.contract.embedding import embedding_payload
from broker.contract.grammar import grammar_problem, json_schema_grammar
from broker.contract.wire import problem
from frontend import errors

# Field -> the values that mean "not used" (null always does): accepted, and ignored, only with one of them.
CHAT_NEUTRAL: dict[str, tuple[Any, ...]] = {
    "store": (False,),
    "functions": ([],),
    "function_call": ("none",),
    "modalities": (["text"],),
    "logit_bias": ({},),
    "presence_penalty": (0,),
    "frequency_penalty": (0,),
    "audio": (),
    "prediction": (),
    "reasoning_effort": (),
    "verbosity": (),
    "web_search_options": (),
    "moderation": (),
}
COMPLETION_NEUTRAL: dict[str, tuple[Any, ...]] = {
    "best_of": (1,),
    "echo": (False,),
    "suffix": ("",),
    "logit_bias": ({},),
    "presence_penalty": (0,),
    "frequency_penalty": (0,),
}
EMBEDDING_NEUTRAL: dict[str, tuple[Any, ...]] = {"dimensions": ()}

Text = Annotated[str, Field(max_length=1_000_000)]
Stop = str | Annotated[list[Annotated[str, Field(min_length=1)]], Field(min_length=1, max_length=4)]


class _Body(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True)


def _refuse(param: str, message: str) -> NoReturn:
    """Refuse a body whose fields disagree, naming the field at fault: raised from a model
    validator, it is no ValueError, so it passes through pydantic as it is."""
    raise errors.invalid_parameter(param, message)


def _neutral(body: dict[str, Any], neutral: dict[str, tuple[Any, ...]]) -> dict[str, Any]:
    """``body`` without the neutral fields it may carry; ApiError for a non-neutral one."""
    for name, values in neutral.items():
        value = body.get(name)
        if value is not None and not any((value == v and type(value) is not bool) or value is v for v in values):
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


class Allowance(BaseModel):
    used: int
    limit: int | None = Field(description="null: unlimited")
    remaining: int | None = Field(description="null: unlimited")


class UsageReport(BaseModel):
    """``GET /usage/``: the caller's key, what is left of its quota and token budget, and its usage
    per UTC day and service (``charged`` counts the requests counted against the key)."""

    key: str = Field(description="The key's display prefix, never the key")
    requests: Allowance
    tokens: Allowance = Field(description="Prompt + completion tokens of charged requests, against token_budget")
    usage: list[UsageRow]
    request_id: str


class ErrorDetail(BaseModel):
    code: str
    message: str


class ErrorBody(BaseModel):
    error: ErrorDetail
    request_id: str


class ServerInfo(BaseModel):
    """``GET /``: what this server is and where a client goes from here, without a key."""

    name: str
    version: str = Field(description="The server's release")
    description: str
    documentation: str = Field(description="The path of the OpenAPI document of every endpoint")
    endpoints: dict[str, str] = Field(description="What a client calls (`METHOD /path`) and what it does")
    console: str | None = Field(description="The web console's address, told to callers on this machine only")


# -- OpenAI requests -------------------------------------------------------------------------------


class TextPart(_Body):
    type: Literal["text"]
    text: Text


class FunctionCall(_Body):
    name: str = Field(min_length=1, max_length=128)
    arguments: str


class ToolCall(_Body):
    id: str = Field(max_length=128)
    type: Literal["function"]
    function: FunctionCall


class ChatMessage(_Body):
    role: Literal["system", "developer", "user", "assistant", "tool"]
    content: Text | Annotated[list[TextPart], Field(min_length=1)] | None = None
    name: str | None = Field(None, description="Accepted and ignored")
    tool_calls: list[ToolCall] | None = Field(None, description="An assistant's earlier calls")
    tool_call_id: str | None = Field(None, description="The call a `tool` message answers")
    refusal: str | None = Field(None, description="An assistant's earlier refusal, as answers carry it: ignored")
    annotations: list[Any] | None = Field(None, description="As answers may carry them: ignored")

    @model_validator(mode="after")
    def _has_content(self) -> ChatMessage:
        if self.content is None and not (self.role == "assistant" and self.tool_calls):
            raise ValueError("a message needs 'content' (only an assistant's message of tool calls may omit it)")
        return self

    @property
    def text(self) -> str:
        if self.content is None:
            return ""
        return self.content if isinstance(self.content, str) else "".join(part.text for part in self.content)

    def for_worker(self) -> dict[str, Any]:
        """The message as :class:`broker.contract.generation.Message` reads it."""
        return {
            "role": "system" if self.role == "developer" else self.role,
            "content": self.text,
            "tool_calls": [call.model_dump() for call in self.tool_calls] if self.tool_calls else None,
            "tool_call_id": self.tool_call_id,
        }


class Function(_Body):
    name: str = Field(min_length=1, max_length=64, pattern=r"^[A-Za-z0-9_-]+$")
    description: str | None = None
    parameters: dict[str, Any] | None = None
    strict: bool | None = None


class Tool(_Body):
    type: Literal["function"]
    function: Function


class NamedFunction(_Body):
    name: str


class NamedToolChoice(_Body):
    type: Literal["function"]
    function: NamedFunction


class JsonSchemaFormat(_Body):
    name: str = Field(min_length=1, max_length=64)
    description: str | None = None
    schema_: dict[str, Any] = Field(default_factory=dict, alias="schema")
    strict: bool | None = None


class ResponseFormat(_Body):
    type: Literal["text", "json_object", "json_schema"]
    json_schema: JsonSchemaFormat | None = None

    @model_validator(mode="after")
    def _schema_given(self) -> ResponseFormat:
        contract.check_schema_given(self.type, self.json_schema)
        return self


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
    stream: bool | None = None
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
            _refuse("max_tokens", "'max_tokens' and 'max_completion_tokens' disagree; send one of them")
        return self

    @property
    def token_budget(self) -> int | None:
        return self.max_tokens if self.max_tokens is not None else self.max_completion_tokens

    def sampling(self) -> dict[str, Any]:
        """The worker request's generation parameters."""
        return {
            "temperature": self.temperature,
            "top_p": self.top_p,
            "seed": self.seed,
            "max_tokens": self.token_budget,
            "stop": [self.stop] if isinstance(self.stop, str) else self.stop,
        }


class ChatCompletionRequest(_Generation):
    messages: Annotated[list[ChatMessage], Field(min_length=1)]
    response_format: ResponseFormat | None = None
    tools: Annotated[list[Tool], Field(max_length=128)] | None = None
    tool_choice: Literal["none", "auto", "required"] | NamedToolChoice | None = None
    logprobs: bool | None = None
    top_logprobs: int | None = Field(None, ge=0, le=20)

    @model_validator(mode="after")
    def _choice_among_tools(self) -> ChatCompletionRequest:
        names = {tool.function.name for tool in self.tools or ()}
        choice = self.tool_choice
        if isinstance(choice, NamedToolChoice) and choice.function.name not in names:
            _refuse("tool_choice", f"'tool_choice' names {choice.function.name!r}, which is not among 'tools'")
        if self.tool_choice == "required" and not names:
            _refuse("tool_choice", "'tool_choice' is 'required' but no 'tools' are given")
        if self.top_logprobs and not self.logprobs:
            _refuse("top_logprobs", "'top_logprobs' needs 'logprobs': true")
        return self

    def worker_request(self) -> contract.GenerationRequest:
        choice = self.tool_choice
        return _generation(
            messages=[message.for_worker() for message in self.messages],
            tools=[tool.model_dump(exclude_none=True) for tool in self.tools] if self.tools else None,
            tool_choice=choice.model_dump() if isinstance(choice, NamedToolChoice) else choice or "auto",
            **self.sampling(),
            **_structured(self.response_format, bool(self.logprobs), self.top_logprobs),
        )

    @property
    def text_length(self) -> int:
        return sum(len(message.text) for message in self.messages)


class CompletionRequest(_Generation):
    prompt: Text | Annotated[list[Text], Field(min_length=1, max_length=1)]
    response_format: ResponseFormat | None = Field(None, description="An extension: JSON held to a schema")
    logprobs: int | None = Field(None, ge=0, le=5, description="Alternatives to list with each token's log-probability")

    @property
    def text(self) -> str:
        return self.prompt if isinstance(self.prompt, str) else self.prompt[0]

    def worker_request(self) -> contract.GenerationRequest:
        return _generation(
            prompt=self.text,
            **self.sampling(),
            **_structured(self.response_format, self.logprobs is not None, self.logprobs),
        )

    @property
    def text_length(self) -> int:
        return len(self.text)


def _generation(**fields: Any) -> contract.GenerationRequest:
    """The typed worker request; a 400 naming the field where the body's values do not fit it
    (an earlier tool call whose arguments are not a JSON object, say)."""
    try:
        return contract.GenerationRequest.model_validate(fields)
    except ValidationError as exc:
        where = exc.errors(include_url=False)[0]["loc"]
        raise errors.invalid_parameter(str(where[0]) if where else None, problem(exc)) from None


def _structured(response_format: ResponseFormat | None, logprobs: bool, top_logprobs: int | None) -> dict[str, Any]:
    """The worker request's fields for a response format and for log-probabilities."""
    form = response_format if response_format is not None and response_format.type != "text" else None
    return {
        "response_format": form.model_dump(by_alias=True, exclude_none=True) if form is not None else None,
        "logprobs": logprobs,
        "top_logprobs": (top_logprobs or 0) if logprobs else None,
    }


TokenIds = Annotated[list[Annotated[int, Field(ge=0, le=2**31 - 1)]], Field(min_length=1, max_length=65_536)]


class EmbeddingRequest(_Body):
    """Texts to embed, or (as OpenAI also takes) token ids: one list, or a list of lists. Token
    ids are the model's own: a client counting with OpenAI's tokenizer must send text instead."""

    model: str = Field(min_length=1, max_length=256)
    input: Text | Annotated[list[Text], Field(min_length=1, max_length=2048)] | TokenIds | Annotated[
        list[TokenIds], Field(min_length=1, max_length=2048)
    ]
    encoding_format: Literal["float", "base64"] | None = None
    user: str | None = None

    @property
    def inputs(self) -> list[str] | list[list[int]]:
        """The texts, or the token-id lists, one per vector."""
        if isinstance(self.input, str):
            return [self.input]
        if isinstance(self.input[0], int):
            return [self.input]
        return self.input

    def worker_request(self) -> dict[str, Any]:
        return embedding_payload(self.inputs)

    @property
    def text_length(self) -> int:
        return sum(len(one) for one in self.inputs)


# -- the Responses API ------------------------------------------------------------------------------

RESPONSES_NEUTRAL: dict[str, tuple[Any, ...]] = {
    "background": (False,),
    "include": ([],),
    "reasoning": ({},),
    "top_logprobs": (0,),
    "conversation": (),
    "prompt": (),
    "max_tool_calls": (),
}


class InputText(_Body):
    type: Literal["input_text"]
    text: Text


class OutputText(_Body):
    type: Literal["output_text"]
    text: Text
    annotations: list[Any] | None = None
    logprobs: list[Any] | None = None


class MessageItem(_Body):
    """A message of the conversation; as the SDKs send it, its ``type`` may be left out."""

    type: Literal["message"] = "message"
    role: Literal["user", "assistant", "system", "developer"]
    content: Text | Annotated[list[InputText | OutputText], Field(min_length=1)]
    id: str | None = None
    status: str | None = None

    @property
    def text(self) -> str:
        return self.content if isinstance(self.content, str) else "".join(part.text for part in self.content)


class FunctionCallItem(_Body):
    """A call the model made earlier, sent back with its output."""

    type: Literal["function_call"]
    call_id: str = Field(min_length=1, max_length=128)
    name: str = Field(min_length=1, max_length=128)
    arguments: str
    id: str | None = None
    status: str | None = None


class FunctionCallOutputItem(_Body):
    """The output of a call the model made."""

    type: Literal["function_call_output"]
    call_id: str = Field(min_length=1, max_length=128)
    output: Text | Annotated[list[InputText], Field(min_length=1)]
    id: str | None = None
    status: str | None = None

    @property
    def text(self) -> str:
        return self.output if isinstance(self.output, str) else "".join(part.text for part in self.output)


def _item_kind(item: Any) -> str:
    return item.get("type", "message") if isinstance(item, dict) else getattr(item, "type", "message")


InputItem = Annotated[
    Annotated[MessageItem, Tag("message")]
    | Annotated[FunctionCallItem, Tag("function_call")]
    | Annotated[FunctionCallOutputItem, Tag("function_call_output")],
    Discriminator(_item_kind),
]


class FunctionTool(_Body):
    """A function the model may call (the Responses API's flat shape)."""

    type: Literal["function"]
    name: str = Field(min_length=1, max_length=64, pattern=r"^[A-Za-z0-9_-]+$")
    description: str | None = None
    parameters: dict[str, Any] | None = None
    strict: bool | None = None

    def for_worker(self) -> dict[str, Any]:
        function = {"name": self.name, "description": self.description, "parameters": self.parameters}
        return {"type": "function", "function": {k: v for k, v in function.items() if v is not None}}


class NamedFunctionChoice(_Body):
    type: Literal["function"]
    name: str


class TextFormat(_Body):
    type: Literal["text", "json_object", "json_schema"]
    name: str | None = Field(None, max_length=64)
    description: str | None = None
    schema_: dict[str, Any] | None = Field(None, alias="schema")
    strict: bool | None = None

    @model_validator(mode="after")
    def _schema_given(self) -> TextFormat:
        if self.type == "json_schema" and (self.schema_ is None or not self.name):
            raise ValueError("a json_schema format needs its 'name' and 'schema'")
        return self


class TextConfig(_Body):
    format: TextFormat | None = None
    verbosity: Literal["low", "medium", "high"] | None = Field(None, description="Accepted and ignored")


class ResponsesRequest(_Body):
    """``POST /v1/responses``: a chat continued from ``input`` (and ``previous_response_id``)."""

    model: str = Field(min_length=1, max_length=256)
    input: Text | Annotated[list[InputItem], Field(min_length=1, max_length=2048)]
    instructions: Text | None = None
    tools: Annotated[list[FunctionTool], Field(max_length=128)] | None = None
    tool_choice: Literal["none", "auto", "required"] | NamedFunctionChoice | None = None
    text: TextConfig | None = None
    max_output_tokens: int | None = Field(None, ge=1)
    temperature: float | None = Field(None, ge=0, le=2)
    top_p: float | None = Field(None, gt=0, le=1)
    parallel_tool_calls: bool | None = None
    metadata: Annotated[dict[str, Annotated[str, Field(max_length=512)]], Field(max_length=16)] | None = None
    store: bool | None = None
    previous_response_id: str | None = Field(None, min_length=1, max_length=64)
    stream: bool | None = None
    stream_options: dict[str, Any] | None = Field(None, description="Accepted and ignored")
    truncation: Literal["disabled"] | None = None
    user: str | None = None
    service_tier: str | None = None
    safety_identifier: str | None = None
    prompt_cache_key: str | None = Field(None, description="Accepted and ignored: prefixes are cached per key")

    @model_validator(mode="after")
    def _choice_among_tools(self) -> ResponsesRequest:
        names = {tool.name for tool in self.tools or ()}
        if isinstance(self.tool_choice, NamedFunctionChoice) and self.tool_choice.name not in names:
            _refuse("tool_choice", f"'tool_choice' names {self.tool_choice.name!r}, which is not among 'tools'")
        if self.tool_choice == "required" and not names:
            _refuse("tool_choice", "'tool_choice' is 'required' but no 'tools' are given")
        return self

    @property
    def kept(self) -> bool:
        """Whether the answer is stored (OpenAI's default)."""
        return self.store is not False

    def input_items(self) -> list[dict[str, Any]]:
        """The input as items, the shape a stored conversation keeps."""
        if isinstance(self.input, str):
            return [{"type": "message", "role": "user", "content": [{"type": "input_text", "text": self.input}]}]
        return [item.model_dump(exclude_none=True) for item in self.input]

    def format(self) -> TextFormat | None:
        return self.text.format if self.text is not None else None

    def worker_request(self, conversation: list[dict[str, Any]]) -> contract.GenerationRequest:
        """The chat a worker continues: the instructions, then the ``conversation``'s items as messages."""
        messages = [{"role": "system", "content": self.instructions}] if self.instructions else []
        choice = self.tool_choice
        form = self.format()
        response_format: dict[str, Any] | None = None
        if form is not None and form.type == "json_object":
            response_format = {"type": "json_object"}
        elif form is not None and form.type == "json_schema":
            response_format = {"type": "json_schema", "json_schema": {"name": form.name, "schema": form.schema_}}
        return _generation(
            messages=messages + conversation_messages(conversation),
            temperature=self.temperature,
            top_p=self.top_p,
            max_tokens=self.max_output_tokens,
            tools=[tool.for_worker() for tool in self.tools] if self.tools else None,
            tool_choice={"function": {"name": choice.name}} if isinstance(choice, NamedFunctionChoice) else (
                choice or "auto"
            ),
            response_format=response_format,
        )


def conversation_messages(items: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Conversation items as chat messages: a run of function calls joins the assistant message
    before it (or makes one), and a call's output is a ``tool`` message."""
    messages: list[dict[str, Any]] = []
    for item in items:
        kind = item.get("type", "message")
        if kind == "message":
            parsed = MessageItem.model_validate(item)
            role = "system" if parsed.role == "developer" else parsed.role
            messages.append({"role": role, "content": parsed.text})
        elif kind == "function_call":
            call = {"id": item["call_id"], "type": "function",
                    "function": {"name": item["name"], "arguments": item["arguments"]}}
            if not (messages and messages[-1]["role"] == "assistant"):
                messages.append({"role": "assistant", "content": ""})
            messages[-1].setdefault("tool_calls", []).append(call)
        else:
            output = FunctionCallOutputItem.model_validate(item)
            messages.append({"role": "tool", "content": output.text, "tool_call_id": output.call_id})
    return messages


_NEUTRAL_BY_REQUEST = {
    ChatCompletionRequest: CHAT_NEUTRAL,
    CompletionRequest: COMPLETION_NEUTRAL,
    EmbeddingRequest: EMBEDDING_NEUTRAL,
    ResponsesRequest: RESPONSES_NEUTRAL,
}


def check_enforceable(request: ChatCompletionRequest | CompletionRequest | ResponsesRequest) -> None:
    """Refuse, before admission, a schema that the workers' grammar library cannot enforce
    (a keyword it does not implement, say): the same grammar a worker would build."""
    checks: list[tuple[str, str]] = []
    if isinstance(request, ResponsesRequest):
        form = request.format()
        if form is not None and form.schema_ is not None:
            checks.append(("text.format", json_schema_grammar(form.schema_)))
        parameters = [tool.parameters for tool in request.tools or ()]
    else:
        if request.response_format is not None and request.response_format.json_schema is not None:
            checks.append(("response_format", json_schema_grammar(request.response_format.json_schema.schema_)))
        parameters = [tool.function.parameters for tool in getattr(request, "tools", None) or ()]
    checks += [("tools", json_schema_grammar(schema or {"type": "object"})) for schema in parameters]
    for param, grammar in checks:
        problem = grammar_problem(grammar)
        if problem is not None:
            raise errors.ApiError("unsupported_schema", f"the schema cannot be enforced: {problem}", param=param)


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


class TopLogprob(BaseModel):
    token: str
    logprob: float
    bytes: list[int] | None


class TokenLogprob(TopLogprob):
    top_logprobs: list[TopLogprob]


class ChoiceLogprobs(BaseModel):
    content: list[TokenLogprob] | None
    refusal: list[TokenLogprob] | None


class AssistantMessage(BaseModel):
    role: Literal["assistant"]
    content: str | None
    refusal: str | None
    tool_calls: list[ToolCall] | None = None


FinishReason = Literal["stop", "length", "tool_calls"]


class ChatChoice(BaseModel):
    index: int
    message: AssistantMessage
    logprobs: ChoiceLogprobs | None
    finish_reason: FinishReason


class ChatCompletion(BaseModel):
    id: str
    object: Literal["chat.completion"]
    created: int
    model: str
    choices: list[ChatChoice]
    usage: Usage


class ToolCallDelta(BaseModel):
    index: int
    id: str | None = None
    type: Literal["function"] | None = None
    function: FunctionCall | None = None


class ChunkDelta(BaseModel):
    role: Literal["assistant"] | None = None
    content: str | None = None
    tool_calls: list[ToolCallDelta] | None = None


class ChunkChoice(BaseModel):
    index: int
    delta: ChunkDelta
    logprobs: ChoiceLogprobs | None
    finish_reason: FinishReason | None


class ChatCompletionChunk(BaseModel):
    id: str
    object: Literal["chat.completion.chunk"]
    created: int
    model: str
    choices: list[ChunkChoice]
    usage: Usage | None = None


class CompletionLogprobs(BaseModel):
    tokens: list[str]
    token_logprobs: list[float]
    top_logprobs: list[dict[str, float]]
    text_offset: list[int]


class CompletionChoice(BaseModel):
    index: int
    text: str
    logprobs: CompletionLogprobs | None
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


class ResponseOutputText(BaseModel):
    type: Literal["output_text"]
    text: str
    annotations: list[Any]
    logprobs: list[Any] | None = None


class ResponseMessage(BaseModel):
    type: Literal["message"]
    id: str
    status: Literal["in_progress", "completed", "incomplete"]
    role: Literal["assistant"]
    content: list[ResponseOutputText]


class ResponseFunctionCall(BaseModel):
    type: Literal["function_call"]
    id: str
    call_id: str
    name: str
    arguments: str
    status: Literal["in_progress", "completed", "incomplete"]


class ResponseUsage(BaseModel):
    input_tokens: int
    input_tokens_details: dict[str, int]
    output_tokens: int
    output_tokens_details: dict[str, int]
    total_tokens: int


class ResponseObject(BaseModel):
    """A ``response`` of the Responses API, whole or as streamed events carry it."""

    id: str
    object: Literal["response"]
    created_at: float
    status: Literal["in_progress", "completed", "incomplete", "failed"]
    error: dict[str, Any] | None
    incomplete_details: dict[str, str] | None
    instructions: str | None
    max_output_tokens: int | None
    metadata: dict[str, str]
    model: str
    output: list[Annotated[ResponseMessage | ResponseFunctionCall, Field(discriminator="type")]]
    parallel_tool_calls: bool
    previous_response_id: str | None
    store: bool
    temperature: float | None
    text: dict[str, Any]
    tool_choice: str | dict[str, Any]
    tools: list[dict[str, Any]]
    top_p: float | None
    truncation: Literal["disabled"]
    usage: ResponseUsage | None
    user: str | None


class ResponseDeleted(BaseModel):
    id: str
    object: Literal["response.deleted"]
    deleted: Literal[True]
