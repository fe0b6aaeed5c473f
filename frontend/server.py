"""Running the HTTP frontend: the store, the broker connection and the Tornado server.

On SIGTERM (or SIGINT) it stops accepting, gives requests in progress
``frontend.shutdown_grace`` seconds to finish, then answers those still
running with a 503 (or, mid-stream, an error event), cancels their work at
the broker and settles their bills, and writes every usage record and every
access log line before it exits.
"""

from __future__ import annotations

import asyncio
import resource
import signal
from collections.abc import Awaitable, Callable

import structlog
from tornado.httpserver import HTTPServer
from tornado.ioloop import PeriodicCallback
from tornado.netutil import bind_sockets
from tornado.web import Application

from accounts.store import AccountStore
from broker.client import AsyncClient
from broker.security import peer_keys
from config.logs import QueuedLog
from config.settings import FrontendSettings, Settings
from frontend.acceptor import Acceptor
from frontend.app import ACCESS_LOG, make_admin_app, make_app
from frontend.gateway import Gateway
from frontend.inflight import InFlight
from frontend.key_brake import KeyBrake
from frontend.metrics import Metrics

log = structlog.get_logger(__name__)

BODY_BACKSTOP_BYTES = 64 * 1024 * 1024
# Handlers answer a URL or headers over the configured limits with 414 or 431; Tornado
# reads headers up to this backstop so they can, and closes connections sending more.
HEADER_BACKSTOP_BYTES = 1024 * 1024


def header_backstop(frontend: FrontendSettings) -> int:
    return max(HEADER_BACKSTOP_BYTES, 4 * max(frontend.max_header_bytes, frontend.max_url_bytes))


# How long cancelled requests get to send their last answer and their CANCEL.
CANCEL_SECONDS = 2.0
# How often the addresses blocked for failing too often are read from the accounts database.
BRAKE_SYNC_SECONDS = 0.5


async def serve(settings: Settings) -> None:
    """Serve until SIGTERM or SIGINT, then finish what is in flight and stop."""
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, stop.set)
    _raise_descriptor_limit()
    store = AccountStore(settings.accounts)
    bus = AsyncClient(
        settings.broker.endpoint,
        timeout=settings.frontend.request_timeout,
        heartbeat_interval=settings.broker.heartbeat_interval,
        liveness=settings.broker.heartbeat_liveness,
        curve=peer_keys(settings.curve, "frontend_key"),
    )
    bus.start()
    services = sorted({settings.frontend.default_service, *settings.broker.services})
    metrics = Metrics()
    gateway = Gateway(settings.frontend, store, bus, services, metrics)
    in_flight = InFlight()
    access_log = QueuedLog(ACCESS_LOG)
    frontend = settings.frontend
    # Handlers refuse bodies over the limit with 413 and then read the rest
    # of the body without keeping it, so that the client can read the 413;
    # past this backstop the connection is simply closed.
    server = HTTPServer(
        make_app(
            gateway, services, in_flight, frontend.cors_origins, metrics,
            console_url=settings.admin.url if settings.admin.enabled else None, access_log=access_log,
        ),
        max_body_size=max(BODY_BACKSTOP_BYTES, frontend.max_body_bytes * 4),
        max_header_size=header_backstop(frontend),
        xheaders=frontend.trust_proxy_headers,
        idle_connection_timeout=frontend.idle_timeout,
        body_timeout=frontend.body_timeout,
    )
    acceptor = Acceptor(bind_sockets(frontend.port, frontend.host, reuse_port=frontend.reuse_port), server)
    acceptor.start()
    sweeper = PeriodicCallback(
        lambda: asyncio.ensure_future(gateway.sweep()), frontend.abandoned_check_interval * 1000
    )
    sweeper.start()
    log.info("frontend_listening", host=frontend.host, port=frontend.port)
    console = Console(settings, gateway, access_log)
    starting = asyncio.ensure_future(console.start()) if settings.admin.enabled else None
    brakes = _Periodic(lambda: gateway.sync_brakes(*console.brakes()), BRAKE_SYNC_SECONDS)
    try:
        await stop.wait()
    finally:
        acceptor.stop()
        sweeper.stop()
        brakes.stop()
        if starting is not None:
            starting.cancel()
        console.stop()
        await _drain(gateway, in_flight, frontend.shutdown_grace)
        await gateway.wait_for_endings(CANCEL_SECONDS)
        await server.close_all_connections()
        await console.close()
        access_log.close()
        await bus.close()
        gateway.close()
        store.close()
        log.info("frontend_stopped")


class Console:
    """The console's listener (``admin.host``, ``admin.port``), apart from the API's."""

    def __init__(self, settings: Settings, gateway: Gateway, access_log: QueuedLog) -> None:
        self.settings = settings
        self.gateway = gateway
        self.access_log = access_log
        self.app: Application | None = None
        self.server: HTTPServer | None = None
        self.acceptor: Acceptor | None = None

    async def start(self) -> None:
        admin, frontend = self.settings.admin, self.settings.frontend
        app = make_admin_app(self.gateway, admin, access_log=self.access_log)
        self.server = HTTPServer(
            app,
            max_header_size=header_backstop(frontend),
            xheaders=frontend.trust_proxy_headers,
            idle_connection_timeout=frontend.idle_timeout,
            body_timeout=frontend.body_timeout,
        )
        self.app = app
        self.acceptor = Acceptor(bind_sockets(admin.port, admin.host, reuse_port=frontend.reuse_port), self.server)
        self.acceptor.start()
        log.info("console_listening", host=admin.host, port=admin.port)

    def brakes(self) -> list[KeyBrake]:
        """The console's brake on failed sign-ins, once it serves."""
        if self.app is None:
            return []
        return [self.app.settings["console"].throttle]

    def stop(self) -> None:
        if self.acceptor is not None:
            self.acceptor.stop()

    async def close(self) -> None:
        if self.server is not None:
            await self.server.close_all_connections()


class _Periodic:
    """Runs ``work`` every ``seconds``, a new run only once the last has ended."""

    def __init__(self, work: Callable[[], Awaitable[None]], seconds: float) -> None:
        self.work = work
        self.running: asyncio.Future[None] | None = None
        self.callback = PeriodicCallback(self._tick, seconds * 1000)
        self.callback.start()

    def _tick(self) -> None:
        if self.running is None or self.running.done():
            self.running = asyncio.ensure_future(self.work())

    def stop(self) -> None:
        self.callback.stop()


async def _drain(gateway: Gateway, in_flight: InFlight, grace: float) -> None:
    """Let requests in progress finish within ``grace``; answer and cancel the rest."""
    if await in_flight.wait_empty(grace):
        return
    log.warning("shutdown_cancelling_requests", requests=len(in_flight))
    gateway.closing = True
    await in_flight.abort_all(CANCEL_SECONDS)


def _raise_descriptor_limit() -> None:
    """Raise the soft limit on open files to the hard one: every connection holds one."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < hard != resource.RLIM_INFINITY:
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    log.info("descriptor_limit", open_files=max(soft, hard))
