"""Every HTTP error the API answers, in one table, and the mapping from the
bus's and the accounts store's errors onto it.

The body is always ``{"error": {"code": ..., "message": ...}}``.
"""

from __future__ import annotations

import math

from tornado.web import HTTPError

from accounts import errors as accounts_errors
from broker import errors as bus_errors


class ApiError(HTTPError):
    """An error answer: HTTP ``status``, a stable ``code``, a ``message`` for
    people, extra response ``headers``, and the request field at fault
    (``param``, as OpenAI's errors name it) when there is one."""

    def __init__(
        self, status: int, code: str, message: str, headers: dict[str, str] | None = None, param: str | None = None
    ) -> None:
        super().__init__(status, reason=None)
        self.code = code
        self.message = message
        self.headers = dict(headers or {})
        self.param = param

    def __str__(self) -> str:
        return f"{self.status_code} {self.code}: {self.message}"


def missing_key(message: str) -> ApiError:
    return ApiError(401, "missing_key", message, {"WWW-Authenticate": 'Bearer realm="llmapi"'})


def wrong_credential(code: str, message: str) -> ApiError:
    """A credential of the other kind: an admin token on the model API, or an API key on /admin/."""
    return ApiError(401, code, message, {"WWW-Authenticate": 'Bearer realm="llmapi", error="invalid_token"'})


def bad_request(code: str, message: str) -> ApiError:
    return ApiError(400, code, message)


def body_too_large(limit: int) -> ApiError:
    return ApiError(413, "body_too_large", f"the request body exceeds {limit} bytes")


def text_too_long(limit: int, param: str) -> ApiError:
    return ApiError(413, "text_too_long", f"the text of the request exceeds {limit} characters", param=param)


def invalid_parameter(param: str | None, message: str) -> ApiError:
    """A request field out of bounds or of the wrong type (not the algorithm's refusal,
    ``invalid_input``, which is the caller's fault found after admission)."""
    return ApiError(400, "invalid_value", message, param=param)


def unsupported_parameter(param: str | None, message: str) -> ApiError:
    return ApiError(400, "unsupported_parameter", message, param=param)


def model_not_found(model: str) -> ApiError:
    return ApiError(404, "model_not_found", f"the model {model!r} does not exist or has no worker", param="model")


def model_not_supported(model: str, what: str, serves: list[str]) -> ApiError:
    can = ", ".join(sorted(serves)) or "nothing"
    return ApiError(
        400, "model_not_supported", f"the model {model!r} does not serve {what} (it serves: {can})", param="model"
    )

INTERNAL_ERROR = "internal_error"

# Seconds a client should wait before retrying a 503 from the bus.
RETRY_AFTER_SECONDS = 1

# accounts reason -> API code; statuses come from accounts.errors.CODES.
_ACCOUNT_CODES = {
    accounts_errors.UNKNOWN_KEY: "invalid_key",
    accounts_errors.REVOKED: "revoked_key",
    accounts_errors.NOT_YET_VALID: "key_not_yet_valid",
    accounts_errors.EXPIRED: "key_expired",
    accounts_errors.QUOTA_EXHAUSTED: "quota_exhausted",
    accounts_errors.SERVICE_NOT_ALLOWED: "service_not_allowed",
    accounts_errors.TOKEN_BUDGET_EXHAUSTED: "token_budget_exhausted",
    accounts_errors.RATE_LIMITED: "rate_limited",
    accounts_errors.DATABASE_UNAVAILABLE: "database_unavailable",
    accounts_errors.SCHEMA_NOT_READY: "database_unavailable",
    accounts_errors.INVALID_VALUE: "invalid_request",
    accounts_errors.KEY_NOT_FOUND: "key_not_found",
    accounts_errors.UNKNOWN_ADMIN_TOKEN: "invalid_admin_token",
    accounts_errors.ADMIN_TOKEN_NOT_FOUND: "admin_token_not_found",
    accounts_errors.IDEMPOTENCY_KEY_REUSED: "idempotency_key_reused",
}


def from_accounts(error: accounts_errors.AccountsError) -> ApiError:
    code = _ACCOUNT_CODES.get(error.code, INTERNAL_ERROR)
    status = error.http_status if code != INTERNAL_ERROR else 500
    # A database failure's own text may name internal hosts: say only what failed.
    message = error.message if status < 500 else accounts_errors.CODES.get(error.code, (0, "internal error"))[1]
    api_error = ApiError(status, code, message)
    if status == 401:
        api_error.headers["WWW-Authenticate"] = 'Bearer realm="llmapi", error="invalid_token"'
    if status == 503:
        api_error.headers["Retry-After"] = str(RETRY_AFTER_SECONDS)
    if isinstance(error, accounts_errors.AdmissionDenied):
        if error.retry_after is not None:
            api_error.headers["Retry-After"] = str(max(1, math.ceil(error.retry_after)))
        if error.reason in accounts_errors.FINAL_REASONS:
            # OpenAI's SDKs retry every 429 unless told not to; waiting will not help these.
            api_error.headers["x-should-retry"] = "false"
    return api_error


def too_many_failed_keys(seconds: float) -> ApiError:
    """The client's address sent too many wrong keys: refused, unchecked, until its block ends."""
    wait = max(1, math.ceil(seconds))
    return ApiError(
        429,
        "too_many_failed_keys",
        f"too many requests with wrong keys from this address; retry in {wait} s",
        {"Retry-After": str(wait)},
    )


def admission_timeout(seconds: float) -> ApiError:
    """The accounts database did not admit the request in time: nothing is charged."""
    return ApiError(
        503,
        "database_unavailable",
        f"the accounts database did not answer within {seconds:g} s",
        {"Retry-After": str(RETRY_AFTER_SECONDS)},
    )


def shutting_down() -> ApiError:
    """The frontend stopped before the request was answered: nothing is charged."""
    return ApiError(503, "shutting_down", "this server is restarting; retry", {"Retry-After": str(RETRY_AFTER_SECONDS)})


# Bus codes whose HTTP code is spelled otherwise; the rest are the bus code in lower case.
_BUS_CODES = {bus_errors.InternalError.code: INTERNAL_ERROR}


def from_bus(error: bus_errors.BusError) -> ApiError:
    """The HTTP answer to a bus error; statuses come from ``broker.errors``."""
    api_error = ApiError(error.http_status, _BUS_CODES.get(error.code, error.code.lower()), error.message)
    if isinstance(error, bus_errors.WorkerError) and error.error_type:
        api_error.message = f"{error.error_type}: {error.message}"
    if error.http_status in (429, 503):
        api_error.headers["Retry-After"] = str(RETRY_AFTER_SECONDS)
    return api_error
