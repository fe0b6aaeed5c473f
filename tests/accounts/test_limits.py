"""Per-key limits besides the quota, exact under many threads on two stores (two frontends)
sharing one database: requests and tokens per minute, a token budget, and the share of the
broker (max_concurrent, weight) each admission carries."""

from __future__ import annotations

import itertools
import threading
from collections import Counter
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime, timedelta

import pytest
from sqlalchemy import text

from accounts import errors, limits
from accounts.errors import AdmissionDenied, InvalidValue
from accounts.records import Admission, UsageRecord
from accounts.store import AccountStore

NOON = datetime(2030, 6, 1, 12, tzinfo=UTC)
THREADS = 8


@pytest.fixture
def stores(migrated_url: str) -> Iterator[tuple[AccountStore, AccountStore]]:
    """Two stores on one database, as two frontends have."""
    with AccountStore.from_url(migrated_url, usage_flush_interval=60.0) as one:
        with AccountStore.from_url(migrated_url, usage_flush_interval=60.0) as two:
            yield one, two


def attempt(store: AccountStore, secret: str, now: datetime) -> str:
    try:
        store.admit(secret, "default", now=now)
    except AdmissionDenied as denial:
        return denial.reason
    return "admitted"


def burst(stores: tuple[AccountStore, AccountStore], secret: str, times: list[datetime]) -> Counter[str]:
    """One admission at each of ``times``, spread over THREADS threads and both stores."""
    start = threading.Barrier(THREADS)
    shares = [times[n::THREADS] for n in range(THREADS)]

    def work(n: int) -> Counter[str]:
        start.wait()
        return Counter(attempt(stores[n % 2], secret, now) for now in shares[n])

    with ThreadPoolExecutor(THREADS) as pool:
        return sum(pool.map(work, range(THREADS)), Counter())


def charge(store: AccountStore, admission: Admission, tokens: int, at: datetime, charged: bool = True) -> None:
    store.record_usage(
        UsageRecord(admission=admission, prompt_tokens=tokens // 2, completion_tokens=tokens - tokens // 2,
                    charged=charged, at=at)
    )


def charged_record_tokens(store: AccountStore, key_id: int) -> int:
    with store.engine.begin() as conn:
        return int(
            conn.execute(
                text(
                    "SELECT COALESCE(SUM(COALESCE(prompt_tokens, 0) + COALESCE(completion_tokens, 0)), 0)"
                    " FROM usage_records WHERE key_id = :id AND charged"
                ),
                {"id": key_id},
            ).scalar_one()
        )


def test_sixty_requests_a_minute_admits_exactly_sixty_in_a_minute_long_burst_across_two_frontends(
    stores: tuple[AccountStore, AccountStore],
) -> None:
    one, _ = stores
    info, secret = one.create_key(email="ana@example.org", requests_per_minute=60)
    # 400 requests over 59.9 s, 8 threads, both stores.
    moments = [NOON + timedelta(seconds=59.9 * n / 399) for n in range(400)]
    assert burst(stores, secret, moments) == Counter({"admitted": 60, errors.RATE_LIMITED: 340})
    with pytest.raises(AdmissionDenied) as refused:
        one.admit(secret, "default", now=NOON + timedelta(seconds=45))
    # The window ends 60 s after its first request: one of the threads' first, racing. The window's
    # start is kept to the database clock's resolution (1 us), finer than the moments' timedelta.
    resolution = 1e-6
    assert 15 <= refused.value.retry_after <= 60 + (moments[THREADS - 1] - NOON).total_seconds() - 45 + resolution
    # The next minute admits 60 more.
    later = [NOON + timedelta(seconds=60 + 30 * n / 99) for n in range(100)]
    assert burst(stores, secret, later) == Counter({"admitted": 60, errors.RATE_LIMITED: 40})
    assert one.get_key(info.id).used == 120


def test_tokens_per_minute_stop_admission_once_spent_and_count_what_the_records_say(
    stores: tuple[AccountStore, AccountStore],
) -> None:
    one, two = stores
    info, secret = one.create_key(email="ana@example.org", tokens_per_minute=100)
    first = one.admit(secret, "default", now=NOON)
    second = two.admit(secret, "default", now=NOON)
    charge(one, first, 60, NOON + timedelta(seconds=1))
    charge(two, second, 50, NOON + timedelta(seconds=2))
    one.flush_usage()
    assert one.admit(secret, "default", now=NOON + timedelta(seconds=3)) is not None  # 60 < 100: the window is not spent
    two.flush_usage()
    with pytest.raises(AdmissionDenied) as refused:
        one.admit(secret, "default", now=NOON + timedelta(seconds=30))
    assert refused.value.reason == errors.RATE_LIMITED
    assert refused.value.retry_after == pytest.approx(31)  # the window began with the first tokens, at 12:00:01
    assert two.admit(secret, "default", now=NOON + timedelta(seconds=61)) is not None
    assert one.get_key(info.id).tokens_used == 110 == charged_record_tokens(one, info.id)


def test_a_token_budget_stops_admission_once_used_and_refunds_give_their_tokens_back(
    stores: tuple[AccountStore, AccountStore],
) -> None:
    one, two = stores
    info, secret = one.create_key(email="ana@example.org", token_budget=1000)
    admissions = [store.admit(secret, "default", now=NOON) for store in (one, two) * 10]
    for n, admission in enumerate(admissions):
        # Every fifth request failed on our side: refunded, its tokens not counted.
        charge(one, admission, 60, NOON + timedelta(minutes=n), charged=n % 5 != 0)
    one.flush_usage()
    assert one.get_key(info.id).tokens_used == 16 * 60 == charged_record_tokens(one, info.id)
    assert one.get_key(info.id).status(NOON) == "active"
    last = two.admit(secret, "default", now=NOON)  # 960 < 1000: admitted, and may overshoot
    charge(two, last, 100, NOON)
    two.flush_usage()
    assert one.get_key(info.id).tokens_used == 1060 == charged_record_tokens(one, info.id)
    assert one.get_key(info.id).status(NOON) == "exhausted"
    with pytest.raises(AdmissionDenied) as refused:
        one.admit(secret, "default", now=NOON + timedelta(days=30))
    assert (refused.value.reason, refused.value.retry_after) == (errors.TOKEN_BUDGET_EXHAUSTED, None)
    one.update_key(info.id, token_budget=2000)
    assert one.admit(secret, "default", now=NOON).key_id == info.id


def test_many_threads_settling_tokens_on_two_stores_count_every_charged_token(
    stores: tuple[AccountStore, AccountStore],
) -> None:
    one, _ = stores
    info, secret = one.create_key(email="ana@example.org", token_budget=10**9, tokens_per_minute=10**9)
    counter = itertools.count()

    def work(n: int) -> None:
        store = stores[n % 2]
        for _ in range(25):
            admission = store.admit(secret, "default", now=NOON)
            charge(store, admission, 1 + next(counter) % 7, NOON, charged=next(counter) % 4 != 0)
            store.flush_usage()

    with ThreadPoolExecutor(THREADS) as pool:
        list(pool.map(work, range(THREADS)))
    key = one.get_key(info.id)
    assert key.tokens_used == charged_record_tokens(one, info.id) > 0
    assert one.ledger_state(info.id).balanced


def test_an_admission_carries_the_keys_share_of_the_broker(store: AccountStore) -> None:
    plain, plain_secret = store.create_key(email="ana@example.org")
    shared, shared_secret = store.create_key(email="bo@example.org", max_concurrent=2, weight=5)
    assert (plain.limits["max_concurrent"], plain.limits["weight"]) == (None, 1)
    admission = store.admit(shared_secret, "default")
    assert (admission.limit("max_concurrent"), admission.limit("weight")) == (2, 5)
    plain_admission = store.admit(plain_secret, "default")
    assert (plain_admission.limit("max_concurrent"), plain_admission.limit("weight")) == (None, 1)
    first = store.admit(shared_secret, "default", idempotency_key="once")
    replay = store.admit(shared_secret, "default", idempotency_key="once")
    assert not first.replayed and replay.replayed and (replay.limit("max_concurrent"), replay.limit("weight")) == (2, 5)
    assert store.update_key(shared.id, max_concurrent=None).limits["max_concurrent"] is None


@pytest.mark.parametrize(
    ("name", "value"),
    [
        ("requests_per_minute", 0),
        ("tokens_per_minute", -1),
        ("token_budget", -1),
        ("max_concurrent", 0),
        ("weight", 0),
        ("weight", limits.MAX_WEIGHT + 1),
        ("weight", None),
        ("requests_per_minute", 1.5),
        ("requests_per_minute", True),
        ("no_such_limit", 1),
    ],
)
def test_a_limit_out_of_bounds_is_refused_and_changes_nothing(store: AccountStore, name: str, value: object) -> None:
    with pytest.raises(InvalidValue):
        store.create_key(email="ana@example.org", **{name: value})  # type: ignore[arg-type]
    info, _ = store.create_key(email="ana@example.org")
    with pytest.raises(InvalidValue):
        store.update_key(info.id, **{name: value})  # type: ignore[arg-type]
    assert store.get_key(info.id) == info


def test_the_weight_bound_is_the_brokers() -> None:
    from broker import protocol

    assert limits.MAX_WEIGHT == protocol.MAX_WEIGHT
