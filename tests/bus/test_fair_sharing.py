"""Fair queuing between tenants in the broker, with the clock passed in and no sockets."""

import pytest

from broker import protocol
from broker.fairqueue import FairQueue
from commands import status as status_cli
from tests.bus.test_broker_state import CLIENT, W1, errors
from tests.bus.test_broker_state import Harness as StateHarness

OTHER_CLIENT = (b"other-frontend",)


class Harness(StateHarness):
    """The broker-state harness, with the service configured, worker capacities, and requests
    queued for tenants."""

    def __init__(self, **settings):
        settings.setdefault("services", ["default"])
        super().__init__(**settings)

    def ready(self, worker, capacity=1):
        self.state.on_worker(worker, protocol.WorkerReady("default", capacity=capacity), self.now)

    def request(self, request_id, tenant=None, max_concurrent=0, weight=1, client=CLIENT):
        share = protocol.Share(tenant, max_concurrent, weight) if tenant else None
        super().request(request_id, timeout_ms=60_000, client=client, share=share)

    def cancel(self, request_id, client=CLIENT):
        self.state.on_client(client, protocol.ClientCancel(request_id), self.now)


def dispatched(sent):
    ids = []
    for _, message in sent:
        if isinstance(message, protocol.WorkerBatch):
            ids.extend(request.request_id for request in message.requests)
        elif isinstance(message, protocol.WorkerRequest):
            ids.append(message.request_id)
    return ids


def serve_in_turn(h, worker, count):
    """Answer whatever ``worker`` runs, ``count`` times; the request ids in the order run."""
    order = []
    for _ in range(count):
        (running,) = dispatched(h.take())
        order.append(running)
        h.reply(worker, running)
    return order


def test_one_request_of_a_second_key_runs_before_the_next_but_one_of_a_key_with_a_hundred_queued():
    h = Harness()
    h.ready(W1)
    for n in range(100):
        h.request(f"a{n}", tenant="key-1")
    h.request("b0", tenant="key-2")
    order = serve_in_turn(h, W1, 4)
    # a0 was running when b0 came; a1 was next in line; b0 comes before a2.
    assert order.index("b0") < order.index("a2")
    assert order == ["a0", "a1", "b0", "a2"]


def test_keys_take_turns_and_each_keeps_its_own_order():
    h = Harness()
    h.ready(W1)
    h.request("hold", tenant="key-0")
    for n in range(3):
        h.request(f"a{n}", tenant="key-1")
    for n in range(3):
        h.request(f"b{n}", tenant="key-2")
    assert serve_in_turn(h, W1, 7) == ["hold", "a0", "b0", "a1", "b1", "a2", "b2"]


def test_a_weight_of_two_takes_two_requests_per_turn():
    h = Harness()
    h.ready(W1)
    h.request("hold", tenant="key-0")
    for n in range(4):
        h.request(f"a{n}", tenant="key-1", weight=2)
    for n in range(2):
        h.request(f"b{n}", tenant="key-2")
    assert serve_in_turn(h, W1, 7) == ["hold", "a0", "a1", "b0", "a2", "a3", "b1"]


def test_direct_clients_are_one_tenant_each_by_identity():
    h = Harness()
    h.ready(W1)
    h.request("hold", client=CLIENT)
    for n in range(3):
        h.request(f"a{n}", client=CLIENT)
    h.request("b0", client=OTHER_CLIENT)
    assert serve_in_turn(h, W1, 3) == ["hold", "a0", "b0"]


def test_a_batch_is_shared_between_keys():
    h = Harness()
    h.request("hold", tenant="key-0")
    for n in range(6):
        h.request(f"a{n}", tenant="key-1")
    h.request("b0", tenant="key-2")
    h.ready(W1, capacity=4)
    assert dispatched(h.take()) == ["hold", "a0", "b0", "a1"]


def test_a_key_at_its_concurrency_limit_is_refused_and_gets_its_slots_back_whatever_ends_its_requests():
    h = Harness()
    h.ready(W1)
    h.request("a", tenant="key-1", max_concurrent=2)
    h.request("b", tenant="key-1", max_concurrent=2)
    h.request("c", tenant="key-1", max_concurrent=2)
    sent = h.take()
    assert errors(sent) == [("c", "CONCURRENCY_LIMITED")]
    h.request("other", tenant="key-2", max_concurrent=2)
    assert not errors(h.take())
    h.cancel("b")  # queued: its slot is free at once
    h.request("c", tenant="key-1", max_concurrent=2)
    assert not errors(h.take())
    h.reply(W1, "a")  # an answer frees the running one's slot
    h.take()
    h.request("d", tenant="key-1", max_concurrent=2)
    assert not errors(h.take())
    assert h.state.tenant_load == {"key-1": 2, "key-2": 1}


def test_a_lost_client_gives_back_every_slot_of_its_tenants():
    h = Harness(client_timeout=2.0)
    h.ready(W1)
    h.state.on_client(CLIENT, protocol.ClientHeartbeat(), h.now)
    for request_id in "abc":
        h.request(request_id, tenant="key-1", max_concurrent=3)
    h.now += 2.5
    h.state.tick(h.now)
    assert h.state.tenant_load == {}
    assert not h.state.tasks


def test_one_key_may_fill_only_its_share_of_the_queue():
    h = Harness(queue_limit=10, tenant_queue_share=0.5)
    for n in range(6):
        h.request(f"a{n}", tenant="key-1")
    h.request("b0", tenant="key-2")
    assert errors(h.take()) == [("a5", "OVERLOADED")]


def test_status_shows_queued_and_running_requests_per_key():
    h = Harness()
    h.ready(W1)
    h.request("a0", tenant="key-1")
    h.request("a1", tenant="key-1")
    h.request("b0", tenant="key-2")
    tenants = h.state.status(h.now)["services"]["default"]["tenants"]
    assert tenants == {"key-1": {"queued": 1, "running": 1}, "key-2": {"queued": 1, "running": 0}}
    shown = status_cli.render(h.state.status(h.now)).splitlines()
    assert "  tenant key-1: 1 queued, 1 running" in shown and "  tenant key-2: 1 queued, 0 running" in shown


class Item:
    def __init__(self, tenant, name, weight=1):
        self.tenant, self.name, self.weight = tenant, name, weight


def test_a_requeued_item_goes_first_again():
    queue = FairQueue()
    first, second, other = Item("a", "a0"), Item("a", "a1"), Item("b", "b0")
    for item in (first, second, other):
        queue.append(item)
    taken = queue.popleft()
    queue.appendleft(taken)
    assert [queue.popleft().name for _ in range(3)] == ["a0", "b0", "a1"]
    with pytest.raises(IndexError):
        queue.popleft()


@pytest.mark.parametrize("field", [b"key;1", b"k;x;1", b"k;1;0", b"k;1;1001", b";0;1"])
def test_a_malformed_share_is_a_protocol_error(field):
    frames = protocol.encode(protocol.ClientRequest("default", "r", 10, False, b"{}"))
    with pytest.raises(protocol.ProtocolError):
        protocol.decode([*frames, field])


def test_a_share_survives_the_wire_and_version_1_has_none():
    share = protocol.Share("key-7", 2, 3)
    message = protocol.ClientRequest("default", "r", 10, False, b"{}", share)
    assert protocol.decode(protocol.encode(message)) == message
    old = protocol.ClientRequest("default", "r", 10, False, b"{}", share, version=1)
    assert protocol.decode(protocol.encode(old)).share is None
