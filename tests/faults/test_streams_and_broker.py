"""Faults on the bus: a worker killed mid-stream, a broker restarted under load."""

from __future__ import annotations

import os
import signal
import time
from concurrent.futures import ThreadPoolExecutor

import requests

from tests.faults.conftest import DRIBBLE, balanced, busy_worker_pid, usage_outcomes
from tests.frontend.conftest import running_api
from tests.harness import wait_until


def test_a_stream_whose_worker_dies_midway_ends_with_an_error_event_and_is_never_repeated(tmp_path):
    dribble = ("drip", DRIBBLE, "--option", "count=400", "--option", "interval_ms=20")
    with running_api(tmp_path, workers=(dribble, dribble), frontend={"request_timeout": 30.0}) as api:
        info, secret = api.store.create_key(email="stream@example.org")
        body = {"model": "drip", "messages": [{"role": "user", "content": "count"}], "stream": True}
        response = requests.post(
            api.url + "/v1/chat/completions", json=body, headers={"Authorization": f"Bearer {secret}"},
            stream=True, timeout=30,
        )
        text, events = "", []
        for line in response.iter_lines():
            if not line.startswith(b"data: "):
                continue
            events.append(line[6:])
            if line.startswith(b"data: {") and b'"content"' in line:
                import json

                text += json.loads(line[6:])["choices"][0]["delta"].get("content") or ""
            if len(events) == 20:
                os.kill(busy_worker_pid(api.stack, "drip"), signal.SIGKILL)
        numbers = [int(word) for word in text.split()]
        assert numbers == list(range(len(numbers))) and 15 < len(numbers) < 400  # one prefix, no repeat
        assert events[-1] == b"[DONE]"
        assert b'"code": "worker_lost"' in events[-2]
        balanced(api.store, info.id, records=1)
        assert usage_outcomes(api.store, info.id) == [("worker_lost", True)]  # part of it was delivered


def test_a_quick_broker_restart_fails_the_requests_it_lost_at_once_and_refunds_them(tmp_path):
    with running_api(tmp_path, workers=(("default", "sleep"),), frontend={"request_timeout": 30.0}) as api:
        info, secret = api.store.create_key(email="restart@example.org")
        broker = api.stack.processes[0]
        with ThreadPoolExecutor(1) as pool:
            answer = pool.submit(api.post, "/api/", secret, {"text": "slow", "sleep_ms": 20_000})
            busy_worker_pid(api.stack, "default")
            broker.popen.kill()
            broker.wait()
            restarted = time.monotonic()
            api.stack.broker()
            response = answer.result(timeout=20)
        assert response.status_code == 503 and response.headers["Retry-After"]
        assert time.monotonic() - restarted < 5  # not the 30 s deadline
        assert response.json()["error"]["code"] == "broker_unavailable"
        balanced(api.store, info.id, records=1)
        assert usage_outcomes(api.store, info.id) == [("broker_unavailable", False)]
        # The worker stops the task nobody will read and registers with the new broker.
        wait_until(lambda: api.post("/api/", secret, {"text": "after", "sleep_ms": 0}).status_code == 200, timeout=5)


def test_while_the_broker_restarts_requests_get_503_or_an_answer_never_404(tmp_path):
    workers = (("default", "echo"), ("other", "echo"))
    with running_api(tmp_path, workers=workers, broker={"startup_grace": 5.0}) as api:
        secret = api.key()
        broker = api.stack.processes[0]
        broker.popen.kill()
        broker.wait()
        api.stack.broker()
        statuses = {"/api/": set(), "/api/other/": set()}
        until = time.monotonic() + 2.0
        while time.monotonic() < until:
            for path, seen in statuses.items():
                seen.add(api.post(path, secret, {"text": "x"}).status_code)
        assert statuses["/api/"] <= {200, 503} and statuses["/api/other/"] <= {200, 503}
        assert api.post("/api/other/", secret, {"text": "x"}).status_code == 200
