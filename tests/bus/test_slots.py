"""Slots in the broker's state (protocol version 3): a worker is sent requests into its free
slots, each answer frees one at once, and a stream whose worker is lost goes on elsewhere
from the tokens it sent. The clock is passed in; no sockets."""

import json
import random

from broker import protocol
from tests.bus.test_batch_dispatch import answered, batches
from tests.bus.test_broker_state import CLIENT, W1, W2, Harness, errors


def ready(h, worker, capacity, service="default", version=protocol.VERSION):
    h.state.on_worker(worker, protocol.WorkerReady(service, b"{}", capacity, version=version), h.now)


def piece(h, worker, request_id, tokens=(), text="x"):
    body = json.dumps({"text": text}).encode()
    h.state.on_worker(worker, protocol.WorkerPartial(request_id, body, tuple(tokens)), h.now)


def final(h, worker, request_id):
    h.state.on_worker(worker, protocol.WorkerFinal(request_id, b"{}"), h.now)


def capacity(h, worker, slots):
    h.state.on_worker(worker, protocol.WorkerCapacity(slots), h.now)


def sent_requests(sent, worker=None):
    return [
        request
        for to, message in sent
        if worker in (None, to)
        for request in (message.requests if isinstance(message, protocol.WorkerBatch) else [message])
        if isinstance(request, protocol.WorkerRequest)
    ]


def test_a_row_that_ends_frees_its_slot_and_the_next_queued_request_fills_it_at_once():
    h = Harness()
    ready(h, W1, 2)
    for request_id in "abcd":
        h.request(request_id)
    assert batches(h.take()) == [(W1, ["a"]), (W1, ["b"])]  # each sent as it came
    h.reply(W1, "b")
    sent = h.take()
    assert answered(sent) == ["b"] and batches(sent) == [(W1, ["c"])]  # while a still runs
    h.reply(W1, "a")
    assert batches(h.take()) == [(W1, ["d"])]


def test_requests_arriving_one_by_one_join_a_busy_worker_up_to_its_capacity():
    h = Harness()
    ready(h, W1, 3)
    for request_id in "abcd":
        h.request(request_id)
    assert batches(h.take()) == [(W1, ["a"]), (W1, ["b"]), (W1, ["c"])]
    assert h.state.workers[W1].free == 0 and len(h.state.services["default"].queue) == 1


def test_the_broker_never_sends_a_worker_more_than_its_free_slots():
    rng = random.Random(7)
    h = Harness(queue_limit=1000)
    ready(h, W1, 4)
    ready(h, W2, 2)
    capacities = {W1: 4, W2: 2}
    held = {W1: set(), W2: set()}
    for n in range(400):
        roll = rng.random()
        if roll < 0.5:
            h.request(f"r{n}")
        elif roll < 0.9:
            worker = rng.choice([W1, W2])
            if held[worker]:
                h.reply(worker, held[worker].pop())
        else:
            worker = rng.choice([W1, W2])
            capacities[worker] = rng.randint(0, 5)
            capacity(h, worker, capacities[worker])
        sent_to = set()
        for to, message in h.take():
            for request in sent_requests([(to, message)]):
                held[to].add(request.request_id)
                sent_to.add(to)
        for worker in (W1, W2):
            assert len(held[worker]) == len(h.state.workers[worker].tasks)
            if worker in sent_to:  # sent only into free slots
                assert len(held[worker]) <= capacities[worker]


def test_capacity_zero_stops_dispatch_and_raising_it_fills_the_slots():
    h = Harness()
    ready(h, W1, 2)
    capacity(h, W1, 0)
    h.request("a")
    h.request("b")
    assert batches(h.take()) == []
    capacity(h, W1, 1)
    assert batches(h.take()) == [(W1, ["a"])]
    capacity(h, W1, 3)
    assert batches(h.take()) == [(W1, ["b"])]


def test_a_capacity_one_worker_of_version_3_gets_plain_requests_one_at_a_time():
    h = Harness()
    ready(h, W1, 1)
    for request_id in "abc":
        h.request(request_id)
    sent = h.take()
    assert [type(m) for to, m in sent if to == W1] == [protocol.WorkerRequest]
    h.reply(W1, "a")
    assert [(type(m), m.request_id) for to, m in h.take() if to == W1] == [(protocol.WorkerRequest, "b")]


def test_each_request_names_its_tenant_for_the_worker():
    h = Harness()
    ready(h, W1, 4)
    h.request("a", share=protocol.Share("key-7"))
    h.request("b")
    tenants = [(request.request_id, request.tenant) for request in sent_requests(h.take())]
    assert tenants == [("a", "key-7"), ("b", "client-" + CLIENT[-1].hex())]


def test_fair_sharing_between_tenants_holds_as_slots_free_up():
    h = Harness(queue_limit=100)
    ready(h, W1, 1)
    heavy, light = protocol.Share("key-heavy"), protocol.Share("key-light")
    h.request("h0", share=heavy)
    for n in range(1, 6):
        h.request(f"h{n}", share=heavy)
    h.request("l0", share=light)
    order = [request.request_id for request in sent_requests(h.take())]
    while len(order) < 7:
        h.reply(W1, order[-1])
        order += [request.request_id for request in sent_requests(h.take())]
    assert order.index("l0") <= 2  # one heavy request ahead of it at most, not five


def test_a_tenants_concurrency_limit_counts_its_rows_in_slots():
    h = Harness()
    ready(h, W1, 8)
    share = protocol.Share("key-1", max_concurrent=2)
    for request_id in "abc":
        h.request(request_id, share=share)
    sent = h.take()
    assert batches(sent) == [(W1, ["a"]), (W1, ["b"])] and errors(sent) == [("c", "CONCURRENCY_LIMITED")]


def test_cancels_and_deadlines_hit_only_their_own_row_and_free_its_slot_when_answered():
    h = Harness()
    ready(h, W1, 2)
    h.request("short", timeout_ms=1_000)
    h.request("long", timeout_ms=60_000)
    h.request("next", timeout_ms=60_000)
    h.take()
    h.advance(2.0)
    sent = h.take()
    assert errors(sent) == [("short", "TIMEOUT")]
    assert [m.request_id for to, m in sent if isinstance(m, protocol.WorkerCancel)] == ["short"]
    h.reply(W1, "short")  # the late answer is dropped, and its slot is free again
    assert batches(h.take()) == [(W1, ["next"])]
    h.state.on_client(CLIENT, protocol.ClientCancel("next"), h.now)
    assert [m.request_id for _, m in h.take() if isinstance(m, protocol.WorkerCancel)] == ["next"]
    h.reply(W1, "long")
    assert answered(h.take()) == ["long"]


def test_a_lost_workers_unfinished_rows_go_to_another_worker_in_order():
    h = Harness(max_attempts=2)
    ready(h, W1, 4)
    for request_id in "abc":
        h.request(request_id)
    h.take()
    h.reply(W1, "b")
    h.take()
    h.state.worker_unreachable(W1, h.now)
    ready(h, W2, 4)
    assert batches(h.take()) == [(W2, ["a", "c"])]


def test_a_stream_whose_pieces_named_their_tokens_goes_on_elsewhere_from_them():
    h = Harness()
    ready(h, W1, 4)
    h.request("s", stream=True)
    h.take()
    piece(h, W1, "s", tokens=(11, 12))
    piece(h, W1, "s", tokens=(13,))
    assert [type(m) for _, m in h.take()] == [protocol.ClientPartial, protocol.ClientPartial]
    h.state.worker_unreachable(W1, h.now)
    assert errors(h.take()) == []  # not failed: queued again
    ready(h, W2, 4)
    (resumed,) = sent_requests(h.take(), W2)
    assert (resumed.request_id, resumed.resume) == ("s", (11, 12, 13))
    piece(h, W2, "s", tokens=(14,))
    final(h, W2, "s")
    assert [type(m) for _, m in h.take()] == [protocol.ClientPartial, protocol.ClientFinal]
    assert h.state.counters.migrated == 1 and not h.state.tasks


def test_a_stream_with_a_piece_that_named_no_tokens_fails_worker_lost_as_before():
    h = Harness()
    ready(h, W1, 4)
    h.request("s", stream=True)
    h.take()
    piece(h, W1, "s", tokens=(11,))
    piece(h, W1, "s")  # an algorithm that does not say its tokens
    h.take()
    h.state.worker_unreachable(W1, h.now)
    assert errors(h.take()) == [("s", "WORKER_LOST")]


def test_a_migrated_stream_is_never_given_to_a_worker_that_could_only_start_it_again():
    h = Harness()
    ready(h, W1, 4)
    h.request("s", stream=True)
    h.take()
    piece(h, W1, "s", tokens=(11,))
    h.take()
    h.state.worker_unreachable(W1, h.now)
    ready(h, W2, 4, version=2)  # a worker without slots cannot take the stream
    sent = h.take()
    assert errors(sent) == [("s", "WORKER_LOST")] and sent_requests(sent) == []


def test_a_draining_worker_hands_back_its_rows_without_using_up_their_attempts():
    h = Harness(max_attempts=1)
    ready(h, W1, 4)
    h.request("s", stream=True)
    h.request("w")
    h.take()
    piece(h, W1, "s", tokens=(5,))
    capacity(h, W1, 0)
    h.take()
    h.state.on_worker(W1, protocol.WorkerDisconnect(), h.now)
    assert errors(h.take()) == []
    ready(h, W2, 4)
    resumed = {request.request_id: request.resume for request in sent_requests(h.take(), W2)}
    assert resumed == {"s": (5,), "w": ()}
