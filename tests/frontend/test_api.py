"""The HTTP API over real HTTP: frontend, broker, workers and database all running."""

from __future__ import annotations

import json
import re
import signal
import socket
import time
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime, timedelta

import pytest
import requests

from accounts import keys
from broker.client import Client
from frontend import errors
from frontend.schemas import UsageReport
from tests.harness import wait_until


def error_of(response: requests.Response) -> str:
    body = response.json()
    assert set(body["error"]) == {"code", "message"} and body["error"]["message"]
    assert "Traceback" not in response.text
    return body["error"]["code"]


def test_the_django_clients_exact_call_keeps_working(api):
    key = api.key()
    header = {"Authorization": f"Bearer {key}", "Content-Type": "application/json"}
    data = {"text": "This could be any payload data the api expects."}
    response = requests.post(api.url + "/api/", headers=header, json=data)
    assert response.status_code == 200
    assert response.json()["message"] == "This could be any payload data the api expects."
    assert response.json()["request_id"] == response.headers["X-Request-Id"]


def test_analyze_is_the_same_endpoint(api):
    response = api.post("/analyze/", api.key(), {"text": "Is this real?"})
    assert response.status_code == 200 and response.json()["message"] == "Is this real?"


def test_a_named_service_is_reached_by_its_path(api_factory):
    api = api_factory(workers=(("default", "echo"), ("legacy", "tests.fixtures.django_style_algorithm")))
    response = api.post("/api/legacy/", api.key(), {"text": "abc"})
    assert response.status_code == 200 and response.json()["message"] == "cba"


@pytest.mark.parametrize(
    "headers",
    [{}, {"Authorization": "Bearer"}, {"Authorization": "Bearer "}, {"Authorization": "Basic abc"}, {"Authorization": "Bearer a b"}],
)
def test_a_missing_or_malformed_authorization_is_401_with_a_challenge(api, headers):
    response = requests.post(api.url + "/api/", headers=headers, json={"text": "x"}, timeout=10)
    assert response.status_code == 401
    assert response.headers["WWW-Authenticate"].startswith("Bearer")
    assert error_of(response) == "missing_key"


def test_an_unknown_key_is_401(api):
    response = api.post("/api/", "llmapi_" + "x" * 43, {"text": "x"})
    assert response.status_code == 401 and error_of(response) == "invalid_key"


def test_a_revoked_key_is_401(api):
    info, secret = api.store.create_key(email="a@example.com")
    api.store.revoke_key(info.id)
    response = api.post("/api/", secret, {"text": "x"})
    assert response.status_code == 401 and error_of(response) == "revoked_key"


def test_a_key_outside_its_window_is_403(api):
    now = datetime.now(UTC)
    early = api.key(valid_from=now + timedelta(days=1))
    late = api.key(valid_until=now - timedelta(seconds=1), valid_from=now - timedelta(days=2))
    assert api.post("/api/", early, {"text": "x"}).status_code == 403
    response = api.post("/api/", late, {"text": "x"})
    assert response.status_code == 403 and error_of(response) == "key_expired"


def test_a_service_the_key_may_not_use_is_403(api):
    response = api.post("/api/", api.key(services=["other"]), {"text": "x"})
    assert response.status_code == 403 and error_of(response) == "service_not_allowed"


def test_an_unknown_service_is_404_and_not_charged(api):
    info, secret = api.store.create_key(email="a@example.com", max_requests=1)
    response = api.post("/api/nothere/", secret, {"text": "x"})
    assert response.status_code == 404 and error_of(response) == "unknown_service"
    assert api.store.get_key(info.id).used == 0


@pytest.mark.parametrize(
    "body, code",
    [
        (b"{not json", "invalid_json"),
        (b"[1, 2]", "invalid_json"),
        (b"\xff\xfe", "invalid_json"),
        (b"{}", "invalid_text"),
        (b'{"text": 5}', "invalid_text"),
        (b'{"text": null}', "invalid_text"),
        (b"", "invalid_json"),
    ],
)
def test_malformed_bodies_are_400_and_not_charged(api, body, code):
    info, secret = api.store.create_key(email="a@example.com", max_requests=5)
    response = api.post("/api/", secret, data=body, headers={"Content-Type": "application/json"})
    assert response.status_code == 400 and error_of(response) == code
    assert api.store.get_key(info.id).used == 0


def test_a_body_over_the_limit_is_413(api_factory):
    api = api_factory(frontend={"max_body_bytes": 1000})
    key = api.key()
    assert api.post("/api/", key, {"text": "x" * 2000}).status_code == 413
    response = api.post("/api/", key, data=b'{"text": "' + b"y" * 50_000 + b'"}')
    assert response.status_code == 413 and error_of(response) == "body_too_large"
    # A chunked body has no Content-Length: it is cut off while it arrives.
    chunks = iter([b'{"text": "', b"z" * 1500, b'"}'])
    assert api.post("/api/", key, data=chunks).status_code == 413


def test_a_text_over_the_limit_is_413(api_factory):
    api = api_factory(frontend={"max_text_chars": 10})
    response = api.post("/api/", api.key(), {"text": "x" * 11})
    assert response.status_code == 413 and error_of(response) == "text_too_long"


def test_a_full_queue_is_503_with_retry_after(api_factory):
    api = api_factory(workers=(("default", "sleep"),), broker={"queue_limit": 1})
    key = api.key()
    with ThreadPoolExecutor(2) as pool:
        busy = [pool.submit(api.post, "/api/", key, {"text": str(i), "sleep_ms": 1500}) for i in range(2)]
        with Client(api.stack.endpoint) as client:
            wait_until(lambda: client.service_info("default")["queued"] == 1, what="a queued request")
        response = api.post("/api/", key, {"text": "one too many"})
        assert response.status_code == 503 and error_of(response) == "overloaded"
        assert response.headers["Retry-After"] == "1"
        assert [f.result().status_code for f in busy] == [200, 200]


def test_a_passed_deadline_is_504_and_refunded(api_factory):
    api = api_factory(workers=(("default", "sleep"),), frontend={"request_timeout": 0.5})
    info, secret = api.store.create_key(email="a@example.com", max_requests=3)
    response = api.post("/api/", secret, {"text": "slow", "sleep_ms": 2000})
    assert response.status_code == 504 and error_of(response) == "timeout"
    assert api.store.get_key(info.id).used == 0


def test_a_worker_error_is_502_with_the_algorithms_error_type(api_factory):
    api = api_factory(workers=(("default", "tests.fixtures.algorithms:Raising"),))
    response = api.post("/api/", api.key(), {"text": "boom"})
    assert response.status_code == 502 and error_of(response) == "worker_error"
    assert response.json()["error"]["message"].startswith("KeyError")


def test_an_unreachable_database_is_503_not_401(api_factory):
    api = api_factory(accounts={"database_url": "postgresql+psycopg2://postgres@127.0.0.1:1/test"})
    response = api.post("/api/", keys.new_secret(), {"text": "x"})
    assert response.status_code == 503 and error_of(response) == "database_unavailable"


def test_an_unknown_path_is_a_json_404(api):
    response = api.get("/nowhere")
    assert response.status_code == 404 and error_of(response) == "not_found"


def test_a_burst_on_a_small_quota_yields_exactly_that_many_200s(api):
    info, secret = api.store.create_key(email="a@example.com", max_requests=7)
    with ThreadPoolExecutor(16) as pool:
        statuses = list(pool.map(lambda i: api.post("/api/", secret, {"text": str(i)}).status_code, range(40)))
    assert statuses.count(200) == 7
    assert statuses.count(429) == 33
    assert api.store.get_key(info.id).used == 7


def test_a_client_that_disconnects_cancels_its_request(api_factory):
    api = api_factory(workers=(("default", "sleep"),))
    key = api.key()
    body = json.dumps({"text": "abandoned", "sleep_ms": 20_000}).encode()
    port = int(api.url.rsplit(":", 1)[1])
    with socket.create_connection(("127.0.0.1", port)) as connection:
        connection.sendall(
            b"POST /api/ HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
            + f"Authorization: Bearer {key}\r\nContent-Length: {len(body)}\r\n\r\n".encode()
            + body
        )
        with Client(api.stack.endpoint) as client:
            wait_until(lambda: client.service_info("default")["busy"] == 1, what="the worker to start")
    started = time.monotonic()
    with Client(api.stack.endpoint) as client:
        wait_until(lambda: client.service_info("default")["idle"] == 1, what="the worker to be freed")
    assert time.monotonic() - started < 5  # long before the 20 s task would end
    assert api.post("/api/", key, {"text": "next", "sleep_ms": 0}).status_code == 200


def test_requests_fail_fast_while_the_broker_is_down_and_recover_after_restart(api):
    key = api.key()
    broker = api.stack.processes[0]

    def call(i: int) -> int:
        return api.post("/api/", key, {"text": str(i)}).status_code

    with ThreadPoolExecutor(8) as pool:
        before = list(pool.map(call, range(16)))
        broker.signal(signal.SIGKILL)
        broker.wait()
        started = time.monotonic()
        during = list(pool.map(call, range(16)))
        assert time.monotonic() - started < 10
        api.stack.broker()
        api.wait_for_workers("default")
        wait_until(lambda: call(0) == 200, timeout=15, what="the frontend to reach the new broker")
        after = list(pool.map(call, range(16)))
    assert before == [200] * 16 and after == [200] * 16
    assert set(during) <= {200, 503}
    assert 503 in during


def test_usage_reports_the_callers_own_requests_per_day_with_word_counts(api):
    key = api.key(max_requests=10, token_budget=1000)
    other = api.key()
    for text in ("one two three", "four five"):
        assert api.post("/api/", key, {"text": text}).status_code == 200
    assert api.post("/api/", other, {"text": "not mine"}).status_code == 200

    def report():
        rows = api.get("/usage/", key).json()["usage"]
        return rows if rows and rows[0]["requests"] == 2 else None

    (row,) = wait_until(report, what="usage to be flushed")
    assert row["input_words"] == 5 and row["service"] == "default" and row["charged"] == 2
    mine = api.get("/usage/", key).json()
    UsageReport.model_validate(mine)
    assert mine["requests"] == {"used": 2, "limit": 10, "remaining": 8}
    assert mine["tokens"] == {"used": 0, "limit": 1000, "remaining": 1000}  # echo reports no tokens
    assert api.get("/usage/", key, params={"since": "bad"}).status_code == 400
    assert api.get("/usage/").status_code == 401


def test_health_needs_no_key_and_readiness_follows_the_workers(api):
    assert api.get("/healthz").json() == {"status": "ok"}
    assert api.get("/readyz").status_code == 200
    api.stack.processes[1].stop()  # the only worker leaves
    wait_until(lambda: api.get("/readyz").status_code == 503, what="readiness to drop")


def test_the_access_log_names_the_key_prefix_never_the_key(api):
    key = api.key()
    response = api.post("/api/", key, {"text": "log me"})
    request_id = response.headers["X-Request-Id"]
    line = wait_until(
        lambda: next((line for line in api.frontend.log().splitlines() if request_id in line and "http_request" in line), None),
        what="the access log line",
    )
    assert key not in api.frontend.log()
    assert "status=200" in line and "key_prefix=" in line
    # The same request id appears in the worker's log: it follows the request across processes.
    wait_until(lambda: request_id in api.stack.processes[1].log(), what="the worker's log line")


def test_metrics_count_requests_and_show_the_brokers_figures(api):
    api.post("/api/", api.key(), {"text": "count me"})
    assert api.post("/api/", "llmapi_not-a-key", {"text": "refused"}).status_code == 401
    response = api.get("/metrics")
    assert response.status_code == 200
    text = response.text
    assert 'llmapi_http_requests_total{service="default",status="200"}' in text
    # Errors are counted by their code in the one table, every code listed from the start.
    counted = dict(re.findall(r'llmapi_http_errors_total\{code="([a-z_]+)"\} ([0-9.]+)', text))
    assert set(counted) == set(errors.CODES)
    assert counted["invalid_key"] == "1.0" and counted["quota_exhausted"] == "0.0"
    assert 'llmapi_broker_workers{service="default",state="idle"} 1.0' in text
    assert "llmapi_broker_up 1.0" in text
    assert "llmapi_http_request_seconds_bucket" in text


def test_metrics_need_the_token_when_one_is_set(api_factory):
    api = api_factory(frontend={"metrics_token": "s3cret-metrics"})
    assert api.get("/metrics").status_code == 401
    assert api.get("/metrics", "wrong").status_code == 401
    assert api.get("/metrics", "s3cret-metrics").status_code == 200


def test_a_retry_with_the_same_idempotency_key_counts_once_and_gets_the_first_answer(api_factory):
    api = api_factory(workers=(("default", "tests.fixtures.algorithms:Probe"),))
    info, secret = api.store.create_key(email="a@example.com", max_requests=2)
    headers = {"Idempotency-Key": "order-42"}
    first = api.post("/api/", secret, {"text": "once"}, headers=dict(headers))
    retry = api.post("/api/", secret, {"text": "once"}, headers=dict(headers))
    assert first.status_code == retry.status_code == 200
    assert retry.json()["message"] == first.json()["message"]  # the same run, not a second one
    assert api.store.get_key(info.id).used == 1
    other = api.post("/api/", secret, {"text": "twice"}, headers={"Idempotency-Key": "order-43"})
    assert other.status_code == 200 and api.store.get_key(info.id).used == 2
    # The quota is used up, but a retry of a paid request still gets its answer.
    assert api.post("/api/", secret, {"text": "once"}, headers=dict(headers)).status_code == 200
    assert api.post("/api/", secret, {"text": "new"}).status_code == 429
    # The same idempotency key with another body or path is a client's bug, refused and not charged.
    for path, body in (("/api/", {"text": "changed"}), ("/analyze/", {"text": "once"})):
        reused = api.post(path, secret, body, headers=dict(headers))
        assert (reused.status_code, error_of(reused)) == (422, "idempotency_key_reused")
    assert api.store.get_key(info.id).used == 2


def test_a_retry_while_the_first_attempt_runs_waits_for_its_answer(api_factory):
    api = api_factory(workers=(("default", "tests.fixtures.algorithms:Probe"),))
    info, secret = api.store.create_key(email="a@example.com")
    first, retry = retry_during_first_attempt(api, secret, "slow-1", {"text": "slow", "sleep_ms": 800})
    assert first.json()["message"] == retry.json()["message"]
    assert api.store.get_key(info.id).used == 1


def retry_during_first_attempt(api, secret, idempotency_key, body):
    """Both answers of a request and of its retry sent while the first attempt runs."""
    headers = {"Idempotency-Key": idempotency_key}
    with ThreadPoolExecutor(2) as pool:
        first = pool.submit(api.post, "/api/", secret, body, headers=dict(headers))
        with Client(api.stack.endpoint) as client:
            wait_until(lambda: client.service_info("default")["busy"] == 1, what="the first attempt to run")
        retry = pool.submit(api.post, "/api/", secret, body, headers=dict(headers))
        return first.result(), retry.result()


def test_a_malformed_idempotency_key_is_400(api):
    response = api.post("/api/", api.key(), {"text": "x"}, headers={"Idempotency-Key": "x" * 300})
    assert response.status_code == 400 and error_of(response) == "invalid_idempotency_key"


def test_a_retry_waiting_on_a_first_attempt_that_fails_runs_itself(api_factory):
    api = api_factory(workers=(("default", "sleep"),), frontend={"request_timeout": 1.0})
    first, retry = retry_during_first_attempt(api, api.key(), "fails-first", {"text": "slow", "sleep_ms": 3000})
    assert first.status_code == 504
    # The retry ran on its own and got an answer of its own, never an empty 200.
    assert retry.status_code == 504 and error_of(retry) == "timeout"


def test_deeply_nested_json_is_400(api):
    response = api.post("/api/", api.key(), data=b"[" * 200_000)
    assert response.status_code == 400 and error_of(response) == "invalid_json"


def test_unauthenticated_requests_never_become_metric_labels(api):
    for name in ("made-up-1", "made-up-2"):
        assert api.post("/api/" + name + "/", "llmapi_bogus", {"text": "x"}).status_code == 401
    assert "made-up" not in api.get("/metrics").text
