"""What the broker's services can do, as their workers declare it, cached briefly.

Each worker says in READY what its algorithm serves (``capabilities``:
``chat``, ``completion``, ``embedding``, ``text``). The OpenAI routes ask
this directory before admitting a request, so that a call a service cannot
serve, or a model nobody serves, is refused before it is counted.
"""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass
from typing import Any

from broker.client import AsyncClient
from broker.errors import BusError
from frontend import errors

REFRESH_SECONDS = 1.0


@dataclass(frozen=True, slots=True)
class ServiceView:
    """One service as the broker last reported it: live workers and what they serve."""

    name: str
    workers: int
    capabilities: frozenset[str]


class ServiceDirectory:
    """The broker's services from its status service, re-read at most every ``ttl`` seconds.

    ``configured`` are the services this frontend was configured with: they
    exist even while no worker offers them.
    """

    def __init__(self, bus: AsyncClient, configured: frozenset[str], ttl: float = REFRESH_SECONDS) -> None:
        self.bus = bus
        self.configured = configured
        self.ttl = ttl
        self._services: dict[str, ServiceView] | None = None
        self._read_at = 0.0
        self._reading: asyncio.Future[dict[str, ServiceView] | None] | None = None

    async def services(self) -> dict[str, ServiceView] | None:
        """Every service the broker knows, or None when it does not answer."""
        if self._services is not None and time.monotonic() - self._read_at < self.ttl:
            return self._services
        if self._reading is None:  # one read at a time; concurrent callers share it
            self._reading = asyncio.ensure_future(self._read())
            self._reading.add_done_callback(lambda _: setattr(self, "_reading", None))
        return await asyncio.shield(self._reading)

    async def _read(self) -> dict[str, ServiceView] | None:
        try:
            status = await self.bus.status()
        except BusError:
            return None
        self._services = {name: _view(name, service) for name, service in status["services"].items()}
        self._read_at = time.monotonic()
        return self._services

    async def check(self, model: str, capability: str, what: str) -> None:
        """Refuse ``model`` if nobody serves it (404) or its workers cannot do ``capability``
        (400); let it through when that cannot be told (no broker answer, no worker yet)."""
        services = await self.services()
        if services is None:
            return
        service = services.get(model)
        if service is None or not service.workers:
            if model not in self.configured and service is None:
                raise errors.model_not_found(model)
            return
        if capability not in service.capabilities:
            raise errors.model_not_supported(model, what, sorted(service.capabilities))

    async def models(self) -> list[str]:
        """The services that have a live worker and serve an OpenAI route."""
        services = await self.services() or {}
        return sorted(
            name for name, service in services.items() if service.workers and service.capabilities & OPENAI_CAPABILITIES
        )


OPENAI_CAPABILITIES = frozenset({"chat", "completion", "embedding"})


def _view(name: str, service: dict[str, Any]) -> ServiceView:
    workers = service.get("workers", [])
    capabilities = frozenset(
        capability
        for worker in workers
        for capability in (worker.get("capabilities") or ["text"])
        if isinstance(capability, str)
    )
    return ServiceView(name, len(workers), capabilities)
