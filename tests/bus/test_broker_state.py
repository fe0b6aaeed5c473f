"""Routing decisions of the broker, with the clock passed in and no sockets."""

import json

import pytest

from broker import protocol
from broker.state import BrokerState
from config.settings import BrokerSettings

CLIENT = (b"client",)
W1 = (b"w1",)
W2 = (b"w2",)


class Harness:
    def __init__(self, **settings):
        self.now = 100.0
        settings.setdefault("startup_grace", 0.0)
        self.state = BrokerState(BrokerSettings(**settings), self.now)

    def take(self):
        sent, self.state.outbox[:] = list(self.state.outbox), []
        return sent

    def ready(self, worker, service="default"):
        self.state.on_worker(worker, protocol.WorkerReady(service), self.now)

    def request(self, request_id, service="default", timeout_ms=10_000, client=CLIENT, stream=False, share=None):
        body = json.dumps({"text": request_id}).encode()
        message = protocol.ClientRequest(service, request_id, timeout_ms, stream, body, share)
        self.state.on_client(client, message, self.now)

    def reply(self, worker, request_id):
        self.state.on_worker(worker, protocol.WorkerReply(request_id, b"{}"), self.now)

    def heartbeat(self, worker):
        self.state.on_worker(worker, protocol.WorkerHeartbeat(), self.now)

    def advance(self, seconds):
        self.now += seconds
        self.state.tick(self.now)


def dispatched(sent):
    return [(to, m.request_id) for to, m in sent if isinstance(m, protocol.WorkerRequest)]


def errors(sent):
    return [(m.request_id, m.code) for _, m in sent if isinstance(m, protocol.ClientError)]


def test_a_ready_worker_gets_the_queued_request():
    h = Harness()
    h.ready(W1)
    h.request("a")
    assert dispatched(h.take()) == [(W1, "a")]


def test_a_heartbeat_never_makes_a_busy_worker_idle():
    h = Harness()
    h.ready(W1)
    h.request("a")
    h.request("b")
    assert dispatched(h.take()) == [(W1, "a")]
    for _ in range(5):
        h.heartbeat(W1)
        h.advance(0.5)
    assert dispatched(h.take()) == []
    h.reply(W1, "a")
    sent = h.take()
    assert dispatched(sent) == [(W1, "b")]
    assert any(to == CLIENT and isinstance(m, protocol.ClientReply) for to, m in sent)


def test_requests_go_to_the_least_recently_used_idle_worker():
    h = Harness()
    h.ready(W1)
    h.ready(W2)
    h.request("a")
    h.request("b")
    assert dispatched(h.take()) == [(W1, "a"), (W2, "b")]


def test_a_silent_busy_worker_is_purged_and_its_task_goes_to_another():
    h = Harness(heartbeat_interval=1.0, heartbeat_liveness=3)
    h.ready(W1)
    h.request("a")
    h.take()
    h.ready(W2)
    h.advance(2.0)
    h.heartbeat(W2)
    h.advance(1.5)
    assert W1 not in h.state.workers
    assert dispatched(h.take()) == [(W2, "a")]


def test_a_task_that_killed_max_attempts_workers_is_answered_worker_lost():
    h = Harness(heartbeat_interval=1.0, heartbeat_liveness=1, max_attempts=2)
    h.ready(W1)
    h.ready(W2)
    h.request("poison")
    h.advance(0.5)
    h.heartbeat(W2)
    h.advance(0.6)  # W1 expired; task moves to W2
    h.advance(1.0)  # W2 expired too
    assert errors(h.take()) == [("poison", "WORKER_LOST")]
    assert not h.state.tasks


def test_a_full_queue_answers_overloaded_at_once():
    h = Harness(queue_limit=2, tenant_queue_share=1.0)
    h.ready(W1)
    for request_id in "abcd":
        h.request(request_id)
    assert errors(h.take()) == [("d", "OVERLOADED")]


def test_a_queued_request_whose_deadline_passes_times_out_and_is_never_dispatched():
    h = Harness()
    h.ready(W1)
    h.request("long")
    h.request("short", timeout_ms=200)
    h.take()
    h.advance(0.3)
    assert errors(h.take()) == [("short", "TIMEOUT")]
    h.reply(W1, "long")
    assert dispatched(h.take()) == []


def test_a_running_request_past_its_deadline_is_answered_and_cancelled_on_the_worker():
    h = Harness()
    h.ready(W1)
    h.request("slow", timeout_ms=500)
    h.request("next")
    h.take()
    h.advance(0.6)
    sent = h.take()
    assert errors(sent) == [("slow", "TIMEOUT")]
    assert (W1, protocol.WorkerCancel("slow")) in sent
    h.reply(W1, "slow")
    sent = h.take()
    assert dispatched(sent) == [(W1, "next")]
    assert not [m for to, m in sent if to == CLIENT]


def test_cancel_removes_a_queued_request():
    h = Harness()
    h.ready(W1)
    h.request("a")
    h.request("b")
    h.take()
    h.state.on_client(CLIENT, protocol.ClientCancel("b"), h.now)
    h.reply(W1, "a")
    assert dispatched(h.take()) == []


def test_cancel_of_a_running_request_reaches_its_worker_and_drops_the_answer():
    h = Harness()
    h.ready(W1)
    h.request("a", stream=True)
    h.take()
    h.state.on_client(CLIENT, protocol.ClientCancel("a"), h.now)
    assert h.take() == [(W1, protocol.WorkerCancel("a"))]
    h.state.on_worker(W1, protocol.WorkerPartial("a", b"{}"), h.now)
    h.state.on_worker(W1, protocol.WorkerFinal("a", b"{}"), h.now)
    assert h.take() == []
    assert not h.state.workers[W1].busy


def test_partials_are_forwarded_only_to_streaming_clients():
    h = Harness()
    h.ready(W1)
    h.request("a", stream=True)
    h.take()
    h.state.on_worker(W1, protocol.WorkerPartial("a", b'{"text": "x"}'), h.now)
    h.state.on_worker(W1, protocol.WorkerFinal("a", b"{}"), h.now)
    kinds = [type(m).__name__ for _, m in h.take()]
    assert kinds == ["ClientPartial", "ClientFinal"]


def test_an_unknown_service_is_refused():
    h = Harness()
    h.request("a", service="nope")
    assert errors(h.take()) == [("a", "UNKNOWN_SERVICE")]


def test_a_configured_service_queues_until_its_first_worker():
    h = Harness(services=["later"])
    h.request("a", service="later")
    assert h.take() == []
    h.ready(W1, service="later")
    assert dispatched(h.take()) == [(W1, "a")]


def test_a_service_without_live_workers_for_too_long_is_unavailable():
    h = Harness(heartbeat_interval=1.0, heartbeat_liveness=1, unavailable_after=2.0)
    h.ready(W1)
    h.state.on_worker(W1, protocol.WorkerDisconnect(), h.now)
    h.request("queued")
    h.advance(2.5)
    assert errors(h.take()) == [("queued", "UNAVAILABLE")]
    h.request("new")
    assert errors(h.take()) == [("new", "UNAVAILABLE")]


def test_a_request_id_already_in_flight_is_refused():
    h = Harness()
    h.ready(W1)
    h.request("a")
    h.request("a")
    assert errors(h.take()) == [("a", "BAD_REQUEST")]


def test_a_deadline_beyond_the_maximum_is_refused():
    h = Harness(max_timeout=10.0)
    h.ready(W1)
    h.request("a", timeout_ms=11_000)
    assert errors(h.take()) == [("a", "BAD_REQUEST")]


def test_an_unknown_worker_is_told_to_disconnect():
    h = Harness()
    h.heartbeat(W1)
    assert h.take() == [(W1, protocol.WorkerDisconnect())]


def test_ready_from_a_registered_worker_drops_it():
    h = Harness()
    h.ready(W1)
    h.ready(W1)
    assert h.take() == [(W1, protocol.WorkerDisconnect())]
    assert W1 not in h.state.workers


def test_an_answer_for_another_request_is_a_protocol_error():
    from broker.errors import ProtocolError

    h = Harness()
    h.ready(W1)
    h.request("a")
    with pytest.raises(ProtocolError):
        h.reply(W1, "b")
    assert h.state.workers[W1].busy


def test_workers_are_sent_heartbeats_every_interval():
    h = Harness(heartbeat_interval=1.0)
    h.ready(W1)
    h.take()
    h.advance(0.5)
    assert h.take() == []
    h.advance(0.6)
    assert h.take() == [(W1, protocol.WorkerHeartbeat())]


def test_status_counts_idle_and_busy_workers_and_queue_depth():
    h = Harness()
    h.ready(W1)
    h.ready(W2)
    for request_id in "abc":
        h.request(request_id)
    status = h.state.status(h.now)["services"]["default"]
    assert (status["idle"], status["busy"], status["queued"]) == (0, 2, 1)
    h.state.on_client(CLIENT, protocol.ClientRequest("llm.service", "q", 0, False, b'{"service": "default"}'), h.now)
    (_, reply), = [x for x in h.take() if isinstance(x[1], protocol.ClientReply) and x[1].request_id == "q"]
    assert json.loads(reply.body)["busy"] == 2


def test_a_late_answer_does_not_take_the_place_of_a_retry_under_the_same_id():
    h = Harness()
    h.ready(W1)
    h.ready(W2)
    h.request("a", timeout_ms=500)
    h.take()
    h.advance(0.6)  # times out on W1, which stays busy
    h.take()
    h.request("a")  # the client retries under the same id
    assert dispatched(h.take()) == [(W2, "a")]
    h.reply(W1, "a")  # W1's late answer
    assert h.take() == []
    h.reply(W2, "a")
    assert [type(m).__name__ for _, m in h.take()] == ["ClientReply"]


def test_a_worker_that_leaves_politely_does_not_use_up_an_attempt():
    h = Harness(max_attempts=1)
    h.ready(W1)
    h.request("a")
    h.take()
    h.state.on_worker(W1, protocol.WorkerDisconnect(), h.now)
    assert errors(h.take()) == []
    h.ready(W2)
    assert dispatched(h.take()) == [(W2, "a")]


@pytest.mark.parametrize(
    "info", [b'{"service": "x", "worker": 1, "event": 2}', b"[" * 100_000, b"\xff", b"[1, 2]"]
)
def test_hostile_worker_info_is_kept_apart_and_never_breaks_the_broker(info):
    h = Harness()
    h.state.on_worker(W1, protocol.WorkerReady("default", info), h.now)
    (worker,) = h.state.status(h.now)["services"]["default"]["workers"]
    assert worker["state"] == "idle" and worker["id"] == W1[-1].hex()


@pytest.mark.parametrize("body", [b"[" * 100_000, b'{"service": ["a"]}', b"null"])
def test_hostile_discovery_bodies_are_answered_not_raised(body):
    h = Harness()
    h.state.on_client(CLIENT, protocol.ClientRequest("llm.service", "q", 0, False, body), h.now)
    (_, reply), = h.take()
    assert json.loads(reply.body)["exists"] is False


def test_an_answer_that_arrives_after_the_deadline_is_a_timeout_not_a_whole_answer():
    h = Harness()
    h.ready(W1)
    h.request("a", timeout_ms=1_000)
    h.take()
    h.now += 1.01  # the worker cut the answer at its deadline, before the broker's tick
    h.reply(W1, "a")
    sent = h.take()
    assert errors(sent) == [("a", "TIMEOUT")]
    assert not [m for to, m in sent if isinstance(m, protocol.ClientReply)]
