"""Closed-loop clients of a streamed OpenAI endpoint: tokens/s in all and time to first token.

Each client keeps one keep-alive HTTP/1.1 connection, posts a streamed
request, reads the chunked server-sent events as they arrive, and starts the
next request when the stream ends. Only the last event before ``[DONE]``
(the usage chunk) is parsed, so one Python process can load a server that
streams thousands of tokens a second.
"""

from __future__ import annotations

import asyncio
import json
import time
from dataclasses import dataclass

from bench.common import percentile


@dataclass(frozen=True, slots=True)
class StreamSample:
    """One streamed request: seconds to its first event and to its end, and the tokens it got."""

    status: int
    first: float
    total: float
    tokens: int


def chat_request(model: str, prompt: str, max_tokens: int, secret: str) -> bytes:
    """A greedy streamed chat completion of ``max_tokens`` for ``prompt``, with its usage chunk."""
    body = {
        "model": model,
        "messages": [{"role": "user", "content": prompt}],
        "max_tokens": max_tokens,
        "temperature": 0,
        "stream": True,
        "stream_options": {"include_usage": True},
    }
    return build_request("/v1/chat/completions", body, {"Authorization": f"Bearer {secret}"})


def build_request(path: str, body: dict, headers: dict[str, str]) -> bytes:
    payload = json.dumps(body).encode()
    lines = [f"POST {path} HTTP/1.1", "Host: 127.0.0.1", "Content-Type: application/json", f"Content-Length: {len(payload)}"]
    lines += [f"{name}: {value}" for name, value in headers.items()]
    return ("\r\n".join(lines) + "\r\n\r\n").encode() + payload


async def _one(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, request: bytes) -> StreamSample:
    started = time.perf_counter()
    writer.write(request)
    status = int((await reader.readline()).split()[1])
    length, chunked = 0, False
    while (line := await reader.readline()) not in (b"\r\n", b""):
        name, _, value = line.partition(b":")
        if name.lower() == b"content-length":
            length = int(value)
        elif name.lower() == b"transfer-encoding" and b"chunked" in value.lower():
            chunked = True
    if not chunked:
        await reader.readexactly(length)
        return StreamSample(status, time.perf_counter() - started, time.perf_counter() - started, 0)
    first = None
    tail = b""
    while (size := int((await reader.readline()).strip(), 16)) > 0:
        data = await reader.readexactly(size + 2)
        if first is None:
            first = time.perf_counter() - started
        tail = (tail + data[:-2])[-4096:]
    await reader.readline()
    return StreamSample(status, first or 0.0, time.perf_counter() - started, _completion_tokens(tail))


def _completion_tokens(tail: bytes) -> int:
    """Completion tokens from the usage among the last events of a stream: a chat or completion
    usage chunk, or the Responses API's last event (its ``response.usage``)."""
    for event in reversed(tail.split(b"\n\n")):
        data = event[event.find(b"data: {") + 6:] if b"data: {" in event else None
        if data is None:
            continue
        try:
            parsed = json.loads(data)
        except ValueError:
            return 0
        usage = parsed.get("usage") or (parsed.get("response") or {}).get("usage")
        if not usage:
            return 0
        return int(usage.get("completion_tokens", usage.get("output_tokens", 0)))
    return 0


def responses_request(model: str, prompt: str, max_tokens: int, secret: str) -> bytes:
    """The same ask as :func:`chat_request` through the Responses API, streamed, not kept."""
    body = {"model": model, "input": prompt, "max_output_tokens": max_tokens, "temperature": 0, "stream": True,
            "store": False}
    return build_request("/v1/responses", body, {"Authorization": f"Bearer {secret}"})


async def _client(port: int, request: bytes, stop_at: float, samples: list[StreamSample]) -> None:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        while time.perf_counter() < stop_at:
            samples.append(await _one(reader, writer, request))
    finally:
        writer.close()


async def run(port: int, request: bytes, clients: int, seconds: float) -> tuple[list[StreamSample], float]:
    """Every request the ``clients`` completed in about ``seconds``, and the seconds it really took."""
    samples: list[StreamSample] = []
    started = time.perf_counter()
    await asyncio.gather(*(_client(port, request, started + seconds, samples) for _ in range(clients)))
    return samples, time.perf_counter() - started


def figures(samples: list[StreamSample], elapsed: float) -> dict[str, float]:
    """Tokens/s in all, requests, and p50/p99 time to first token of the successful streams."""
    ok = [sample for sample in samples if sample.status == 200]
    firsts = [sample.first for sample in ok]
    return {
        "requests": len(ok),
        "failed": len(samples) - len(ok),
        "tokens_per_s": sum(sample.tokens for sample in ok) / elapsed,
        "ttft_p50_ms": percentile(firsts, 0.5) * 1000,
        "ttft_p99_ms": percentile(firsts, 0.99) * 1000,
    }
