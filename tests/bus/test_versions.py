"""Protocol versions across real processes: peers of the previous version (frames exactly
as every release before version 2 sends them) are served by the broker alongside current
ones, and a peer of a version the broker does not speak is told so, not ignored."""

from __future__ import annotations

import time
from concurrent.futures import ThreadPoolExecutor

import pytest
import zmq

from broker import errors, protocol
from broker.client import Client
from tests.bus.test_bus import ready
from tests.harness import free_port, wait_until

V1_CLIENT, V1_WORKER = b"LLMC01", b"LLMW01"


@pytest.fixture
def raw():
    """Plain DEALER sockets connected to an endpoint, closed at the end."""
    sockets = []

    def connect(endpoint: str) -> zmq.Socket:
        socket = zmq.Context.instance().socket(zmq.DEALER)
        socket.setsockopt(zmq.LINGER, 0)
        socket.connect(endpoint)
        sockets.append(socket)
        return socket

    yield connect
    for socket in sockets:
        socket.close()


def receive(socket: zmq.Socket, timeout: float = 5.0) -> list[bytes]:
    assert socket.poll(timeout * 1000), "no answer"
    return socket.recv_multipart()


def test_a_worker_of_the_previous_version_serves_a_client_of_the_current_one(stack_factory, raw):
    stack = stack_factory()
    stack.broker()
    old_worker = raw(stack.endpoint)
    old_worker.send_multipart([b"", V1_WORKER, protocol.READY, b"default", b'{"model": "v1"}'])
    with ready(stack, 1) as client, ThreadPoolExecutor(1) as pool:
        (worker,) = client.status()["services"]["default"]["workers"]
        assert (worker["version"], worker["capacity"]) == (1, 1)
        answer = pool.submit(client.request, "default", {"text": "across versions"})
        frames = receive(old_worker)
        while frames[2] == protocol.HEARTBEAT:
            assert frames[1] == V1_WORKER
            frames = receive(old_worker)
        assert frames[:3] == [b"", V1_WORKER, protocol.REQUEST]
        request_id = frames[3]
        old_worker.send_multipart([b"", V1_WORKER, protocol.REPLY, request_id, frames[6]])
        assert answer.result(timeout=10) == {"text": "across versions"}


def test_a_client_of_the_previous_version_is_served_by_a_worker_of_the_current_one(stack_factory, raw):
    stack = stack_factory()
    stack.broker()
    stack.worker()
    ready(stack, 1).close()
    old_client = raw(stack.endpoint)
    old_client.send_multipart([b"", V1_CLIENT, protocol.REQUEST, b"default", b"old-1", b"5000", b"", b'{"text": "hi"}'])
    assert receive(old_client) == [b"", V1_CLIENT, protocol.REPLY, b"old-1", b'{"output": "hi"}']
    old_client.send_multipart([b"", V1_CLIENT, protocol.HEARTBEAT])  # the first revision: no incarnation field
    assert receive(old_client) == [b"", V1_CLIENT, protocol.HEARTBEAT]
    old_client.send_multipart([b"", V1_CLIENT, protocol.HEARTBEAT, b""])
    header, command, incarnation = receive(old_client)[1:]
    assert (header, command) == (V1_CLIENT, protocol.HEARTBEAT) and len(incarnation) == 16
    old_client.send_multipart([b"", V1_CLIENT, protocol.REQUEST, b"default", b"old-2", b"not-a-number", b"", b"{}"])
    assert receive(old_client)[1:5] == [V1_CLIENT, protocol.ERROR, b"old-2", b"BAD_REQUEST"]


def test_peers_of_a_version_the_broker_does_not_speak_are_refused_clearly_and_logged_once(stack_factory, raw):
    stack = stack_factory()
    broker = stack.broker()
    stack.worker()
    ready(stack, 1).close()
    future_client, future_worker = raw(stack.endpoint), raw(stack.endpoint)
    reason = b"protocol version 5 is not supported; this broker speaks versions 1, 2, 3 and 4"
    for _ in range(2):  # refused each time, logged once
        future_client.send_multipart([b"", b"LLMC05", protocol.REQUEST + b"anything", b"{}"])
        refusal = receive(future_client)
        # Answered as this version packs an ERROR, which a later version is likeliest to read.
        assert refusal == [
            b"", b"LLMC05", protocol.ERROR + protocol.pack_fields([b"-", b"UNSUPPORTED_VERSION", reason]), b""
        ]
    future_worker.send_multipart([b"", b"LLMW05", protocol.READY, b"default", b"{}", b"1"])
    assert receive(future_worker) == [b"", b"LLMW05", protocol.DISCONNECT, reason]
    wait_until(lambda: broker.log().count("unsupported_version") == 2, what="one log line per peer")
    with Client(stack.endpoint, timeout=5) as client:
        assert client.service_info("default")["idle"] == 1  # the future worker was not registered
    assert "malformed_message_dropped" not in broker.log()


@pytest.fixture
def router():
    """A ROUTER socket standing in for a broker of a later version."""
    socket = zmq.Context.instance().socket(zmq.ROUTER)
    socket.setsockopt(zmq.LINGER, 0)
    endpoint = f"tcp://127.0.0.1:{free_port()}"
    socket.bind(endpoint)
    yield socket, endpoint
    socket.close()


def test_a_client_refused_for_its_version_fails_with_the_brokers_reason(router):
    socket, endpoint = router
    with Client(endpoint, timeout=5) as client, ThreadPoolExecutor(1) as pool:
        pending = pool.submit(client.request, "default", {"text": "x"})
        envelope, _ = protocol.split_envelope(socket.recv_multipart())
        refusal = protocol.ClientError("-", "UNSUPPORTED_VERSION", "this broker speaks versions 5 and 6")
        socket.send_multipart(protocol.join_envelope(envelope, refusal))
        with pytest.raises(errors.VersionRefused, match="versions 5 and 6"):
            pending.result(timeout=5)


def test_a_worker_refused_with_a_reason_logs_it_and_backs_off_before_trying_again(stack_factory, router):
    socket, endpoint = router
    stack = stack_factory(worker={"reconnect_initial": 0.5, "reconnect_max": 1.0})
    worker = stack.worker("default", "echo", "--endpoint", endpoint)
    readies = []
    deadline = time.monotonic() + 15
    while len(readies) < 2 and time.monotonic() < deadline:
        if not socket.poll(200):
            continue
        envelope, rest = protocol.split_envelope(socket.recv_multipart())
        if isinstance(protocol.decode(rest), protocol.WorkerReady):
            readies.append(time.monotonic())
            refusal = protocol.WorkerDisconnect("protocol version 2 is not supported; this broker speaks 3 and 4")
            socket.send_multipart(protocol.join_envelope(envelope, refusal))
    assert len(readies) == 2
    assert readies[1] - readies[0] >= 0.5 * 0.75  # the first delay, less its jitter
    assert "broker_refused_worker" in worker.log() and "speaks 3 and 4" in worker.log()
    assert worker.alive()  # it waits, then tries again


def test_a_worker_registers_once_for_the_disconnects_that_answer_what_it_sent_before(stack_factory, router):
    """A broker that restarted answers DISCONNECT to each heartbeat the worker queued meanwhile;
    the worker registers again for the first, and takes the rest for answers to what it sent
    before that READY, not for a second forgetting (a second READY would get it dropped)."""
    socket, endpoint = router
    stack = stack_factory(broker={"endpoint": endpoint, "heartbeat_interval": 2.0})
    stack.worker()

    def next_from_worker(timeout: float) -> tuple[list[bytes], protocol.Message] | None:
        if not socket.poll(timeout * 1000):
            return None
        envelope, frames = protocol.split_envelope(socket.recv_multipart())
        return envelope, protocol.decode(frames)

    def readies_within(seconds: float) -> int:
        count, deadline = 0, time.monotonic() + seconds
        while (left := deadline - time.monotonic()) > 0:
            received = next_from_worker(left)
            count += received is not None and isinstance(received[1], protocol.WorkerReady)
        return count

    envelope, first = next_from_worker(15)
    assert isinstance(first, protocol.WorkerReady)
    socket.send_multipart([*envelope, *protocol.encode(protocol.WorkerHeartbeat())])  # registered
    for _ in range(3):
        socket.send_multipart([*envelope, *protocol.encode(protocol.WorkerDisconnect())])
    again = next_from_worker(15)
    assert again is not None and isinstance(again[1], protocol.WorkerReady)
    assert readies_within(1.0) == 0  # and no second READY for the stale DISCONNECTs


def test_a_worker_whose_ready_was_lost_registers_afresh(stack_factory, router):
    """A broker that never got the READY (it restarted just after, say) answers every heartbeat
    with DISCONNECT: the worker must not take those for stale ones for ever."""
    socket, endpoint = router
    stack = stack_factory(broker={"endpoint": endpoint})
    stack.worker()
    readies, deadline = 0, time.monotonic() + 15
    while readies < 2 and socket.poll(max(0.0, deadline - time.monotonic()) * 1000):
        envelope, frames = protocol.split_envelope(socket.recv_multipart())
        if isinstance(protocol.decode(frames), protocol.WorkerReady):
            readies += 1
        socket.send_multipart([*envelope, *protocol.encode(protocol.WorkerDisconnect())])
    assert readies == 2
