"""Blocking calls (the accounts store) run off the event loop, in batches.

Handing each call to a thread pool costs a loop wake-up and a round of GIL
hand-offs per call, which under load cost more than the calls themselves.
Calls queue here instead; up to ``threads`` drainer threads take everything
queued at once, run it, and hand all the results back to the loop in one
wake-up. Each call runs in its caller's context, so what it logs carries the
caller's request id.
"""

from __future__ import annotations

import asyncio
import contextvars
import threading
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any, TypeVar

T = TypeVar("T")

# A finished call: the future awaiting it, its result, and what it raised (if anything).
_Outcome = tuple[asyncio.Future[Any], Any, BaseException | None]


class BatchedCalls:
    """Runs callables on at most ``threads`` threads, batching what queues up meanwhile."""

    def __init__(self, threads: int, name: str) -> None:
        self.threads = threads
        self._executor = ThreadPoolExecutor(threads, thread_name_prefix=name)
        self._lock = threading.Lock()
        self._queued: list[tuple[Callable[[], Any], asyncio.Future[Any]]] = []
        self._draining = 0

    async def call(self, function: Callable[[], T]) -> T:
        loop = asyncio.get_running_loop()
        future: asyncio.Future[T] = loop.create_future()
        context = contextvars.copy_context()
        with self._lock:
            self._queued.append((lambda: context.run(function), future))
            start = self._draining < self.threads
            if start:
                self._draining += 1
        if start:
            self._executor.submit(self._drain, loop)
        return await future

    def _drain(self, loop: asyncio.AbstractEventLoop) -> None:
        while True:
            with self._lock:
                batch, self._queued = self._queued, []
                if not batch:
                    self._draining -= 1
                    return
            outcomes: list[_Outcome] = []
            for function, future in batch:
                try:
                    outcomes.append((future, function(), None))
                except BaseException as error:  # handed to the awaiting coroutine
                    outcomes.append((future, None, error))
            if not loop.is_closed():
                loop.call_soon_threadsafe(_deliver, outcomes)

    def close(self) -> None:
        self._executor.shutdown(wait=True)


def _deliver(outcomes: list[_Outcome]) -> None:
    for future, result, error in outcomes:
        if future.cancelled():
            continue
        if error is None:
            future.set_result(result)
        else:
            future.set_exception(error)
