"""The charging rule, stated once.

An admitted request is counted against its key at admission. It stays
charged when any of its answer was delivered (a whole answer, or any piece
of a stream, even one that then failed), or when it failed because of the
caller's own input (``INVALID_INPUT``). It is refunded, and its work
cancelled, when it ends before anything was delivered for any other reason:
the server failed (timeout, lost worker, overload, crash, shutdown) or the
client left. A request is never charged twice and never charged for nothing
it could use; a client cannot get an answer for free by leaving once it has
started to arrive.

Every admitted request leaves exactly one usage record, whose ``outcome``
names how it ended and whose ``charged`` says which way the rule went (see
``accounts.ledger``).
"""

from __future__ import annotations

from broker import errors as bus_errors

OK = "ok"
CLIENT_LEFT = "client_left"
ADMISSION_TIMEOUT = "admission_timeout"
SHUTDOWN = "shutdown"


def is_charged(delivered: bool, error: bus_errors.BusError | None = None) -> bool:
    """Whether a request that ended so counts against its key's quota."""
    return delivered or isinstance(error, bus_errors.InvalidInput)


def outcome_of(error: bus_errors.BusError) -> str:
    """The usage record's outcome for a request that failed with ``error``."""
    return error.code.lower()
