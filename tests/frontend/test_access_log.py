"""The access log is written off the event loop, and still has every request's line when the
frontend stops."""

from __future__ import annotations

import asyncio
import json
import signal
from collections import Counter

import httpx

REQUESTS = 300


async def post_all(url: str, secret: str) -> list[httpx.Response]:
    limits = httpx.Limits(max_connections=REQUESTS, max_keepalive_connections=0)
    headers = {"Authorization": f"Bearer {secret}"}
    async with httpx.AsyncClient(base_url=url, headers=headers, limits=limits, timeout=60) as client:
        return await asyncio.gather(*(client.post("/api/", json={"text": str(n)}) for n in range(REQUESTS)))


def test_every_request_has_exactly_one_access_line_after_sigterm(api_factory):
    api = api_factory(logging={"format": "json"})
    responses = asyncio.run(post_all(api.url, api.key()))
    assert [response.status_code for response in responses] == [200] * REQUESTS
    api.frontend.signal(signal.SIGTERM)
    assert api.frontend.wait(timeout=30) == 0
    events = [json.loads(line) for line in api.frontend.log().splitlines() if line.startswith("{")]
    logged = Counter(event["request_id"] for event in events if event["event"] == "http_request")
    sent = {response.headers["X-Request-Id"] for response in responses}
    assert {request_id: logged[request_id] for request_id in sent} == dict.fromkeys(sent, 1)
    # The last line of all: none is written after the frontend says it has stopped.
    assert events[-1]["event"] == "frontend_stopped"
