"""Per-key limits and fair sharing over real HTTP: rates and budgets refused by the accounts
database, concurrency by the broker, and one key's backlog not holding up another's request."""

from __future__ import annotations

import threading
from concurrent.futures import ThreadPoolExecutor

from broker.client import Client
from tests.frontend.test_api import error_of
from tests.harness import wait_until


def test_a_key_over_its_requests_per_minute_gets_429_rate_limited_with_retry_after(api):
    secret = api.key(requests_per_minute=2)
    assert [api.post("/api/", secret, {"text": str(n)}).status_code for n in range(2)] == [200, 200]
    refused = api.post("/api/", secret, {"text": "third"})
    assert (refused.status_code, error_of(refused)) == (429, "rate_limited")
    assert 1 <= int(refused.headers["Retry-After"]) <= 60
    assert "x-should-retry" not in refused.headers  # waiting helps


def test_a_used_up_quota_or_budget_tells_openai_clients_not_to_retry(api):
    for limits in ({"max_requests": 0}, {"token_budget": 0}):
        refused = api.post("/api/", api.key(**limits), {"text": "x"})
        assert refused.status_code == 429 and refused.headers["x-should-retry"] == "false"
        assert "Retry-After" not in refused.headers
    assert error_of(api.post("/api/", api.key(token_budget=0), {"text": "x"})) == "token_budget_exhausted"


def test_max_concurrent_is_held_by_the_broker_and_its_slot_comes_back(api_factory):
    api = api_factory(workers=(("default", "sleep"), ("default", "sleep")))
    api.wait_for_workers("default", 2)
    secret = api.key(max_concurrent=1)
    with ThreadPoolExecutor(1) as pool:
        first = pool.submit(api.post, "/api/", secret, {"text": "first", "sleep_ms": 1500})
        with Client(api.stack.endpoint) as client:
            wait_until(lambda: client.service_info("default")["busy"] == 1, what="the first request to run")
        second = api.post("/api/", secret, {"text": "second", "sleep_ms": 0})
        assert (second.status_code, error_of(second)) == (429, "concurrency_limited")
        assert second.headers["Retry-After"] == "1"
        other = api.post("/api/", api.key(), {"text": "another key", "sleep_ms": 0})
        assert other.status_code == 200  # the limit is the key's, not the service's
        assert first.result().status_code == 200
    assert api.post("/api/", secret, {"text": "after", "sleep_ms": 0}).status_code == 200


def test_one_keys_backlog_does_not_hold_up_another_keys_request(api_factory):
    api = api_factory(workers=(("default", "sleep"),), frontend={"request_timeout": 30.0})
    busy, other = api.key(), api.key()
    finished: list[str] = []
    lock = threading.Lock()

    def call(secret: str, name: str) -> int:
        status = api.post("/api/", secret, {"text": name, "sleep_ms": 200}).status_code
        with lock:
            finished.append(name)
        return status

    with ThreadPoolExecutor(9) as pool, Client(api.stack.endpoint) as client:
        backlog = [pool.submit(call, busy, f"a{n}") for n in range(8)]
        wait_until(lambda: client.service_info("default")["queued"] == 7, what="the backlog to queue")
        single = pool.submit(call, other, "b")
        assert single.result() == 200
        assert all(future.result() == 200 for future in backlog)
    # b waits for the task running and at most one more of a's, not for all seven queued.
    assert finished.index("b") <= 2, finished
