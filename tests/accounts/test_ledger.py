"""The ledger: every admitted request ends in exactly one usage record, and a key's
``used`` always equals its charged records plus its admissions still in flight."""

from __future__ import annotations

import random
import threading
from datetime import timedelta

from accounts import times
from accounts.records import LedgerState, UsageRecord
from accounts.store import AccountStore


def settled(store: AccountStore, admission, **fields) -> None:
    store.record_usage(UsageRecord(admission=admission, **fields))
    store.flush_usage()


def outcomes(store: AccountStore, key_id: int) -> list[tuple[str, bool]]:
    from sqlalchemy import text

    with store.engine.connect() as conn:
        rows = conn.execute(
            text("SELECT outcome, charged FROM usage_records WHERE key_id = :key ORDER BY id"), {"key": key_id}
        ).all()
    return [(outcome, bool(charged)) for outcome, charged in rows]


def test_an_admission_is_open_until_its_record_is_written_and_then_charged(store: AccountStore) -> None:
    info, secret = store.create_key(email="ana@example.org")
    admission = store.admit(secret, "default")
    assert store.ledger_state(info.id) == LedgerState(used=1, charged=0, open=1, records=0)
    settled(store, admission)
    assert store.ledger_state(info.id) == LedgerState(used=1, charged=1, open=0, records=1)


def test_a_refunded_request_leaves_one_uncharged_record(store: AccountStore) -> None:
    info, secret = store.create_key(email="ana@example.org")
    admission = store.admit(secret, "default")
    store.refund(admission)
    assert store.ledger_state(info.id) == LedgerState(used=0, charged=0, open=1, records=0)
    settled(store, admission, outcome="worker_lost", charged=False)
    assert store.ledger_state(info.id) == LedgerState(used=0, charged=0, open=0, records=1)
    assert outcomes(store, info.id) == [("worker_lost", False)]


def test_a_second_record_for_the_same_admission_is_dropped(store: AccountStore) -> None:
    info, secret = store.create_key(email="ana@example.org")
    admission = store.admit(secret, "default")
    settled(store, admission)
    settled(store, admission, outcome="timeout")
    assert outcomes(store, info.id) == [("ok", True)]
    assert store.ledger_state(info.id).balanced


def test_a_replay_is_recorded_but_never_charged(store: AccountStore) -> None:
    info, secret = store.create_key(email="ana@example.org")
    first = store.admit(secret, "default", idempotency_key="job-1")
    replay = store.admit(secret, "default", idempotency_key="job-1")
    settled(store, first)
    settled(store, replay)
    assert outcomes(store, info.id) == [("ok", True), ("ok", False)]
    assert store.ledger_state(info.id) == LedgerState(used=1, charged=1, open=0, records=2)


def test_admissions_left_open_by_a_dead_frontend_are_refunded_as_abandoned_once(store: AccountStore) -> None:
    info, secret = store.create_key(email="ana@example.org", max_requests=3)
    old = store.admit(secret, "default", now=times.utcnow() - timedelta(hours=2), request_id="r-old")
    young = store.admit(secret, "default")
    assert store.settle_abandoned(older_than=3600) == 1
    assert store.settle_abandoned(older_than=3600) == 0
    assert store.ledger_state(info.id) == LedgerState(used=1, charged=0, open=1, records=1)
    assert outcomes(store, info.id) == [("abandoned", False)]
    settled(store, old)  # the dead frontend's record, if it ever came, would be a second one
    settled(store, young)
    assert outcomes(store, info.id) == [("abandoned", False), ("ok", True)]
    assert store.ledger_state(info.id) == LedgerState(used=1, charged=1, open=0, records=2)


def test_reapers_racing_each_other_settle_each_admission_once(store: AccountStore) -> None:
    info, secret = store.create_key(email="ana@example.org")
    long_ago = times.utcnow() - timedelta(hours=2)
    for _ in range(20):
        store.admit(secret, "default", now=long_ago)
    counts: list[int] = []
    threads = [threading.Thread(target=lambda: counts.append(store.settle_abandoned(older_than=60))) for _ in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert sum(counts) == 20
    assert store.ledger_state(info.id) == LedgerState(used=0, charged=0, open=0, records=20)


def test_concurrent_admissions_refunds_and_records_keep_the_ledger_balanced(store: AccountStore) -> None:
    info, secret = store.create_key(email="ana@example.org")
    rng = random.Random(7)
    plans = [rng.random() < 0.3 for _ in range(8 * 30)]

    def client(plan: list[bool]) -> None:
        for refund in plan:
            admission = store.admit(secret, "default")
            if refund:
                store.refund(admission)
            store.record_usage(UsageRecord(admission=admission, outcome="timeout" if refund else "ok", charged=not refund))

    threads = [threading.Thread(target=client, args=(plans[n::8],)) for n in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    store.flush_usage()
    state = store.ledger_state(info.id)
    assert state == LedgerState(used=plans.count(False), charged=plans.count(False), open=0, records=len(plans))


def test_an_uncharged_record_gives_the_count_back_once_even_after_a_refund(store: AccountStore) -> None:
    info, secret = store.create_key(email="ana@example.org", max_requests=2)
    left = store.admit(secret, "default")
    failed = store.admit(secret, "default")
    store.refund(failed)  # the frontend refunded at once, then recorded
    settled(store, left, outcome="client_left", charged=False)  # no refund before: the record gives it back
    settled(store, failed, outcome="worker_lost", charged=False)
    assert store.ledger_state(info.id) == LedgerState(used=0, charged=0, open=0, records=2)


def test_each_record_names_its_request_even_one_settled_as_abandoned(store: AccountStore) -> None:
    from sqlalchemy import text

    _, secret = store.create_key(email="ana@example.org")
    settled(store, store.admit(secret, "default", request_id="r-answered"))
    store.admit(secret, "default", now=times.utcnow() - timedelta(hours=2), request_id="r-lost")
    store.settle_abandoned(older_than=60)
    with store.engine.connect() as conn:
        named = conn.execute(text("SELECT request_id, outcome FROM usage_records ORDER BY id")).all()
    assert [tuple(row) for row in named] == [("r-answered", "ok"), ("r-lost", "abandoned")]
