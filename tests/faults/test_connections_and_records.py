"""HTTP connection hygiene, and logs and metrics that say what each client really got."""

from __future__ import annotations

import json
import socket
import time

import pytest
import requests

from bench.common import cpu_seconds
from tests.conftest import fast_stack
from tests.frontend.conftest import running_api
from tests.harness import accounts_database, free_port, wait_until


def closed_by_server(connection: socket.socket, within: float, trickle: bytes = b"") -> float | None:
    """Seconds until the server closed ``connection`` (sending ``trickle`` a byte every 0.1 s), or None."""
    started = time.monotonic()
    connection.settimeout(0.1)
    sent = 0
    while time.monotonic() - started < within:
        try:
            if connection.recv(1) == b"":
                return time.monotonic() - started
        except TimeoutError:
            pass
        except ConnectionResetError:
            return time.monotonic() - started
        if sent < len(trickle):
            try:
                connection.send(trickle[sent:sent + 1])
            except (BrokenPipeError, ConnectionResetError):
                return time.monotonic() - started
            sent += 1
    return None


def test_idle_connections_and_slowly_sent_headers_are_cut_at_the_idle_timeout(tmp_path):
    with running_api(tmp_path, frontend={"idle_timeout": 0.5}) as api:
        port = int(api.url.rsplit(":", 1)[1])
        idle = socket.create_connection(("127.0.0.1", port))
        slow = socket.create_connection(("127.0.0.1", port))
        slow.send(b"GET /healthz HTTP/1.1\r\nHost: x\r\n")
        assert (closed_by_server(idle, within=3) or 99) < 2
        assert (closed_by_server(slow, within=4, trickle=b"X-Slow: " + b"a" * 40) or 99) < 2.5
        assert requests.get(api.url + "/healthz", timeout=5).ok


def test_at_the_descriptor_limit_the_frontend_pauses_accepting_logs_once_and_recovers(tmp_path):
    port = free_port()
    database, _ = accounts_database(tmp_path)
    stack = fast_stack(tmp_path, frontend={"port": port}, accounts={"database_url": database})
    try:
        stack.broker()
        stack.worker("default", "echo")
        frontend = stack.start("frontend", "frontend", open_files=96)
        url = f"http://127.0.0.1:{port}/healthz"
        wait_until(lambda: requests.get(url, timeout=1).ok, what="the frontend")
        hogs = [socket.create_connection(("127.0.0.1", port), timeout=5) for _ in range(150)]
        wait_until(lambda: "accept_paused" in frontend.log(), timeout=5, what="the pause to be logged")
        before = cpu_seconds(frontend.pid)
        time.sleep(2.0)  # measuring CPU over an interval: the interval is the point
        assert cpu_seconds(frontend.pid) - before < 0.5  # no busy loop at the limit
        assert frontend.log().count("accept_paused") == 1
        for hog in hogs:
            hog.close()
        wait_until(lambda: requests.get(url, timeout=1).ok, timeout=10, what="the frontend to serve again")
        assert frontend.alive() and "Traceback" not in frontend.log()
    finally:
        stack.stop()


def test_logs_and_metrics_record_what_each_client_got_with_its_request_id_as_json(tmp_path):
    with running_api(
        tmp_path, workers=(("default", "sleep"),), logging={"format": "json"}, frontend={"request_timeout": 1.0}
    ) as api:
        secret = api.key()
        with pytest.raises(requests.Timeout):
            api.post("/api/", secret, {"text": "leaving", "sleep_ms": 3000}, timeout=0.3)
        failed = api.post("/api/", secret, {"text": "too slow", "sleep_ms": 3000})
        assert failed.status_code == 504
        request_id = failed.headers["X-Request-Id"]

        def lines() -> list[dict]:
            return [json.loads(line) for line in api.frontend.log().splitlines() if line.strip()]

        wait_until(lambda: any(line.get("status") == 499 for line in lines()), what="the 499 in the access log")

        def events() -> set[str]:
            return {line["event"] for line in lines() if line.get("request_id") == request_id}

        # The access line is written just after the answer's bytes, which the client may read first.
        wait_until(lambda: {"request_failed", "request_refunded", "http_request"} <= events(), what="the 504's lines")
        metrics = requests.get(api.url + "/metrics", timeout=5).text
        assert 'status="499"' in metrics and 'status="504"' in metrics
