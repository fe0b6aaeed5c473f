"""Per-key limits and fair sharing over real HTTP: rates and budgets refused by the accounts
database, concurrency by the broker, and one key's backlog not holding up another's request."""

from __future__ import annotations

import threading
from concurrent.futures import ThreadPoolExecutor

import pytest
import requests

from broker.client import Client
from tests.faults.conftest import balanced
from tests.frontend.conftest import running_api
from tests.frontend.test_api import error_of
from tests.harness import Process, free_port, wait_until


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


def test_a_key_hammering_at_its_concurrency_limit_costs_the_database_nothing(api_factory):
    api = api_factory(workers=(("default", "sleep"), ("default", "sleep")))
    api.wait_for_workers("default", 2)
    info, secret = api.store.create_key(email="hammer@example.org", max_concurrent=2)
    with ThreadPoolExecutor(2) as pool:
        running = [pool.submit(api.post, "/api/", secret, {"text": "slow", "sleep_ms": 2000}) for _ in range(2)]
        with Client(api.stack.endpoint) as client:
            wait_until(lambda: client.service_info("default")["busy"] == 2, what="two running")
        refused = [api.post("/api/", secret, {"text": "more", "sleep_ms": 0}) for _ in range(20)]
        assert {(r.status_code, error_of(r)) for r in refused} == {(429, "concurrency_limited")}
        assert [future.result().status_code for future in running] == [200, 200]
    state = balanced(api.store, info.id, records=2)  # no admission, refund or record for the 20
    assert state.used == 2
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


def tenant_load(client: Client, key_id: int) -> int:
    tenants = client.status()["services"]["default"]["tenants"]
    load = tenants.get(f"key-{key_id}", {"queued": 0, "running": 0})
    return load["queued"] + load["running"]


def test_a_concurrency_slot_is_freed_by_every_end_and_never_leaks(tmp_path):
    """20 requests that time out, 20 whose clients hang up, two whose worker is killed, and a
    frontend killed with two in flight: the key can still run two at once, never three."""
    workers = tuple(("default", "sleep") for _ in range(3))
    with running_api(tmp_path, workers=workers, broker={"client_timeout": 1.0},
                     frontend={"request_timeout": 0.3}) as api:
        api.wait_for_workers("default", 3)
        info, secret = api.store.create_key(email="slots@example.org", max_concurrent=2)
        patient = tmp_path / "patient.toml"
        patient.write_text(api.stack.config_path.read_text().replace("request_timeout = 0.3", "request_timeout = 30.0"))

        def frontend(name: str) -> tuple[str, Process]:
            port = free_port()
            process = api.stack.start(name, "frontend", "--config", str(patient), "--port", str(port))
            url = f"http://127.0.0.1:{port}"
            wait_until(lambda: requests.get(url + "/healthz", timeout=1).ok, what=name)
            return url, process

        def call(url: str, sleep_ms: int, timeout: float = 30) -> int:
            return requests.post(url + "/api/", json={"text": "x", "sleep_ms": sleep_ms}, timeout=timeout,
                                 headers={"Authorization": f"Bearer {secret}"}).status_code

        second, second_process = frontend("frontend-2")
        with Client(api.stack.endpoint) as client:
            idle = lambda: tenant_load(client, info.id) == 0  # noqa: E731
            with ThreadPoolExecutor(6) as pool:
                statuses = list(pool.map(lambda _: call(api.url, 2000), range(20)))
            assert set(statuses) <= {504, 429} and statuses.count(504) >= 2
            wait_until(idle, what="slots freed after time-outs")
            for n in range(20):  # clients that hang up before their answers, on both frontends
                with pytest.raises(requests.Timeout):
                    call((api.url, second)[n % 2], 2000, timeout=0.05)
            wait_until(idle, what="slots freed after hang-ups")
            with ThreadPoolExecutor(2) as pool:  # a worker killed under two requests
                running = [pool.submit(call, second, 300) for _ in range(2)]
                wait_until(lambda: client.service_info("default")["busy"] >= 1, what="a running request")
                api.stack.processes[1].popen.kill()
                assert {future.result() for future in running} <= {200, 502}
            wait_until(idle, what="slots freed after a lost worker")
            with ThreadPoolExecutor(2) as pool:  # a frontend killed with two requests in flight
                lost = [pool.submit(call, second, 20_000) for _ in range(2)]
                wait_until(lambda: tenant_load(client, info.id) == 2, what="two requests in flight")
                second_process.popen.kill()
                wait_until(idle, timeout=3, what="slots freed after a lost frontend")
                for future in lost:
                    assert isinstance(future.exception(), requests.ConnectionError)
            third, _ = frontend("frontend-3")
            with ThreadPoolExecutor(2) as pool:  # after all that the key runs two at once, and a third is refused
                both = [pool.submit(call, third, 1000) for _ in range(2)]
                wait_until(lambda: tenant_load(client, info.id) == 2, what="two running")
                assert call(third, 0) == 429
                assert [future.result() for future in both] == [200, 200]
