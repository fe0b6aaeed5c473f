"""Throughput and latency of the bus: echo through the broker with a direct client,
saturation of sleep-50ms workers, the broker's CPU time per request, and what
CurveZMQ costs (the same echo runs with and without it, TCP on loopback both).

    .venv/bin/python -m bench.bus_bench [--seconds 5]
    .venv/bin/python -m bench.bus_bench --curve [--seconds 5]    # only the CURVE comparison
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import tempfile
import threading
import time
from pathlib import Path

import zmq

from bench.common import cpu_seconds, summary
from broker.client import AsyncClient, Client
from broker.security import CurveKeys, peer_keys
from tests.harness import Stack, curve_keys, free_port, wait_until


def start_stack(tmp: Path, service: str, algorithm: str, workers: int, curve: bool = False) -> Stack:
    """A broker and ``workers`` workers; with ``curve``, keys for all and CURVE on the bus."""
    config = {"broker": {"queue_limit": 100_000}, "logging": {"level": "warning"}}
    stack = Stack(tmp, {**config, "curve": curve_keys(tmp)} if curve else config)
    stack.broker()
    for _ in range(workers):
        stack.worker(service, algorithm)
    with Client(stack.endpoint, curve=client_keys(stack)) as client:
        wait_until(lambda: client.service_info(service).get("idle") == workers, timeout=30)
    return stack


def client_keys(stack: Stack) -> CurveKeys | None:
    return peer_keys(stack.settings.curve, "client_key")


async def closed_loop(
    endpoint: str, service: str, payload: dict, in_flight: int, seconds: float, curve: CurveKeys | None = None
) -> list[float]:
    """``in_flight`` loops each sending one request after another for ``seconds``."""
    latencies: list[float] = []
    async with AsyncClient(endpoint, timeout=30, curve=curve) as client:
        stop_at = time.perf_counter() + seconds

        async def loop() -> None:
            while time.perf_counter() < stop_at:
                started = time.perf_counter()
                await client.request(service, payload)
                latencies.append(time.perf_counter() - started)

        await asyncio.gather(*(loop() for _ in range(in_flight)))
    return latencies


def sync_loop(
    endpoint: str, service: str, payload: dict, seconds: float, curve: CurveKeys | None = None
) -> list[float]:
    latencies = []
    with Client(endpoint, curve=curve) as client:
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


def measure_echo(stack: Stack, in_flight: int, seconds: float) -> tuple[list[float], float]:
    """Echo requests, ``in_flight`` at a time (1: the blocking client), for ``seconds``:
    their latencies and the broker's CPU seconds meanwhile."""
    broker_pid = stack.processes[0].pid
    payload, keys = {"text": "Is this real?"}, client_keys(stack)
    cpu_before = cpu_seconds(broker_pid)
    if in_flight == 1:
        latencies = sync_loop(stack.endpoint, "echo", payload, seconds, keys)
    else:
        latencies = asyncio.run(closed_loop(stack.endpoint, "echo", payload, in_flight, seconds, keys))
    return latencies, cpu_seconds(broker_pid) - cpu_before


def echo_figures(seconds: float) -> list[dict]:
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        stack = start_stack(Path(tmp), "echo", "echo", 1)
        try:
            for in_flight in (1, 64):
                latencies, cpu = measure_echo(stack, in_flight, seconds)
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


def curve_figures(seconds: float, rounds: int = 4) -> list[dict]:
    """Echo through a plaintext broker and a CURVE one, both running, measured in turns
    (``rounds`` windows of ``seconds / rounds`` each, so that load from elsewhere falls on
    both alike): the medians, and CURVE's requests/s and broker CPU per request as a
    fraction of plaintext's."""
    window = seconds / rounds
    rates: dict[tuple[bool, int], list[float]] = {}
    cpus: dict[tuple[bool, int], list[float]] = {}
    with tempfile.TemporaryDirectory() as plain_dir, tempfile.TemporaryDirectory() as curve_dir:
        stacks = {False: start_stack(Path(plain_dir), "echo", "echo", 1)}
        try:
            stacks[True] = start_stack(Path(curve_dir), "echo", "echo", 1, curve=True)
            for _ in range(rounds):
                for in_flight in (1, 64):
                    for curve, stack in stacks.items():
                        latencies, cpu = measure_echo(stack, in_flight, window)
                        rates.setdefault((curve, in_flight), []).append(len(latencies) / window)
                        cpus.setdefault((curve, in_flight), []).append(cpu / len(latencies) * 1e6)
        finally:
            for stack in stacks.values():
                stack.stop()
    rows = [
        {
            "case": f"echo, {in_flight} in flight, {'CURVE' if curve else 'plaintext'} (median of {rounds})",
            "requests_per_s": statistics.median(rates[curve, in_flight]),
            "broker_cpu_us_per_request": statistics.median(cpus[curve, in_flight]),
        }
        for in_flight in (1, 64)
        for curve in (False, True)
    ]
    for in_flight in (1, 64):
        plain, secure = (statistics.median(rates[curve, in_flight]) for curve in (False, True))
        plain_cpu, secure_cpu = (statistics.median(cpus[curve, in_flight]) for curve in (False, True))
        rows.append(
            {
                "case": f"CURVE against plaintext, {in_flight} in flight",
                "requests_per_s_ratio": secure / plain,
                "broker_cpu_per_request_ratio": secure_cpu / plain_cpu,
            }
        )
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--seconds", type=float, default=5.0)
    parser.add_argument("--workers", type=int, nargs="+", default=[1, 4])
    parser.add_argument("--curve", action="store_true", help="only compare echo with and without CURVE")
    parser.add_argument("--json", action="store_true", help="print JSON rows instead of a table")
    args = parser.parse_args()
    if args.curve:
        rows = curve_figures(args.seconds)
    else:
        rows = echo_figures(args.seconds) + curve_figures(args.seconds) + saturation_figures(args.workers, args.seconds)
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
