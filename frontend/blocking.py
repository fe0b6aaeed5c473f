"""Blocking calls (the accounts store) run off the event loop, in batches.

Handing each call to a thread pool costs a loop wake-up and a round of GIL
hand-offs per call, which under load cost more than the calls themselves.
Calls queue here instead; up to ``threads`` drainer threads take everything
queued at once, run it, and hand all the results back to the loop in one
wake-up. Each call runs in its caller's context, so what it logs carries the
caller's request id.

Calls that can be done together (admissions, counted in one transaction) are
queued as members of a group: a drainer hands every member it took to the
group's one function, which returns each member's own result or error.
"""

from __future__ import annotations

import asyncio
import contextvars
import threading
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any, TypeVar

T = TypeVar("T")
Item = TypeVar("Item")

# A finished call: the future awaiting it, its result, and what it raised (if anything).
_Outcome = tuple[asyncio.Future[Any], Any, BaseException | None]


@dataclass(frozen=True)
class _Member:
    """A call queued as one of a group: ``item`` is what ``run_group`` takes for it."""

    item: Any
    run_group: Callable[[list[Any]], Sequence[Any]]


class BatchedCalls:
    """Runs callables on at most ``threads`` threads, batching what queues up meanwhile."""

    def __init__(self, threads: int, name: str) -> None:
        self.threads = threads
        self._executor = ThreadPoolExecutor(threads, thread_name_prefix=name)
        self._lock = threading.Lock()
        self._queued: list[tuple[Callable[[], Any] | _Member, asyncio.Future[Any]]] = []
        self._draining = 0

    async def call(self, function: Callable[[], T]) -> T:
        context = contextvars.copy_context()
        result: T = await self._queue(lambda: context.run(function))
        return result

    def grouped(self, item: Item, run_group: Callable[[list[Item]], Sequence[T | BaseException]]) -> asyncio.Future[T]:
        """The future of ``item``'s result from ``run_group``, which is called with every item of
        this group queued meanwhile and returns one result (or exception, which the future
        holds) per item. Awaiting the future does not start a task."""
        return self._queue(_Member(item, run_group))

    def _queue(self, work: Callable[[], Any] | _Member) -> asyncio.Future[Any]:
        loop = asyncio.get_running_loop()
        future: asyncio.Future[Any] = loop.create_future()
        with self._lock:
            self._queued.append((work, future))
            start = self._draining < self.threads
            if start:
                self._draining += 1
        if start:
            self._executor.submit(self._drain, loop)
        return future

    def _drain(self, loop: asyncio.AbstractEventLoop) -> None:
        while True:
            with self._lock:
                batch, self._queued = self._queued, []
                if not batch:
                    self._draining -= 1
                    return
            outcomes: list[_Outcome] = []
            groups: dict[Callable[[list[Any]], Sequence[Any]], list[tuple[Any, asyncio.Future[Any]]]] = {}
            for work, future in batch:
                if isinstance(work, _Member):
                    groups.setdefault(work.run_group, []).append((work.item, future))
                    continue
                try:
                    outcomes.append((future, work(), None))
                except BaseException as error:  # handed to the awaiting coroutine
                    outcomes.append((future, None, error))
            for run_group, members in groups.items():
                outcomes.extend(_run_group(run_group, members))
            if not loop.is_closed():
                loop.call_soon_threadsafe(_deliver, outcomes)

    def close(self) -> None:
        self._executor.shutdown(wait=True)


def _run_group(
    run_group: Callable[[list[Any]], Sequence[Any]], members: list[tuple[Any, asyncio.Future[Any]]]
) -> list[_Outcome]:
    try:
        results = run_group([item for item, _ in members])
    except BaseException as error:  # every member fails with it
        return [(future, None, error) for _, future in members]
    return [
        (future, None, result) if isinstance(result, BaseException) else (future, result, None)
        for (_, future), result in zip(members, results, strict=True)
    ]


async def done_within(future: asyncio.Future[Any], seconds: float) -> bool:
    """Wait at most ``seconds`` for ``future``; whether it is done. The future itself is never
    cancelled, by the deadline or by a cancel of the waiting task: its result may still be
    needed (an admission that the database made after all must be ended)."""
    if future.done():
        return True
    loop = asyncio.get_running_loop()
    woken: asyncio.Future[None] = loop.create_future()

    def wake(_: object = None) -> None:
        if not woken.done():
            woken.set_result(None)

    future.add_done_callback(wake)
    deadline = loop.call_later(seconds, wake)
    try:
        await woken
    finally:
        deadline.cancel()
        future.remove_done_callback(wake)
    return future.done()


def _deliver(outcomes: list[_Outcome]) -> None:
    for future, result, error in outcomes:
        if future.cancelled():
            continue
        if error is None:
            future.set_result(result)
        else:
            future.set_exception(error)
