"""The bus end to end: real broker and worker processes, real sockets on loopback."""

from __future__ import annotations

import asyncio
import itertools
import json
import signal
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor

import pytest
import zmq

from broker import errors, protocol
from broker.client import AsyncClient, Client
from tests.harness import ROOT, free_port, wait_until


def idle_workers(client: Client, service: str = "default") -> int:
    info = client.service_info(service)
    return info.get("idle", 0) if info.get("exists") else 0


def ready(stack, workers: int, service: str = "default") -> Client:
    client = Client(stack.endpoint, timeout=10, heartbeat_interval=stack.heartbeat_interval)
    wait_until(lambda: idle_workers(client, service) >= workers, what=f"{workers} idle workers")
    return client


@pytest.fixture
def echo_stack(stack_factory):
    stack = stack_factory()
    stack.broker()
    stack.worker()
    return stack


def test_a_request_flows_from_client_to_worker_and_back(echo_stack):
    with ready(echo_stack, 1) as client:
        assert client.request("default", {"text": "Is this real?"}) == {"output": "Is this real?"}


def test_a_plain_req_socket_client_is_served(echo_stack):
    ready(echo_stack, 1).close()
    with Client(echo_stack.endpoint, socket_type=zmq.REQ, timeout=5) as client:
        assert client.request("default", {"text": "lockstep"}) == {"output": "lockstep"}
        assert client.request("default", {"text": "again"}) == {"output": "again"}


def test_a_streamed_request_yields_pieces_then_the_summary(echo_stack):
    with ready(echo_stack, 1) as client:
        pieces = list(client.stream("default", {"text": "one two three"}))
    assert pieces == [{"text": "one"}, {"text": "two"}, {"text": "three"}, {"finish_reason": "stop"}]


def test_an_async_client_keeps_many_requests_in_flight(echo_stack):
    ready(echo_stack, 1).close()

    async def burst():
        async with AsyncClient(echo_stack.endpoint, timeout=10) as client:
            return await asyncio.gather(*(client.request("default", {"text": str(i)}) for i in range(200)))

    answers = asyncio.run(burst())
    assert [a["output"] for a in answers] == [str(i) for i in range(200)]


def test_two_workers_never_hold_two_tasks_at_once(stack_factory):
    stack = stack_factory()
    stack.broker()
    workers = [stack.worker("default", "tests.fixtures.algorithms:Probe") for _ in range(2)]
    ready(stack, 2).close()

    async def burst():
        async with AsyncClient(stack.endpoint, timeout=30) as client:
            # Each task outlives a heartbeat, so workers heartbeat while busy.
            return await asyncio.gather(
                *(client.request("default", {"text": str(i), "sleep_ms": 250}) for i in range(16))
            )

    answers = asyncio.run(burst())
    assert sorted(a["text"] for a in answers) == sorted(str(i) for i in range(16))
    by_worker: dict[int, list[tuple[float, float]]] = {}
    for answer in answers:
        by_worker.setdefault(answer["pid"], []).append((answer["started"], answer["ended"]))
    assert set(by_worker) == {w.pid for w in workers}
    for spans in by_worker.values():
        spans.sort()
        assert all(end <= next_start for (_, end), (next_start, _) in itertools.pairwise(spans))
    for worker in workers:
        assert "request_while_busy_refused" not in worker.log()


def test_a_worker_killed_mid_task_is_replaced_by_another(stack_factory):
    stack = stack_factory()
    stack.broker()
    workers = {w.pid: w for w in (stack.worker("default", "tests.fixtures.algorithms:Probe") for _ in range(2))}
    client = ready(stack, 2)
    with ThreadPoolExecutor(1) as pool:
        started = time.monotonic()
        future = pool.submit(client.request, "default", {"text": "survive", "sleep_ms": 1500})
        status = wait_until(lambda: _busy_pid(client), what="a busy worker")
        workers[status].signal(signal.SIGKILL)
        answer = future.result(timeout=15)
    assert answer["pid"] != status
    # Detected within the liveness period (plus the task's own time on the survivor).
    assert time.monotonic() - started < stack.liveness_period + 1.5 + 2.0
    client.close()


def _busy_pid(client: Client) -> int | None:
    with Client(client.endpoint, timeout=2) as probe:
        for worker in probe.status()["services"]["default"]["workers"]:
            if worker["state"] == "busy":
                return worker["pid"]
    return None


def test_a_poison_task_fails_with_worker_lost_after_max_attempts(stack_factory):
    stack = stack_factory(broker={"max_attempts": 2})
    stack.broker()
    workers = [stack.worker("default", "tests.fixtures.algorithms:Poison") for _ in range(3)]
    with ready(stack, 3) as client:
        with pytest.raises(errors.WorkerLost):
            client.request("default", {"text": "poison"})
        assert sum(w.alive() for w in workers) == 1
        assert client.request("default", {"text": "fine"})["output"] == "fine"


def test_workers_and_clients_rejoin_a_restarted_broker(stack_factory):
    stack = stack_factory()
    broker = stack.broker()
    worker = stack.worker()
    client = ready(stack, 1)
    assert client.request("default", {"text": "before"}) == {"output": "before"}
    broker.signal(signal.SIGKILL)
    broker.wait()
    with pytest.raises(errors.BrokerUnavailable):
        client.request("default", {"text": "during"}, timeout=2)
    stack.broker()
    wait_until(lambda: idle_workers(client) == 1, timeout=15, what="the worker to rejoin")
    assert client.request("default", {"text": "after"}) == {"output": "after"}
    assert worker.alive()
    client.close()


def test_an_async_client_fails_fast_while_the_broker_is_down_and_recovers(stack_factory):
    stack = stack_factory()
    broker = stack.broker()
    stack.worker()
    ready(stack, 1).close()

    async def scenario():
        async with AsyncClient(stack.endpoint, timeout=10, heartbeat_interval=0.2) as client:
            assert await client.request("default", {"text": "a"}) == {"output": "a"}
            broker.signal(signal.SIGKILL)
            await asyncio.to_thread(broker.wait)
            pending = asyncio.create_task(client.request("default", {"text": "lost"}))
            with pytest.raises(errors.BrokerUnavailable):
                await asyncio.wait_for(pending, 5)
            started = time.monotonic()
            with pytest.raises(errors.BrokerUnavailable):
                await client.request("default", {"text": "refused"})
            assert time.monotonic() - started < 0.1
            stack.broker()
            deadline = time.monotonic() + 15
            while time.monotonic() < deadline:
                try:
                    return await client.request("default", {"text": "back"}, timeout=2)
                except (errors.BrokerUnavailable, errors.UnknownService, errors.RequestTimeout):
                    await asyncio.sleep(0.1)

    assert asyncio.run(scenario()) == {"output": "back"}


def test_a_full_queue_answers_overloaded_immediately(stack_factory):
    stack = stack_factory(broker={"queue_limit": 2, "tenant_queue_share": 1.0})
    stack.broker()
    stack.worker("default", "sleep")
    ready(stack, 1).close()

    async def flood():
        async with AsyncClient(stack.endpoint, timeout=10) as client:
            slow = [asyncio.create_task(client.request("default", {"text": str(i), "sleep_ms": 500})) for i in range(3)]
            await asyncio.sleep(0)
            wait_until_queued = time.monotonic() + 5
            while (await client.status())["services"]["default"]["queued"] < 2:
                assert time.monotonic() < wait_until_queued
            started = time.monotonic()
            with pytest.raises(errors.Overloaded):
                await client.request("default", {"text": "one too many"})
            refused_in = time.monotonic() - started
            await asyncio.gather(*slow)
            return refused_in

    assert asyncio.run(flood()) < 0.2


@pytest.fixture
def probe_stack(stack_factory):
    """A broker, one Probe worker and a client that sees it ready."""
    stack = stack_factory()
    stack.broker()
    worker = stack.worker("default", "tests.fixtures.algorithms:Probe")
    with ready(stack, 1) as client:
        yield stack, worker, client


def test_an_expired_request_is_never_run(probe_stack):
    stack, worker, client = probe_stack
    with ThreadPoolExecutor(1) as pool:
        busy = pool.submit(client.request, "default", {"text": "hold", "sleep_ms": 800})
        wait_until(lambda: _busy_pid(client), what="the worker to be busy")
        with Client(stack.endpoint) as other, pytest.raises(errors.RequestTimeout):
            other.request("default", {"text": "expired"}, timeout=0.3, request_id="expired-request")
        busy.result(timeout=5)
    # The worker is idle again and serves the next request; the expired one never reached it.
    assert client.request("default", {"text": "next"})["text"] == "next"
    assert "expired-request" not in worker.log()


def test_garbage_frames_do_not_stop_the_broker(echo_stack):
    client = ready(echo_stack, 1)
    context = zmq.Context.instance()
    for socket_type in (zmq.DEALER, zmq.REQ):
        attacker = context.socket(socket_type)
        attacker.setsockopt(zmq.LINGER, 2000)  # deliver the garbage before closing
        attacker.connect(echo_stack.endpoint)
        for frames in ([b"junk"], [b"", b"LLMC01"], [b"", b"LLMW01", b"\x03", b"x", b"y"], [b"\xff" * 1000]):
            attacker.send_multipart(frames)
            if socket_type == zmq.REQ:
                break
        attacker.close()
    broker_log = echo_stack.processes[0].log
    # One line per peer at once, then one more per peer and interval for the rest, with a count.
    wait_until(lambda: "repeated=2" in broker_log(), timeout=15, what="the garbage to be counted")
    assert broker_log().count("malformed_message_dropped") == 3
    assert client.request("default", {"text": "still here"}) == {"output": "still here"}
    client.close()


def test_an_algorithm_error_becomes_a_worker_error_and_the_worker_survives(stack_factory):
    stack = stack_factory()
    stack.broker()
    stack.worker("raising", "tests.fixtures.algorithms:Raising")
    stack.worker("notjson", "tests.fixtures.algorithms:NotJSON")
    with ready(stack, 1, "raising") as client:
        ready(stack, 1, "notjson").close()
        with pytest.raises(errors.WorkerError) as raised:
            client.request("raising", {"text": "missing"})
        assert raised.value.error_type == "KeyError"
        with pytest.raises(errors.WorkerError) as raised:
            client.request("notjson", {"text": "x"})
        assert "JSON" in raised.value.message
        with pytest.raises(errors.WorkerError):
            client.request("raising", {"text": "again"})


def test_a_django_style_algorithm_package_runs_unchanged(stack_factory):
    stack = stack_factory()
    stack.broker()
    stack.worker("legacy", "tests.fixtures.django_style_algorithm", "--model", "reverser-v1")
    with ready(stack, 1, "legacy") as client:
        first = client.request("legacy", {"text": "abc"})
        second = client.request("legacy", {"text": "xyz"})
    assert first == {"status": "success", "output": "cba", "model": "reverser-v1", "calls": 1}
    assert second["calls"] == 2  # constructed once, kept resident


def test_sigterm_lets_the_current_task_finish_then_the_worker_leaves(probe_stack):
    stack, worker, client = probe_stack
    with ThreadPoolExecutor(1) as pool:
        future = pool.submit(client.request, "default", {"text": "finish me", "sleep_ms": 600})
        wait_until(lambda: _busy_pid(client), what="the worker to be busy")
        worker.signal(signal.SIGTERM)
        assert future.result(timeout=5)["text"] == "finish me"
    assert worker.wait(5) == 0
    wait_until(lambda: not client.service_info("default")["idle"], what="the worker to leave")
    assert "worker_left" in stack.processes[0].log()


def test_a_request_with_a_body_that_is_not_an_object_is_refused_by_the_worker(echo_stack):
    with ready(echo_stack, 1) as client:
        with pytest.raises(errors.InvalidInput):
            client.request("default", ["not", "an", "object"])
        with pytest.raises(errors.UnknownService):
            client.request("missing", {"text": "x"})


def test_status_reports_each_worker_with_its_model_and_memory(echo_stack):
    with ready(echo_stack, 1) as client:
        client.request("default", {"text": "x"})
        (worker,) = client.status()["services"]["default"]["workers"]
    assert worker["model"] == "echo" and worker["max_rss_bytes"] > 0
    assert worker["state"] == "idle" and worker["served"] == 1


def test_a_malformed_request_with_a_readable_id_is_answered_bad_request(echo_stack):
    ready(echo_stack, 1).close()
    context = zmq.Context.instance()
    client = context.socket(zmq.DEALER)
    client.setsockopt(zmq.LINGER, 0)
    client.connect(echo_stack.endpoint)
    client.send_multipart([b"", b"LLMC01", b"\x02", b"default", b"req-1", b"not-a-number", b"", b"{}"])
    assert client.poll(5000)
    answer = protocol.decode(client.recv_multipart())
    client.close()
    assert isinstance(answer, protocol.ClientError)
    assert (answer.request_id, answer.code) == ("req-1", "BAD_REQUEST")


def test_the_status_command_shows_each_worker_and_the_queue(echo_stack):
    ready(echo_stack, 1).close()
    result = subprocess.run(
        [sys.executable, "-m", "commands.cli", "status", "--config", str(echo_stack.config_path)],
        cwd=ROOT, capture_output=True, text=True, timeout=30,
    )
    assert result.returncode == 0
    assert "default: 1 idle, 0 busy, 0 queued" in result.stdout
    assert "echo" in result.stdout and "broker: requests" in result.stdout
    as_json = subprocess.run(
        [sys.executable, "-m", "commands.cli", "status", "--json", "--config", str(echo_stack.config_path)],
        cwd=ROOT, capture_output=True, text=True, timeout=30,
    )
    assert json.loads(as_json.stdout)["services"]["default"]["idle"] == 1


def test_the_status_command_fails_clearly_without_a_broker(tmp_path):
    config = tmp_path / "c.toml"
    config.write_text(f'[broker]\nendpoint = "tcp://127.0.0.1:{free_port()}"\nheartbeat_interval = 0.1\n')
    result = subprocess.run(
        [sys.executable, "-m", "commands.cli", "status", "--config", str(config)],
        cwd=ROOT, capture_output=True, text=True, timeout=30,
    )
    assert result.returncode == 3 and "no answer from the broker" in result.stderr
