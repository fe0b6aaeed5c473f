"""The OpenAPI description of the HTTP API, served at ``/openapi.json``.

Every body in it comes from the typed models of ``frontend.schemas``, the
same that validate the requests, so the document cannot drift from what the
server accepts and answers.
"""

from __future__ import annotations

from functools import cache
from typing import Any

from pydantic import BaseModel
from pydantic.json_schema import models_json_schema

from accounts.key_search import STATUSES
from frontend import errors as http_errors
from frontend import schemas
from frontend.admin import schemas as admin_schemas
from frontend.handlers.base import BaseHandler
from frontend.openai_format import SERVICE_NAME

DOCUMENT = "/openapi.json"
_REF = "#/components/schemas/{model}"
_MODELS: list[type[BaseModel]] = [
    schemas.TextRequest,
    schemas.TextAnswer,
    schemas.UsageReport,
    schemas.ErrorBody,
    schemas.ServerInfo,
    schemas.ChatCompletionRequest,
    schemas.CompletionRequest,
    schemas.EmbeddingRequest,
    schemas.ChatCompletion,
    schemas.ChatCompletionChunk,
    schemas.Completion,
    schemas.EmbeddingList,
    schemas.ResponsesRequest,
    schemas.ResponseObject,
    schemas.ResponseDeleted,
    schemas.Model,
    schemas.ModelList,
    schemas.OpenAIError,
    *admin_schemas.MODELS,
]


def _meaning(status: int) -> str:
    """What an error answer of ``status`` means: each of its codes in ``frontend.errors.CODES``."""
    return "; ".join(
        f"`{code}`: {kind.meaning}" for code, kind in http_errors.CODES.items() if kind.status == status
    )


_ALL_ERRORS = (400, 401, 403, 404, 413, 414, 422, 429, 431, 502, 503, 504)
_EVENTS = {"schema": {"type": "string"}}


_ADMIN_SECURITY: list[dict[str, list[str]]] = [{"admin": []}, {"console": []}]


def _admin(summary: str, answer: type[BaseModel], statuses: tuple[int, ...], request: type[BaseModel] | None = None,
           query: tuple[tuple[str, dict[str, Any]], ...] = (), created: bool = False) -> dict[str, Any]:
    """An operation of ``/admin/api/`` (on the console's listener, when ``admin.enabled``); one that
    takes ``format`` answers CSV as well as JSON."""
    errors = {
        str(status): {"description": _meaning(status), "content": _json(schemas.ErrorBody)}
        for status in (401, 429, *statuses)
    }
    operation: dict[str, Any] = {
        "summary": summary,
        "tags": ["admin"],
        "security": _ADMIN_SECURITY,
        "parameters": [{"name": name, "in": "query", "required": False, "schema": schema} for name, schema in query],
        "responses": {"201" if created else "200": {"description": "OK", "content": _json(answer)}, **errors},
    }
    if _FORMAT in query:
        operation["responses"]["200"]["content"]["text/csv"] = {"schema": {"type": "string"}}
    if request is not None:
        operation["requestBody"] = {"required": True, "content": _json(request)}
    return operation


_DAY = {"type": "string", "format": "date"}
_FORMAT = ("format", {"type": "string", "enum": ["json", "csv"], "default": "json"})
_USAGE_QUERY = (("since", _DAY), ("until", _DAY), ("service", {"type": "string"}))
_KEY_ID = {"name": "key_id", "in": "path", "required": True, "schema": {"type": "integer", "minimum": 1}}


def _admin_paths() -> dict[str, Any]:
    a = admin_schemas
    return {
        "/admin/api/keys": {
            "get": _admin(
                "A page of keys, searched by text (email, name, organisation, prefix; digits: the id) and status",
                a.KeyPageAnswer,
                (400, 503),
                query=(
                    ("search", {"type": "string", "maxLength": 200}),
                    ("status", {"type": "string", "enum": list(STATUSES)}),
                    ("limit", {"type": "integer", "minimum": 1, "maximum": 500, "default": 50}),
                    ("offset", {"type": "integer", "minimum": 0, "default": 0}),
                ),
            ),
            "post": _admin("Create a key; its secret is in this answer only", a.KeySecretAnswer, (400, 403, 503),
                           a.KeyCreate, created=True),
        },
        "/admin/api/keys/{key_id}": {
            "parameters": [_KEY_ID],
            "get": _admin("One key", a.KeyAnswer, (404, 503)),
            "patch": _admin("Change a key's owner, limit, window, services or note", a.KeyAnswer, (400, 403, 404, 503),
                            a.KeyUpdate),
        },
        "/admin/api/keys/{key_id}/revoke": {
            "parameters": [_KEY_ID],
            "post": _admin("Revoke a key: refused from now on", a.KeyAnswer, (403, 404, 503)),
        },
        "/admin/api/keys/{key_id}/rotate": {
            "parameters": [_KEY_ID],
            "post": _admin("A new secret for the key (in this answer only); the old one stops working",
                           a.KeySecretAnswer, (403, 404, 503)),
        },
        "/admin/api/keys/{key_id}/usage": {
            "parameters": [_KEY_ID],
            "get": _admin("The key's usage per day and service (`format=csv`: a CSV download)", a.UsageAnswer,
                          (400, 404, 503), query=(*_USAGE_QUERY, _FORMAT)),
        },
        "/admin/api/usage": {
            "get": _admin(
                "Usage per day and service, of every key or of one (`key`); `format=csv` for a CSV download",
                a.UsageAnswer,
                (400, 404, 503),
                query=(("key", {"type": "integer", "minimum": 1}), *_USAGE_QUERY, _FORMAT),
            ),
        },
        "/admin/api/usage/keys": {
            "get": _admin(
                "The keys with the most requests", a.TopKeysAnswer, (400, 503),
                query=(*_USAGE_QUERY, ("limit", {"type": "integer", "minimum": 1, "maximum": 500, "default": 10})),
            ),
        },
        "/admin/api/requests": {
            "get": _admin(
                "Admitted requests, newest first, by key, outcome (`ok`, `failed` or one outcome) and days; "
                "`format=csv` for a CSV download",
                a.RequestsAnswer,
                (400, 503),
                query=(
                    ("key", {"type": "integer", "minimum": 1}),
                    ("outcome", {"type": "string", "maxLength": 32}),
                    ("since", _DAY),
                    ("until", _DAY),
                    ("limit", {"type": "integer", "minimum": 1, "maximum": 1000, "default": 50}),
                    ("offset", {"type": "integer", "minimum": 0, "default": 0}),
                    _FORMAT,
                ),
            ),
        },
        "/admin/api/audit": {
            "get": _admin(
                "Admin changes to keys, oldest first", a.AuditAnswer, (400, 503),
                query=(("key", {"type": "integer", "minimum": 1}), ("since", _DAY)),
            ),
        },
        "/admin/api/cluster": {
            "get": _admin("Services, their workers (state, device, model, memory, tasks) and queues", a.ClusterAnswer,
                          (503,)),
        },
    }


def _ref(model: type[BaseModel]) -> dict[str, str]:
    return {"$ref": _REF.format(model=model.__name__)}


def _json(model: type[BaseModel]) -> dict[str, Any]:
    return {"application/json": {"schema": _ref(model)}}


def _errors(error: type[BaseModel], statuses: tuple[int, ...]) -> dict[str, Any]:
    return {str(status): {"description": _meaning(status), "content": _json(error)} for status in statuses}


def _operation(summary: str, request: type[BaseModel] | None, answer: dict[str, Any], error: type[BaseModel],
               statuses: tuple[int, ...] = _ALL_ERRORS) -> dict[str, Any]:
    operation: dict[str, Any] = {
        "summary": summary,
        "security": [{"bearer": []}],
        "responses": {"200": answer, **_errors(error, statuses)},
    }
    if request is not None:
        operation["requestBody"] = {"required": True, "content": _json(request)}
    return operation


def _generation(
    summary: str, request: type[BaseModel], whole: type[BaseModel], chunk: type[BaseModel]
) -> dict[str, Any]:
    answer = {
        "description": f"A `{whole.__name__}`, or with `stream` server-sent events each holding a `{chunk.__name__}`, "
        "then `data: [DONE]`",
        "content": {**_json(whole), "text/event-stream": {"schema": {"type": "string"}}},
    }
    return _operation(summary, request, answer, schemas.OpenAIError)


@cache
def document() -> dict[str, Any]:
    _, definitions = models_json_schema([(model, "validation") for model in _MODELS], ref_template=_REF)
    api = _operation(
        "Send text to a service (the Django server's API)",
        schemas.TextRequest,
        {"description": "The algorithm's answer", "content": _json(schemas.TextAnswer)},
        schemas.ErrorBody,
    )
    service = {
        "name": "service", "in": "path", "required": True, "schema": {"type": "string", "pattern": f"^{SERVICE_NAME}$"}
    }
    model = {"name": "model", "in": "path", "required": True, "schema": {"type": "string"}}
    plain = {"description": "OK", "content": {"application/json": {"schema": {"type": "object"}}}}
    return {
        "openapi": "3.1.0",
        "info": {"title": "llmapi", "version": "1"},
        # Every error code an answer can carry, from the one table of them.
        "x-error-codes": {
            code: {"status": kind.status, "type": kind.openai_type, "meaning": kind.meaning, "retry": kind.retry}
            for code, kind in http_errors.CODES.items()
        },
        "components": {
            "securitySchemes": {
                "bearer": {"type": "http", "scheme": "bearer"},
                "admin": {"type": "http", "scheme": "bearer", "description": "An admin token (llmadm_...)"},
                "console": {"type": "apiKey", "in": "cookie", "name": "llmapi_admin",
                            "description": "A console session; changes need its X-CSRF-Token header"},
            },
            "schemas": definitions["$defs"],
        },
        "paths": {
            "/": {
                "get": {
                    "summary": "What this server is, the endpoints a client calls and this document's path "
                    "(a page of links when the client asks for text/html)",
                    "responses": {
                        "200": {
                            "description": "The server",
                            "content": {**_json(schemas.ServerInfo), "text/html": {"schema": {"type": "string"}}},
                        }
                    },
                }
            },
            "/api/": {"post": api},
            "/analyze/": {"post": {**api, "summary": "Same as POST /api/"}},
            "/api/{service}/": {"parameters": [service], "post": {**api, "summary": "Send text to a named service"}},
            "/usage/": {
                "get": {
                    "summary": "The caller's usage per day and service",
                    "security": [{"bearer": []}],
                    "parameters": [
                        {"name": name, "in": "query", "required": False, "schema": schema}
                        for name, schema in (
                            ("service", {"type": "string"}),
                            ("since", {"type": "string", "format": "date"}),
                            ("until", {"type": "string", "format": "date"}),
                        )
                    ],
                    "responses": {
                        "200": {"description": "The report", "content": _json(schemas.UsageReport)},
                        **_errors(schemas.ErrorBody, (400, 401, 429, 503)),
                    },
                }
            },
            "/healthz": {"get": {"summary": "The process is alive", "responses": {"200": plain}}},
            "/readyz": {
                "get": {
                    "summary": "The broker answers and each configured service has a live worker",
                    "responses": {"200": plain, "503": plain},
                }
            },
            DOCUMENT: {"get": {"summary": "This document", "responses": {"200": plain}}},
            "/metrics": {
                "get": {
                    "summary": "Prometheus metrics (a metrics token, or loopback callers only)",
                    "responses": {
                        "200": {
                            "description": "Prometheus text format",
                            "content": {"text/plain": {"schema": {"type": "string"}}},
                        },
                        **_errors(schemas.ErrorBody, (401,)),
                    },
                }
            },
            "/v1/models": {
                "get": _operation(
                    "The models (services) the key may use that have a worker",
                    None,
                    {"description": "A list of models", "content": _json(schemas.ModelList)},
                    schemas.OpenAIError,
                    (401, 503),
                )
            },
            "/v1/models/{model}": {
                "parameters": [model],
                "get": _operation(
                    "One model",
                    None,
                    {"description": "The model", "content": _json(schemas.Model)},
                    schemas.OpenAIError,
                    (401, 404, 503),
                ),
            },
            "/v1/chat/completions": {
                "post": _generation(
                    "Chat completion",
                    schemas.ChatCompletionRequest,
                    schemas.ChatCompletion,
                    schemas.ChatCompletionChunk,
                )
            },
            "/v1/completions": {
                "post": _generation(
                    "Text completion", schemas.CompletionRequest, schemas.Completion, schemas.Completion
                )
            },
            "/v1/responses": {
                "post": _operation(
                    "A response (the Responses API), whole or streamed as typed events",
                    schemas.ResponsesRequest,
                    {
                        "description": "A `ResponseObject`, or with `stream` server-sent events (`event:` its type, "
                        "`data:` the event), the last `response.completed` or `response.incomplete`",
                        "content": {**_json(schemas.ResponseObject), "text/event-stream": _EVENTS},
                    },
                    schemas.OpenAIError,
                )
            },
            "/v1/responses/{response_id}": {
                "parameters": [{"name": "response_id", "in": "path", "required": True, "schema": {"type": "string"}}],
                "get": _operation(
                    "A response the key kept",
                    None,
                    {"description": "The response", "content": _json(schemas.ResponseObject)},
                    schemas.OpenAIError,
                    (401, 404, 503),
                ),
                "delete": _operation(
                    "Forget a response the key kept",
                    None,
                    {"description": "Deleted", "content": _json(schemas.ResponseDeleted)},
                    schemas.OpenAIError,
                    (401, 404, 503),
                ),
            },
            **_admin_paths(),
            "/v1/embeddings": {
                "post": _operation(
                    "Embeddings, as floats or base64",
                    schemas.EmbeddingRequest,
                    {"description": "The vectors", "content": _json(schemas.EmbeddingList)},
                    schemas.OpenAIError,
                )
            },
        },
    }


class OpenApiHandler(BaseHandler):
    def get(self) -> None:
        self.write_json(document())
