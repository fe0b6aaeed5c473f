"""Answers kept for retried requests, so a retry with the same Idempotency-Key
gets the first answer instead of running (and costing a GPU) again.

The accounts store decides whether a request is a replay (it counts the
request once); this cache, one per frontend process, holds the first
attempt's result, or its future while it is still running. A replay that
finds nothing here (another frontend process served the first attempt, or
the entry aged out) is served again without being charged.
"""

from __future__ import annotations

import asyncio
import time
from collections import OrderedDict
from typing import Any


class FirstAttemptFailed(Exception):
    """The attempt a retry waited for failed: the retry must run itself."""


class ReplayCache:
    """Results by admission id, at most ``max_entries`` for at most ``ttl`` seconds."""

    def __init__(self, max_entries: int = 10_000, ttl: float = 3600.0) -> None:
        self.max_entries = max_entries
        self.ttl = ttl
        self._entries: OrderedDict[str, tuple[float, asyncio.Future[Any]]] = OrderedDict()

    def get(self, admission_id: str) -> asyncio.Future[Any] | None:
        entry = self._entries.get(admission_id)
        if entry is None or time.monotonic() - entry[0] > self.ttl:
            return None
        return entry[1]

    def begin(self, admission_id: str) -> asyncio.Future[Any]:
        """A future for the first attempt's result; retries wait on it."""
        future: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
        self._entries[admission_id] = (time.monotonic(), future)
        while len(self._entries) > self.max_entries:
            self._entries.popitem(last=False)
        return future

    @staticmethod
    def succeeded(future: asyncio.Future[Any], result: Any) -> None:
        if not future.done():
            future.set_result(result)

    def failed(self, admission_id: str, future: asyncio.Future[Any]) -> None:
        """A failed first attempt is forgotten; retries waiting on it run themselves."""
        if self._entries.get(admission_id, (0, None))[1] is future:
            del self._entries[admission_id]
        if not future.done():
            future.set_exception(FirstAttemptFailed())
            future.exception()  # retrieved here, so an unawaited one is not reported
