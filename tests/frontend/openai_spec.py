"""JSON Schemas (draft 2020-12) for the OpenAI objects this server returns.

Transcribed by hand from OpenAI's official OpenAPI document: repository
``openai/openai-openapi``, file ``openapi.yaml`` (commit
578000861507cd19620e3f1092adf62303757c0a), ``info.version: "2.3.0"``.
The component schemas transcribed are ``CreateChatCompletionResponse``
(with ``ChatCompletionResponseMessage``, ``ChatCompletionMessageToolCall``,
``ChatCompletionTokenLogprob`` and ``CompletionUsage``),
``CreateChatCompletionStreamResponse`` (with
``ChatCompletionStreamResponseDelta`` and
``ChatCompletionMessageToolCallChunk``), ``CreateCompletionResponse``,
``CreateEmbeddingResponse`` (with ``Embedding``), ``ListModelsResponse``,
``Model``, ``ErrorResponse`` and ``Error``.

They cover only the objects this server returns, and only what the spec
states: required fields, types, enums and nullability. The spec's
``nullable: true`` becomes a JSON Schema type list such as
``["string", "null"]`` (and, for a nullable enum, ``None`` is added to the
enum). Descriptions, examples and ``x-oai*`` extensions are left out.
``additionalProperties`` is left unset, as in the spec, so extra fields are
allowed. Fields the spec marks deprecated (``function_call``) are kept as
optional properties.

Two points go beyond the literal text of the spec, and are marked where they
occur:

* ``Model`` has no ``type: object`` in the spec (only ``properties`` and
  ``required``); ``"type": "object"`` is added here.
* ``Embedding.embedding`` is only ``type: array, items: number`` in the spec.
  The spec's ``CreateEmbeddingRequest.encoding_format`` admits ``"base64"``,
  and then the API returns the vector as a base64 string, so a string is
  accepted as well.
"""

from __future__ import annotations

import copy
from typing import Any

SCHEMA_DIALECT = "https://json-schema.org/draft/2020-12/schema"

# --- pieces shared by several objects (copied into each constant's $defs) ---

# components/schemas/CompletionUsage
_COMPLETION_USAGE: dict[str, Any] = {
    "type": "object",
    "properties": {
        "completion_tokens": {"type": "integer"},
        "prompt_tokens": {"type": "integer"},
        "total_tokens": {"type": "integer"},
        "prompt_tokens_details": {
            "type": "object",
            "properties": {
                "cached_tokens": {"type": "integer"},
            },
        },
        "completion_tokens_details": {
            "type": "object",
            "properties": {
                "reasoning_tokens": {"type": "integer"},
            },
        },
    },
    "required": ["prompt_tokens", "completion_tokens", "total_tokens"],
}

# components/schemas/ChatCompletionTokenLogprob
_CHAT_COMPLETION_TOKEN_LOGPROB: dict[str, Any] = {
    "type": "object",
    "properties": {
        "token": {"type": "string"},
        "logprob": {"type": "number"},
        "bytes": {"type": ["array", "null"], "items": {"type": "integer"}},
        "top_logprobs": {
            "type": "array",
            "items": {
                "type": "object",
                "properties": {
                    "token": {"type": "string"},
                    "logprob": {"type": "number"},
                    "bytes": {
                        "type": ["array", "null"],
                        "items": {"type": "integer"},
                    },
                },
                "required": ["token", "logprob", "bytes"],
            },
        },
    },
    "required": ["token", "logprob", "bytes", "top_logprobs"],
}

# The `logprobs` of a chat completion choice (YAML anchor
# &chat_completion_response_logprobs); the chunk choice reuses it.
_CHAT_CHOICE_LOGPROBS: dict[str, Any] = {
    "type": ["object", "null"],
    "properties": {
        "content": {
            "type": ["array", "null"],
            "items": {"$ref": "#/$defs/ChatCompletionTokenLogprob"},
        },
        "refusal": {
            "type": ["array", "null"],
            "items": {"$ref": "#/$defs/ChatCompletionTokenLogprob"},
        },
    },
    "required": ["content", "refusal"],
}

_CHAT_FINISH_REASONS = [
    "stop",
    "length",
    "tool_calls",
    "content_filter",
    "function_call",
]

# `service_tier` of CreateChatCompletionResponse and of the stream chunk.
_SERVICE_TIER: dict[str, Any] = {
    "type": ["string", "null"],
    "enum": ["scale", "default", None],
}

# components/schemas/ChatCompletionMessageToolCall
_CHAT_COMPLETION_MESSAGE_TOOL_CALL: dict[str, Any] = {
    "type": "object",
    "properties": {
        "id": {"type": "string"},
        "type": {"type": "string", "enum": ["function"]},
        "function": {
            "type": "object",
            "properties": {
                "name": {"type": "string"},
                "arguments": {"type": "string"},
            },
            "required": ["name", "arguments"],
        },
    },
    "required": ["id", "type", "function"],
}

# components/schemas/ChatCompletionResponseMessage
_CHAT_COMPLETION_RESPONSE_MESSAGE: dict[str, Any] = {
    "type": "object",
    "properties": {
        "content": {"type": ["string", "null"]},
        "refusal": {"type": ["string", "null"]},
        # ChatCompletionMessageToolCalls: an array of ChatCompletionMessageToolCall
        "tool_calls": {
            "type": "array",
            "items": {"$ref": "#/$defs/ChatCompletionMessageToolCall"},
        },
        "role": {"type": "string", "enum": ["assistant"]},
        # deprecated: true in the spec
        "function_call": {
            "type": "object",
            "properties": {
                "arguments": {"type": "string"},
                "name": {"type": "string"},
            },
            "required": ["name", "arguments"],
        },
    },
    "required": ["role", "content", "refusal"],
}

# components/schemas/ChatCompletionMessageToolCallChunk
_CHAT_COMPLETION_MESSAGE_TOOL_CALL_CHUNK: dict[str, Any] = {
    "type": "object",
    "properties": {
        "index": {"type": "integer"},
        "id": {"type": "string"},
        "type": {"type": "string", "enum": ["function"]},
        "function": {
            "type": "object",
            "properties": {
                "name": {"type": "string"},
                "arguments": {"type": "string"},
            },
        },
    },
    "required": ["index"],
}

# components/schemas/ChatCompletionStreamResponseDelta (no required fields)
_CHAT_COMPLETION_STREAM_RESPONSE_DELTA: dict[str, Any] = {
    "type": "object",
    "properties": {
        "content": {"type": ["string", "null"]},
        # deprecated: true in the spec
        "function_call": {
            "type": "object",
            "properties": {
                "arguments": {"type": "string"},
                "name": {"type": "string"},
            },
        },
        "tool_calls": {
            "type": "array",
            "items": {"$ref": "#/$defs/ChatCompletionMessageToolCallChunk"},
        },
        "role": {"type": "string", "enum": ["system", "user", "assistant", "tool"]},
        "refusal": {"type": ["string", "null"]},
    },
}

# components/schemas/Model
_MODEL: dict[str, Any] = {
    # The spec gives no `type` here; "object" is added (see module docstring).
    "type": "object",
    "properties": {
        "id": {"type": "string"},
        "created": {"type": "integer"},
        "object": {"type": "string", "enum": ["model"]},
        "owned_by": {"type": "string"},
    },
    "required": ["id", "object", "created", "owned_by"],
}

# components/schemas/Embedding
_EMBEDDING: dict[str, Any] = {
    "type": "object",
    "properties": {
        "index": {"type": "integer"},
        "embedding": {
            "anyOf": [
                # What the spec states.
                {"type": "array", "items": {"type": "number"}},
                # Not in the spec's Embedding: the vector as a base64 string,
                # returned when the request has encoding_format="base64".
                {"type": "string"},
            ],
        },
        "object": {"type": "string", "enum": ["embedding"]},
    },
    "required": ["index", "object", "embedding"],
}

# components/schemas/Error
_ERROR: dict[str, Any] = {
    "type": "object",
    "properties": {
        "code": {"type": ["string", "null"]},
        "message": {"type": "string"},
        "param": {"type": ["string", "null"]},
        "type": {"type": "string"},
    },
    "required": ["type", "message", "param", "code"],
}


def _c(schema: dict[str, Any]) -> dict[str, Any]:
    return copy.deepcopy(schema)


# --- the objects ---

# components/schemas/CreateChatCompletionResponse ("chat.completion")
CHAT_COMPLETION: dict[str, Any] = {
    "$schema": SCHEMA_DIALECT,
    "title": "CreateChatCompletionResponse",
    "type": "object",
    "properties": {
        "id": {"type": "string"},
        "choices": {
            "type": "array",
            "items": {
                "type": "object",
                "properties": {
                    "finish_reason": {
                        "type": "string",
                        "enum": list(_CHAT_FINISH_REASONS),
                    },
                    "index": {"type": "integer"},
                    "message": {"$ref": "#/$defs/ChatCompletionResponseMessage"},
                    "logprobs": _c(_CHAT_CHOICE_LOGPROBS),
                },
                "required": ["finish_reason", "index", "message", "logprobs"],
            },
        },
        "created": {"type": "integer"},
        "model": {"type": "string"},
        "service_tier": _c(_SERVICE_TIER),
        "system_fingerprint": {"type": "string"},
        "object": {"type": "string", "enum": ["chat.completion"]},
        "usage": {"$ref": "#/$defs/CompletionUsage"},
    },
    "required": ["choices", "created", "id", "model", "object"],
    "$defs": {
        "ChatCompletionResponseMessage": _c(_CHAT_COMPLETION_RESPONSE_MESSAGE),
        "ChatCompletionMessageToolCall": _c(_CHAT_COMPLETION_MESSAGE_TOOL_CALL),
        "ChatCompletionTokenLogprob": _c(_CHAT_COMPLETION_TOKEN_LOGPROB),
        "CompletionUsage": _c(_COMPLETION_USAGE),
    },
}

# components/schemas/CreateChatCompletionStreamResponse ("chat.completion.chunk")
CHAT_COMPLETION_CHUNK: dict[str, Any] = {
    "$schema": SCHEMA_DIALECT,
    "title": "CreateChatCompletionStreamResponse",
    "type": "object",
    "properties": {
        "id": {"type": "string"},
        "choices": {
            "type": "array",
            "items": {
                "type": "object",
                "properties": {
                    "delta": {"$ref": "#/$defs/ChatCompletionStreamResponseDelta"},
                    "logprobs": _c(_CHAT_CHOICE_LOGPROBS),
                    "finish_reason": {
                        "type": ["string", "null"],
                        "enum": [*_CHAT_FINISH_REASONS, None],
                    },
                    "index": {"type": "integer"},
                },
                "required": ["delta", "finish_reason", "index"],
            },
        },
        "created": {"type": "integer"},
        "model": {"type": "string"},
        "service_tier": _c(_SERVICE_TIER),
        "system_fingerprint": {"type": "string"},
        "object": {"type": "string", "enum": ["chat.completion.chunk"]},
        # Inline in the spec (not CompletionUsage); its description says it is null on every chunk
        # but the last when stream_options.include_usage is set, as the OpenAI API sends it.
        "usage": {
            "type": ["object", "null"],
            "properties": {
                "completion_tokens": {"type": "integer"},
                "prompt_tokens": {"type": "integer"},
                "total_tokens": {"type": "integer"},
            },
            "required": ["prompt_tokens", "completion_tokens", "total_tokens"],
        },
    },
    "required": ["choices", "created", "id", "model", "object"],
    "$defs": {
        "ChatCompletionStreamResponseDelta": _c(_CHAT_COMPLETION_STREAM_RESPONSE_DELTA),
        "ChatCompletionMessageToolCallChunk": _c(
            _CHAT_COMPLETION_MESSAGE_TOOL_CALL_CHUNK
        ),
        "ChatCompletionTokenLogprob": _c(_CHAT_COMPLETION_TOKEN_LOGPROB),
    },
}

# components/schemas/CreateCompletionResponse ("text_completion"). The spec
# says the streamed and non-streamed objects share this shape.
COMPLETION: dict[str, Any] = {
    "$schema": SCHEMA_DIALECT,
    "title": "CreateCompletionResponse",
    "type": "object",
    "properties": {
        "id": {"type": "string"},
        "choices": {
            "type": "array",
            "items": {
                "type": "object",
                "properties": {
                    "finish_reason": {
                        "type": "string",
                        "enum": ["stop", "length", "content_filter"],
                    },
                    "index": {"type": "integer"},
                    "logprobs": {
                        "type": ["object", "null"],
                        "properties": {
                            "text_offset": {
                                "type": "array",
                                "items": {"type": "integer"},
                            },
                            "token_logprobs": {
                                "type": "array",
                                "items": {"type": "number"},
                            },
                            "tokens": {"type": "array", "items": {"type": "string"}},
                            "top_logprobs": {
                                "type": "array",
                                "items": {
                                    "type": "object",
                                    "additionalProperties": {"type": "number"},
                                },
                            },
                        },
                    },
                    "text": {"type": "string"},
                },
                "required": ["finish_reason", "index", "logprobs", "text"],
            },
        },
        "created": {"type": "integer"},
        "model": {"type": "string"},
        "system_fingerprint": {"type": "string"},
        "object": {"type": "string", "enum": ["text_completion"]},
        "usage": {"$ref": "#/$defs/CompletionUsage"},
    },
    "required": ["id", "object", "created", "model", "choices"],
    "$defs": {
        "CompletionUsage": _c(_COMPLETION_USAGE),
    },
}

# components/schemas/CreateEmbeddingResponse
EMBEDDING_LIST: dict[str, Any] = {
    "$schema": SCHEMA_DIALECT,
    "title": "CreateEmbeddingResponse",
    "type": "object",
    "properties": {
        "data": {"type": "array", "items": {"$ref": "#/$defs/Embedding"}},
        "model": {"type": "string"},
        "object": {"type": "string", "enum": ["list"]},
        "usage": {
            "type": "object",
            "properties": {
                "prompt_tokens": {"type": "integer"},
                "total_tokens": {"type": "integer"},
            },
            "required": ["prompt_tokens", "total_tokens"],
        },
    },
    "required": ["object", "model", "data", "usage"],
    "$defs": {
        "Embedding": _c(_EMBEDDING),
    },
}

# components/schemas/Model
MODEL: dict[str, Any] = {
    "$schema": SCHEMA_DIALECT,
    "title": "Model",
    **_c(_MODEL),
}

# components/schemas/ListModelsResponse
MODEL_LIST: dict[str, Any] = {
    "$schema": SCHEMA_DIALECT,
    "title": "ListModelsResponse",
    "type": "object",
    "properties": {
        "object": {"type": "string", "enum": ["list"]},
        "data": {"type": "array", "items": {"$ref": "#/$defs/Model"}},
    },
    "required": ["object", "data"],
    "$defs": {
        "Model": _c(_MODEL),
    },
}

# components/schemas/ErrorResponse
ERROR_RESPONSE: dict[str, Any] = {
    "$schema": SCHEMA_DIALECT,
    "title": "ErrorResponse",
    "type": "object",
    "properties": {
        "error": {"$ref": "#/$defs/Error"},
    },
    "required": ["error"],
    "$defs": {
        "Error": _c(_ERROR),
    },
}

ALL_SCHEMAS: dict[str, dict[str, Any]] = {
    "CHAT_COMPLETION": CHAT_COMPLETION,
    "CHAT_COMPLETION_CHUNK": CHAT_COMPLETION_CHUNK,
    "COMPLETION": COMPLETION,
    "EMBEDDING_LIST": EMBEDDING_LIST,
    "MODEL": MODEL,
    "MODEL_LIST": MODEL_LIST,
    "ERROR_RESPONSE": ERROR_RESPONSE,
}


def validate(instance: Any, schema: dict[str, Any]) -> None:
    """Raise ``jsonschema.ValidationError`` unless ``instance`` matches ``schema``."""
    import jsonschema  # imported here so the schemas load without jsonschema

    jsonschema.Draft202012Validator(schema).validate(instance)
