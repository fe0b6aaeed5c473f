"""Every error the accounts package raises, with its code.

:data:`MESSAGES` gives each failure's code a default message; which HTTP
answer each becomes is decided in one place, ``frontend/errors.py``.
Admission refusals share one class, :class:`AdmissionDenied`, whose ``reason`` is one of the admission
codes; every other failure has its own class. The admin command line maps
these classes to exit codes (see ``accounts/cli.py``).
"""

from __future__ import annotations

# Why an admission was refused (AdmissionDenied.reason).
UNKNOWN_KEY = "UNKNOWN_KEY"
REVOKED = "REVOKED"
NOT_YET_VALID = "NOT_YET_VALID"
EXPIRED = "EXPIRED"
QUOTA_EXHAUSTED = "QUOTA_EXHAUSTED"
SERVICE_NOT_ALLOWED = "SERVICE_NOT_ALLOWED"
TOKEN_BUDGET_EXHAUSTED = "TOKEN_BUDGET_EXHAUSTED"
RATE_LIMITED = "RATE_LIMITED"

# Codes of the other errors.
INTERNAL = "INTERNAL"
DATABASE_UNAVAILABLE = "DATABASE_UNAVAILABLE"
SCHEMA_NOT_READY = "SCHEMA_NOT_READY"
KEY_NOT_FOUND = "KEY_NOT_FOUND"
INVALID_VALUE = "INVALID_VALUE"
STORE_CLOSED = "STORE_CLOSED"
UNKNOWN_ADMIN_TOKEN = "UNKNOWN_ADMIN_TOKEN"
ADMIN_TOKEN_NOT_FOUND = "ADMIN_TOKEN_NOT_FOUND"
IDEMPOTENCY_KEY_REUSED = "IDEMPOTENCY_KEY_REUSED"

# code -> default message. The HTTP status each becomes is the frontend's business (frontend/errors.py).
MESSAGES: dict[str, str] = {
    UNKNOWN_KEY: "The API key is not known.",
    REVOKED: "The API key has been revoked.",
    NOT_YET_VALID: "The API key is not valid yet.",
    EXPIRED: "The API key has expired.",
    QUOTA_EXHAUSTED: "The API key has used all the requests it allows.",
    SERVICE_NOT_ALLOWED: "The API key may not use this service.",
    TOKEN_BUDGET_EXHAUSTED: "The API key has used all the tokens it allows.",
    RATE_LIMITED: "The API key has used all the requests or tokens it allows in a minute; retry later.",
    INTERNAL: "An unexpected failure in the accounts store.",
    DATABASE_UNAVAILABLE: "The accounts database is unavailable.",
    SCHEMA_NOT_READY: "The accounts database has no schema or an old one; run `llmapi accounts migrate`.",
    KEY_NOT_FOUND: "No key has this id.",
    INVALID_VALUE: "A value given for a key or a report is invalid.",
    STORE_CLOSED: "The account store has been closed.",
    UNKNOWN_ADMIN_TOKEN: "The admin token is not known, or has been revoked.",
    ADMIN_TOKEN_NOT_FOUND: "No admin token has this id.",
    IDEMPOTENCY_KEY_REUSED: "This idempotency key was first used for another request.",
}


ADMISSION_REASONS = frozenset(
    {
        UNKNOWN_KEY,
        REVOKED,
        NOT_YET_VALID,
        EXPIRED,
        QUOTA_EXHAUSTED,
        SERVICE_NOT_ALLOWED,
        TOKEN_BUDGET_EXHAUSTED,
        RATE_LIMITED,
    }
)
# Refusals that count as a failed key check, for the brake on key guessing (accounts.key_brake).
KEY_CHECK_FAILURES = frozenset({UNKNOWN_KEY, REVOKED})



class AccountsError(Exception):
    """Base of every error of the accounts package.

    ``code`` names the row of :data:`MESSAGES`, which gives the default ``message``.
    """

    code = INTERNAL

    def __init__(self, message: str = "") -> None:
        self.message = message or MESSAGES[self.code]
        super().__init__(self.message)


class AdmissionDenied(AccountsError):
    """A request was refused and not counted; ``reason`` says why.

    ``key_id`` and ``key_prefix`` identify the key when it exists (both are
    safe to log); they are ``None`` for an unknown key. ``retry_after`` is the
    seconds until a spent rate window ends (``RATE_LIMITED`` only).
    """

    def __init__(
        self,
        reason: str,
        message: str = "",
        *,
        key_id: int | None = None,
        key_prefix: str | None = None,
        retry_after: float | None = None,
    ) -> None:
        if reason not in ADMISSION_REASONS:
            raise ValueError(f"not an admission reason: {reason!r}")
        self.code = reason
        self.reason = reason
        self.key_id = key_id
        self.key_prefix = key_prefix
        self.retry_after = retry_after
        super().__init__(message)


class DatabaseUnavailable(AccountsError):
    """The database could not be reached, was locked too long, or failed to answer.

    The frontend answers 503: the key may well be valid.
    """

    code = DATABASE_UNAVAILABLE


class SchemaNotReady(DatabaseUnavailable):
    """The database is reachable but its tables are missing or older than the code."""

    code = SCHEMA_NOT_READY


class KeyNotFound(AccountsError):
    """An admin operation named a key id that does not exist."""

    code = KEY_NOT_FOUND


class InvalidValue(AccountsError, ValueError):
    """A value is out of range: negative limit, window ending before it starts,
    naive datetime, empty service name, malformed email, report ending before it starts,
    or malformed idempotency key."""

    code = INVALID_VALUE


class IdempotencyKeyReused(AccountsError):
    """A retry under an idempotency key carried another service or another body than the
    request first admitted under it (a client's bug: the retry is not the same request)."""

    code = IDEMPOTENCY_KEY_REUSED


class StoreClosed(AccountsError):
    """The store was used after :meth:`AccountStore.close`."""

    code = STORE_CLOSED


class AdminDenied(AccountsError):
    """An admin token was refused: unknown, malformed or revoked (which of them is not said)."""

    code = UNKNOWN_ADMIN_TOKEN


class AdminTokenNotFound(AccountsError):
    """An admin operation named an admin token id that does not exist."""

    code = ADMIN_TOKEN_NOT_FOUND
