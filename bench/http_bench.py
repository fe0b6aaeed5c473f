"""End-to-end HTTP throughput: the full stack (frontend, SQLite accounts, broker,
echo worker) against a bare Tornado JSON echo measured in the same run.

    .venv/bin/python -m bench.http_bench [--seconds 5] [--clients 1 64] [--log-level info]

The frontend logs only warnings by default; ``--log-level info`` measures it writing its
access log, as a server does by default.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import subprocess
import sys
import tempfile
from pathlib import Path

import requests

from bench import loadgen
from bench.common import summary
from broker.client import Client
from tests.harness import ROOT, Stack, accounts_database, free_port, wait_until

BODY = json.dumps({"text": "Is this real?"}).encode()


def measure(port: int, headers: dict[str, str], clients: int, seconds: float) -> dict[str, float]:
    request = loadgen.build_request("/api/", BODY, {"Content-Type": "application/json", **headers})
    latencies, statuses = asyncio.run(loadgen.run(port, request, clients, seconds))
    if set(statuses) != {200}:
        raise RuntimeError(f"unexpected statuses {statuses}")
    return {"requests_per_s": len(latencies) / seconds, **summary(latencies)}


def start_full_stack(tmp: Path, log_level: str = "warning") -> tuple[Stack, int, str]:
    """Broker, echo worker and frontend on free ports, logging at ``log_level`` in JSON, as
    supervisord.conf runs them in production; the frontend's port and an API key's secret."""
    port = free_port()
    database, secret = accounts_database(tmp)
    stack = Stack(
        tmp,
        {
            "frontend": {"port": port},
            "accounts": {"database_url": database},
            "logging": {"level": log_level, "format": "json"},
        },
    )
    stack.broker()
    stack.worker("default", "echo")
    stack.start("frontend", "frontend")
    with Client(stack.endpoint) as client:
        wait_until(lambda: client.service_info("default").get("idle") == 1, timeout=30)
    wait_until(lambda: requests.get(f"http://127.0.0.1:{port}/readyz", timeout=1).ok, timeout=30)
    return stack, port, secret


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--seconds", type=float, default=5.0)
    parser.add_argument("--clients", type=int, nargs="+", default=[1, 64])
    parser.add_argument("--log-level", choices=["debug", "info", "warning", "error"], default="warning")
    args = parser.parse_args()
    bare_port = free_port()
    bare = subprocess.Popen([sys.executable, "-m", "bench.bare_tornado", str(bare_port)], cwd=ROOT)
    with tempfile.TemporaryDirectory() as tmp:
        stack, port, secret = start_full_stack(Path(tmp), args.log_level)
        try:
            wait_until(lambda: requests.post(f"http://127.0.0.1:{bare_port}/api/", data=BODY, timeout=1).ok)
            print(f"{'case':34} {'req/s':>9} {'p50 ms':>8} {'p99 ms':>8} {'ratio':>6}")
            for clients in args.clients:
                reference = measure(bare_port, {}, clients, args.seconds)
                full = measure(port, {"Authorization": f"Bearer {secret}"}, clients, args.seconds)
                ratio = full["requests_per_s"] / reference["requests_per_s"]
                for name, row in ((f"bare Tornado, {clients} clients", reference), (f"full stack, {clients} clients", full)):
                    print(f"{name:34} {row['requests_per_s']:9.0f} {row['p50_ms']:8.2f} {row['p99_ms']:8.2f} {ratio if row is full else 1:6.2f}")
        finally:
            stack.stop()
            bare.terminate()
            bare.wait()


if __name__ == "__main__":
    main()
