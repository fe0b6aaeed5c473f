"""Creating, reading, changing and revoking keys, and the values that are refused."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest

from accounts.errors import InvalidValue, KeyNotFound
from accounts.keys import display_prefix, is_well_formed
from accounts.store import AccountStore

START = datetime(2030, 1, 1, tzinfo=UTC)
END = datetime(2030, 2, 1, tzinfo=UTC)


def test_a_new_key_is_stored_with_its_owner_and_settings(store: AccountStore) -> None:
    info, secret = store.create_key(
        email=" ana@example.org ",
        name="Ana",
        organisation="Example",
        max_requests=10,
        valid_from=START,
        valid_until=END,
        services=["summarise", "default", "default"],
        note="trial",
    )
    assert is_well_formed(secret) and info.prefix == display_prefix(secret)
    assert store.get_key(info.id) == info
    assert (info.email, info.name, info.organisation, info.note) == ("ana@example.org", "Ana", "Example", "trial")
    assert (info.max_requests, info.used, info.remaining) == (10, 0, 10)
    assert (info.valid_from, info.valid_until) == (START, END)
    assert info.services == ("default", "summarise")
    assert not info.revoked and info.last_used_at is None
    assert info.created_at.tzinfo is not None


@pytest.mark.parametrize(
    ("fields", "message"),
    [
        ({"max_requests": -1}, "negative"),
        ({"max_requests": 2**31}, "cannot exceed"),
        ({"max_requests": 1.5}, "whole number"),
        ({"name": "x" * 201}, "longer than 200"),
        ({"valid_from": END, "valid_until": START}, "before it starts"),
        ({"valid_from": START, "valid_until": START}, "before it starts"),
        ({"valid_from": datetime(2030, 1, 1)}, "timezone"),
        ({"services": []}, "at least one"),
        ({"services": [" "]}, "1 to 100"),
        ({"services": "default"}, "list"),
        ({"email": "not an email"}, "email"),
    ],
)
def test_impossible_key_settings_are_refused(store: AccountStore, fields: dict[str, object], message: str) -> None:
    values: dict[str, object] = {"email": "ana@example.org"} | fields
    with pytest.raises(InvalidValue, match=message):
        store.create_key(**values)  # type: ignore[arg-type]
    assert store.list_keys() == []


def test_an_update_changes_only_what_it_names(store: AccountStore) -> None:
    info, secret = store.create_key(email="ana@example.org", max_requests=1, services=["default"], note="a")
    store.admit(secret, "default")
    updated = store.update_key(info.id, max_requests=5, note="b")
    assert (updated.max_requests, updated.used, updated.note, updated.services) == (5, 1, "b", ("default",))
    cleared = store.update_key(info.id, max_requests=None, services=None, reset_used=True)
    assert (cleared.max_requests, cleared.used, cleared.services) == (None, 0, None)
    assert cleared.email == "ana@example.org"


def test_an_update_may_not_leave_a_window_that_ends_before_it_starts(store: AccountStore) -> None:
    info, _ = store.create_key(email="ana@example.org", valid_from=START)
    with pytest.raises(InvalidValue, match="before it starts"):
        store.update_key(info.id, valid_until=START - timedelta(days=1))
    assert store.get_key(info.id).valid_until is None
    moved = store.update_key(info.id, valid_from=None, valid_until=START - timedelta(days=1))
    assert (moved.valid_from, moved.valid_until) == (None, START - timedelta(days=1))


def test_revoking_twice_keeps_the_first_revocation_time(store: AccountStore) -> None:
    info, _ = store.create_key(email="ana@example.org")
    first = store.revoke_key(info.id)
    again = store.revoke_key(info.id)
    assert first.revoked and again.revoked_at == first.revoked_at


def test_operations_on_an_unknown_key_raise_key_not_found(store: AccountStore) -> None:
    for operation in (store.get_key, store.revoke_key, store.rotate_key):
        with pytest.raises(KeyNotFound):
            operation(404)
    with pytest.raises(KeyNotFound):
        store.update_key(404, note="x")


def test_keys_are_listed_in_order_and_can_be_filtered(store: AccountStore) -> None:
    first, _ = store.create_key(email="ana@example.org", services=["default"])
    second, _ = store.create_key(email="bo@example.org")
    third, _ = store.create_key(email="ana@example.org")
    store.revoke_key(third.id)
    assert [k.id for k in store.list_keys()] == [first.id, second.id, third.id]
    assert [k.id for k in store.list_keys(email="ana@example.org")] == [first.id, third.id]
    assert [k.id for k in store.list_keys(include_revoked=False)] == [first.id, second.id]
    assert store.list_keys()[0].services == ("default",)
