"""Every error the API answers, in one table, and the mapping from the bus's
and the accounts store's errors onto it.

:data:`CODES` is the one table: for each error code an answer can carry, its
HTTP status, its OpenAI error type, what it means (``/openapi.json`` lists the
codes of each status from it) and whether waiting helps (``Retry-After``) or
never does (``x-should-retry: false``, which OpenAI's SDKs obey). The accounts
store and the bus name their failures in their own words; the two mappings
below say which code each becomes.

An :class:`ApiError` names its code and nothing of HTTP: the handlers turn it
into an answer (``frontend.handlers.base``), whose body is always
``{"error": {"code": ..., "message": ...}}`` (under ``/v1`` OpenAI's shape).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Literal

from accounts import errors as accounts_errors
from broker import errors as bus_errors

# Seconds a client should wait before retrying where waiting helps and nothing says longer.
RETRY_AFTER_SECONDS = 1
INTERNAL_ERROR = "internal_error"


@dataclass(frozen=True)
class Code:
    """One error code: its HTTP status, OpenAI ``type``, meaning, and whether to retry:
    ``later`` sends Retry-After, ``never`` sends x-should-retry: false."""

    status: int
    openai_type: str
    meaning: str
    retry: Literal["", "later", "never"] = ""


_INVALID = "invalid_request_error"
_AUTH = "authentication_error"
_PERMISSION = "permission_error"
_RATE = "rate_limit_error"
_SERVER = "server_error"

CODES: dict[str, Code] = {
    "bad_request": Code(400, _INVALID, "a request the server could not parse (HTTP, or the bus's BAD_REQUEST)"),
    "invalid_json": Code(400, _INVALID, "the body is not a JSON object of valid Unicode"),
    "invalid_text": Code(400, _INVALID, "the body has no string field 'text'"),
    "invalid_value": Code(400, _INVALID, "a field out of bounds or of the wrong type (`param` names it)"),
    "invalid_date": Code(400, _INVALID, "a date that is not YYYY-MM-DD, or a range that ends before it starts"),
    "invalid_request": Code(400, _INVALID, "a value the accounts store refuses (an email, a window, a limit)"),
    "invalid_idempotency_key": Code(400, _INVALID, "an Idempotency-Key not of 1 to 255 printable ASCII characters"),
    "invalid_input": Code(400, _INVALID, "the algorithm refused the input (a parameter out of its bounds)"),
    "unsupported_parameter": Code(400, _INVALID, "a field this server does not support (`param` names it)"),
    "unsupported_schema": Code(400, _INVALID, "a JSON schema that cannot be enforced while decoding"),
    "model_not_supported": Code(400, _INVALID, "the model cannot serve this route"),
    "missing_key": Code(401, _AUTH, "no or malformed Authorization: Bearer header"),
    "invalid_key": Code(401, _AUTH, "the API key is not known"),
    "revoked_key": Code(401, _AUTH, "the API key was revoked"),
    "admin_token_not_accepted": Code(401, _AUTH, "an admin token sent to the model API"),
    "api_key_not_accepted": Code(401, _AUTH, "an API key sent to /admin/"),
    "invalid_admin_token": Code(401, _AUTH, "the admin token is not known or was revoked"),
    "sign_in_required": Code(401, _AUTH, "no admin token and no console session"),
    "key_not_yet_valid": Code(403, _PERMISSION, "the key's validity window has not begun"),
    "key_expired": Code(403, _PERMISSION, "the key's validity window has ended"),
    "service_not_allowed": Code(403, _PERMISSION, "the key may not use this service"),
    "forbidden": Code(403, _PERMISSION, "metrics asked for from outside loopback without the metrics token"),
    "csrf_token_invalid": Code(403, _PERMISSION, "a console change without its CSRF token"),
    "not_found": Code(404, _INVALID, "no such path"),
    "model_not_found": Code(404, _INVALID, "no service of this name"),
    "unknown_service": Code(404, _INVALID, "no worker has offered this service and it is not configured"),
    "key_not_found": Code(404, _INVALID, "no key has this id"),
    "admin_token_not_found": Code(404, _INVALID, "no admin token has this id"),
    "response_not_found": Code(404, _INVALID, "the key kept no response of this id (or it expired)"),
    "method_not_allowed": Code(405, _INVALID, "the path does not take this method (see Allow)"),
    "body_too_large": Code(413, _INVALID, "the body is over frontend.max_body_bytes"),
    "uri_too_long": Code(414, _INVALID, "the URL is over frontend.max_url_bytes"),
    "headers_too_large": Code(431, _INVALID, "the request line and headers are over frontend.max_header_bytes"),
    "text_too_long": Code(413, _INVALID, "the text is over frontend.max_text_chars"),
    "idempotency_key_reused": Code(422, _INVALID, "an Idempotency-Key reused for another path, service or body"),
    "quota_exhausted": Code(429, _RATE, "the key's request quota is used up", "never"),
    "token_budget_exhausted": Code(429, _RATE, "the key's token budget is used up", "never"),
    "rate_limited": Code(429, _RATE, "the key's requests or tokens for this minute are spent", "later"),
    "concurrency_limited": Code(429, _RATE, "the key has max_concurrent requests queued or running", "later"),
    "client_limit": Code(429, _RATE, "a direct client has its limit of requests in flight", "later"),
    "too_many_failed_keys": Code(429, _RATE, "the client's address sent too many wrong keys", "later"),
    "too_many_sign_ins": Code(429, _RATE, "too many failed console sign-ins from this address", "later"),
    "cancelled": Code(499, _INVALID, "the request was cancelled"),
    INTERNAL_ERROR: Code(500, _SERVER, "an unexpected failure"),
    "worker_lost": Code(502, _SERVER, "every worker given the request died serving it"),
    "worker_error": Code(502, _SERVER, "the algorithm raised (the message names its error type)"),
    "unsupported_version": Code(502, _SERVER, "the broker does not speak the frontend's protocol version"),
    "overloaded": Code(503, _SERVER, "the service's queue, or the key's share of it, is full", "later"),
    "unavailable": Code(503, _SERVER, "the service has no live worker yet", "later"),
    "broker_unavailable": Code(503, _SERVER, "the broker does not answer", "later"),
    "database_unavailable": Code(503, _SERVER, "the accounts database is unavailable or too slow", "later"),
    "shutting_down": Code(503, _SERVER, "this frontend is restarting", "later"),
    "timeout": Code(504, _SERVER, "the request's deadline passed"),
}


def status_of(code: str) -> int:
    return CODES[code].status


class ApiError(Exception):
    """A refusal or failure to answer: a ``code`` of :data:`CODES` (which gives its HTTP
    status and retry rule), a ``message`` for people, the request field at fault
    (``param``, as OpenAI's errors name it) when there is one, and the seconds to wait
    before retrying (``retry_after``) where the code's rule is to retry later."""

    def __init__(self, code: str, message: str, param: str | None = None, retry_after: float | None = None) -> None:
        super().__init__(code, message)
        self.kind = CODES[code]
        self.code = code
        self.message = message
        self.param = param
        self.retry_after = retry_after

    @property
    def status(self) -> int:
        return self.kind.status

    def __str__(self) -> str:
        return f"{self.status} {self.code}: {self.message}"

    def wait(self, seconds: float) -> ApiError:
        """This error, telling the client to retry in ``seconds`` (at least 1)."""
        self.retry_after = seconds
        return self

    def retry_headers(self) -> dict[str, str]:
        """``Retry-After`` where waiting helps, ``x-should-retry: false`` where it never does."""
        if self.kind.retry == "later":
            wait = RETRY_AFTER_SECONDS if self.retry_after is None else self.retry_after
            return {"Retry-After": str(max(1, math.ceil(wait)))}
        if self.kind.retry == "never":
            return {"x-should-retry": "false"}
        return {}


def body_too_large(limit: int) -> ApiError:
    return ApiError("body_too_large", f"the request body exceeds {limit} bytes")


def text_too_long(limit: int, param: str) -> ApiError:
    return ApiError("text_too_long", f"the text of the request exceeds {limit} characters", param=param)


def invalid_parameter(param: str | None, message: str) -> ApiError:
    """A request field out of bounds or of the wrong type (not the algorithm's refusal,
    ``invalid_input``, which is the caller's fault found after admission)."""
    return ApiError("invalid_value", message, param=param)


def unsupported_parameter(param: str | None, message: str) -> ApiError:
    return ApiError("unsupported_parameter", message, param=param)


def model_not_found(model: str) -> ApiError:
    return ApiError("model_not_found", f"the model {model!r} does not exist or has no worker", param="model")


def model_not_supported(model: str, what: str, serves: list[str]) -> ApiError:
    can = ", ".join(sorted(serves)) or "nothing"
    message = f"the model {model!r} does not serve {what} (it serves: {can})"
    return ApiError("model_not_supported", message, param="model")


# The accounts store's code -> the API's.
ACCOUNT_CODES = {
    accounts_errors.UNKNOWN_KEY: "invalid_key",
    accounts_errors.REVOKED: "revoked_key",
    accounts_errors.NOT_YET_VALID: "key_not_yet_valid",
    accounts_errors.EXPIRED: "key_expired",
    accounts_errors.QUOTA_EXHAUSTED: "quota_exhausted",
    accounts_errors.SERVICE_NOT_ALLOWED: "service_not_allowed",
    accounts_errors.TOKEN_BUDGET_EXHAUSTED: "token_budget_exhausted",
    accounts_errors.RATE_LIMITED: "rate_limited",
    accounts_errors.INTERNAL: INTERNAL_ERROR,
    accounts_errors.STORE_CLOSED: INTERNAL_ERROR,
    accounts_errors.DATABASE_UNAVAILABLE: "database_unavailable",
    accounts_errors.SCHEMA_NOT_READY: "database_unavailable",
    accounts_errors.INVALID_VALUE: "invalid_request",
    accounts_errors.KEY_NOT_FOUND: "key_not_found",
    accounts_errors.UNKNOWN_ADMIN_TOKEN: "invalid_admin_token",
    accounts_errors.ADMIN_TOKEN_NOT_FOUND: "admin_token_not_found",
    accounts_errors.IDEMPOTENCY_KEY_REUSED: "idempotency_key_reused",
}


def from_accounts(error: accounts_errors.AccountsError) -> ApiError:
    code = ACCOUNT_CODES.get(error.code, INTERNAL_ERROR)
    # A database failure's own text may name internal hosts: say only what failed.
    message = error.message if status_of(code) < 500 else accounts_errors.MESSAGES.get(error.code, "internal error")
    retry_after = error.retry_after if isinstance(error, accounts_errors.AdmissionDenied) else None
    return ApiError(code, message, retry_after=retry_after)


def too_many_failed_keys(seconds: float) -> ApiError:
    """The client's address sent too many wrong keys: refused, unchecked, until its block ends."""
    wait = max(1, math.ceil(seconds))
    return ApiError(
        "too_many_failed_keys", f"too many requests with wrong keys from this address; retry in {wait} s"
    ).wait(wait)


def admission_timeout(seconds: float) -> ApiError:
    """The accounts database did not admit the request in time: nothing is charged."""
    return ApiError("database_unavailable", f"the accounts database did not answer within {seconds:g} s")


def shutting_down() -> ApiError:
    """The frontend stopped before the request was answered: nothing is charged."""
    return ApiError("shutting_down", "this server is restarting; retry")


# The bus's code -> the API's: its own code in lower case, but for these.
BUS_CODES = {bus_errors.InternalError.code: INTERNAL_ERROR}


def bus_code(wire_code: str) -> str:
    return BUS_CODES.get(wire_code, wire_code.lower())


def from_bus(error: bus_errors.BusError) -> ApiError:
    message = error.message
    if isinstance(error, bus_errors.WorkerError) and error.error_type:
        message = f"{error.error_type}: {message}"
    return ApiError(bus_code(error.code), message)
