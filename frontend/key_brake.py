"""This frontend's memory of the addresses the accounts database has blocked for guessing keys.

The count itself is kept in the database (see :mod:`accounts.key_brake`), so
it holds across frontends; once the database says an address is blocked,
this frontend refuses it until the block ends without asking again. The
memory is bounded: the address blocked soonest to end is forgotten first,
and a forgotten address costs one more database call, no more.
"""

from __future__ import annotations

from accounts.key_brake import BrakePolicy

MAX_ADDRESSES = 10_000


class KeyBrake:
    """Blocked addresses and when their blocks end, on this process's monotonic clock."""

    def __init__(self, policy: BrakePolicy, max_addresses: int = MAX_ADDRESSES) -> None:
        self.policy = policy
        self.max_addresses = max_addresses
        self._blocked_until: dict[str, float] = {}

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
