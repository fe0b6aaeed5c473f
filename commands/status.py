"""Show what the broker is doing: per service, its workers (idle or busy, device,
model, memory, tasks served, last heard), its queue depth and each key's requests
queued and running; and, from a frontend's /metrics, each service's token figures
(queue wait, time to first token, time per output token, tokens per answer).

Exit status: 0 when the broker answered, 3 when it did not.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from typing import Any

from broker.client import Client
from broker.errors import BusError
from broker.security import peer_keys
from config.logs import configure_command_logging
from config.settings import Settings
from frontend import token_figures


def configure(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--endpoint", help="broker endpoint (broker.endpoint)")
    parser.add_argument("--key", metavar="FILE", help="secret CURVE key to connect with (curve.client_key)")
    parser.add_argument("--json", action="store_true", help="print the raw status as JSON")
    parser.add_argument("--watch", type=float, metavar="SECONDS", help="refresh every SECONDS until Ctrl-C")
    parser.add_argument(
        "--frontend", metavar="URL", help="the frontend whose token figures to show (default: frontend.host and port)"
    )


def run(args: argparse.Namespace, settings: Settings) -> int:
    settings = settings.updated("broker", endpoint=args.endpoint)
    settings = settings.updated("curve", client_key=args.key)
    configure_command_logging(settings.logging, "status")
    broker = settings.broker
    timeout = broker.heartbeat_interval * broker.heartbeat_liveness
    frontend = args.frontend or _frontend_url(settings)
    with Client(broker.endpoint, timeout=timeout, curve=peer_keys(settings.curve, "client_key")) as client:
        while True:
            try:
                status = client.status()
            except BusError as error:
                print(f"llmapi status: {error.message}", file=sys.stderr)
                return 3
            status["frontend"] = _token_figures(frontend, settings.frontend.metrics_token, timeout)
            if args.watch:
                print("\033[2J\033[H", end="")
            print(json.dumps(status, indent=2) if args.json else render(status))
            if not args.watch:
                return 0
            time.sleep(args.watch)


def render(status: dict[str, Any]) -> str:
    """A table per service for people."""
    lines = []
    for name, service in sorted(status["services"].items()):
        lines.append(
            f"{name}: {service['idle']} idle, {service['busy']} busy, {service['queued']} queued"
        )
        lines.append(
            f"  {'worker':12} {'key':12} {'state':5} {'pid':>7} {'device':8} {'model':28} "
            f"{'rss MiB':>8} {'gpu MiB':>8} {'served':>7} {'seen s':>7}"
        )
        for worker in service["workers"]:
            lines.append(
                f"  {worker['id']:12} {worker.get('key') or '-':12} {worker['state']:5} {worker.get('pid', ''):>7} "
                f"{worker.get('device', '')!s:8} {str(worker.get('model', ''))[:28]:28} "
                f"{_mib(worker.get('max_rss_bytes')):>8} {_mib(worker.get('gpu_memory_bytes')):>8} "
                f"{worker['served']:>7} {worker['last_seen_seconds']:>7.1f}"
            )
        for tenant, load in sorted(service.get("tenants", {}).items()):
            lines.append(f"  tenant {tenant}: {load['queued']} queued, {load['running']} running")
    for name, client in status.get("client_keys", {}).items():
        limit = client["limit"] if client["limit"] is not None else "none"
        connected = client["connections"]
        lines.append(f"client {name}: {client['in_flight']} in flight (limit {limit}), {connected} connected")
    lines.extend(_token_lines(status.get("frontend")))
    counters = status.get("counters", {})
    totals = ", ".join(f"{k} {v:g}" if isinstance(v, float) else f"{k} {v}" for k, v in counters.items())
    lines.append("broker: " + totals)
    return "\n".join(lines)


def _mib(value: Any) -> str:
    return f"{value / 2**20:.0f}" if isinstance(value, (int, float)) else "-"


def _token_lines(frontend: dict[str, Any] | None) -> list[str]:
    if frontend is None:
        return []
    if "error" in frontend:
        return [f"tokens: no figures from {frontend['url']} ({frontend['error']})"]
    if not frontend["services"]:
        return [f"tokens: no answers with token figures at {frontend['url']} yet"]
    return [f"tokens {line}" for line in token_figures.render(frontend["services"])]


def _frontend_url(settings: Settings) -> str:
    host = settings.frontend.host
    return f"http://{'127.0.0.1' if host in ('', '0.0.0.0', '::') else host}:{settings.frontend.port}"


def _token_figures(url: str, token: str | None, timeout: float) -> dict[str, Any]:
    """The token figures of the frontend at ``url``, per service, or why there are none."""
    try:
        figures = token_figures.summarise(token_figures.read(url, token, timeout))
    except (OSError, ValueError) as error:
        return {"url": url, "error": str(getattr(error, "reason", error))}
    return {
        "url": url,
        "services": {
            service: {key: one if isinstance(one, dict) else one.to_dict() for key, one in found.items()}
            for service, found in figures.items()
        },
    }
