"""Batch dispatch in the broker's state, as workers of protocol version 2 get it: a worker of
capacity above 1 takes up to that many queued requests at once, when idle, each answered on
its own (version 3's slots are tested in test_slots.py). The clock is passed in."""

import json

from broker import protocol
from tests.bus.test_broker_state import CLIENT, W1, W2, Harness, errors


def ready(h, worker, capacity, service="default", version=2):
    h.state.on_worker(worker, protocol.WorkerReady(service, b"{}", capacity, version=version), h.now)


def batches(sent):
    """Each dispatch as (worker, [request ids]), whether a BATCH or a single REQUEST."""
    found = []
    for to, message in sent:
        if isinstance(message, protocol.WorkerBatch):
            found.append((to, [request.request_id for request in message.requests]))
        elif isinstance(message, protocol.WorkerRequest):
            found.append((to, [message.request_id]))
    return found


def answered(sent):
    return [m.request_id for to, m in sent if to == CLIENT and isinstance(m, (protocol.ClientReply, protocol.ClientFinal))]


def final(h, worker, request_id):
    h.state.on_worker(worker, protocol.WorkerFinal(request_id, b"{}"), h.now)


def partial(h, worker, request_id):
    h.state.on_worker(worker, protocol.WorkerPartial(request_id, json.dumps({"text": "x"}).encode()), h.now)


def test_a_lone_request_is_dispatched_at_once_without_waiting_to_fill_a_batch():
    h = Harness()
    ready(h, W1, 8)
    h.request("a")
    assert batches(h.take()) == [(W1, ["a"])]


def test_an_idle_batching_worker_takes_the_queue_in_order_up_to_its_capacity():
    h = Harness()
    ready(h, W1, 3)
    h.request("a")  # dispatched alone at once
    for request_id in "bcdef":
        h.request(request_id)
    assert batches(h.take()) == [(W1, ["a"])]
    h.reply(W1, "a")
    assert batches(h.take()) == [(W1, ["b", "c", "d"])]
    for request_id in "bcd":
        h.reply(W1, request_id)
    assert batches(h.take()) == [(W1, ["e", "f"])]


def test_a_worker_is_busy_until_every_row_of_its_batch_is_answered():
    h = Harness()
    ready(h, W1, 4)
    h.request("a")
    h.take()
    for request_id in "bcd":
        h.request(request_id)
    h.reply(W1, "a")
    assert batches(h.take()) == [(W1, ["b", "c", "d"])]
    h.request("e")
    h.reply(W1, "c")
    h.reply(W1, "b")
    sent = h.take()
    assert answered(sent) == ["c", "b"] and batches(sent) == []
    h.reply(W1, "d")
    assert batches(h.take()) == [(W1, ["e"])]


def test_a_capacity_one_worker_gets_plain_requests_never_a_batch():
    h = Harness()
    h.ready(W1)  # a READY of the previous revision: capacity 1
    for request_id in "abc":
        h.request(request_id)
    sent = h.take()
    assert [type(m) for to, m in sent if to == W1] == [protocol.WorkerRequest]


def test_queued_work_is_shared_out_between_idle_batching_workers():
    h = Harness()
    ready(h, W1, 8)
    ready(h, W2, 8)
    h.request("a")
    h.request("b")
    assert batches(h.take()) == [(W1, ["a"]), (W2, ["b"])]
    for request_id in "cdefg":
        h.request(request_id)
    h.reply(W1, "a")
    h.reply(W2, "b")
    assert batches(h.take()) == [(W1, ["c", "d", "e", "f", "g"])]


def test_a_cancelled_row_is_cancelled_alone_and_the_rest_of_the_batch_is_answered():
    h = Harness()
    ready(h, W1, 4)
    h.request("a")
    h.take()
    for request_id in "bcd":
        h.request(request_id)
    h.reply(W1, "a")
    h.take()
    h.state.on_client(CLIENT, protocol.ClientCancel("c"), h.now)
    sent = h.take()
    assert [(to, m.request_id) for to, m in sent if isinstance(m, protocol.WorkerCancel)] == [(W1, "c")]
    for request_id in "bcd":
        h.reply(W1, request_id)
    assert answered(h.take()) == ["b", "d"]


def test_a_row_past_its_deadline_times_out_alone():
    h = Harness()
    ready(h, W1, 4)
    h.request("a")
    h.take()
    h.request("short", timeout_ms=1_000)
    h.request("long", timeout_ms=60_000)
    h.reply(W1, "a")
    assert batches(h.take()) == [(W1, ["short", "long"])]
    h.advance(2.0)
    sent = h.take()
    assert errors(sent) == [("short", "TIMEOUT")]
    assert [m.request_id for to, m in sent if isinstance(m, protocol.WorkerCancel)] == ["short"]
    h.reply(W1, "short")  # the worker's late answer is dropped
    h.reply(W1, "long")
    assert answered(h.take()) == ["long"]


def test_a_worker_lost_mid_batch_gives_back_only_its_unanswered_rows_in_order():
    h = Harness(max_attempts=2)
    ready(h, W1, 4)
    h.request("a")
    h.take()
    for request_id in "bcd":
        h.request(request_id)
    h.reply(W1, "a")
    h.take()
    h.reply(W1, "c")
    h.take()
    h.advance(h.state.liveness_period + 0.1)  # W1 goes silent and is purged
    ready(h, W2, 4)
    assert batches(h.take()) == [(W2, ["b", "d"])]
    h.advance(h.state.liveness_period + 0.1)  # and W2 too: the rows' second and last attempt
    assert errors(h.take()) == [("b", "WORKER_LOST"), ("d", "WORKER_LOST")]


def test_a_row_already_partly_streamed_is_never_run_again_when_its_worker_is_lost():
    h = Harness()
    ready(h, W1, 4)
    h.request("a", stream=True)
    h.take()
    h.request("b", stream=True)
    h.request("c", stream=True)
    final(h, W1, "a")
    h.take()
    partial(h, W1, "b")
    h.take()
    h.state.worker_unreachable(W1, h.now)
    sent = h.take()
    assert errors(sent) == [("b", "WORKER_LOST")]
    ready(h, W2, 4)
    assert batches(h.take()) == [(W2, ["c"])]


def test_status_shows_each_workers_capacity_and_rows_in_flight():
    h = Harness()
    ready(h, W1, 4)
    h.request("a")
    (worker,) = h.state.status(h.now)["services"]["default"]["workers"]
    assert (worker["capacity"], worker["tasks"], worker["state"]) == (4, 1, "busy")
