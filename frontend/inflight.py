"""The requests a frontend is serving, so that a shutdown can wait for them, then abort them."""

from __future__ import annotations

import asyncio
from typing import Any, Protocol


class Abortable(Protocol):
    def abort(self) -> asyncio.Future[Any] | None:
        """Cancel the request's work, answering its client that the server is stopping."""


class InFlight:
    """A set of requests in progress, with a wait for it to empty."""

    def __init__(self) -> None:
        self._requests: set[Abortable] = set()
        self._empty = asyncio.Event()
        self._empty.set()

    def __len__(self) -> int:
        return len(self._requests)

    def add(self, request: Abortable) -> None:
        self._requests.add(request)
        self._empty.clear()

    def discard(self, request: Abortable) -> None:
        self._requests.discard(request)
        if not self._requests:
            self._empty.set()

    async def wait_empty(self, timeout: float) -> bool:
        """Whether every request ended within ``timeout`` seconds."""
        try:
            await asyncio.wait_for(self._empty.wait(), timeout)
        except TimeoutError:
            return False
        return True

    async def abort_all(self, timeout: float) -> None:
        """Abort every request, and give their work ``timeout`` seconds to wind up."""
        works = [work for request in list(self._requests) if (work := request.abort()) is not None]
        if works:
            await asyncio.wait(works, timeout=timeout)
