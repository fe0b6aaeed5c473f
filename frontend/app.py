"""The route table and the access log."""

from __future__ import annotations

import structlog
import tornado.web

from frontend.gateway import Gateway
from frontend.inflight import InFlight
from frontend.handlers.api import ApiHandler
from frontend.handlers.base import BaseHandler
from frontend.handlers.health import HealthHandler, ReadyHandler
from frontend.handlers.openai_api import (
    ChatCompletionsHandler,
    CompletionsHandler,
    EmbeddingsHandler,
    ModelsHandler,
    OpenAINotFoundHandler,
)
from frontend.handlers.usage import UsageHandler
from frontend.metrics import Metrics, MetricsHandler
from frontend.openai_format import SERVICE_NAME
from frontend.openapi import OpenApiHandler

access_log = structlog.get_logger("frontend.access")

SERVICE = f"({SERVICE_NAME})"


def make_app(
    gateway: Gateway, services: list[str], in_flight: InFlight | None = None, cors_origins: list[str] = ()
) -> tornado.web.Application:
    """All routes; ``services`` are those ``/readyz`` requires a live worker for; ``in_flight``
    collects the API requests being served, for a graceful shutdown."""
    deps = {"gateway": gateway}
    metrics = Metrics()
    routes = [
        (r"/api/", ApiHandler, deps),
        (r"/analyze/", ApiHandler, deps),
        (rf"/api/{SERVICE}/", ApiHandler, deps),
        (r"/usage/", UsageHandler, deps),
        (r"/v1/models", ModelsHandler, deps),
        (r"/v1/models/([^/]+)", ModelsHandler, deps),
        (r"/v1/chat/completions", ChatCompletionsHandler, deps),
        (r"/v1/completions", CompletionsHandler, deps),
        (r"/v1/embeddings", EmbeddingsHandler, deps),
        (r"/v1/.*", OpenAINotFoundHandler, deps),
        (r"/healthz", HealthHandler, deps),
        (r"/readyz", ReadyHandler, {**deps, "services": services}),
        (r"/openapi.json", OpenApiHandler, deps),
        (r"/metrics", MetricsHandler, {**deps, "metrics": metrics}),
    ]
    return tornado.web.Application(
        routes,
        default_handler_class=NotFoundHandler,
        default_handler_args=deps,
        log_function=lambda handler: log_request(handler, metrics),
        compress_response=False,
        metrics=metrics,
        in_flight=in_flight if in_flight is not None else InFlight(),
        cors_origins=tuple(cors_origins),
    )


class NotFoundHandler(BaseHandler):
    def prepare(self) -> None:
        super().prepare()
        raise tornado.web.HTTPError(404, reason="no such endpoint")


def log_request(handler: tornado.web.RequestHandler, metrics: Metrics) -> None:
    """One line per request (never the key, only its public prefix), and its metrics."""
    service = getattr(handler, "service", None)
    # Only an admitted request's service becomes a label: anyone may name anything.
    admitted = service if getattr(handler, "key_prefix", None) else None
    metrics.observe(admitted, handler.get_status(), handler.request.request_time())
    access_log.info(
        "http_request",
        method=handler.request.method,
        path=handler.request.path,
        status=handler.get_status(),
        latency_ms=round(handler.request.request_time() * 1000, 2),
        request_id=getattr(handler, "request_id", None),
        key_prefix=getattr(handler, "key_prefix", None),
        service=service,
    )
