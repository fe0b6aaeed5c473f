"""Admission on both databases: who is let in, who is refused and why, and what is counted."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta, timezone

import pytest

from accounts import errors
from accounts.errors import AdmissionDenied, InvalidValue
from accounts.keys import new_secret
from accounts.store import AccountStore

NOON = datetime(2030, 6, 15, 12, 0, tzinfo=UTC)
TICK = timedelta(microseconds=1)


def refusal(store: AccountStore, secret: str, service: str = "default", now: datetime = NOON) -> AdmissionDenied:
    with pytest.raises(AdmissionDenied) as caught:
        store.admit(secret, service, now=now)
    return caught.value


def test_a_valid_key_is_admitted_and_counted(store: AccountStore) -> None:
    info, secret = store.create_key(email="ana@example.org", max_requests=5)
    admission = store.admit(secret, "default", now=NOON)
    assert (admission.key_id, admission.key_prefix, admission.service) == (info.id, info.prefix, "default")
    assert admission.admitted_at == NOON
    after = store.get_key(info.id)
    assert (after.used, after.last_used_at) == (1, NOON)


def test_an_unknown_key_is_refused_as_unknown(store: AccountStore) -> None:
    denial = refusal(store, new_secret())
    assert (denial.reason, denial.key_id) == (errors.UNKNOWN_KEY, None)


@pytest.mark.parametrize("secret", ["", "llmapi_", "Bearer xyz", "llmapi_" + "A" * 49])
def test_a_malformed_key_is_refused_as_unknown(store: AccountStore, secret: str) -> None:
    assert refusal(store, secret).reason == errors.UNKNOWN_KEY


def test_a_revoked_key_is_refused_at_once(store: AccountStore) -> None:
    info, secret = store.create_key(email="ana@example.org")
    store.admit(secret, "default", now=NOON)
    store.revoke_key(info.id)
    denial = refusal(store, secret)
    assert (denial.reason, denial.key_id) == (errors.REVOKED, info.id)
    assert denial.key_prefix == info.prefix


def test_a_key_is_valid_from_exactly_its_first_moment(store: AccountStore) -> None:
    _, secret = store.create_key(email="ana@example.org", valid_from=NOON)
    denial = refusal(store, secret, now=NOON - TICK)
    assert denial.reason == errors.NOT_YET_VALID
    store.admit(secret, "default", now=NOON)


def test_a_key_expires_exactly_at_its_valid_until(store: AccountStore) -> None:
    _, secret = store.create_key(email="ana@example.org", valid_until=NOON)
    store.admit(secret, "default", now=NOON - TICK)
    denial = refusal(store, secret, now=NOON)
    assert denial.reason == errors.EXPIRED


def test_window_edges_hold_whatever_timezone_the_caller_uses(store: AccountStore) -> None:
    plus_two, plus_five = timezone(timedelta(hours=2)), timezone(timedelta(hours=5))
    starts = datetime(2030, 6, 15, 14, 0, tzinfo=plus_two)  # NOON in UTC
    _, secret = store.create_key(email="ana@example.org", valid_from=starts, valid_until=NOON + timedelta(hours=1))
    assert refusal(store, secret, now=NOON - TICK).reason == errors.NOT_YET_VALID
    store.admit(secret, "default", now=NOON.astimezone(plus_five))
    assert store.list_keys()[0].valid_from == NOON


def test_a_key_with_a_limit_is_refused_once_it_is_used_up(store: AccountStore) -> None:
    info, secret = store.create_key(email="ana@example.org", max_requests=2)
    store.admit(secret, "default", now=NOON)
    store.admit(secret, "default", now=NOON)
    denial = refusal(store, secret)
    assert denial.reason == errors.QUOTA_EXHAUSTED
    assert store.get_key(info.id).used == 2


def test_a_key_limited_to_zero_requests_admits_none(store: AccountStore) -> None:
    _, secret = store.create_key(email="ana@example.org", max_requests=0)
    assert refusal(store, secret).reason == errors.QUOTA_EXHAUSTED


def test_a_key_without_a_limit_admits_any_number_of_requests(store: AccountStore) -> None:
    info, secret = store.create_key(email="ana@example.org")
    for _ in range(25):
        store.admit(secret, "default", now=NOON)
    assert (store.get_key(info.id).used, store.get_key(info.id).remaining) == (25, None)


def test_a_key_limited_to_some_services_is_refused_for_others(store: AccountStore) -> None:
    _, secret = store.create_key(email="ana@example.org", services=["summarise", "default"])
    store.admit(secret, "summarise", now=NOON)
    store.admit(secret, "default", now=NOON)
    denial = refusal(store, secret, service="translate")
    assert denial.reason == errors.SERVICE_NOT_ALLOWED


def test_a_key_without_a_service_list_may_use_every_service(store: AccountStore) -> None:
    _, secret = store.create_key(email="ana@example.org")
    for service in ("default", "summarise", "translate"):
        assert store.admit(secret, service, now=NOON).service == service


def test_refused_requests_are_not_counted(store: AccountStore) -> None:
    info, secret = store.create_key(
        email="ana@example.org", max_requests=3, services=["default"], valid_from=NOON
    )
    refusal(store, secret, service="other")
    refusal(store, secret, now=NOON - TICK)
    assert store.get_key(info.id).used == 0
    for _ in range(3):
        store.admit(secret, "default", now=NOON)
    for _ in range(5):
        refusal(store, secret)
    assert store.get_key(info.id).used == 3


def test_the_first_failed_condition_names_the_refusal(store: AccountStore) -> None:
    info, secret = store.create_key(
        email="ana@example.org", max_requests=0, services=["default"], valid_until=NOON
    )
    assert refusal(store, secret, service="other", now=NOON).reason == errors.EXPIRED
    store.revoke_key(info.id)
    assert refusal(store, secret, service="other", now=NOON).reason == errors.REVOKED


def test_rotating_a_key_stops_the_old_secret_at_once_and_keeps_the_record(store: AccountStore) -> None:
    info, old_secret = store.create_key(email="ana@example.org", max_requests=10)
    store.admit(old_secret, "default", now=NOON)
    rotated, new_secret_ = store.rotate_key(info.id)
    assert refusal(store, old_secret).reason == errors.UNKNOWN_KEY
    assert store.admit(new_secret_, "default", now=NOON).key_id == info.id
    assert (rotated.id, store.get_key(info.id).used) == (info.id, 2)
    assert rotated.prefix != info.prefix and new_secret_ != old_secret


def test_a_refund_gives_back_exactly_the_request_it_counted(store: AccountStore) -> None:
    info, secret = store.create_key(email="ana@example.org", max_requests=1)
    admission = store.admit(secret, "default", now=NOON)
    assert refusal(store, secret).reason == errors.QUOTA_EXHAUSTED
    store.refund(admission)
    assert store.get_key(info.id).used == 0
    store.admit(secret, "default", now=NOON)
    assert store.get_key(info.id).used == 1


def test_refunding_the_same_admission_twice_gives_back_only_once(store: AccountStore) -> None:
    info, secret = store.create_key(email="ana@example.org")
    first = store.admit(secret, "default", now=NOON)
    store.admit(secret, "default", now=NOON)
    store.refund(first)
    store.refund(first)
    assert store.get_key(info.id).used == 1


def test_a_naive_time_is_refused_rather_than_guessed(store: AccountStore) -> None:
    _, secret = store.create_key(email="ana@example.org")
    with pytest.raises(InvalidValue):
        store.admit(secret, "default", now=datetime(2030, 1, 1))


def test_a_denial_carries_no_secret(store: AccountStore) -> None:
    info, secret = store.create_key(email="ana@example.org")
    store.revoke_key(info.id)
    denial = refusal(store, secret)
    assert secret not in repr(denial) and secret not in denial.message


def test_identifying_a_key_counts_nothing_and_works_even_when_it_is_used_up(store: AccountStore) -> None:
    info, secret = store.create_key(email="ana@example.org", max_requests=1, valid_until=NOON)
    store.admit(secret, "default", now=NOON - TICK)
    assert store.identify(secret) == store.get_key(info.id)
    assert store.get_key(info.id).used == 1


def test_identifying_an_unknown_or_revoked_key_is_refused(store: AccountStore) -> None:
    info, secret = store.create_key(email="ana@example.org")
    with pytest.raises(AdmissionDenied) as unknown:
        store.identify(new_secret())
    store.revoke_key(info.id)
    with pytest.raises(AdmissionDenied) as revoked:
        store.identify(secret)
    assert (unknown.value.reason, revoked.value.reason) == (errors.UNKNOWN_KEY, errors.REVOKED)
