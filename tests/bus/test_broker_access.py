"""Who may do what, and in which protocol version: the broker's decisions about keys,
allowlists, per-client limits and versions, with the clock passed in and no sockets."""

import json

from structlog.testing import capture_logs

from broker import protocol
from broker.errors import UnsupportedVersion
from broker.security import Allowlists
from tests.bus.test_broker_state import CLIENT, W1, W2, Harness, dispatched, errors

WORKER_KEY = "w" * 40
OTHER_WORKER_KEY = "v" * 40
CLIENT_KEY = "c" * 40
ANALYTICS_KEY = "a" * 40
ALLOWLISTS = Allowlists(
    workers={WORKER_KEY: "gpu-a", OTHER_WORKER_KEY: "gpu-b"},
    clients={CLIENT_KEY: "frontend", ANALYTICS_KEY: "analytics"},
)
ANALYTICS = (b"analytics",)


class Keyed(Harness):
    """The state with allowlists; each peer sends with the key of its connection."""

    def __init__(self, allowlists=ALLOWLISTS, **settings):
        super().__init__(**settings)
        self.state.use_allowlists(allowlists, self.now)

    def ready(self, worker, service="default", key=WORKER_KEY):
        self.state.on_message(worker, protocol.WorkerReady(service), self.now, key)

    def request(self, request_id, service="default", timeout_ms=10_000, client=CLIENT, stream=False, key=CLIENT_KEY):
        body = json.dumps({"text": request_id}).encode()
        request = protocol.ClientRequest(service, request_id, timeout_ms, stream, body)
        self.state.on_message(client, request, self.now, key)

    def reply(self, worker, request_id, key=WORKER_KEY):
        self.state.on_message(worker, protocol.WorkerReply(request_id, b"{}"), self.now, key)

    def heartbeat(self, worker, key=WORKER_KEY):
        self.state.on_message(worker, protocol.WorkerHeartbeat(), self.now, key)

    def workers(self):
        return self.state.status(self.now)["services"].get("default", {}).get("workers", [])


def test_a_worker_key_registers_and_serves_and_status_names_it():
    h = Keyed()
    h.ready(W1)
    h.request("a")
    assert dispatched(h.take()) == [(W1, "a")]
    assert [(w["key"], w["state"]) for w in h.workers()] == [("gpu-a", "busy")]


def test_a_client_key_that_sends_ready_is_not_registered_and_gets_nothing():
    h = Keyed()
    with capture_logs() as logs:
        h.ready(W1, key=CLIENT_KEY)
        h.heartbeat(W1, key=CLIENT_KEY)
    assert h.take() == [] and h.state.workers == {}
    h.request("a")
    assert dispatched(h.take()) == []
    refusals = [entry for entry in logs if entry["event"] == "peer_refused"]
    assert len(refusals) == 1  # once per peer, however often it tries
    assert refusals[0]["reason"] == "a client key may not act as a worker"


def test_a_worker_key_that_sends_a_request_gets_nothing_and_nothing_is_queued():
    h = Keyed()
    h.request("a", key=WORKER_KEY)
    assert h.take() == [] and h.state.tasks == {}
    h.ready(W1)
    assert dispatched(h.take()) == []


def test_a_key_in_no_allowlist_gets_nothing_in_either_role():
    h = Keyed()
    h.ready(W1, key="x" * 40)
    h.request("a", key="x" * 40)
    h.request("b", key=None)
    assert h.take() == [] and h.state.workers == {} and h.state.tasks == {}


def test_a_worker_whose_key_is_removed_is_forgotten_and_its_task_goes_to_another():
    h = Keyed()
    h.ready(W1)
    h.ready(W2, key=OTHER_WORKER_KEY)
    h.request("a")
    assert dispatched(h.take()) == [(W1, "a")]
    h.state.use_allowlists(Allowlists({OTHER_WORKER_KEY: "gpu-b"}, ALLOWLISTS.clients), h.now)
    assert dispatched(h.take()) == [(W2, "a")]
    assert [w["key"] for w in h.workers()] == ["gpu-b"]
    # Whatever it sends next, its answer to the task included, is refused.
    h.reply(W1, "a")
    h.heartbeat(W1)
    assert h.take() == []
    assert h.state.tasks[(CLIENT, "a")].worker.identity == W2


def test_a_removed_worker_key_that_is_added_back_may_register_again():
    h = Keyed()
    h.ready(W1)
    h.state.use_allowlists(Allowlists({}, ALLOWLISTS.clients), h.now)
    h.ready(W1)
    assert h.state.workers == {}
    h.state.use_allowlists(ALLOWLISTS, h.now)
    h.ready(W1)
    assert list(h.state.workers) == [W1]


def test_a_client_whose_key_is_removed_loses_its_queued_and_running_requests():
    h = Keyed()
    h.ready(W1)
    h.request("running")
    h.request("queued")
    h.request("other", client=ANALYTICS, key=ANALYTICS_KEY)
    h.take()
    h.state.use_allowlists(Allowlists(ALLOWLISTS.workers, {ANALYTICS_KEY: "analytics"}), h.now)
    sent = h.take()
    assert [(to, m.request_id) for to, m in sent if isinstance(m, protocol.WorkerCancel)] == [(W1, "running")]
    assert not any(to == CLIENT for to, _ in sent)
    assert set(h.state.tasks) == {(ANALYTICS, "other")}
    h.reply(W1, "running")
    assert dispatched(h.take()) == [(W1, "other")]


def test_a_client_at_its_limit_is_answered_client_limit_and_others_are_not():
    h = Keyed(client_limits={"analytics": 2})
    h.ready(W1)
    for request_id in ("a1", "a2", "a3"):
        h.request(request_id, client=ANALYTICS, key=ANALYTICS_KEY)
    h.request("f1")
    assert errors(h.take()) == [("a3", "CLIENT_LIMIT")]
    keys = h.state.status(h.now)["client_keys"]
    assert keys["analytics"] == {"connections": 0, "in_flight": 2, "limit": 2}
    assert keys["frontend"] == {"connections": 0, "in_flight": 1, "limit": None}
    h.reply(W1, "a1")
    h.request("a4", client=ANALYTICS, key=ANALYTICS_KEY)
    assert errors(h.take()) == []


def test_requests_in_flight_are_counted_down_however_they_end():
    h = Keyed(client_limits={"analytics": 10})
    h.ready(W1)
    for request_id in ("answered", "cancelled", "timed-out"):
        h.request(request_id, client=ANALYTICS, key=ANALYTICS_KEY, timeout_ms=1000)
    h.reply(W1, "answered")
    h.state.on_message(ANALYTICS, protocol.ClientCancel("cancelled"), h.now, ANALYTICS_KEY)
    h.advance(2.0)
    assert h.state.in_flight == {}
    assert "analytics" not in h.state.status(h.now)["client_keys"]


def test_a_client_that_heartbeats_is_listed_with_its_key_name():
    h = Keyed()
    with capture_logs() as logs:
        h.state.on_message(ANALYTICS, protocol.ClientHeartbeat(), h.now, ANALYTICS_KEY)
    assert h.state.status(h.now)["client_keys"]["analytics"]["connections"] == 1
    assert [e["key_name"] for e in logs if e["event"] == "client_connected"] == ["analytics"]


# -- protocol versions --------------------------------------------------------


def test_peers_of_the_previous_version_are_answered_in_it():
    h = Harness()
    h.state.on_worker(W1, protocol.WorkerReady("default", version=1), h.now)
    h.state.on_client(CLIENT, protocol.ClientRequest("default", "a", 5000, False, b"{}", version=1), h.now)
    h.state.on_client(CLIENT, protocol.ClientHeartbeat("", version=1), h.now)
    (to_worker, request), (to_client, heartbeat) = h.take()
    assert (to_worker, type(request), request.version) == (W1, protocol.WorkerRequest, 1)
    assert (to_client, heartbeat.version, heartbeat.incarnation) == (CLIENT, 1, h.state.incarnation)
    h.state.on_worker(W1, protocol.WorkerReply("a", b"{}", version=1), h.now)
    h.advance(1.0)
    sent = h.take()
    assert [(type(m), m.version) for _, m in sent] == [(protocol.ClientReply, 1), (protocol.WorkerHeartbeat, 1)]


def test_a_client_of_a_version_not_spoken_is_told_so_in_its_own_version():
    h = Harness()
    refused = UnsupportedVersion("LLMC", 5, protocol.SUPPORTED_VERSIONS)
    with capture_logs() as logs:
        h.state.on_unsupported_version(CLIENT, refused, "r1")
        h.state.on_unsupported_version(CLIENT, refused, None)
    (_, first), (_, second) = h.take()
    assert (first.request_id, first.code, first.version) == ("r1", "UNSUPPORTED_VERSION", 5)
    assert first.message == "protocol version 5 is not supported; this broker speaks versions 1, 2, 3 and 4"
    assert second.request_id == "-"
    assert [e["event"] for e in logs] == ["unsupported_version"]


def test_a_worker_of_a_version_not_spoken_is_disconnected_with_the_reason():
    h = Harness()
    h.state.on_unsupported_version(W1, UnsupportedVersion("LLMW", 5, protocol.SUPPORTED_VERSIONS), None)
    ((to, disconnect),) = h.take()
    assert to == W1 and isinstance(disconnect, protocol.WorkerDisconnect) and disconnect.version == 5
    assert "version 5 is not supported" in disconnect.reason
    assert h.state.workers == {}


def test_a_refusal_for_the_version_is_not_sent_to_a_key_that_may_not_act_in_that_role():
    h = Keyed()
    h.state.on_unsupported_version(W1, UnsupportedVersion("LLMW", 5, protocol.SUPPORTED_VERSIONS), None, CLIENT_KEY)
    assert h.take() == []
