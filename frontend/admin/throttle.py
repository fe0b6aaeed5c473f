"""Throttling failed sign-ins, per client address, with the clock passed in.

After ``limit`` failures within ``window`` seconds, an address is refused,
whatever it sends, until its oldest counted failure is ``window`` old: a
guess that happens to be right is refused too, so guessing learns nothing.
Each frontend process counts its own; the memory is bounded.
"""

from __future__ import annotations

from collections import OrderedDict, deque

MAX_ADDRESSES = 10_000


class SignInThrottle:
    """Failed sign-ins per address: at most ``limit`` within ``window`` seconds."""

    def __init__(self, limit: int, window: float, max_addresses: int = MAX_ADDRESSES) -> None:
        self.limit = limit
        self.window = window
        self.max_addresses = max_addresses
        self._failures: OrderedDict[str, deque[float]] = OrderedDict()

    def wait(self, address: str, now: float) -> float:
        """Seconds ``address`` must wait before its next sign-in is looked at (0: it may try now)."""
        failures = self._recent(address, now)
        if len(failures) < self.limit:
            return 0.0
        return failures[0] + self.window - now

    def failed(self, address: str, now: float) -> None:
        failures = self._recent(address, now)
        failures.append(now)
        self._failures[address] = failures
        self._failures.move_to_end(address)
        while len(self._failures) > self.max_addresses:
            self._failures.popitem(last=False)

    def _recent(self, address: str, now: float) -> deque[float]:
        failures = self._failures.get(address, deque())
        while failures and failures[0] <= now - self.window:
            failures.popleft()
        if not failures:
            self._failures.pop(address, None)
        return failures
