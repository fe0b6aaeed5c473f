"""Faults of the frontend process: killed with requests in flight, stopped with SIGTERM."""

from __future__ import annotations

import signal
import time
from concurrent.futures import ThreadPoolExecutor

import requests

from broker.client import Client
from tests.faults.conftest import balanced, busy_worker_pid, usage_outcomes
from tests.frontend.conftest import running_api
from tests.harness import wait_until


def test_a_killed_frontends_requests_are_cancelled_by_the_broker_and_refunded_as_abandoned(tmp_path):
    with running_api(tmp_path, workers=(("default", "sleep"),), broker={"client_timeout": 1.0},
                     frontend={"request_timeout": 30.0}) as api:
        info, secret = api.store.create_key(email="killed@example.org")
        with ThreadPoolExecutor(3) as pool:
            calls = [pool.submit(api.post, "/api/", secret, {"text": str(n), "sleep_ms": 20_000}) for n in range(3)]
            busy_worker_pid(api.stack, "default")
            with Client(api.stack.endpoint, timeout=5) as bus:
                wait_until(lambda: bus.service_info("default")["queued"] == 2, what="two queued requests")
                api.frontend.popen.kill()
                killed = time.monotonic()
                # The broker hears no more heartbeats: it drops the queued requests and cancels the running one.
                wait_until(lambda: bus.service_info("default") | {"service": None} == {
                    "service": None, "exists": True, "idle": 1, "busy": 0, "queued": 0}, timeout=5)
                assert time.monotonic() - killed < 3
                assert bus.status()["counters"]["clients_expired"] == 1
            for call in calls:
                assert isinstance(call.exception(), requests.ConnectionError)
        # The worker writes each request's lines a moment later, from a thread of their own.
        worker_log = wait_until(lambda: (text := api.stack.processes[1].log()).count("task_done") and text,
                                what="the cancelled task's end in the worker's log")
        assert worker_log.count("task_cancel_requested") == 1 and worker_log.count("task_done") == 1
        state = api.store.ledger_state(info.id)
        assert (state.used, state.open, state.records) == (3, 3, 0)  # charged, in flight, no record: yet
        assert api.store.settle_abandoned(older_than=0) == 3
        balanced(api.store, info.id, records=3)
        assert usage_outcomes(api.store, info.id) == [("abandoned", False)] * 3
        assert api.store.get_key(info.id).used == 0


def test_sigterm_lets_short_requests_finish_and_answers_the_rest_503_cancelled_and_refunded(tmp_path):
    workers = (("default", "sleep"), ("default", "sleep"))
    with running_api(tmp_path, workers=workers, frontend={"request_timeout": 30.0, "shutdown_grace": 1.0}) as api:
        info, secret = api.store.create_key(email="sigterm@example.org")
        with ThreadPoolExecutor(2) as pool:
            short = pool.submit(api.post, "/api/", secret, {"text": "short", "sleep_ms": 300})
            long = pool.submit(api.post, "/api/", secret, {"text": "long", "sleep_ms": 20_000})
            with Client(api.stack.endpoint, timeout=5) as bus:
                wait_until(lambda: bus.service_info("default")["busy"] == 2, what="both requests running")
            api.frontend.signal(signal.SIGTERM)
            stopped = time.monotonic()
            assert short.result(timeout=10).status_code == 200
            answer = long.result(timeout=10)
        assert answer.status_code == 503 and answer.headers["Retry-After"]
        assert answer.json()["error"]["code"] == "shutting_down"
        assert time.monotonic() - stopped < 4
        assert api.frontend.wait(10) == 0
        balanced(api.store, info.id, records=2)
        assert sorted(usage_outcomes(api.store, info.id)) == [("ok", True), ("shutdown", False)]
        worker_logs = "".join(process.log() for process in api.stack.processes[1:3])
        assert "task_cancel_requested" in worker_logs  # the long task was stopped, not left to run 20 s
        frontend_log = api.frontend.log()
        assert "status=503" in frontend_log and "status=200" in frontend_log
