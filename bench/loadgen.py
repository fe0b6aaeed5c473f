"""A small closed-loop HTTP/1.1 load generator on keep-alive connections.

Fast enough to load a Python server from Python: each connection writes a
prepared request and parses only the status line and Content-Length.
"""

from __future__ import annotations

import asyncio
import time


def build_request(path: str, body: bytes, headers: dict[str, str]) -> bytes:
    lines = [f"POST {path} HTTP/1.1", "Host: 127.0.0.1", f"Content-Length: {len(body)}"]
    lines += [f"{name}: {value}" for name, value in headers.items()]
    return ("\r\n".join(lines) + "\r\n\r\n").encode() + body


async def _connection(port: int, request: bytes, stop_at: float, latencies: list[float], statuses: dict[int, int]) -> None:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        while time.perf_counter() < stop_at:
            started = time.perf_counter()
            writer.write(request)
            status_line = await reader.readline()
            length = 0
            while (line := await reader.readline()) not in (b"\r\n", b""):
                if line.lower().startswith(b"content-length:"):
                    length = int(line.split(b":", 1)[1])
            await reader.readexactly(length)
            latencies.append(time.perf_counter() - started)
            status = int(status_line.split()[1])
            statuses[status] = statuses.get(status, 0) + 1
    finally:
        writer.close()


async def run(port: int, request: bytes, connections: int, seconds: float) -> tuple[list[float], dict[int, int]]:
    """Latencies of every answered request and the count of each status."""
    latencies: list[float] = []
    statuses: dict[int, int] = {}
    stop_at = time.perf_counter() + seconds
    await asyncio.gather(*(_connection(port, request, stop_at, latencies, statuses) for _ in range(connections)))
    return latencies, statuses
