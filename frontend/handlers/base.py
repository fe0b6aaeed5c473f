"""The handler base classes: JSON errors, request ids, bearer keys, bounded bodies."""

from __future__ import annotations

import asyncio
import json
import re
import traceback
from collections.abc import Awaitable
from typing import Any

import structlog
import tornado.web

from accounts.records import Admission
from broker.client import new_request_id
from frontend import errors
from frontend.gateway import Gateway

log = structlog.get_logger(__name__)

# Printable ASCII, as the accounts store requires of idempotency keys.
_IDEMPOTENCY_KEY = re.compile(r"[\x20-\x7e]{1,255}")
# RFC 6750 b64token, bounded so a huge header cannot cost us a hash.
_BEARER = re.compile(r"Bearer +([A-Za-z0-9\-._~+/]{1,256}=*) *", re.IGNORECASE)


class BaseHandler(tornado.web.RequestHandler):
    """Every response is JSON with an ``X-Request-Id``; every error is
    ``{"error": {"code", "message"}}``. ``gateway`` is passed by the route table."""

    def initialize(self, gateway: Gateway) -> None:
        self.gateway = gateway
        self.request_id = new_request_id()
        self.key_prefix: str | None = None
        self.service: str | None = None

    def set_default_headers(self) -> None:
        self.set_header("Content-Type", "application/json; charset=utf-8")
        self.set_header("X-Content-Type-Options", "nosniff")
        # Called again when an error clears the headers: the error keeps its request id.
        if getattr(self, "request_id", None) is not None:
            self.set_header("X-Request-Id", self.request_id)

    def prepare(self) -> None:
        # Every log line of this request, here and in the accounts threads, carries its id.
        structlog.contextvars.bind_contextvars(request_id=self.request_id)
        self.set_header("X-Request-Id", self.request_id)
        self._metrics = self.settings.get("metrics")
        if self._metrics is not None:
            self._metrics.in_flight.inc()

    def on_finish(self) -> None:
        # prepare() may not have run (an unsupported method, say): count only what it counted.
        if getattr(self, "_metrics", None) is not None:
            self._metrics.in_flight.dec()

    def write_json(self, value: Any, status: int = 200) -> None:
        self.set_status(status)
        self.finish(json.dumps(value, ensure_ascii=False))

    def write_error(self, status_code: int, **kwargs: Any) -> None:
        error = kwargs.get("exc_info", (None, None, None))[1]
        if isinstance(error, errors.ApiError):
            for name, value in error.headers.items():
                self.set_header(name, value)
            body = self.error_body(status_code, error.code, error.message)
        else:
            reason = self._reason if status_code != 500 else "internal error"
            body = self.error_body(status_code, _code_of(status_code), reason)
        self.finish(json.dumps(body, ensure_ascii=False))

    def error_body(self, status: int, code: str, message: str) -> dict[str, Any]:
        return {"error": {"code": code, "message": message}, "request_id": self.request_id}

    def log_exception(self, typ: Any, value: Any, tb: Any) -> None:
        if isinstance(value, tornado.web.HTTPError):
            return  # an answer, not a failure: the access log has it
        log.error(
            "unhandled_error",
            request_id=self.request_id,
            error_type=getattr(typ, "__name__", str(typ)),
            traceback="".join(traceback.format_exception(typ, value, tb)),
        )


class AuthenticatedHandler(BaseHandler):
    """Takes the key from ``Authorization: Bearer <key>`` before anything else."""

    def prepare(self) -> None:
        super().prepare()
        header = self.request.headers.get("Authorization")
        if header is None:
            raise errors.missing_key("an Authorization: Bearer <key> header is required")
        match = _BEARER.fullmatch(header)
        if match is None:
            raise errors.missing_key("the Authorization header must be 'Bearer <key>'")
        self.secret = match.group(1)
        self.idempotency_key = self.request.headers.get("Idempotency-Key")
        if self.idempotency_key is not None and not _IDEMPOTENCY_KEY.fullmatch(self.idempotency_key):
            raise errors.bad_request("invalid_idempotency_key", "Idempotency-Key must be 1 to 255 printable ASCII characters")


# What cancellable() returns when the client went away before the work ended.
GONE = object()
# The status logged for a client that left before its answer, as nginx does.
CLIENT_CLOSED_REQUEST = 499


@tornado.web.stream_request_body
class JsonBodyHandler(AuthenticatedHandler):
    """Reads a JSON object body of at most ``max_body_bytes``, refusing more early,
    and runs the request's work so that a client that disconnects cancels it."""

    _work: asyncio.Future[Any] | None = None
    _gone = False
    _stopping = False

    async def cancellable(self, work: Awaitable[Any]) -> Any:
        """The result of ``work`` (admitting and serving the request), or :data:`GONE`
        when the client disconnected first: ``work`` is then cancelled wherever it is,
        which stops the request at the broker and worker and settles its bill."""
        self._work = asyncio.ensure_future(work)
        if self._gone:
            self._work.cancel()
        try:
            return await self._work
        except asyncio.CancelledError:
            if self._stopping and not self._gone:
                raise errors.shutting_down() from None
            self.set_status(CLIENT_CLOSED_REQUEST, "Client Closed Request")
            return GONE

    def abort(self) -> asyncio.Future[Any] | None:
        """The server is stopping: cancel this request's work; its client gets a 503."""
        self._stopping = True
        if self._work is not None and not self._work.done():
            self._work.cancel()
        return self._work

    async def admitted(self) -> Admission:
        """Admit and count this request for ``self.service``, noting whose key it is."""
        admission = await self.gateway.admit(self.secret, self.service, self.idempotency_key, self.request_id)
        self.key_prefix = admission.key_prefix
        return admission

    def on_finish(self) -> None:
        super().on_finish()
        self.settings["in_flight"].discard(self)

    def on_connection_close(self) -> None:
        self.settings["in_flight"].discard(self)
        self._gone = True
        if self._work is not None and not self._work.done():
            self._work.cancel()

    def prepare(self) -> None:
        super().prepare()
        self.settings["in_flight"].add(self)
        self._chunks: list[bytes] = []
        self._received = 0
        self.limit = self.gateway.settings.max_body_bytes
        declared = self.request.headers.get("Content-Length")
        if declared is not None and declared.isdigit() and int(declared) > self.limit:
            raise errors.body_too_large(self.limit)

    def data_received(self, chunk: bytes) -> None:
        # Past the limit (a chunked body declares no length) the rest is read
        # and dropped; json_body() then refuses the request.
        self._received += len(chunk)
        if self._received <= self.limit:
            self._chunks.append(chunk)

    def json_body(self) -> dict[str, Any]:
        if self._received > self.limit:
            raise errors.body_too_large(self.limit)
        try:
            value = json.loads(b"".join(self._chunks))
        except (ValueError, UnicodeDecodeError, RecursionError):
            raise errors.bad_request("invalid_json", "the body is not valid JSON") from None
        if not isinstance(value, dict):
            raise errors.bad_request("invalid_json", "the body must be a JSON object")
        return value


def _code_of(status: int) -> str:
    return {404: "not_found", 405: "method_not_allowed", 400: "bad_request"}.get(status, "internal_error")
