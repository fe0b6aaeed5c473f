"""CurveZMQ on the bus, end to end: real broker, worker and frontend processes over TCP
on loopback, keys written by `llmapi bus keygen`, allowlists changed while they run."""

from __future__ import annotations

import asyncio
import os
import signal
import stat
import time
from pathlib import Path

import pytest
import requests
import zmq
import zmq.auth

from broker import errors, protocol
from broker.client import DEADLINE_GRACE, AsyncClient, Client
from broker.security import HandshakeWatch, connect_to_broker, peer_keys
from tests.bus.conftest import key_file, keyed, llmapi
from tests.harness import accounts_database, free_port, wait_until

PROBE = "tests.fixtures.algorithms:Probe"


def client_of(stack, name: str = "analytics") -> Client:
    """A direct client with the key pair ``name``."""
    return Client(stack.endpoint, timeout=10, curve=keyed(stack, name))


def workers_seen(client: Client) -> list[dict]:
    info = client.status()["services"].get("default")
    return info["workers"] if info else []


def test_keygen_writes_a_pair_in_zeromqs_format_whose_secret_only_its_owner_reads(tmp_path):
    result = llmapi("bus", "keygen", "gpu-host-7", "--dir", str(tmp_path))
    assert result.returncode == 0, result.stderr
    public, secret = tmp_path / "gpu-host-7.key", tmp_path / "gpu-host-7.key_secret"
    assert stat.S_IMODE(secret.stat().st_mode) == 0o600
    assert not stat.S_IMODE(public.stat().st_mode) & 0o022
    public_key, no_secret = zmq.auth.load_certificate(public)
    pair = zmq.auth.load_certificate(secret)
    assert no_secret is None and pair[0] == public_key and len(pair[1]) == 40
    again = llmapi("bus", "keygen", "gpu-host-7", "--dir", str(tmp_path))
    assert again.returncode == 2 and "--force" in again.stderr
    assert zmq.auth.load_certificate(public)[0] == public_key
    assert llmapi("bus", "keygen", "gpu-host-7", "--dir", str(tmp_path), "--force").returncode == 0
    assert zmq.auth.load_certificate(public)[0] != public_key


def test_a_worker_and_a_client_with_allowlisted_keys_work_over_tcp_with_curve(secure_stack):
    stack = secure_stack()
    broker = stack.broker()
    stack.worker("default", PROBE)
    with client_of(stack) as client:
        wait_until(lambda: workers_seen(client), what="the worker to register")
        assert client.request("default", {"text": "over curve"})["text"] == "over curve"
        (worker,) = workers_seen(client)
    assert worker["key"] == "gpu-a" and worker["version"] == protocol.VERSION

    async def as_async_client():
        async with AsyncClient(stack.endpoint, curve=peer_keys(stack.settings.curve, "client_key")) as client:
            answer = await client.request("default", {"text": "async"})
            return answer, (await client.status())["client_keys"]

    answer, client_keys = asyncio.run(as_async_client())
    assert answer["text"] == "async"
    assert client_keys["analytics"]["connections"] >= 1  # the blocking client above may be remembered too
    assert "curve=True" in broker.log() and "key_name=analytics" in broker.log()


def test_peers_without_a_key_allowed_their_role_are_refused_and_never_receive_a_request(secure_stack):
    stack = secure_stack()
    broker = stack.broker()
    worker = stack.worker("default", PROBE)
    intruder = stack.worker("default", PROBE, "--key", key_file(stack, "intruder"))
    context = zmq.Context.instance()
    client_as_worker = connect_to_broker(context, zmq.DEALER, stack.endpoint, keyed(stack, "analytics"))
    worker_as_client = connect_to_broker(context, zmq.DEALER, stack.endpoint, keyed(stack, "gpu-b"))
    plaintext = connect_to_broker(context, zmq.DEALER, stack.endpoint, None)
    plaintext_watch = HandshakeWatch(plaintext)
    rogues = [client_as_worker, worker_as_client, plaintext]
    try:
        client_as_worker.send_multipart(protocol.encode(protocol.WorkerReady("default")))
        sneak = protocol.ClientRequest("default", "sneak", 5000, False, b"{}")
        worker_as_client.send_multipart(protocol.encode(sneak))
        plaintext.send_multipart(protocol.encode(protocol.WorkerReady("default")))
        wait_until(lambda: broker.log().count("peer_refused") == 2, what="both role violations to be refused")
        assert "a client key may not act as a worker" in broker.log()
        assert "a worker key may not act as a client" in broker.log()
        wait_until(lambda: "unknown_key_refused" in broker.log(), what="the unknown key to be refused")
        wait_until(lambda: "broker_refused_connection" in intruder.log(), what="the intruder to hear why")
        assert "not in its allowlists" in intruder.log()
        wait_until(lambda: plaintext_watch.monitor.poll(100) and plaintext_watch.failure(), what="plaintext to fail")
        with client_of(stack) as client:
            wait_until(lambda: workers_seen(client), what="the allowed worker")
            answers = [client.request("default", {"text": str(i)}) for i in range(20)]
            assert [(w["key"], w["pid"]) for w in workers_seen(client)] == [("gpu-a", worker.pid)]
        assert {answer["pid"] for answer in answers} == {worker.pid}
        assert [rogue.poll(200) for rogue in rogues] == [0, 0, 0]
        assert intruder.alive() and "task" not in intruder.log()
    finally:
        plaintext_watch.close()
        for rogue in rogues:
            rogue.close(linger=0)


def test_a_worker_whose_key_is_removed_is_cut_off_on_sighup_within_a_heartbeat_and_let_back_in(secure_stack):
    stack = secure_stack(broker={"heartbeat_interval": 0.5})
    broker = stack.broker()
    first = stack.worker("default", PROBE)
    second = stack.worker("default", PROBE, "--key", key_file(stack, "gpu-b"))
    allowlisted = Path(stack.settings.curve.workers) / "gpu-a.key"
    kept = allowlisted.read_bytes()
    with client_of(stack) as client:
        wait_until(lambda: len(workers_seen(client)) == 2, what="both workers")
        allowlisted.unlink()
        removed_at = time.monotonic()
        broker.signal(signal.SIGHUP)
        wait_until(lambda: [w["key"] for w in workers_seen(client)] == ["gpu-b"], what="gpu-a to be cut off")
        assert time.monotonic() - removed_at < stack.heartbeat_interval
        answers = [client.request("default", {"text": str(i)}) for i in range(10)]
        assert {answer["pid"] for answer in answers} == {second.pid}
        wait_until(lambda: "broker_refused_connection" in first.log(), timeout=15, what="gpu-a to be refused")

        allowlisted.write_bytes(kept)
        broker.signal(signal.SIGHUP)
        wait_until(lambda: len(workers_seen(client)) == 2, timeout=15, what="gpu-a to be let back in")
        assert first.alive() and "worker_key_removed" in broker.log()


def test_a_client_key_removed_without_a_signal_is_noticed_and_its_requests_go_unanswered(secure_stack):
    stack = secure_stack()
    broker = stack.broker()
    stack.worker("default", PROBE)
    with client_of(stack, "analytics") as analytics, client_of(stack, "frontend") as other:
        wait_until(lambda: workers_seen(other), what="the worker")
        assert analytics.request("default", {"text": "before"})["text"] == "before"
        (Path(stack.settings.curve.clients) / "analytics.key").unlink()
        wait_until(lambda: "allowlists_reloaded" in broker.log(), what="the change to be noticed")
        with pytest.raises(errors.BrokerUnavailable):
            analytics.request("default", {"text": "after"}, timeout=1)
        assert other.request("default", {"text": "still served"})["text"] == "still served"


def test_a_client_over_its_limit_of_requests_in_flight_is_answered_client_limit(secure_stack):
    stack = secure_stack(broker={"client_limits": {"analytics": 2}})
    stack.broker()
    stack.worker("default", PROBE)
    with client_of(stack) as client:
        wait_until(lambda: workers_seen(client), what="the worker")

    async def three_at_once():
        curve = peer_keys(stack.settings.curve, "client_key")
        async with AsyncClient(stack.endpoint, timeout=10, curve=curve) as client:
            held = [asyncio.create_task(client.request("default", {"text": str(i), "sleep_ms": 400})) for i in range(2)]
            await asyncio.sleep(0)
            with pytest.raises(errors.ClientLimit) as refused:
                await client.request("default", {"text": "third"})
            status = await client.status()
            await asyncio.gather(*held)
            return refused.value, status

    refused, status = asyncio.run(three_at_once())
    assert refused.code == "CLIENT_LIMIT" and "analytics" in refused.message
    assert status["client_keys"]["analytics"]["limit"] == 2


def test_the_status_command_and_a_frontend_take_their_keys_from_the_settings(secure_stack, tmp_path):
    database, secret = accounts_database(tmp_path)
    port = free_port()
    stack = secure_stack(accounts={"database_url": database}, frontend={"port": port})
    stack.broker()
    stack.worker("default", PROBE)
    stack.start("frontend", "frontend")
    url = f"http://127.0.0.1:{port}"
    wait_until(lambda: requests.get(url + "/readyz", timeout=1).ok, timeout=30, what="the frontend to be ready")
    headers = {"Authorization": f"Bearer {secret}"}
    answer = requests.post(url + "/api/", headers=headers, json={"text": "hi"}, timeout=10)
    assert answer.status_code == 200, answer.text
    status = llmapi("status", "--config", str(stack.config_path))
    assert status.returncode == 0, status.stderr
    assert "gpu-a" in status.stdout and "client frontend:" in status.stdout


def test_a_broker_without_curve_refuses_to_bind_where_other_hosts_reach_it(tmp_path):
    config = tmp_path / "c.toml"
    config.write_text(f'[broker]\nbind = ["tcp://*:{free_port()}"]\n')
    result = llmapi("broker", "--config", str(config))
    assert result.returncode == 2
    (line,) = result.stderr.strip().splitlines()
    assert "refusing to bind tcp://*:" in line and "without CURVE" in line and "broker.allow_plaintext" in line


def test_a_peer_given_a_public_key_file_for_its_own_pair_is_told_clearly(tmp_path, keys):
    config = tmp_path / "c.toml"
    public = keys["worker_key"].replace(".key_secret", ".key")
    config.write_text(f'[curve]\nbroker_key = "{keys["broker_key"]}"\nworker_key = "{public}"\n')
    result = llmapi("worker", "--config", str(config))
    assert result.returncode == 2 and "holds no secret key" in result.stderr
    assert os.path.exists(public)


@pytest.mark.parametrize("who", ["plaintext", "intruder"])
def test_a_direct_client_the_broker_refuses_fails_within_its_timeout_saying_why(secure_stack, who):
    stack = secure_stack()
    stack.broker()
    curve = None if who == "plaintext" else keyed(stack, "intruder")
    started = time.monotonic()
    # A liveness long enough for a loaded broker's refusal to arrive first.
    with Client(stack.endpoint, timeout=5, heartbeat_interval=2.0, curve=curve) as client:
        with pytest.raises(errors.BrokerUnavailable) as refused:
            client.request("default", {"text": "x"})
    assert time.monotonic() - started < 5 + DEADLINE_GRACE + 2  # its timeout, not for ever
    if who == "intruder":
        assert "refused this client" in str(refused.value) and "not in its allowlists" in str(refused.value)
