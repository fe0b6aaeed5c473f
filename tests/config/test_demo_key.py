"""The demo key of `llmapi up`: one secret, kept in a private file, replaced only when asked."""

from __future__ import annotations

import stat
from pathlib import Path

import pytest

from accounts.errors import AdmissionDenied
from accounts.store import AccountStore
from commands.demo_key import DEMO_EMAIL, demo_key


@pytest.fixture
def store(tmp_path: Path):
    with AccountStore.from_url(f"sqlite:///{tmp_path / 'accounts.db'}") as account_store:
        account_store.migrate()
        yield account_store


def mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def test_the_demo_key_is_made_once_and_read_back_from_a_file_only_its_owner_can_read(store, tmp_path):
    path = tmp_path / "llmapi-demo-key"
    first = demo_key(store, path)
    assert first.new and path.read_text() == first.secret + "\n" and mode(path) == 0o600
    again = demo_key(store, path)
    assert (again.key_id, again.secret, again.new) == (first.key_id, first.secret, False)
    assert store.admit(again.secret, "default").key_id == first.key_id
    assert [key.email for key in store.list_keys()] == [DEMO_EMAIL]


def test_a_new_demo_key_is_given_only_when_asked_and_the_old_secret_stops_working(store, tmp_path):
    path = tmp_path / "llmapi-demo-key"
    old = demo_key(store, path)
    new = demo_key(store, path, new=True)
    assert new.new and new.key_id == old.key_id and new.secret != old.secret
    assert path.read_text() == new.secret + "\n" and mode(path) == 0o600
    with pytest.raises(AdmissionDenied):
        store.admit(old.secret, "default")


@pytest.mark.parametrize("damage", ["missing", "garbled", "another key's", "revoked"])
def test_a_demo_key_file_that_no_longer_works_is_replaced_by_a_working_key(store, tmp_path, damage):
    path = tmp_path / "llmapi-demo-key"
    old = demo_key(store, path)
    if damage == "missing":
        path.unlink()
    elif damage == "garbled":
        path.write_text("not a key\n")
    elif damage == "another key's":
        path.write_text(store.create_key(email="ana@example.org")[1])
    else:
        store.revoke_key(old.key_id)
    replaced = demo_key(store, path)
    assert replaced.new and replaced.secret != old.secret
    assert store.identify(replaced.secret).email == DEMO_EMAIL


def test_a_demo_key_file_others_could_read_is_made_private_again(store, tmp_path):
    path = tmp_path / "llmapi-demo-key"
    first = demo_key(store, path)
    path.chmod(0o644)
    assert demo_key(store, path).secret == first.secret and mode(path) == 0o600
