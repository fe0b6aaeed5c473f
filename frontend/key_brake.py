"""This frontend's memory of the client addresses the accounts database has blocked for
failing too often: guessing API keys on the API, and failed sign-ins on the console.

The count itself is kept in the database (see :mod:`accounts.key_brake`), so
it holds across frontends; once the database says an address is blocked,
this frontend refuses it until the block ends without asking again. Every
frontend also reads the blocked addresses from the database twice a second
(:meth:`KeyBrake.sync`), so a block that another frontend recorded is
refused here within a second. The memory is bounded: the address blocked
soonest to end is forgotten first, and a forgotten address costs one more
database call, no more.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable

import structlog

from accounts.key_brake import BrakePolicy
from frontend.errors import ApiError

log = structlog.get_logger(__name__)

MAX_ADDRESSES = 10_000

# Counts one failure of the address given under the policy given (in its scope), where
# every frontend sees it; returns the seconds the address is now blocked for.
Recorder = Callable[[str, BrakePolicy], Awaitable[float]]


class KeyBrake:
    """Blocked addresses and when their blocks end, on this process's monotonic clock."""

    def __init__(self, policy: BrakePolicy, max_addresses: int = MAX_ADDRESSES) -> None:
        self.policy = policy
        self.max_addresses = max_addresses
        self._blocked_until: dict[str, float] = {}

    async def count_failure(self, address: str, record: Recorder, now: float) -> None:
        """Count a failure from ``address`` with ``record``, and remember the block it may earn.
        A failure that cannot be counted (the database is down) is logged; it blocks nothing."""
        if not address or not self.policy.enabled:
            return
        try:
            seconds = await record(address, self.policy)
        except ApiError as error:
            log.warning("failure_not_counted", scope=self.policy.scope.strip(), error=error.code)
            return
        if seconds > 0:
            scope = self.policy.scope.strip()
            log.warning("address_blocked", scope=scope, address=address, seconds=round(seconds, 1))
            self.block(address, seconds, now)

    async def sync(self, read: Callable[[BrakePolicy], Awaitable[list[tuple[str, float]]]], now: float) -> None:
        """Take in the blocks every frontend recorded, as ``read`` gives them from the database;
        when it cannot (the database is down), the blocks known here stand."""
        if not self.policy.enabled:
            return
        try:
            blocked = await read(self.policy)
        except ApiError:
            return
        for address, seconds in blocked:
            self.block(address, seconds, now)

    def blocked_for(self, address: str, now: float) -> float:
        """Seconds ``address`` stays blocked (0: let its key be checked)."""
        until = self._blocked_until.get(address)
        if until is None:
            return 0.0
        if until <= now:
            del self._blocked_until[address]
            return 0.0
        return until - now

    def block(self, address: str, seconds: float, now: float) -> None:
        if seconds <= 0:
            return
        self._blocked_until[address] = now + seconds
        if len(self._blocked_until) > self.max_addresses:
            self._blocked_until = {a: t for a, t in self._blocked_until.items() if t > now}
            while len(self._blocked_until) > self.max_addresses:
                del self._blocked_until[min(self._blocked_until, key=self._blocked_until.__getitem__)]
