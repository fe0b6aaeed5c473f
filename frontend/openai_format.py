"""The OpenAI API's answers, built from the workers' typed results (``broker.contract``).

Plain dicts, built on the hot path (one chunk per streamed piece); their
shapes are the response models of ``frontend.schemas`` and OpenAI's own
specification, which the tests check them against. Requests are parsed by
``frontend.schemas``.
"""

from __future__ import annotations

import base64
import re
import struct
import time
from typing import Any

from broker.contract.embedding import EmbeddingResult
from broker.contract.generation import GenerationResult, TokenLogprob, Usage
from frontend import errors

# The reasons the specification lets an answer end for.
FINISH_REASONS = ("stop", "length", "tool_calls")

# Service names the HTTP API accepts, in paths and as `model`.
SERVICE_NAME = r"[A-Za-z0-9][A-Za-z0-9._-]{0,99}"
_SERVICE_NAME = re.compile(SERVICE_NAME)


def is_service_name(model: str) -> bool:
    return _SERVICE_NAME.fullmatch(model) is not None


def error_object(code: str, message: str, param: str | None = None) -> dict[str, Any]:
    """The OpenAI error body of an error code of ``frontend.errors.CODES``."""
    return {"error": {"message": message, "type": errors.CODES[code].openai_type, "param": param, "code": code}}


def finish_reason(result: GenerationResult) -> str:
    """Why the worker ended the answer, as the specification names it (an answer cut
    short never gets here: the gateway turns it into an error)."""
    reason = result.finish_reason
    return reason if reason in FINISH_REASONS else "stop"


def _usage(usages: list[Usage]) -> dict[str, Any]:
    """Usage of all choices: the prompt is read once, every choice's tokens count; the prompt
    tokens a worker took from its prefix cache are named as OpenAI names them."""
    prompt = (usages[0].prompt_tokens or 0) if usages else 0
    completion = sum(usage.completion_tokens or 0 for usage in usages)
    usage: dict[str, Any] = {
        "prompt_tokens": prompt,
        "completion_tokens": completion,
        "total_tokens": prompt + completion,
    }
    cached = usages[0].cached_tokens if usages else None
    if cached is not None:
        usage["prompt_tokens_details"] = {"cached_tokens": cached}
    return usage


def _envelope(kind: str, request_id: str, model: str) -> dict[str, Any]:
    prefix = "chatcmpl" if kind.startswith("chat") else "cmpl"
    return {"id": f"{prefix}-{request_id}", "object": kind, "created": int(time.time()), "model": model}


def chat_completion(results: list[GenerationResult], request_id: str, model: str) -> dict[str, Any]:
    """A ``chat.completion`` with one choice per worker result."""
    return {
        **_envelope("chat.completion", request_id, model),
        "choices": [
            {
                "index": index,
                "message": _assistant_message(result),
                "logprobs": _chat_logprobs(result.logprobs),
                "finish_reason": finish_reason(result),
            }
            for index, result in enumerate(results)
        ],
        "usage": _usage([result.usage for result in results]),
    }


def _assistant_message(result: GenerationResult) -> dict[str, Any]:
    calls = result.tool_calls
    content = result.output
    message: dict[str, Any] = {"role": "assistant", "content": content or None if calls else content, "refusal": None}
    if calls:
        message["tool_calls"] = [call.model_dump() for call in calls]
    return message


def _chat_logprobs(entries: list[TokenLogprob] | None) -> dict[str, Any] | None:
    """A chat choice's ``logprobs``: each token, its log-probability and its alternatives."""
    return None if entries is None else {"content": [entry.model_dump() for entry in entries], "refusal": None}


def _completion_logprobs(entries: list[TokenLogprob] | None, offset: int = 0) -> dict[str, Any] | None:
    """A text completion's ``logprobs``, in that API's older shape: parallel lists."""
    if entries is None:
        return None
    offsets = []
    for entry in entries:
        offsets.append(offset)
        offset += len(entry.token)
    return {
        "tokens": [entry.token for entry in entries],
        "token_logprobs": [entry.logprob for entry in entries],
        "top_logprobs": [{alt.token: alt.logprob for alt in entry.top_logprobs} for entry in entries],
        "text_offset": offsets,
    }


def text_completion(results: list[GenerationResult], request_id: str, model: str) -> dict[str, Any]:
    """A ``text_completion`` with one choice per worker result."""
    return {
        **_envelope("text_completion", request_id, model),
        "choices": [
            {
                "index": index,
                "text": result.output,
                "logprobs": _completion_logprobs(result.logprobs),
                "finish_reason": finish_reason(result),
            }
            for index, result in enumerate(results)
        ],
        "usage": _usage([result.usage for result in results]),
    }


class ChunkWriter:
    """Builds the ``chat.completion.chunk`` (or streamed ``text_completion``) objects of one
    stream of ``choices`` choices, each chunk naming its choice's index."""

    def __init__(self, chat: bool, request_id: str, model: str, with_usage: bool, choices: int = 1) -> None:
        self.chat = chat
        self.base = _envelope("chat.completion.chunk" if chat else "text_completion", request_id, model)
        self.with_usage = with_usage
        self.choices = choices

    def _chunk(self, index: int, choice: dict[str, Any]) -> dict[str, Any]:
        chunk = {**self.base, "choices": [{"index": index, "logprobs": None, **choice}]}
        if self.with_usage and self.chat:  # as OpenAI does: null on every chat chunk but the usage chunk
            chunk["usage"] = None
        return chunk

    def opening(self) -> list[dict[str, Any]]:
        if not self.chat:
            return []
        opening = {"delta": {"role": "assistant", "content": ""}, "finish_reason": None}
        return [self._chunk(index, opening) for index in range(self.choices)]

    def piece(self, text: str, index: int = 0, logprobs: list[TokenLogprob] | None = None) -> dict[str, Any]:
        chunk = self._chunk(index, {"delta": {"content": text}, "finish_reason": None} if self.chat
                            else {"text": text, "finish_reason": None})
        if logprobs is not None:
            chunk["choices"][0]["logprobs"] = (
                _chat_logprobs(logprobs) if self.chat else _completion_logprobs(logprobs)
            )
        return chunk

    def finish(self, summary: GenerationResult, index: int = 0) -> list[dict[str, Any]]:
        """The chunks that end choice ``index``: its tool calls, if any, then its finish reason."""
        reason = finish_reason(summary)
        chunks = []
        if summary.logprobs:
            chunks.append(self.piece("", index, summary.logprobs))
        if self.chat and summary.tool_calls:
            calls = [{"index": n, **call.model_dump()} for n, call in enumerate(summary.tool_calls)]
            chunks.append(self._chunk(index, {"delta": {"tool_calls": calls}, "finish_reason": None}))
        last = {"delta": {}, "finish_reason": reason} if self.chat else {"text": "", "finish_reason": reason}
        return [*chunks, self._chunk(index, last)]

    def usage(self, summaries: list[GenerationResult]) -> list[dict[str, Any]]:
        """The closing usage chunk of every choice together, when the client asked for it."""
        if not self.with_usage:
            return []
        return [{**self.base, "choices": [], "usage": _usage([summary.usage for summary in summaries])}]


def embeddings(result: EmbeddingResult, model: str, encoding: str) -> dict[str, Any]:
    data = [
        {"object": "embedding", "index": index, "embedding": _encode_vector(vector, encoding)}
        for index, vector in enumerate(result.embeddings)
    ]
    tokens = result.usage.prompt_tokens or 0
    return {"object": "list", "data": data, "model": model, "usage": {"prompt_tokens": tokens, "total_tokens": tokens}}


def _encode_vector(vector: list[float], encoding: str) -> Any:
    if encoding == "float":
        return vector
    return base64.b64encode(struct.pack(f"<{len(vector)}f", *vector)).decode("ascii")


def model_object(name: str) -> dict[str, Any]:
    return {"id": name, "object": "model", "created": 0, "owned_by": "llmapi"}


def model_list(services: list[str]) -> dict[str, Any]:
    return {"object": "list", "data": [model_object(name) for name in services]}
