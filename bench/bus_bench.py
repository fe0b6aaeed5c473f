"""Throughput and latency of the bus: echo through the broker with a direct client,
saturation of sleep-50ms workers, and the broker's CPU time per request.

    .venv/bin/python -m bench.bus_bench [--seconds 5]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import tempfile
import threading
import time
from pathlib import Path

import zmq

from bench.common import cpu_seconds, summary  # noqa: F401 (summary is used by run_all)
from broker.client import AsyncClient, Client
from tests.harness import Stack, free_port, wait_until


def start_stack(tmp: Path, service: str, algorithm: str, workers: int) -> Stack:
    stack = Stack(tmp, {"broker": {"queue_limit": 100_000}, "logging": {"level": "warning"}})
    stack.broker()
    for _ in range(workers):
        stack.worker(service, algorithm)
    with Client(stack.endpoint) as client:
        wait_until(lambda: client.service_info(service).get("idle") == workers, timeout=30)
    return stack


async def closed_loop(endpoint: str, service: str, payload: dict, in_flight: int, seconds: float) -> list[float]:
    """``in_flight`` loops each sending one request after another for ``seconds``."""
    latencies: list[float] = []
    async with AsyncClient(endpoint, timeout=30) as client:
        stop_at = time.perf_counter() + seconds

        async def loop() -> None:
            while time.perf_counter() < stop_at:
                started = time.perf_counter()
                await client.request(service, payload)
                latencies.append(time.perf_counter() - started)

        await asyncio.gather(*(loop() for _ in range(in_flight)))
    return latencies


def sync_loop(endpoint: str, service: str, payload: dict, seconds: float) -> list[float]:
    latencies = []
    with Client(endpoint) as client:
        stop_at = time.perf_counter() + seconds
        while time.perf_counter() < stop_at:
            started = time.perf_counter()
            client.request(service, payload)
            latencies.append(time.perf_counter() - started)
    return latencies


def raw_reqrep_round_trip(count: int = 20_000) -> float:
    """Seconds per round trip of bare pyzmq REQ/REP on loopback, for reference."""
    context = zmq.Context.instance()
    endpoint = f"tcp://127.0.0.1:{free_port()}"
    server = context.socket(zmq.REP)
    server.bind(endpoint)

    def serve() -> None:
        for _ in range(count):
            server.send(server.recv())

    thread = threading.Thread(target=serve)
    thread.start()
    client = context.socket(zmq.REQ)
    client.connect(endpoint)
    started = time.perf_counter()
    for _ in range(count):
        client.send(b"x")
        client.recv()
    elapsed = time.perf_counter() - started
    thread.join()
    client.close()
    server.close()
    return elapsed / count


def echo_figures(seconds: float) -> list[dict]:
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        stack = start_stack(Path(tmp), "echo", "echo", 1)
        broker_pid = stack.processes[0].pid
        payload = {"text": "Is this real?"}
        try:
            for in_flight in (1, 64):
                cpu_before = cpu_seconds(broker_pid)
                if in_flight == 1:
                    latencies = sync_loop(stack.endpoint, "echo", payload, seconds)
                else:
                    latencies = asyncio.run(closed_loop(stack.endpoint, "echo", payload, in_flight, seconds))
                cpu = cpu_seconds(broker_pid) - cpu_before
                rows.append(
                    {
                        "case": f"echo, {in_flight} in flight",
                        "requests_per_s": len(latencies) / seconds,
                        **summary(latencies),
                        "broker_cpu_us_per_request": cpu / len(latencies) * 1e6,
                    }
                )
        finally:
            stack.stop()
    return rows


def saturation_figures(worker_counts: list[int], seconds: float) -> list[dict]:
    rows = []
    for workers in worker_counts:
        with tempfile.TemporaryDirectory() as tmp:
            stack = start_stack(Path(tmp), "sleep", "sleep", workers)
            try:
                # Twice as many loops as workers keeps every worker's queue non-empty.
                latencies = asyncio.run(
                    closed_loop(stack.endpoint, "sleep", {"text": "x", "sleep_ms": 50}, workers * 2, seconds)
                )
            finally:
                stack.stop()
        achieved = len(latencies) / seconds
        rows.append(
            {
                "case": f"{workers} sleep-50ms workers, saturated",
                "requests_per_s": achieved,
                "ideal_per_s": workers * 20,
                "fraction_of_ideal": achieved / (workers * 20),
                **summary(latencies),
            }
        )
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--seconds", type=float, default=5.0)
    parser.add_argument("--workers", type=int, nargs="+", default=[1, 4])
    parser.add_argument("--json", action="store_true", help="print JSON rows instead of a table")
    args = parser.parse_args()
    rows = echo_figures(args.seconds) + saturation_figures(args.workers, args.seconds)
    rows.append({"case": "raw pyzmq REQ/REP round trip", "mean_ms": raw_reqrep_round_trip() * 1000})
    if args.json:
        print(json.dumps(rows, indent=2))
        return
    for row in rows:
        print(row.pop("case"))
        for key, value in row.items():
            print(f"    {key:28} {value:12.3f}")


if __name__ == "__main__":
    main()
