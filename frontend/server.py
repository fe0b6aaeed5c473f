"""Running the HTTP frontend: the store, the broker connection and the Tornado server."""

from __future__ import annotations

import asyncio
import signal

import structlog
from tornado.httpserver import HTTPServer
from tornado.netutil import bind_sockets

from accounts.store import AccountStore
from broker.client import AsyncClient
from config.settings import Settings
from frontend.app import make_app
from frontend.gateway import Gateway

log = structlog.get_logger(__name__)

# Requests in progress get this long to finish when the frontend is stopped.
SHUTDOWN_GRACE_SECONDS = 10.0
BODY_BACKSTOP_BYTES = 64 * 1024 * 1024


async def serve(settings: Settings) -> None:
    """Serve until SIGTERM or SIGINT, then finish what is in flight and stop."""
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, stop.set)
    store = AccountStore(settings.accounts)
    bus = AsyncClient(
        settings.broker.endpoint,
        timeout=settings.frontend.request_timeout,
        heartbeat_interval=settings.broker.heartbeat_interval,
        liveness=settings.broker.heartbeat_liveness,
    )
    bus.start()
    gateway = Gateway(settings.frontend, store, bus)
    services = sorted({settings.frontend.default_service, *settings.broker.services})
    # Handlers refuse bodies over the limit with 413 and then read the rest
    # of the body without keeping it, so that the client can read the 413;
    # past this backstop the connection is simply closed.
    backstop = max(BODY_BACKSTOP_BYTES, settings.frontend.max_body_bytes * 4)
    server = HTTPServer(
        make_app(gateway, services), max_body_size=backstop, xheaders=settings.frontend.trust_proxy_headers
    )
    server.add_sockets(
        bind_sockets(settings.frontend.port, settings.frontend.host, reuse_port=settings.frontend.reuse_port)
    )
    log.info("frontend_listening", host=settings.frontend.host, port=settings.frontend.port)
    try:
        await stop.wait()
    finally:
        server.stop()
        await _drain(bus)
        await server.close_all_connections()
        await bus.close()
        gateway.close()
        store.close()
        log.info("frontend_stopped")


async def _drain(bus: AsyncClient) -> None:
    deadline = asyncio.get_running_loop().time() + SHUTDOWN_GRACE_SECONDS
    while bus.in_flight and asyncio.get_running_loop().time() < deadline:
        await asyncio.sleep(0.05)
