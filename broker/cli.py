"""Run the broker: the ROUTER that hands each request to an idle worker of its service.

Clients and workers connect to the same endpoint. With curve.server_key set,
every endpoint speaks CURVE and admits only the keys in the curve.workers and
curve.clients folders, which are re-read on SIGHUP and when they change.
Without it, only loopback and ipc endpoints are bound, unless
broker.allow_plaintext. Stops cleanly on SIGTERM or Ctrl-C.
"""

from __future__ import annotations

import argparse
import signal
import threading

import zmq

from broker.security import Context, Gatekeeper
from broker.server import Broker
from config.logs import configure_logging
from config.settings import Settings


def configure(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--endpoint", help="endpoint clients and workers connect to (broker.endpoint)")
    parser.add_argument(
        "--bind", action="append", help="endpoint to bind, repeatable (broker.bind; default: --endpoint)"
    )
    parser.add_argument("--heartbeat-interval", type=float, help="seconds (broker.heartbeat_interval)")
    parser.add_argument("--queue-limit", type=int, help="requests queued per service (broker.queue_limit)")
    parser.add_argument(
        "--service",
        action="append",
        dest="services",
        metavar="NAME",
        help="a service known before its workers register, repeatable (broker.services): "
        "its requests wait for a worker, then get 503, never 404",
    )


def run(args: argparse.Namespace, settings: Settings) -> int:
    settings = settings.updated(
        "broker",
        endpoint=args.endpoint,
        bind=args.bind,
        heartbeat_interval=args.heartbeat_interval,
        queue_limit=args.queue_limit,
        services=sorted({*settings.broker.services, *args.services}) if args.services else None,
    )
    configure_logging(settings.logging, "broker")
    stop = threading.Event()
    for signum in (signal.SIGTERM, signal.SIGINT):
        signal.signal(signum, lambda *_: stop.set())
    context: Context = zmq.Context.instance()
    gatekeeper = Gatekeeper(settings.curve, context) if settings.curve.server_key is not None else None
    broker = Broker(settings.broker, context, gatekeeper)
    signal.signal(signal.SIGHUP, lambda *_: broker.reload())
    try:
        broker.run(stop)
    finally:
        broker.close()
    return 0
