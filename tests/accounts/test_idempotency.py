"""Idempotency keys on both databases: a retry is admitted once and counted once."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import UTC, datetime, timedelta

import pytest
import structlog
from sqlalchemy import delete, func, select

from accounts import errors
from accounts import store as store_module
from accounts.errors import AdmissionDenied, DatabaseUnavailable, IdempotencyKeyReused, InvalidValue
from accounts.idempotency import digest
from accounts.keys import new_secret
from accounts.models import ApiKey, IdempotentAdmission
from accounts.store import AccountStore

NOON = datetime(2030, 6, 15, 12, 0, tzinfo=UTC)
TICK = timedelta(microseconds=1)
DAY = timedelta(hours=24)  # the default accounts.idempotency_retention
RETRY = "stainless-python-retry-6f1c"


def claims(store: AccountStore) -> int:
    with store.engine.connect() as conn:
        return int(conn.execute(select(func.count()).select_from(IdempotentAdmission)).scalar_one())


def used(store: AccountStore, key_id: int) -> int:
    return store.get_key(key_id).used


def test_a_retry_with_the_same_idempotency_key_is_admitted_without_being_counted(store: AccountStore) -> None:
    info, secret = store.create_key(email="ana@example.org", max_requests=5)
    first = store.admit(secret, "default", now=NOON, idempotency_key=RETRY)
    retry = store.admit(secret, "default", now=NOON + timedelta(seconds=2), idempotency_key=RETRY)
    assert (first.replayed, retry.replayed) == (False, True)
    assert (retry.key_id, retry.key_prefix, retry.service) == (info.id, info.prefix, "default")
    assert retry.admission_id == first.admission_id
    assert used(store, info.id) == 1
    assert store.get_key(info.id).last_used_at == NOON


def test_without_an_idempotency_key_every_admission_is_counted(store: AccountStore) -> None:
    info, secret = store.create_key(email="ana@example.org")
    admissions = [store.admit(secret, "default", now=NOON) for _ in range(3)]
    assert not any(admission.replayed for admission in admissions)
    assert (used(store, info.id), claims(store)) == (3, 0)


def test_a_replay_is_admitted_when_the_first_attempt_used_up_the_quota(store: AccountStore) -> None:
    info, secret = store.create_key(email="ana@example.org", max_requests=1)
    store.admit(secret, "default", now=NOON, idempotency_key=RETRY)
    assert store.admit(secret, "default", now=NOON, idempotency_key=RETRY).replayed
    for other in ({}, {"idempotency_key": "another request"}):
        with pytest.raises(AdmissionDenied) as caught:
            store.admit(secret, "default", now=NOON, **other)
        assert caught.value.reason == errors.QUOTA_EXHAUSTED
    assert used(store, info.id) == 1


def test_a_refunded_request_retried_with_its_idempotency_key_is_counted_once(store: AccountStore) -> None:
    info, secret = store.create_key(email="ana@example.org", max_requests=1)
    failed = store.admit(secret, "default", now=NOON, idempotency_key=RETRY)
    store.refund(failed)
    assert used(store, info.id) == 0
    retry = store.admit(secret, "default", now=NOON, idempotency_key=RETRY)
    assert not retry.replayed and retry.admission_id != failed.admission_id
    assert store.admit(secret, "default", now=NOON, idempotency_key=RETRY).replayed
    store.refund(failed)  # a second refund of the first attempt must not free the retry's claim
    assert store.admit(secret, "default", now=NOON, idempotency_key=RETRY).replayed
    assert used(store, info.id) == 1


def test_refunding_a_replay_gives_nothing_back_and_keeps_the_key(store: AccountStore) -> None:
    info, secret = store.create_key(email="ana@example.org")
    store.admit(secret, "default", now=NOON, idempotency_key=RETRY)
    replay = store.admit(secret, "default", now=NOON, idempotency_key=RETRY)
    store.refund(replay)
    store.refund(replay)
    assert used(store, info.id) == 1
    assert store.admit(secret, "default", now=NOON, idempotency_key=RETRY).replayed


def test_a_different_idempotency_key_is_counted_separately(store: AccountStore) -> None:
    info, secret = store.create_key(email="ana@example.org")
    first = store.admit(secret, "default", now=NOON, idempotency_key="request-1")
    second = store.admit(secret, "default", now=NOON, idempotency_key="request-2")
    assert not first.replayed and not second.replayed
    assert first.admission_id != second.admission_id
    assert used(store, info.id) == 2


def test_the_same_idempotency_key_on_another_api_key_is_independent(store: AccountStore) -> None:
    ana, ana_secret = store.create_key(email="ana@example.org")
    bo, bo_secret = store.create_key(email="bo@example.org", max_requests=1)
    assert not store.admit(ana_secret, "default", now=NOON, idempotency_key=RETRY).replayed
    assert not store.admit(bo_secret, "default", now=NOON, idempotency_key=RETRY).replayed
    assert store.admit(bo_secret, "default", now=NOON, idempotency_key=RETRY).key_id == bo.id
    assert (used(store, ana.id), used(store, bo.id)) == (1, 1)


def test_an_idempotency_key_is_remembered_for_the_retention_period_only(store: AccountStore) -> None:
    info, secret = store.create_key(email="ana@example.org")
    store.admit(secret, "default", now=NOON, idempotency_key=RETRY)
    assert store.admit(secret, "default", now=NOON + DAY - TICK, idempotency_key=RETRY).replayed
    again = store.admit(secret, "default", now=NOON + DAY, idempotency_key=RETRY)
    assert not again.replayed
    assert store.admit(secret, "default", now=NOON + DAY, idempotency_key=RETRY).replayed
    assert (used(store, info.id), claims(store)) == (2, 1)


def test_an_expired_idempotency_key_counts_against_the_quota_again(store: AccountStore) -> None:
    _, secret = store.create_key(email="ana@example.org", max_requests=1)
    store.admit(secret, "default", now=NOON, idempotency_key=RETRY)
    with pytest.raises(AdmissionDenied) as caught:
        store.admit(secret, "default", now=NOON + DAY, idempotency_key=RETRY)
    assert caught.value.reason == errors.QUOTA_EXHAUSTED


def test_the_retention_period_is_a_setting(migrated_url: str) -> None:
    with AccountStore.from_url(migrated_url, idempotency_retention=60.0) as short:
        info, secret = short.create_key(email="ana@example.org")
        short.admit(secret, "default", now=NOON, idempotency_key=RETRY)
        assert short.admit(secret, "default", now=NOON + timedelta(seconds=59), idempotency_key=RETRY).replayed
        assert not short.admit(secret, "default", now=NOON + timedelta(seconds=60), idempotency_key=RETRY).replayed
        assert used(short, info.id) == 2


def test_a_replay_is_refused_once_the_key_is_revoked(store: AccountStore) -> None:
    info, secret = store.create_key(email="ana@example.org")
    store.admit(secret, "default", now=NOON, idempotency_key=RETRY)
    store.revoke_key(info.id)
    with pytest.raises(AdmissionDenied) as caught:
        store.admit(secret, "default", now=NOON, idempotency_key=RETRY)
    assert (caught.value.reason, caught.value.key_id) == (errors.REVOKED, info.id)


def test_a_replay_is_refused_outside_the_validity_window(store: AccountStore) -> None:
    _, secret = store.create_key(email="ana@example.org", valid_until=NOON + timedelta(minutes=1))
    store.admit(secret, "default", now=NOON, idempotency_key=RETRY)
    with pytest.raises(AdmissionDenied) as caught:
        store.admit(secret, "default", now=NOON + timedelta(minutes=1), idempotency_key=RETRY)
    assert caught.value.reason == errors.EXPIRED


def test_a_replay_is_refused_once_the_service_is_no_longer_allowed(store: AccountStore) -> None:
    info, secret = store.create_key(email="ana@example.org")
    store.admit(secret, "default", now=NOON, idempotency_key=RETRY)
    store.update_key(info.id, services=["other"])
    with pytest.raises(AdmissionDenied) as caught:
        store.admit(secret, "default", now=NOON, idempotency_key=RETRY)
    assert caught.value.reason == errors.SERVICE_NOT_ALLOWED


def test_an_idempotency_key_first_used_for_another_service_is_refused(store: AccountStore) -> None:
    info, secret = store.create_key(email="ana@example.org")
    store.admit(secret, "default", now=NOON, idempotency_key=RETRY)
    with pytest.raises(IdempotencyKeyReused, match="another service") as caught:
        store.admit(secret, "summarise", now=NOON, idempotency_key=RETRY)
    assert caught.value.code == errors.IDEMPOTENCY_KEY_REUSED
    assert used(store, info.id) == 1


def test_an_idempotency_key_first_used_for_another_body_is_refused(store: AccountStore) -> None:
    info, secret = store.create_key(email="ana@example.org")
    first = store.admit(secret, "default", now=NOON, idempotency_key=RETRY, request_hash="a" * 64)
    assert store.admit(secret, "default", now=NOON, idempotency_key=RETRY, request_hash="a" * 64).replayed
    with pytest.raises(IdempotencyKeyReused, match="another body"):
        store.admit(secret, "default", now=NOON, idempotency_key=RETRY, request_hash="b" * 64)
    # A caller that gives no digest is not compared.
    assert store.admit(secret, "default", now=NOON, idempotency_key=RETRY).admission_id == first.admission_id
    assert used(store, info.id) == 1


def test_an_unknown_key_with_an_idempotency_key_is_refused_as_unknown(store: AccountStore) -> None:
    with pytest.raises(AdmissionDenied) as caught:
        store.admit(new_secret(), "default", now=NOON, idempotency_key=RETRY)
    assert caught.value.reason == errors.UNKNOWN_KEY


@pytest.mark.parametrize("bad", ["", "x" * 256, "naïve", "two\nlines"])
def test_a_malformed_idempotency_key_is_invalid_and_counts_nothing(store: AccountStore, bad: str) -> None:
    info, secret = store.create_key(email="ana@example.org")
    with pytest.raises(InvalidValue) as caught:
        store.admit(secret, "default", now=NOON, idempotency_key=bad)
    assert caught.value.code == errors.INVALID_VALUE
    assert (used(store, info.id), claims(store)) == (0, 0)


def test_expired_idempotency_keys_are_purged_oldest_first_a_bounded_number_at_a_time(store: AccountStore) -> None:
    _, secret = store.create_key(email="ana@example.org")
    for n in range(5):
        store.admit(secret, "default", now=NOON + timedelta(seconds=n), idempotency_key=f"old-{n}")
    store.admit(secret, "default", now=NOON + timedelta(hours=23), idempotency_key="recent")
    later = NOON + DAY + timedelta(seconds=10)
    assert [store.purge_idempotency_keys(now=later, limit=3) for _ in range(3)] == [3, 2, 0]
    assert claims(store) == 1
    assert store.admit(secret, "default", now=later, idempotency_key="recent").replayed
    with pytest.raises(InvalidValue):
        store.purge_idempotency_keys(now=later, limit=0)


@pytest.fixture
def purge_every_five(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    monkeypatch.setattr(store_module, "_PURGE_EVERY", 5)
    monkeypatch.setattr(store_module, "_PURGE_BATCH", 10)
    yield


@pytest.mark.usefixtures("purge_every_five")
def test_admissions_purge_expired_idempotency_keys_by_themselves(store: AccountStore) -> None:
    _, secret = store.create_key(email="ana@example.org")
    for n in range(10):
        store.admit(secret, "default", now=NOON, idempotency_key=f"old-{n}")
    for n in range(4):
        store.admit(secret, "default", now=NOON + DAY, idempotency_key=f"new-{n}")
    assert claims(store) == 14
    store.admit(secret, "default", now=NOON + DAY, idempotency_key="new-4")  # the 15th claim
    assert claims(store) == 5


@pytest.mark.usefixtures("purge_every_five")
def test_a_failed_purge_does_not_fail_the_admission(store: AccountStore, monkeypatch: pytest.MonkeyPatch) -> None:
    def unavailable(*_args: object, **_kwargs: object) -> int:
        raise DatabaseUnavailable("the accounts database is unavailable: test")

    monkeypatch.setattr(store, "purge_idempotency_keys", unavailable)
    info, secret = store.create_key(email="ana@example.org")
    with structlog.testing.capture_logs() as events:
        for n in range(5):
            store.admit(secret, "default", now=NOON, idempotency_key=f"request-{n}")
    assert used(store, info.id) == 5
    assert "idempotency_purge_failed" in {event["event"] for event in events}


def test_a_key_deleted_with_its_account_takes_its_idempotency_keys_along(store: AccountStore) -> None:
    info, secret = store.create_key(email="ana@example.org")
    store.admit(secret, "default", now=NOON, idempotency_key=RETRY)
    with store.engine.begin() as conn:
        conn.execute(delete(ApiKey).where(ApiKey.id == info.id))
    assert claims(store) == 0


def test_idempotency_keys_are_stored_hashed_and_never_logged(store: AccountStore) -> None:
    private = "order-4711-for-ana@example.org"
    info, secret = store.create_key(email="ana@example.org", max_requests=1)
    with structlog.testing.capture_logs() as events:
        first = store.admit(secret, "default", now=NOON, idempotency_key=private)
        store.refund(first)
        retry = store.admit(secret, "default", now=NOON, idempotency_key=private)
        replay = store.admit(secret, "default", now=NOON, idempotency_key=private)
        store.refund(replay)
        with pytest.raises(IdempotencyKeyReused) as invalid:
            store.admit(secret, "other", now=NOON, idempotency_key=private)
    assert {"request_refunded", "admission_replayed", "replay_not_refunded"} <= {e["event"] for e in events}
    assert private not in repr(events) and private not in invalid.value.message
    assert private not in repr(retry) and private not in repr(replay)
    with store.engine.connect() as conn:
        stored = conn.execute(select(IdempotentAdmission)).all()
    assert [(row.key_id, row.idempotency_key_hash) for row in stored] == [(info.id, digest(private))]
    assert private not in repr(stored)
