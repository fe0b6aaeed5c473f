"""A service's queue, served round-robin across tenants so that none can starve another.

A tenant is whoever a request is for: an API key (the frontend names it), or
a direct client's identity. Each tenant has its own FIFO queue; tenants with
queued requests take turns, each taking as many requests per turn as its
weight (deficit round robin). So a tenant with 200 queued requests delays
another's single request by at most one turn: a second key's request is
dispatched before the first key's next-but-one.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Iterable, Iterator
from typing import Generic, Protocol, TypeVar


class Queued(Protocol):
    @property
    def tenant(self) -> str: ...

    @property
    def weight(self) -> int: ...


T = TypeVar("T", bound=Queued)


class FairQueue(Generic[T]):
    """FIFO per tenant, round-robin between tenants, weighted by each item's ``weight``."""

    def __init__(self) -> None:
        self._queues: dict[str, deque[T]] = {}
        self._turns: deque[str] = deque()  # tenants with queued items, next first
        self._credit: dict[str, int] = {}
        self._size = 0

    def __len__(self) -> int:
        return self._size

    def __bool__(self) -> bool:
        return self._size > 0

    def __iter__(self) -> Iterator[T]:
        for queue in list(self._queues.values()):
            yield from list(queue)

    def queued(self, tenant: str) -> int:
        queue = self._queues.get(tenant)
        return len(queue) if queue is not None else 0

    def by_tenant(self) -> dict[str, int]:
        return {tenant: len(queue) for tenant, queue in self._queues.items()}

    def append(self, item: T) -> None:
        self._queue_of(item, first=False).append(item)
        self._size += 1

    def appendleft(self, item: T) -> None:
        """Put ``item`` back at the head of its tenant's queue, and that tenant first in turn."""
        self._queue_of(item, first=True).appendleft(item)
        self._size += 1

    def extendleft(self, items: Iterable[T]) -> None:
        for item in items:
            self.appendleft(item)

    def popleft(self) -> T:
        """The next item: from the tenant whose turn it is."""
        if not self._size:
            raise IndexError("pop from an empty queue")
        tenant = self._turns[0]
        queue = self._queues[tenant]
        item = queue.popleft()
        self._size -= 1
        self._credit[tenant] -= 1
        if not queue:
            self._drop_tenant(tenant)
        elif self._credit[tenant] <= 0:
            self._turns.rotate(-1)
            self._credit[tenant] = max(1, item.weight)
        return item

    def remove(self, item: T) -> None:
        queue = self._queues[item.tenant]
        queue.remove(item)
        self._size -= 1
        if not queue:
            self._drop_tenant(item.tenant)

    def _queue_of(self, item: T, first: bool) -> deque[T]:
        queue = self._queues.get(item.tenant)
        if queue is None:
            queue = self._queues[item.tenant] = deque()
            self._credit[item.tenant] = max(1, item.weight)
            if first:
                self._turns.appendleft(item.tenant)
            else:
                self._turns.append(item.tenant)
        elif first and self._turns[0] != item.tenant:
            self._turns.remove(item.tenant)
            self._turns.appendleft(item.tenant)
        return queue

    def _drop_tenant(self, tenant: str) -> None:
        del self._queues[tenant]
        del self._credit[tenant]
        self._turns.remove(tenant)
