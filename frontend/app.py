"""The route table and the access log."""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import tornado.web

from accounts.key_brake import BrakePolicy
from config.logs import QueuedLog
from config.settings import AdminSettings
from frontend.admin import api as admin_api
from frontend.admin import pages
from frontend.admin.base import ConsoleContext
from frontend.admin.operations import AdminOperations
from frontend.gateway import Gateway
from frontend.handlers.api import ApiHandler
from frontend.handlers.base import BaseHandler
from frontend.handlers.health import HealthHandler, ReadyHandler
from frontend.handlers.home import HomeHandler
from frontend.handlers.metrics import MetricsHandler
from frontend.handlers.openai_api import (
    ChatCompletionsHandler,
    CompletionsHandler,
    EmbeddingsHandler,
    ModelsHandler,
    OpenAINotFoundHandler,
)
from frontend.handlers.responses import ResponsesHandler, StoredResponseHandler
from frontend.handlers.usage import UsageHandler
from frontend.inflight import InFlight
from frontend.key_brake import KeyBrake
from frontend.metrics import Metrics
from frontend.openai_format import SERVICE_NAME
from frontend.openapi import DOCUMENT, OpenApiHandler
from frontend.policies.usage import answered_tokens

ACCESS_LOG = "frontend.access"
SERVICE = f"({SERVICE_NAME})"
KEY_ID = r"([1-9][0-9]{0,8})"
CONSOLE_FILES = Path(__file__).with_name("admin")

# A line of a route table: the path pattern, its handler, and what its initialize() takes.
Route = tuple[str, type[tornado.web.RequestHandler], dict[str, Any]]


def make_app(
    gateway: Gateway,
    services: list[str],
    in_flight: InFlight | None = None,
    cors_origins: Sequence[str] = (),
    metrics: Metrics | None = None,
    console_url: str | None = None,
    access_log: QueuedLog | None = None,
) -> tornado.web.Application:
    """All routes; ``services`` are those ``/readyz`` requires a live worker for; ``in_flight``
    collects the API requests being served, for a graceful shutdown; ``metrics`` are served
    at ``/metrics`` (the gateway's, which count its answers' figures, or new ones); ``/`` names
    ``console_url``, the console's address when it serves; ``access_log`` writes a line per
    request (its caller closes it at shutdown; a new one by default)."""
    deps: dict[str, Any] = {"gateway": gateway}
    metrics = metrics if metrics is not None else Metrics()
    log = access_log if access_log is not None else QueuedLog(ACCESS_LOG)
    routes: list[Route] = [
        (r"/", HomeHandler, {**deps, "console_url": console_url}),
        (r"/api/", ApiHandler, deps),
        (r"/analyze/", ApiHandler, deps),
        (rf"/api/{SERVICE}/", ApiHandler, deps),
        (r"/usage/", UsageHandler, deps),
        (r"/v1/models", ModelsHandler, deps),
        (r"/v1/models/([^/]+)", ModelsHandler, deps),
        (r"/v1/chat/completions", ChatCompletionsHandler, deps),
        (r"/v1/completions", CompletionsHandler, deps),
        (r"/v1/embeddings", EmbeddingsHandler, deps),
        (r"/v1/responses", ResponsesHandler, deps),
        (r"/v1/responses/([^/]+)", StoredResponseHandler, deps),
        (r"/v1/.*", OpenAINotFoundHandler, deps),
        (r"/healthz", HealthHandler, deps),
        (r"/readyz", ReadyHandler, {**deps, "services": services}),
        (DOCUMENT, OpenApiHandler, deps),
        (r"/metrics", MetricsHandler, {**deps, "metrics": metrics}),
    ]
    return tornado.web.Application(
        routes,
        default_handler_class=NotFoundHandler,
        default_handler_args=deps,
        log_function=lambda handler: log_request(handler, metrics, log),
        compress_response=False,
        metrics=metrics,
        in_flight=in_flight if in_flight is not None else InFlight(),
        cors_origins=tuple(cors_origins),
    )


def make_admin_app(
    gateway: Gateway,
    settings: AdminSettings,
    clock: Callable[[], float] = time.monotonic,
    access_log: QueuedLog | None = None,
) -> tornado.web.Application:
    """The console and its API, for a listener of their own (``admin.host``, ``admin.port``):
    the model API's routes are not here, nor these there. ``access_log`` as for :func:`make_app`."""
    log = access_log if access_log is not None else QueuedLog(ACCESS_LOG)
    console = ConsoleContext(
        settings,
        AdminOperations(gateway),
        # A failed sign-in from an address past the limit blocks it for a window, everywhere.
        KeyBrake(
            BrakePolicy(
                settings.sign_in_failures,
                settings.sign_in_window,
                settings.sign_in_window,
                settings.sign_in_window,
                scope="admin ",
            )
        ),
        clock,
    )
    deps: dict[str, Any] = {"gateway": gateway, "console": console}
    routes: list[Route] = [
        (r"/admin/api/keys", admin_api.KeysApi, deps),
        (rf"/admin/api/keys/{KEY_ID}", admin_api.KeyApi, deps),
        (rf"/admin/api/keys/{KEY_ID}/revoke", admin_api.RevokeApi, deps),
        (rf"/admin/api/keys/{KEY_ID}/rotate", admin_api.RotateApi, deps),
        (rf"/admin/api/keys/{KEY_ID}/usage", admin_api.UsageApi, deps),
        (r"/admin/api/usage", admin_api.UsageApi, deps),
        (r"/admin/api/usage/keys", admin_api.TopKeysApi, deps),
        (r"/admin/api/requests", admin_api.RequestsApi, deps),
        (r"/admin/api/audit", admin_api.AuditApi, deps),
        (r"/admin/api/cluster", admin_api.ClusterApi, deps),
        (r"/admin", tornado.web.RedirectHandler, {"url": "/admin/"}),
        (r"/admin/", pages.Home, deps),
        (r"/admin/sign-in", pages.SignIn, deps),
        (r"/admin/sign-out", pages.SignOut, deps),
        (r"/admin/keys", pages.Keys, deps),
        (rf"/admin/keys/{KEY_ID}", pages.KeyPage, deps),
        (rf"/admin/keys/{KEY_ID}/rotate", pages.Rotate, deps),
        (rf"/admin/keys/{KEY_ID}/revoke", pages.Revoke, deps),
        (r"/admin/requests", pages.Requests, deps),
        (r"/admin/audit", pages.Audit, deps),
        (r"/admin/tokens", pages.AdminTokens, deps),
        (rf"/admin/tokens/{KEY_ID}/revoke", pages.RevokeAdminToken, deps),
        (r"/admin/usage", pages.Usage, deps),
        (r"/admin/cluster", pages.Cluster, deps),
        (r"/admin/cluster/live", pages.ClusterLive, deps),
    ]
    return tornado.web.Application(
        routes,
        default_handler_class=NotFoundHandler,
        default_handler_args={"gateway": gateway},
        log_function=lambda handler: log_admin_request(handler, log),
        compress_response=True,
        console=console,
        template_path=str(CONSOLE_FILES / "templates"),
        static_path=str(CONSOLE_FILES / "static"),
        static_url_prefix="/admin/static/",
    )


class NotFoundHandler(BaseHandler):
    def prepare(self) -> None:
        super().prepare()
        raise tornado.web.HTTPError(404, reason="no such endpoint")


def log_request(handler: tornado.web.RequestHandler, metrics: Metrics, access_log: QueuedLog) -> None:
    """One line per request (never the key, only its public prefix), and its metrics."""
    service = getattr(handler, "service", None)
    # Only an admitted request's service becomes a label: anyone may name anything.
    admitted = service if getattr(handler, "key_prefix", None) else None
    error_code = getattr(handler, "error_code", None)
    metrics.observe(admitted, handler.get_status(), handler.request.request_time(), error_code)
    call = getattr(handler, "call", None)
    access_log.info(
        "http_request",
        **_request_fields(handler),
        key_prefix=getattr(handler, "key_prefix", None),
        service=service,
        code=error_code,
        tokens=answered_tokens(call.ending) if call is not None and call.ending is not None else None,
    )


def log_admin_request(handler: tornado.web.RequestHandler, access_log: QueuedLog) -> None:
    """One line per console or admin API request, naming the admin token by id and prefix, never more."""
    admin = getattr(handler, "admin", None)
    access_log.info(
        "admin_request",
        **_request_fields(handler),
        admin_token_id=None if admin is None else admin.id,
        admin_token_prefix=None if admin is None else admin.prefix,
    )


def _request_fields(handler: tornado.web.RequestHandler) -> dict[str, object]:
    """What every access log line says of its request: never a header, a body or a query string."""
    return {
        "method": handler.request.method,
        "path": handler.request.path,
        "status": handler.get_status(),
        "latency_ms": round(handler.request.request_time() * 1000, 2),
        "request_id": getattr(handler, "request_id", None),
    }
