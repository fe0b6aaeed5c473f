"""Run the HTTP API: checks each request's key, sends it to the broker, returns the answer.

Stops on SIGTERM or Ctrl-C after finishing the requests in flight.
"""

from __future__ import annotations

import argparse
import asyncio

from config.logs import configure_logging
from config.settings import Settings


def configure(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--host", help="address to listen on (frontend.host)")
    parser.add_argument("--port", type=int, help="port to listen on (frontend.port)")
    parser.add_argument("--endpoint", help="broker endpoint (broker.endpoint)")
    parser.add_argument("--key", metavar="FILE", help="this frontend's secret CURVE key (curve.frontend_key)")
    parser.add_argument("--database-url", help="accounts database URL (accounts.database_url)")
    parser.add_argument(
        "--admin-port",
        type=int,
        help="serve the console and /admin/api/ on this loopback port (admin.enabled, admin.port)",
    )


def run(args: argparse.Namespace, settings: Settings) -> int:
    settings = settings.updated("frontend", host=args.host, port=args.port)
    settings = settings.updated("broker", endpoint=args.endpoint)
    settings = settings.updated("curve", frontend_key=args.key)
    settings = settings.updated("accounts", database_url=args.database_url)
    if args.admin_port is not None:
        settings = settings.updated("admin", enabled=True, host="127.0.0.1", port=args.admin_port)
    configure_logging(settings.logging, "frontend")

    from frontend.server import serve

    asyncio.run(serve(settings))
    return 0
