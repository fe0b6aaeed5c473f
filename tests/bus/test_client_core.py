"""The core both bus clients share: what a client knows of its broker, decided with the
clock passed in (no sockets), and the refusal of a handshake, heard by either face."""

from __future__ import annotations

import asyncio
import time

import pytest
import zmq

from broker import errors, protocol
from broker.client import DEADLINE_GRACE, AsyncClient, Link
from tests.bus.conftest import keyed
from tests.harness import free_port

ENDPOINT = "tcp://127.0.0.1:1"


def link(now: float = 100.0) -> Link:
    return Link(ENDPOINT, heartbeat_interval=1.0, liveness_period=3.0, now=now)


def test_a_heartbeat_is_due_an_interval_after_the_last_ping():
    broker = link()
    assert not broker.heartbeat_due(100.5)
    assert broker.heartbeat_due(101.0)
    broker.ping(101.0)
    assert not broker.heartbeat_due(101.9)


def test_the_broker_is_taken_for_lost_only_after_the_liveness_period_of_silence():
    broker = link()
    assert not broker.silent(103.0)
    assert broker.silent(103.1)
    assert broker.hear(protocol.ClientHeartbeat("a"), 103.0) is None
    assert not broker.silent(106.0)
    assert "no answer from the broker at " + ENDPOINT in str(broker.lost())


def test_a_heartbeat_from_a_new_incarnation_loses_every_request_in_flight():
    broker = link()
    assert broker.hear(protocol.ClientHeartbeat("first"), 100.1) is None
    assert broker.hear(protocol.ClientHeartbeat("first"), 101.1) is None
    assert broker.hear(protocol.ClientHeartbeat(""), 101.2) is None  # a peer of version 1 names none
    lost = broker.hear(protocol.ClientHeartbeat("second"), 102.1)
    assert isinstance(lost, errors.BrokerUnavailable) and "restarted" in lost.message
    assert broker.hear(protocol.ClientHeartbeat("second"), 103.1) is None


def test_a_refusal_of_the_clients_version_loses_every_request_whatever_its_id():
    refusal = protocol.ClientError("-", errors.VersionRefused.code, "this broker speaks versions 4 and 5")
    lost = link().hear(refusal, 100.1)
    assert isinstance(lost, errors.VersionRefused) and lost.message == "this broker speaks versions 4 and 5"
    assert link().hear(protocol.ClientError("r1", "TIMEOUT", "too late"), 100.1) is None


def test_an_async_client_the_broker_refuses_fails_its_requests_within_a_heartbeat_saying_why(secure_stack):
    stack = secure_stack()
    stack.broker()

    async def refused():
        curve = keyed(stack, "intruder")
        async with AsyncClient(stack.endpoint, timeout=5, heartbeat_interval=0.5, liveness=20, curve=curve) as client:
            with pytest.raises(errors.BrokerUnavailable) as raised:
                await client.request("default", {"text": "x"})
            return raised.value

    started = time.monotonic()
    error = asyncio.run(refused())
    assert time.monotonic() - started < 5 + DEADLINE_GRACE
    assert "refused this client" in error.message and "not in its allowlists" in error.message


def test_a_request_the_broker_never_answers_fails_at_its_deadline_and_is_cancelled_there():
    silent = zmq.Context.instance().socket(zmq.ROUTER)
    endpoint = f"tcp://127.0.0.1:{free_port()}"
    silent.bind(endpoint)

    async def unanswered() -> tuple[errors.BrokerUnavailable, float, int]:
        # Heartbeats that never come would end the link only after 100 s: the deadline comes first.
        async with AsyncClient(endpoint, timeout=0.3, heartbeat_interval=1.0, liveness=100) as client:
            started = time.monotonic()
            with pytest.raises(errors.BrokerUnavailable) as raised:
                await client.request("default", {"text": "x"})
            return raised.value, time.monotonic() - started, client.in_flight

    try:
        error, waited, in_flight = asyncio.run(unanswered())
        heard = []
        while silent.poll(1000):
            heard.append(protocol.decode(silent.recv_multipart()[1:]))
    finally:
        silent.close(linger=0)
    assert "did not answer before the deadline" in error.message and in_flight == 0
    assert 0.3 + DEADLINE_GRACE <= waited < 0.3 + DEADLINE_GRACE + 1.0
    (request,) = [message for message in heard if isinstance(message, protocol.ClientRequest)]
    assert [message.request_id for message in heard if isinstance(message, protocol.ClientCancel)] == [request.request_id]
