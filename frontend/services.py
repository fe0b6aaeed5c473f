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


# Request bounds a text-generation worker declares (see gpuworker.models.generation.describe).
LIMITS = ("max_new_tokens_limit", "max_stop_strings", "max_stop_chars")


@dataclass(frozen=True, slots=True)
class ServiceView:
    """One service as the broker last reported it: live workers, what they serve, and the
    request bounds every one of them holds to (the smallest, where they differ)."""

    name: str
    workers: int
    capabilities: frozenset[str]
    limits: dict[str, int]

    def refuse_over_limits(self, budget: int | None, budget_param: str, stops: list[str] | None) -> None:
        """A 400 naming the field, before admission (so never charged), for a token budget or
        stop strings past what the service's workers take; they would refuse it after."""
        most = self.limits.get("max_new_tokens_limit")
        if budget is not None and most is not None and budget > most:
            raise errors.invalid_parameter(
                budget_param, f"'{budget_param}' must be at most {most} for the model {self.name!r} (got {budget})"
            )
        count, longest = self.limits.get("max_stop_strings"), self.limits.get("max_stop_chars")
        if stops and count is not None and len(stops) > count:
            raise errors.invalid_parameter("stop", f"'stop' may hold at most {count} strings (got {len(stops)})")
        if stops and longest is not None and max(len(stop) for stop in stops) > longest:
            raise errors.invalid_parameter("stop", f"each 'stop' string may be at most {longest} characters")


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

    async def check(self, model: str, capability: str, what: str) -> ServiceView | None:
        """Refuse ``model`` if nobody serves it (404) or its workers cannot do ``capability``
        (400); let it through when that cannot be told (no broker answer, no worker yet).
        The service, when it has workers."""
        services = await self.services()
        if services is None:
            return None
        service = services.get(model)
        if service is None or not service.workers:
            if model not in self.configured and service is None:
                raise errors.model_not_found(model)
            return None
        if capability not in service.capabilities:
            raise errors.model_not_supported(model, what, sorted(service.capabilities))
        return service

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
    limits = {}
    for limit in LIMITS:
        declared = [worker.get(limit) for worker in workers]
        if declared and all(isinstance(value, int) for value in declared):
            limits[limit] = min(declared)
    return ServiceView(name, len(workers), capabilities, limits)
