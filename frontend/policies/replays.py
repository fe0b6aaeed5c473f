"""Idempotency replays: a retry with the same Idempotency-Key gets the first
answer instead of running (and costing a GPU) again.

The accounts store decides whether a request is a replay (it counts the
request once); a cache, one per frontend process, holds the first attempt's
result, or its future while it is still running. A replay that finds
nothing there (another frontend process served the first attempt, or the
entry aged out, or the first attempt failed) is served again without being
charged. Streams are not replayed: a retried stream is served again.
"""

from __future__ import annotations

import asyncio
import time
from collections import OrderedDict
from typing import Any

import structlog

from frontend.policies.base import Call, Ending, Policy

log = structlog.get_logger(__name__)


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


class Replays(Policy):
    """Answers a replay from its first attempt, and keeps each first attempt's answer for its retries."""

    def __init__(self, cache: ReplayCache | None = None) -> None:
        self.cache = cache if cache is not None else ReplayCache()

    async def before(self, call: Call) -> None:
        admission = call.admission
        if admission is None or admission.idempotency_key is None or call.streamed:
            return
        first = self.cache.get(admission.admission_id)
        if admission.replayed and first is not None:
            log.info("request_replayed", key_prefix=admission.key_prefix)
            try:
                call.replay = [await asyncio.shield(first)]
                return
            except FirstAttemptFailed:
                pass  # this retry runs itself
        call.first_attempt = self.cache.begin(admission.admission_id)

    async def answered(self, call: Call, ending: Ending) -> None:
        if call.first_attempt is not None:
            self.cache.succeeded(call.first_attempt, ending.result)

    async def failed(self, call: Call, ending: Ending) -> None:
        if call.first_attempt is not None and call.admission is not None:
            self.cache.failed(call.admission.admission_id, call.first_attempt)
