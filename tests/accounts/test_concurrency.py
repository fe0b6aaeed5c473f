"""Many threads on one key: the quota holds exactly, refunds give back exactly, and
concurrent retries under one idempotency key are counted once."""

from __future__ import annotations

import threading
from collections import Counter
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor

import pytest

from accounts import errors
from accounts.errors import AdmissionDenied
from accounts.records import Admission
from accounts.store import AccountStore, AdmissionAsked

WORKERS = 8
ATTEMPTS = 50
LIMIT = 100


def hammer(work: Callable[[], str], attempts: int = ATTEMPTS) -> Counter[str]:
    """Run ``work`` ``attempts`` times in each of WORKERS threads, all released together."""
    start = threading.Barrier(WORKERS)

    def worker() -> Counter[str]:
        start.wait()
        return Counter(work() for _ in range(attempts))

    with ThreadPoolExecutor(WORKERS) as pool:
        return sum((future.result() for future in [pool.submit(worker) for _ in range(WORKERS)]), Counter())


def test_eight_threads_hammering_a_key_of_100_requests_get_exactly_100(store: AccountStore) -> None:
    info, secret = store.create_key(email="ana@example.org", max_requests=LIMIT)

    def attempt() -> str:
        try:
            store.admit(secret, "default")
        except AdmissionDenied as denial:
            return denial.reason
        return "admitted"

    outcomes = hammer(attempt)
    assert outcomes == Counter({"admitted": LIMIT, errors.QUOTA_EXHAUSTED: WORKERS * ATTEMPTS - LIMIT})
    assert store.get_key(info.id).used == LIMIT


def test_concurrent_refunds_give_back_exactly_what_was_taken(store: AccountStore) -> None:
    taken_per_thread = 12
    info, secret = store.create_key(email="ana@example.org", max_requests=LIMIT)
    admissions: list[Admission] = []
    lock = threading.Lock()

    def take() -> str:
        admission = store.admit(secret, "default")
        with lock:
            admissions.append(admission)
        return "taken"

    hammer(take, attempts=taken_per_thread)
    taken = WORKERS * taken_per_thread
    assert store.get_key(info.id).used == taken
    # Half of them, each refunded twice, the two refunds racing in different threads.
    to_refund = iter(admissions[: taken // 2] * 2)

    def give_back() -> str:
        with lock:
            admission = next(to_refund)
        store.refund(admission)
        return "refunded"

    hammer(give_back, attempts=taken_per_thread)
    assert store.get_key(info.id).used == taken // 2


@pytest.mark.parametrize("limit", [None, 1], ids=["unlimited", "limit-1"])
def test_eight_concurrent_identical_retries_are_counted_once(store: AccountStore, limit: int | None) -> None:
    info, secret = store.create_key(email="ana@example.org", max_requests=limit)
    admissions: list[Admission] = []
    lock = threading.Lock()

    def retry() -> str:
        admission = store.admit(secret, "default", idempotency_key="the-same-request")
        with lock:
            admissions.append(admission)
        return "replayed" if admission.replayed else "counted"

    assert hammer(retry, attempts=1) == Counter({"counted": 1, "replayed": WORKERS - 1})
    assert len({admission.admission_id for admission in admissions}) == 1
    assert store.get_key(info.id).used == 1


def test_eight_threads_retrying_the_same_25_requests_count_each_once(store: AccountStore) -> None:
    requests = 25
    info, secret = store.create_key(email="ana@example.org", max_requests=requests)
    counted_ids: list[str] = []
    lock = threading.Lock()
    per_thread = threading.local()

    def retry() -> str:
        per_thread.n = getattr(per_thread, "n", -1) + 1
        admission = store.admit(secret, "default", idempotency_key=f"request-{per_thread.n}")
        if not admission.replayed:
            with lock:
                counted_ids.append(admission.admission_id)
        return "replayed" if admission.replayed else "counted"

    outcomes = hammer(retry, attempts=requests)
    assert outcomes == Counter({"counted": requests, "replayed": (WORKERS - 1) * requests})
    assert len(set(counted_ids)) == requests
    assert store.get_key(info.id).used == requests


def test_concurrent_retries_after_a_refund_are_counted_once_more(store: AccountStore) -> None:
    info, secret = store.create_key(email="ana@example.org", max_requests=1)
    failed = store.admit(secret, "default", idempotency_key="the-same-request")
    store.refund(failed)

    def retry() -> str:
        admission = store.admit(secret, "default", idempotency_key="the-same-request")
        return "replayed" if admission.replayed else "counted"

    assert hammer(retry, attempts=1) == Counter({"counted": 1, "replayed": WORKERS - 1})
    assert store.get_key(info.id).used == 1


def test_admissions_counted_in_groups_by_eight_threads_each_get_their_own_outcome(store: AccountStore) -> None:
    """Each group mixes keys that admit, run out of quota or of their minute, are revoked, or are
    unknown: every request gets what it would alone, and every count and ledger stays exact."""
    quota, quota_secret = store.create_key(email="quota@example.org", max_requests=LIMIT)
    paced, paced_secret = store.create_key(email="paced@example.org", requests_per_minute=30)
    walled, walled_secret = store.create_key(email="walled@example.org", services=["other"])
    revoked, revoked_secret = store.create_key(email="revoked@example.org")
    store.revoke_key(revoked.id)
    secrets = [quota_secret, paced_secret, walled_secret, revoked_secret, "llmapi_" + "x" * 40]
    expected_refusal = [errors.QUOTA_EXHAUSTED, errors.RATE_LIMITED, errors.SERVICE_NOT_ALLOWED, errors.REVOKED,
                        errors.UNKNOWN_KEY]
    tally: Counter[tuple[int, str]] = Counter()
    lock = threading.Lock()

    def group() -> str:
        asked = [AdmissionAsked(secret, "default", request_id=f"r{i}-{threading.get_ident()}")
                 for i, secret in enumerate(secrets * 4)]
        outcomes = store.admit_many(asked)
        with lock:
            for request, outcome in zip(asked, outcomes, strict=True):
                kind = secrets.index(request.secret)
                if isinstance(outcome, Admission):
                    assert outcome.request_id == request.request_id and outcome.key_id in (quota.id, paced.id)
                    tally[kind, "admitted"] += 1
                else:
                    assert isinstance(outcome, AdmissionDenied) and outcome.reason == expected_refusal[kind], outcome
                    tally[kind, "refused"] += 1
        return "grouped"

    hammer(group, attempts=5)
    per_key = WORKERS * 5 * 4
    assert (tally[0, "admitted"], tally[0, "refused"]) == (LIMIT, per_key - LIMIT)
    assert (tally[1, "admitted"], tally[1, "refused"]) == (30, per_key - 30)
    assert all(tally[kind, "admitted"] == 0 and tally[kind, "refused"] == per_key for kind in (2, 3, 4))
    for info, used in ((quota, LIMIT), (paced, 30)):
        state = store.ledger_state(info.id)
        assert (state.used, state.open) == (used, used) and state.balanced
    assert store.ledger_state(walled.id).used == 0
