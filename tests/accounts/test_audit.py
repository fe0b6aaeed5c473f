"""The audit log: every admin change to a key is recorded, in its own transaction, with who made it
and the fields before and after; never a secret or a secret's hash."""

from __future__ import annotations

import getpass
import io
import itertools
import json
import socket
from datetime import UTC, datetime, timedelta

import pytest

from accounts import audit, output
from accounts.cli import execute
from accounts.errors import InvalidValue, KeyNotFound
from accounts.records import Actor
from accounts.store import AccountStore
from commands.cli import build_parser
from config.settings import AccountsSettings

ANA = Actor("ana", "admin-1.example.org")
BO = Actor("bo", "admin-2.example.org")
END = datetime(2030, 2, 1, tzinfo=UTC)


def test_each_admin_change_is_recorded_with_its_actor_and_the_fields_it_changed(store: AccountStore) -> None:
    info, _ = store.create_key(email="ana@example.org", max_requests=10, actor=ANA)
    store.update_key(info.id, max_requests=20, valid_until=END, services=["default"], note="paid", actor=BO)
    rotated, _ = store.rotate_key(info.id, actor=ANA)
    revoked = store.revoke_key(info.id, actor=BO)
    store.revoke_key(info.id, actor=ANA)

    entries = store.audit_log()
    assert [(e.key_id, e.action, e.actor) for e in entries] == [
        (info.id, "create", ANA), (info.id, "update", BO), (info.id, "rotate", ANA),
        (info.id, "revoke", BO), (info.id, "revoke", ANA),
    ]
    create, update, rotate, revoke, again = entries
    assert create.before is None
    assert create.after is not None and (create.after["email"], create.after["max_requests"]) == ("ana@example.org", 10)
    assert create.at == info.created_at
    assert (update.before, update.after) == (
        {"max_requests": 10, "valid_until": None, "services": None, "note": ""},
        {"max_requests": 20, "valid_until": END.isoformat(), "services": ["default"], "note": "paid"},
    )
    assert (rotate.before, rotate.after) == ({"prefix": info.prefix}, {"prefix": rotated.prefix})
    assert revoke.after == {"revoked": True, "revoked_at": revoked.revoked_at.isoformat()}  # type: ignore[union-attr]
    assert (again.before, again.after) == ({}, {})  # revoking twice changes nothing, but was done
    assert all(a.at <= b.at for a, b in itertools.pairwise(entries))


def test_changes_that_fail_leave_no_record(store: AccountStore) -> None:
    info, _ = store.create_key(email="ana@example.org", valid_until=END, actor=ANA)
    with pytest.raises(InvalidValue):
        store.update_key(info.id, valid_from=END + timedelta(days=1), actor=BO)
    with pytest.raises(KeyNotFound):
        store.rotate_key(info.id + 1, actor=BO)
    with pytest.raises(InvalidValue):
        store.create_key(email="not an email", actor=BO)
    assert [e.action for e in store.audit_log()] == ["create"]


def test_the_record_is_written_in_the_changes_own_transaction(
    store: AccountStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    info, _ = store.create_key(email="ana@example.org", max_requests=10, actor=ANA)

    def failing_record(*args: object) -> None:
        raise RuntimeError("the audit table is full")

    monkeypatch.setattr(audit, "record", failing_record)
    with pytest.raises(RuntimeError):
        store.update_key(info.id, max_requests=99, actor=BO)
    with pytest.raises(RuntimeError):
        store.create_key(email="bo@example.org", actor=BO)
    assert store.get_key(info.id).max_requests == 10  # the change went with its record
    assert [key.email for key in store.list_keys()] == ["ana@example.org"]


def test_the_log_is_read_by_key_and_from_a_moment_on(store: AccountStore) -> None:
    first, _ = store.create_key(email="ana@example.org", actor=ANA)
    second, _ = store.create_key(email="bo@example.org", actor=BO)
    middle = datetime.now(UTC)
    store.revoke_key(first.id, actor=BO)
    assert [(e.key_id, e.action) for e in store.audit_log(key_id=second.id)] == [(second.id, "create")]
    assert [(e.key_id, e.action) for e in store.audit_log(since=middle)] == [(first.id, "revoke")]
    assert store.audit_log(key_id=first.id, since=middle + timedelta(days=1)) == []
    with pytest.raises(InvalidValue):
        store.audit_log(since=datetime(2030, 1, 1))  # naive


def test_a_library_caller_that_names_no_actor_is_recorded_as_its_operating_system_user(store: AccountStore) -> None:
    info, _ = store.create_key(email="ana@example.org")
    assert store.audit_log(key_id=info.id)[0].actor == Actor(getpass.getuser(), socket.gethostname())


def test_the_command_line_records_the_operating_system_user_and_host_and_audit_shows_them(migrated_url: str) -> None:
    def accounts(*argv: str) -> tuple[int, str]:
        out, err = io.StringIO(), io.StringIO()
        args = build_parser().parse_args(["accounts", *argv])
        code = execute(args, AccountsSettings(database_url=migrated_url), out, err)
        return code, out.getvalue()

    assert accounts("create", "--email", "ana@example.org", "--max-requests", "10")[0] == 0
    assert accounts("update", "1", "--max-requests", "5000", "--note", "paid plan")[0] == 0
    code, text = accounts("audit", "--key", "1")
    lines = text.splitlines()
    assert code == 0 and lines[0].split() == ["AT", "KEY", "ACTION", "BY", "CHANGES"]
    actor = f"{getpass.getuser()}@{socket.gethostname()}"
    assert lines[2].split()[1:4] == ["1", "update", actor]
    assert lines[2].endswith('max_requests: 10 -> 5000; note: "" -> "paid plan"')
    code, text = accounts("audit", "--since", datetime.now(UTC).date().isoformat(), "--json")
    records = json.loads(text)
    assert [(r["action"], r["user"], r["host"]) for r in records] == [
        ("create", getpass.getuser(), socket.gethostname()), ("update", getpass.getuser(), socket.gethostname())
    ]
    assert accounts("audit", "--since", "2099-01-01") == (0, "no changes recorded\n")


def test_the_table_shows_each_change_as_old_to_new_and_a_creation_or_deletion_by_the_fields_set() -> None:
    fields = {"email": "ana@example.org", "max_requests": 0, "note": "", "revoked": False, "valid_until": None}
    assert output.audit_changes(None, fields) == 'email="ana@example.org", max_requests=0'
    assert output.audit_changes(fields, None) == 'deleted: email="ana@example.org", max_requests=0'
    assert output.audit_changes({"note": "", "services": None}, {"note": "paid", "services": ["a"]}) == (
        'note: "" -> "paid"; services: null -> ["a"]'
    )
    assert output.audit_changes({}, {}) == "nothing changed"
