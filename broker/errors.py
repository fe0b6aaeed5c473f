"""Every error the bus can answer, with its wire code.

This module is the single table that maps a failure to the code carried in an
ERROR message (see ``docs/protocol.md``). The direct client raises these
classes; the frontend maps their codes onto its HTTP answers (``frontend/errors.py``).
"""

from __future__ import annotations


class ProtocolError(Exception):
    """A message that does not follow the wire protocol (never sent back as a code)."""


class UnsupportedVersion(ProtocolError):
    """A well-formed header of a protocol version this code does not speak.

    ``side`` is ``"LLMC"`` or ``"LLMW"``, ``version`` the peer's version and
    ``supported`` the versions spoken here; the broker answers the peer with
    :class:`VersionRefused`'s code (clients) or a DISCONNECT naming both (workers).
    """

    def __init__(self, side: str, version: int, supported: tuple[int, ...]) -> None:
        self.side = side
        self.version = version
        self.supported = supported
        spoken = ", ".join(str(v) for v in supported[:-1]) + f" and {supported[-1]}"
        super().__init__(f"protocol version {version} is not supported; this broker speaks versions {spoken}")


class BusError(Exception):
    """A request that the bus answered with an error.

    ``code`` is the wire code and ``retryable`` whether the same request may
    succeed later; the HTTP answer each code becomes is ``frontend/errors.py``'s.
    """

    code = "INTERNAL"
    retryable = False

    def __init__(self, message: str = "", error_type: str = "") -> None:
        super().__init__(message or self.__doc__)
        self.message = message or (self.__doc__ or "").strip()
        self.error_type = error_type


class BadRequest(BusError):
    """The request is malformed (bad id, deadline or body)."""

    code = "BAD_REQUEST"


class UnknownService(BusError):
    """No worker has ever offered this service and it is not configured."""

    code = "UNKNOWN_SERVICE"


class Overloaded(BusError):
    """The service's queue is full; try again shortly."""

    code = "OVERLOADED"
    retryable = True


class ServiceUnavailable(BusError):
    """The service has had no live worker for too long."""

    code = "UNAVAILABLE"
    retryable = True


class RequestTimeout(BusError):
    """The request's deadline passed before it was answered."""

    code = "TIMEOUT"
    retryable = True


class WorkerLost(BusError):
    """Every worker given this request died while serving it."""

    code = "WORKER_LOST"
    retryable = True


class WorkerError(BusError):
    """The algorithm raised an error or returned something that is not JSON."""

    code = "WORKER_ERROR"


class InvalidInput(BusError):
    """The algorithm rejected the request's input (for example a parameter out of bounds)."""

    code = "INVALID_INPUT"


class Cancelled(BusError):
    """The request was cancelled by its client."""

    code = "CANCELLED"


class ClientLimit(BusError):
    """This client's key has as many requests in flight as ``broker.client_limits`` allows it."""

    code = "CLIENT_LIMIT"
    retryable = True


class ConcurrencyLimited(BusError):
    """The request's tenant (its API key) has as many requests queued or running as
    its ``max_concurrent`` allows; one of them must end first."""

    code = "CONCURRENCY_LIMITED"
    retryable = True


class VersionRefused(BusError):
    """The broker does not speak this client's protocol version; the message names both."""

    code = "UNSUPPORTED_VERSION"


class BrokerUnavailable(BusError):
    """The broker is not answering (raised by clients, never sent on the wire)."""

    code = "BROKER_UNAVAILABLE"
    retryable = True


class InternalError(BusError):
    """An unexpected failure inside the bus."""


ERRORS_BY_CODE: dict[str, type[BusError]] = {
    cls.code: cls
    for cls in (
        BadRequest,
        UnknownService,
        Overloaded,
        ServiceUnavailable,
        RequestTimeout,
        WorkerLost,
        WorkerError,
        InvalidInput,
        Cancelled,
        ClientLimit,
        ConcurrencyLimited,
        VersionRefused,
        BrokerUnavailable,
        InternalError,
    )
}


def error_from_code(code: str, message: str, error_type: str = "") -> BusError:
    """The exception for an ERROR message; unknown codes become InternalError."""
    return ERRORS_BY_CODE.get(code, InternalError)(message, error_type)
