"""Many threads on one key: the quota holds exactly, and refunds give back exactly."""

from __future__ import annotations

import threading
from collections import Counter
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor

from accounts import errors
from accounts.errors import AdmissionDenied
from accounts.records import Admission
from accounts.store import AccountStore

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
