"""The OpenAPI description of the HTTP API, served at ``/openapi.json``."""

from __future__ import annotations

from typing import Any

from frontend.handlers.base import BaseHandler

_ERROR = {"$ref": "#/components/schemas/Error"}


def _errors(*statuses: int) -> dict[str, Any]:
    meaning = {
        400: "Malformed JSON, or `text` missing or not a string",
        401: "Missing, malformed, unknown or revoked key",
        403: "Key outside its validity window, or not allowed this service",
        404: "Unknown service",
        413: "Body or text over the configured limit",
        429: "The key's request quota is used up",
        502: "The worker failed (the algorithm's error type is in the message)",
        503: "Queue full, no live worker, broker or database unavailable; see Retry-After",
        504: "The request's deadline passed",
    }
    return {
        str(status): {"description": meaning[status], "content": {"application/json": {"schema": _ERROR}}}
        for status in statuses
    }


def _api_operation(summary: str) -> dict[str, Any]:
    return {
        "summary": summary,
        "security": [{"bearer": []}],
        "requestBody": {
            "required": True,
            "content": {"application/json": {"schema": {"$ref": "#/components/schemas/TextRequest"}}},
        },
        "responses": {
            "200": {
                "description": "The algorithm's answer",
                "content": {"application/json": {"schema": {"$ref": "#/components/schemas/Message"}}},
            },
            **_errors(400, 401, 403, 404, 413, 429, 502, 503, 504),
        },
    }


def _openai_operation(summary: str) -> dict[str, Any]:
    """Bodies and answers as the OpenAI API defines them; errors in OpenAI's shape."""
    return {
        "summary": summary,
        "security": [{"bearer": []}],
        "requestBody": {"required": True, "content": {"application/json": {"schema": {"type": "object", "required": ["model"]}}}},
        "responses": {
            "200": {"description": "The OpenAI API's response object, or text/event-stream chunks"},
            **_errors(400, 401, 403, 404, 413, 429, 502, 503, 504),
        },
    }


def document() -> dict[str, Any]:
    service_parameter = {
        "name": "service",
        "in": "path",
        "required": True,
        "schema": {"type": "string", "pattern": "^[A-Za-z0-9][A-Za-z0-9._-]{0,99}$"},
    }
    return {
        "openapi": "3.1.0",
        "info": {"title": "llmapi", "version": "1"},
        "components": {
            "securitySchemes": {"bearer": {"type": "http", "scheme": "bearer"}},
            "schemas": {
                "TextRequest": {
                    "type": "object",
                    "required": ["text"],
                    "properties": {"text": {"type": "string"}},
                },
                "Message": {
                    "type": "object",
                    "required": ["message", "request_id"],
                    "properties": {"message": {}, "request_id": {"type": "string"}},
                },
                "Error": {
                    "type": "object",
                    "required": ["error"],
                    "properties": {
                        "error": {
                            "type": "object",
                            "required": ["code", "message"],
                            "properties": {"code": {"type": "string"}, "message": {"type": "string"}},
                        },
                        "request_id": {"type": "string"},
                    },
                },
                "Usage": {
                    "type": "object",
                    "properties": {
                        "key": {"type": "string"},
                        "usage": {"type": "array", "items": {"type": "object"}},
                    },
                },
            },
        },
        "paths": {
            "/api/": {"post": _api_operation("Send text to the default service")},
            "/analyze/": {"post": _api_operation("Same as POST /api/")},
            "/api/{service}/": {
                "parameters": [service_parameter],
                "post": _api_operation("Send text to a named service"),
            },
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
                        "200": {
                            "description": "Usage rows",
                            "content": {"application/json": {"schema": {"$ref": "#/components/schemas/Usage"}}},
                        },
                        **_errors(400, 401, 503),
                    },
                }
            },
            "/healthz": {"get": {"summary": "The process is alive", "responses": {"200": {"description": "alive"}}}},
            "/readyz": {
                "get": {
                    "summary": "The broker answers and each configured service has a live worker",
                    "responses": {"200": {"description": "ready"}, "503": {"description": "not ready"}},
                }
            },
            "/openapi.json": {"get": {"summary": "This document", "responses": {"200": {"description": "OpenAPI"}}}},
            "/v1/models": {
                "get": {
                    "summary": "OpenAI-compatible: the services (models) the key may use",
                    "security": [{"bearer": []}],
                    "responses": {"200": {"description": "A list of models"}, **_errors(401, 503)},
                }
            },
            "/v1/chat/completions": {"post": _openai_operation("OpenAI-compatible chat completion; SSE with stream")},
            "/v1/completions": {"post": _openai_operation("OpenAI-compatible text completion; SSE with stream")},
            "/v1/embeddings": {"post": _openai_operation("OpenAI-compatible embeddings (float or base64)")},
            "/metrics": {
                "get": {
                    "summary": "Prometheus metrics (a metrics token, or loopback callers only)",
                    "responses": {"200": {"description": "Prometheus text format"}, **_errors(401)},
                }
            },
        },
    }


class OpenApiHandler(BaseHandler):
    def get(self) -> None:
        self.write_json(document())
