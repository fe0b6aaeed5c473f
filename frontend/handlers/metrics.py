"""``/metrics``: the Prometheus registry, with the broker's figures read from its status
service when scraped. It answers only a ``Bearer`` token equal to
``frontend.metrics_token`` or, when no token is set, loopback callers.
"""

from __future__ import annotations

import hmac

from prometheus_client import generate_latest

from broker.errors import BusError
from frontend import errors
from frontend.handlers.base import BaseHandler
from frontend.metrics import Metrics

LOOPBACK = {"127.0.0.1", "::1"}


class MetricsHandler(BaseHandler):
    def initialize(self, gateway, metrics: Metrics) -> None:  # type: ignore[override]
        super().initialize(gateway)
        self.metrics = metrics

    def prepare(self) -> None:
        super().prepare()
        token = self.gateway.settings.metrics_token
        if token is None:
            if self.request.remote_ip not in LOOPBACK:
                raise errors.ApiError("forbidden", "metrics are served to loopback callers only")
            return
        given = self.request.headers.get("Authorization", "")
        if not hmac.compare_digest(given.encode(), f"Bearer {token}".encode()):
            raise errors.ApiError("missing_key", "metrics need 'Authorization: Bearer <metrics token>'")

    async def get(self) -> None:
        try:
            self.metrics.broker.status = await self.gateway.bus.status()
        except BusError:
            self.metrics.broker.status = None
        self.set_header("Content-Type", "text/plain; version=0.0.4; charset=utf-8")
        self.finish(generate_latest(self.metrics.registry))
