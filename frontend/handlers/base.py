"""The handler base classes: JSON errors, request ids, bearer keys, bounded bodies."""

from __future__ import annotations

import asyncio
import hashlib
import json
import re
import socket
import traceback
from collections.abc import Awaitable, Coroutine
from typing import Any

import structlog
import tornado.web
from tornado.http1connection import HTTP1Connection

from accounts import keys
from accounts.records import MAX_ENDPOINT
from broker.client import new_request_id
from frontend import errors
from frontend.gateway import Gateway
from frontend.metrics import Metrics
from frontend.openai_format import is_service_name
from frontend.policies import Call
from frontend.services import ServiceView

log = structlog.get_logger(__name__)

# The 401s of a request that carried no credential at all: their challenge names no error.
NO_CREDENTIAL_GIVEN = frozenset({"missing_key", "sign_in_required"})
# Printable ASCII, as the accounts store requires of idempotency keys.
_IDEMPOTENCY_KEY = re.compile(r"[\x20-\x7e]{1,255}")
# RFC 6750 b64token, bounded so a huge header cannot cost us a hash.
_BEARER = re.compile(r"Bearer +([A-Za-z0-9\-._~+/]{1,256}=*) *", re.IGNORECASE)


class BaseHandler(tornado.web.RequestHandler):
    """Every response is JSON with an ``X-Request-Id``; every error is
    ``{"error": {"code", "message"}}``. ``gateway`` is passed by the route table."""

    realm = "llmapi"  # named in the WWW-Authenticate challenge of a 401
    # The counters of in-flight requests, once prepare() has counted this one.
    _metrics: Metrics | None = None

    def initialize(self, gateway: Gateway) -> None:
        self.gateway = gateway
        self.request_id = new_request_id()
        self.service: str | None = None
        self.call: Call | None = None  # the API request sent for this one, once there is one
        self.identified_prefix: str | None = None  # the caller's key prefix, once a key check knew it
        self.error_code: str | None = None  # the code of the error answered, if one was

    @property
    def key_prefix(self) -> str | None:
        """The public prefix of the caller's key, once known (never more of the key)."""
        if self.call is not None and self.call.admission is not None:
            return self.call.admission.key_prefix
        return self.identified_prefix

    def set_default_headers(self) -> None:
        self.set_header("Content-Type", "application/json; charset=utf-8")
        self.set_header("X-Content-Type-Options", "nosniff")
        self._allow_origin()
        # Called again when an error clears the headers: the error keeps its request id.
        if getattr(self, "request_id", None) is not None:
            self.set_header("X-Request-Id", self.request_id)

    def _allow_origin(self) -> None:
        origin = self.request.headers.get("Origin")
        allowed = self.application.settings.get("cors_origins", ())
        if origin is None or not ({origin, "*"} & set(allowed)):
            return
        self.set_header("Access-Control-Allow-Origin", origin)
        self.set_header("Vary", "Origin")
        self.set_header("Access-Control-Expose-Headers", "X-Request-Id, Retry-After, x-should-retry")
        if self.request.method == "OPTIONS":
            self.set_header("Access-Control-Allow-Methods", ", ".join(self.allowed_methods()))
            self.set_header("Access-Control-Allow-Headers", ", ".join(self._allowed_headers()))
            self.set_header("Access-Control-Max-Age", "600")

    def _allowed_headers(self) -> list[str]:
        """What a browser's request may carry: ours, and those the OpenAI SDKs add (``x-stainless-*``
        describing the SDK, ``openai-*`` naming an organization or project), which change nothing."""
        asked = self.request.headers.get("Access-Control-Request-Headers", "")
        sdk = [name.strip() for name in asked.split(",") if name.strip().lower().startswith(_SDK_HEADERS)]
        return [*_CORS_HEADERS, *sdk]

    def prepare(self) -> Awaitable[None] | None:
        # Tornado's hook may be a coroutine (the admin handlers' is); this one runs at once.
        # Every log line of this request, here and in the accounts threads, carries its id.
        structlog.contextvars.bind_contextvars(request_id=self.request_id)
        self.set_header("X-Request-Id", self.request_id)
        self._metrics = self.settings.get("metrics")
        if self._metrics is not None:
            self._metrics.in_flight.inc()
        self._check_head_size()
        return None

    def _check_head_size(self) -> None:
        """A URL or headers over the configured limits: 414 or 431, before anything else is read."""
        limits = self.gateway.settings
        if len(self.request.uri or "") > limits.max_url_bytes:
            raise errors.ApiError("uri_too_long", f"the URL exceeds {limits.max_url_bytes} bytes")
        request = self.request
        size = len(request.method or "") + len(request.uri or "") + len(request.version) + 4
        size += sum(len(name) + len(value) + 4 for name, value in request.headers.get_all())
        if size > limits.max_header_bytes:
            raise errors.ApiError("headers_too_large", f"the request's headers exceed {limits.max_header_bytes} bytes")

    def on_finish(self) -> None:
        # prepare() may not have run (an unsupported method, say): count only what it counted.
        if self._metrics is not None:
            self._metrics.in_flight.dec()

    def write_json(self, value: Any, status: int = 200) -> None:
        self.set_status(status)
        self.finish(json.dumps(value, ensure_ascii=False))

    def send_error(self, status_code: int = 500, **kwargs: Any) -> None:
        # An ApiError is not Tornado's: its status comes from the table of codes.
        error = kwargs.get("exc_info", (None, None, None))[1]
        if isinstance(error, errors.ApiError):
            status_code = error.status
        super().send_error(status_code, **kwargs)

    def error_headers(self, error: errors.ApiError) -> dict[str, str]:
        """The HTTP headers that go with ``error``: its retry rule's, and on a 401 the
        challenge of RFC 6750 (``invalid_token`` when a credential was given but refused)."""
        headers = error.retry_headers()
        if error.status == 401:
            challenge = f'Bearer realm="{self.realm}"'
            if error.code not in NO_CREDENTIAL_GIVEN:
                challenge += ', error="invalid_token"'
            headers["WWW-Authenticate"] = challenge
        return headers

    def write_error(self, status_code: int, **kwargs: Any) -> None:
        error = kwargs.get("exc_info", (None, None, None))[1]
        if isinstance(error, errors.ApiError):
            for name, value in self.error_headers(error).items():
                self.set_header(name, value)
            self.error_code = error.code
            body = self.error_body(status_code, error.code, error.message, error.param)
        else:
            reason = self._reason if status_code != 500 else "internal error"
            self.error_code = _code_of(status_code)
            body = self.error_body(status_code, self.error_code, reason)
        if status_code == 405:
            self.set_header("Allow", ", ".join(self.allowed_methods()))
        if self.body_left_unread():
            # The body was not read, so what follows on this connection cannot be told apart
            # from it: the connection ends with this answer, and the client is told so.
            self.set_header("Connection", "close")
        self.finish(json.dumps(body, ensure_ascii=False))

    def body_left_unread(self) -> bool:
        """Whether this request's body stays unread: refused before a streamed body was taken."""
        return False

    def error_body(self, status: int, code: str, message: str, param: str | None = None) -> dict[str, Any]:
        return {"error": {"code": code, "message": message}, "request_id": self.request_id}

    def allowed_methods(self) -> list[str]:
        """The methods this handler answers (those it defines, and OPTIONS)."""
        defined = [
            method
            for method in ("GET", "HEAD", "POST", "DELETE", "PATCH", "PUT")
            if getattr(type(self), method.lower()) is not getattr(tornado.web.RequestHandler, method.lower())
        ]
        return [*defined, "OPTIONS"]

    def options(self, *args: Any) -> None:
        """CORS preflight (``frontend.cors_origins``), answered without a key."""
        self.set_status(204)
        self.finish()

    def log_exception(self, typ: Any, value: Any, tb: Any) -> None:
        if isinstance(value, (errors.ApiError, tornado.web.HTTPError)):
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
        if self.request.method == "OPTIONS":
            return  # a browser's preflight carries no key
        header = self.request.headers.get("Authorization")
        if header is None:
            raise errors.ApiError("missing_key", "an Authorization: Bearer <key> header is required")
        self.secret = bearer_secret(header, "key")
        if self.secret.startswith(keys.ADMIN_PREFIX):
            raise errors.ApiError(
                "admin_token_not_accepted", "an admin token opens /admin/ only; the model API takes an API key"
            )
        self.idempotency_key = self.request.headers.get("Idempotency-Key")
        if self.idempotency_key is not None and not _IDEMPOTENCY_KEY.fullmatch(self.idempotency_key):
            raise errors.ApiError(
                "invalid_idempotency_key", "Idempotency-Key must be 1 to 255 printable ASCII characters"
            )


def bearer_secret(header: str, what: str) -> str:
    """The secret of an ``Authorization: Bearer <secret>`` header; a 401 when it has another shape."""
    match = _BEARER.fullmatch(header)
    if match is None:
        raise errors.ApiError("missing_key", f"the Authorization header must be 'Bearer <{what}>'")
    return match.group(1)


_CORS_HEADERS = ("Authorization", "Content-Type", "Idempotency-Key")
_SDK_HEADERS = ("x-stainless-", "openai-")

# What cancellable() returns when the client went away before the work ended.
GONE = object()
# The status logged for a client that left before its answer, as nginx does.
CLIENT_CLOSED_REQUEST = 499


@tornado.web.stream_request_body
class JsonBodyHandler(AuthenticatedHandler):
    """Reads a JSON object body of at most ``max_body_bytes``, refusing more early,
    and runs the request's work so that a client that disconnects cancels it."""

    # This request's own task while it awaits its work, which a cancel of the task stops.
    _task: asyncio.Task[Any] | None = None
    _cancel_sent = False
    _gone = False
    _stopping = False
    # Set once prepare() has let the request through: its body is read from then on.
    _reading = False

    async def cancellable(self, work: Coroutine[Any, Any, Any]) -> Any:
        """The result of ``work`` (admitting and serving the request), or :data:`GONE`
        when the client disconnected first: ``work`` is then cancelled wherever it is,
        which stops the request at the broker and worker and settles its bill.

        ``work`` runs in this request's own task, which a disconnect or a shutdown cancels
        (a task of its own would cost a task and a turn of the loop per request)."""
        if self._gone:
            work.close()
            return self._client_gone()
        task = asyncio.current_task()
        assert task is not None, "a handler runs in a task"
        self._task = task
        try:
            return await work
        except asyncio.CancelledError:
            if not self._cancel_sent:
                raise  # not ours: the loop itself is stopping
            if self._stopping and not self._gone:
                raise errors.shutting_down() from None
            return self._client_gone()
        finally:
            self._task = None
            if self._cancel_sent:
                task.uncancel()

    def _client_gone(self) -> Any:
        self.set_status(CLIENT_CLOSED_REQUEST, "Client Closed Request")
        return GONE

    def _cancel_work(self) -> None:
        """Cancel the work :meth:`cancellable` awaits, once, if it is awaiting it."""
        if self._task is not None and not self._cancel_sent:
            self._cancel_sent = True
            self._task.cancel()

    def abort(self) -> asyncio.Future[Any] | None:
        """The server is stopping: cancel this request's work; its client gets a 503. The
        request's task is returned, to be waited for."""
        self._stopping = True
        task = self._task
        self._cancel_work()
        return task

    def new_call(self) -> Call:
        """This request, for ``self.service``, as the gateway's policies take it."""
        self.call = Call(
            secret=self.secret,
            service=self.service or "",
            request_id=self.request_id,
            endpoint=self.request.path[:MAX_ENDPOINT],
            address=self.request.remote_ip or "",
            idempotency_key=self.idempotency_key,
            request_hash=None if self.idempotency_key is None else self.request_digest(),
            client_left=self.client_left,
        )
        return self.call

    def client_left(self) -> bool:
        """Whether the client has closed its connection, even if the event loop has not yet
        handled the close: its socket then reads as ended (one non-blocking peek)."""
        connection = self.request.connection
        stream = connection.stream if isinstance(connection, HTTP1Connection) else None
        if self._gone or stream is None or stream.closed():
            return True
        try:
            return stream.socket.recv(1, socket.MSG_PEEK | socket.MSG_DONTWAIT) == b""
        except (BlockingIOError, InterruptedError):
            return False  # nothing to read: still there
        except OSError:
            return True

    def on_finish(self) -> None:
        super().on_finish()
        self.settings["in_flight"].discard(self)

    def on_connection_close(self) -> None:
        self.settings["in_flight"].discard(self)
        self._gone = True
        self._cancel_work()

    def prepare(self) -> None:
        super().prepare()
        if self.request.method == "OPTIONS":
            return
        self.settings["in_flight"].add(self)
        self._chunks: list[bytes] = []
        self._received = 0
        self.limit = self.gateway.settings.max_body_bytes
        declared = self.request.headers.get("Content-Length")
        if declared is not None and declared.isdigit() and int(declared) > self.limit:
            raise errors.body_too_large(self.limit)
        self._reading = True

    def body_left_unread(self) -> bool:
        headers = self.request.headers
        has_body = headers.get("Content-Length", "0") != "0" or "Transfer-Encoding" in headers
        return has_body and not self._reading

    async def checked_model(self, model: str, capability: str, what: str) -> ServiceView | None:
        """``model``'s service (None while it has no worker) if it can serve ``capability``
        (else 404 or 400, before admission: nothing is charged); ``self.service`` names it."""
        if not is_service_name(model):
            raise errors.model_not_found(model)
        view = await self.gateway.directory.check(model, capability, what)
        self.service = model
        return view

    def check_text_length(self, length: int, param: str) -> None:
        limit = self.gateway.settings.max_text_chars
        if length > limit:
            raise errors.text_too_long(limit, param)

    def data_received(self, chunk: bytes) -> None:
        if self.request.method == "OPTIONS":
            return
        # Past the limit (a chunked body declares no length) the rest is read
        # and dropped; json_body() then refuses the request.
        self._received += len(chunk)
        if self._received <= self.limit:
            self._chunks.append(chunk)

    def request_digest(self) -> str:
        """What a retry under the same idempotency key must repeat: the path and the body's bytes."""
        return hashlib.sha256(self.request.path.encode() + b"\n" + b"".join(self._chunks)).hexdigest()

    def json_body(self) -> dict[str, Any]:
        if self._received > self.limit:
            raise errors.body_too_large(self.limit)
        return json_object(b"".join(self._chunks))


def json_object(raw: bytes) -> dict[str, Any]:
    """``raw`` as a JSON object of valid Unicode; an ApiError 400 saying what is wrong otherwise.

    The bytes are decoded as strict UTF-8 first: ``json.loads`` would let the UTF-8 form of a
    lone surrogate (``ED A0 80``) through, a string that no later encoding can write."""
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError:
        raise errors.ApiError("invalid_json", "the body is not valid UTF-8") from None
    try:
        value = json.loads(text)
    except (ValueError, RecursionError):
        raise errors.ApiError("invalid_json", "the body is not valid JSON") from None
    if not isinstance(value, dict):
        raise errors.ApiError("invalid_json", "the body must be a JSON object")
    if _SURROGATE_ESCAPE.search(raw) and not _is_unicode(value):
        raise errors.ApiError("invalid_json", "the body holds a lone UTF-16 surrogate (\\ud800 to \\udfff)")
    return value


# JSON may escape UTF-16 surrogates; a lone one is no character at all.
_SURROGATE_ESCAPE = re.compile(rb"\\u[dD][89a-fA-F]")


def _is_unicode(value: Any) -> bool:
    """Whether every string in ``value`` is valid Unicode (no lone surrogates)."""
    try:
        json.dumps(value, ensure_ascii=False).encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


def _code_of(status: int) -> str:
    return {404: "not_found", 405: "method_not_allowed", 400: "bad_request"}.get(status, errors.INTERNAL_ERROR)
