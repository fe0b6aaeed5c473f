"""Mapping between the OpenAI HTTP API's JSON and the workers' requests and results.

Pure functions: a client's body becomes a worker request (or a clear
``ApiError`` 400 for what is not supported), and a worker's result or
streamed piece becomes the object the OpenAI API defines.
"""

from __future__ import annotations

import base64
import re
import struct
import time
from typing import Any

from frontend import errors

# Fields the OpenAI API defines that we cannot honour, with the value that
# means "not used" (anything else is refused, never silently ignored).
_UNSUPPORTED_UNLESS = {
    "best_of": 1,
    "logprobs": None,
    "top_logprobs": None,
    "echo": False,
    "suffix": None,
    "tools": None,
    "tool_choice": None,
    "functions": None,
    "function_call": None,
    "logit_bias": None,
    "presence_penalty": 0,
    "frequency_penalty": 0,
    "audio": None,
    "modalities": None,
    "prediction": None,
}
_PASSED_THROUGH = ("temperature", "top_p", "seed")
OPENAI_ERROR_TYPES = {
    400: "invalid_request_error",
    401: "authentication_error",
    403: "permission_error",
    404: "not_found_error",
    413: "invalid_request_error",
    429: "rate_limit_error",
}


def error_object(status: int, code: str, message: str) -> dict[str, Any]:
    """The OpenAI error body."""
    kind = OPENAI_ERROR_TYPES.get(status, "server_error" if status >= 500 else "invalid_request_error")
    return {"error": {"message": message, "type": kind, "param": None, "code": code}}


def _invalid(message: str, param: str | None = None) -> errors.ApiError:
    return errors.bad_request("invalid_request_error" if param is None else f"invalid_{param}", message)


# Service names the HTTP API accepts, in paths and as `model`.
SERVICE_NAME = r"[A-Za-z0-9][A-Za-z0-9._-]{0,99}"
_SERVICE_NAME = re.compile(SERVICE_NAME)


def model_of(body: dict[str, Any]) -> str:
    model = body.get("model")
    if not isinstance(model, str) or not _SERVICE_NAME.fullmatch(model):
        raise _invalid("'model' must name a service: 1 to 100 letters, digits, '.', '_' or '-'", "model")
    return model


def _refuse_unsupported(body: dict[str, Any]) -> None:
    for name, neutral in _UNSUPPORTED_UNLESS.items():
        value = body.get(name)
        if value is not None and value != neutral and not (neutral is None and value in (False, [], {})):
            raise _invalid(f"'{name}' = {value!r} is not supported by this server", name)
    response_format = body.get("response_format")
    if response_format not in (None, {"type": "text"}):
        raise _invalid("only the 'text' response_format is supported", "response_format")


def _generation_fields(body: dict[str, Any]) -> dict[str, Any]:
    _refuse_unsupported(body)
    request = {name: body[name] for name in _PASSED_THROUGH if body.get(name) is not None}
    limits = [body.get(name) for name in ("max_completion_tokens", "max_tokens") if body.get(name) is not None]
    if len(set(map(repr, limits))) > 1:
        raise _invalid("'max_tokens' and 'max_completion_tokens' disagree", "max_tokens")
    if limits:
        request["max_tokens"] = limits[0]
    stop = body.get("stop")
    if stop is not None:
        request["stop"] = [stop] if isinstance(stop, str) else stop
    return request


def choices_wanted(body: dict[str, Any], limit: int) -> int:
    """``n``: how many choices to generate (each a row of the same batch on the worker)."""
    n = body.get("n")
    if n is None:
        return 1
    if not isinstance(n, int) or isinstance(n, bool) or not 1 <= n <= limit:
        raise _invalid(f"'n' must be an integer from 1 to {limit} (got {n!r})", "n")
    return n


def wants_stream(body: dict[str, Any]) -> bool:
    stream = body.get("stream", False)
    if not isinstance(stream, bool):
        raise _invalid("'stream' must be true or false", "stream")
    return stream


def include_usage(body: dict[str, Any]) -> bool:
    options = body.get("stream_options") or {}
    if not isinstance(options, dict):
        raise _invalid("'stream_options' must be an object", "stream_options")
    return bool(options.get("include_usage"))


def chat_request(body: dict[str, Any]) -> dict[str, Any]:
    messages = body.get("messages")
    if not isinstance(messages, list) or not messages:
        raise _invalid("'messages' must be a non-empty list", "messages")
    checked = []
    for index, message in enumerate(messages):
        if not isinstance(message, dict) or not isinstance(message.get("role"), str):
            raise _invalid(f"messages[{index}] must be an object with a 'role'", "messages")
        content = message.get("content")
        if isinstance(content, list):  # content parts: only text is supported
            if not all(isinstance(p, dict) and p.get("type") == "text" for p in content):
                raise _invalid(f"messages[{index}]: only text content is supported", "messages")
            content = "".join(str(p.get("text", "")) for p in content)
        if not isinstance(content, str):
            raise _invalid(f"messages[{index}].content must be a string", "messages")
        role = "system" if message["role"] == "developer" else message["role"]
        checked.append({"role": role, "content": content})
    return {"messages": checked, **_generation_fields(body)}


def completion_request(body: dict[str, Any]) -> dict[str, Any]:
    prompt = body.get("prompt")
    if isinstance(prompt, list) and len(prompt) == 1 and isinstance(prompt[0], str):
        prompt = prompt[0]
    if not isinstance(prompt, str):
        raise _invalid("'prompt' must be a string (one prompt per request)", "prompt")
    return {"prompt": prompt, **_generation_fields(body)}


def embedding_request(body: dict[str, Any]) -> tuple[dict[str, Any], str]:
    texts = body.get("input")
    if isinstance(texts, str):
        texts = [texts]
    if not isinstance(texts, list) or not texts or not all(isinstance(t, str) for t in texts):
        raise _invalid("'input' must be a string or a non-empty list of strings", "input")
    encoding = body.get("encoding_format", "float")
    if encoding not in ("float", "base64"):
        raise _invalid("'encoding_format' must be 'float' or 'base64'", "encoding_format")
    if body.get("dimensions") is not None:
        raise _invalid("'dimensions' is not supported by this server", "dimensions")
    return {"input": texts}, encoding


def _usage(results: list[dict[str, Any]]) -> dict[str, int]:
    """Usage of all choices: the prompt is read once, every choice's tokens count."""
    usages = [result.get("usage") or {} for result in results]
    prompt = int(usages[0].get("prompt_tokens") or 0) if usages else 0
    completion = sum(int(usage.get("completion_tokens") or 0) for usage in usages)
    return {"prompt_tokens": prompt, "completion_tokens": completion, "total_tokens": prompt + completion}


def _finish_reason(result: dict[str, Any]) -> str:
    reason = result.get("finish_reason")
    return reason if reason in ("stop", "length") else "stop"


def _envelope(kind: str, request_id: str, model: str) -> dict[str, Any]:
    prefix = "chatcmpl" if kind.startswith("chat") else "cmpl"
    return {"id": f"{prefix}-{request_id}", "object": kind, "created": int(time.time()), "model": model}


def chat_completion(results: list[dict[str, Any]], request_id: str, model: str) -> dict[str, Any]:
    """A ``chat.completion`` with one choice per worker result."""
    return {
        **_envelope("chat.completion", request_id, model),
        "choices": [
            {
                "index": index,
                "message": {"role": "assistant", "content": result.get("output", "")},
                "logprobs": None,
                "finish_reason": _finish_reason(result),
            }
            for index, result in enumerate(results)
        ],
        "usage": _usage(results),
    }


def text_completion(results: list[dict[str, Any]], request_id: str, model: str) -> dict[str, Any]:
    """A ``text_completion`` with one choice per worker result."""
    return {
        **_envelope("text_completion", request_id, model),
        "choices": [
            {"index": index, "text": result.get("output", ""), "logprobs": None, "finish_reason": _finish_reason(result)}
            for index, result in enumerate(results)
        ],
        "usage": _usage(results),
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
        if self.with_usage:
            chunk["usage"] = None
        return chunk

    def opening(self) -> list[dict[str, Any]]:
        if not self.chat:
            return []
        return [self._chunk(index, {"delta": {"role": "assistant", "content": ""}, "finish_reason": None}) for index in range(self.choices)]

    def piece(self, text: str, index: int = 0) -> dict[str, Any]:
        if self.chat:
            return self._chunk(index, {"delta": {"content": text}, "finish_reason": None})
        return self._chunk(index, {"text": text, "finish_reason": None})

    def finish(self, summary: dict[str, Any], index: int = 0) -> dict[str, Any]:
        """The chunk that ends choice ``index``, with its finish reason."""
        reason = _finish_reason(summary)
        return self._chunk(index, {"delta": {}, "finish_reason": reason} if self.chat else {"text": "", "finish_reason": reason})

    def usage(self, summaries: list[dict[str, Any]]) -> list[dict[str, Any]]:
        """The closing usage chunk of every choice together, when the client asked for it."""
        return [{**self.base, "choices": [], "usage": _usage(summaries)}] if self.with_usage else []


def embeddings(result: dict[str, Any], model: str, encoding: str) -> dict[str, Any]:
    vectors = result.get("embeddings") or []
    data = [
        {"object": "embedding", "index": index, "embedding": _encode_vector(vector, encoding)}
        for index, vector in enumerate(vectors)
    ]
    tokens = int((result.get("usage") or {}).get("prompt_tokens") or 0)
    return {"object": "list", "data": data, "model": model, "usage": {"prompt_tokens": tokens, "total_tokens": tokens}}


def _encode_vector(vector: list[float], encoding: str) -> Any:
    if encoding == "float":
        return vector
    return base64.b64encode(struct.pack(f"<{len(vector)}f", *vector)).decode("ascii")


def model_list(services: list[str]) -> dict[str, Any]:
    return {
        "object": "list",
        "data": [{"id": name, "object": "model", "created": 0, "owned_by": "llmapi"} for name in services],
    }
