"""``/healthz`` (the process answers) and ``/readyz`` (the stack can serve), without a key."""

from __future__ import annotations

from broker.errors import BusError
from frontend.handlers.base import BaseHandler


class HealthHandler(BaseHandler):
    def get(self) -> None:
        self.write_json({"status": "ok"})


class ReadyHandler(BaseHandler):
    """Ready when the broker answers and every configured service has a live worker."""

    def initialize(self, gateway, services: list[str]) -> None:  # type: ignore[override]
        super().initialize(gateway)
        self.services = services

    async def get(self) -> None:
        try:
            status = await self.gateway.bus.status()
        except BusError as error:
            self.write_json({"status": "unavailable", "broker": error.message}, 503)
            return
        known = status["services"]
        workers = {name: known[name]["idle"] + known[name]["busy"] if name in known else 0 for name in self.services}
        ready = all(workers.values())
        self.write_json({"status": "ready" if ready else "unavailable", "workers": workers}, 200 if ready else 503)
