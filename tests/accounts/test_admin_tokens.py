"""Admin tokens open the console and nothing else, are stored as hashes, and die when revoked;
the console's session secret is made once per database; keys are found by search and status, a page at a time."""

from __future__ import annotations

import io
import json
import re
from datetime import UTC, date, datetime, timedelta
from pathlib import Path

import pytest
import structlog

from accounts import keys
from accounts.cli import execute
from accounts.errors import AdminDenied, AdminTokenNotFound, AdmissionDenied, InvalidValue
from accounts.records import UsageRecord
from accounts.store import AccountStore
from commands.cli import build_parser
from config.settings import AccountsSettings
from tests.accounts.test_secrets_at_rest import dump_database

TOKEN = re.compile(re.escape(keys.ADMIN_PREFIX) + r"[0-9A-Za-z]{49}")
NOW = datetime(2030, 6, 15, 12, tzinfo=UTC)


def test_an_admin_token_is_shown_once_stored_as_a_hash_and_refused_once_revoked(store: AccountStore) -> None:
    with structlog.testing.capture_logs() as events:
        info, secret = store.create_admin_token("  ana  ")
        assert TOKEN.fullmatch(secret) and info.name == "ana" and secret.startswith(info.prefix)
        assert store.authenticate_admin(secret).last_used_at is not None
        session = store.open_console_session(info.id, 3600)
        assert store.console_session(session).id == info.id
        revoked = store.revoke_admin_token(info.id)
        assert revoked.revoked and store.revoke_admin_token(info.id).revoked_at == revoked.revoked_at
    with pytest.raises(AdminDenied):
        store.authenticate_admin(secret)
    with pytest.raises(AdminDenied):
        store.console_session(session)  # its console sessions end with it
    dump = dump_database(store) + repr(events)
    assert secret not in dump and secret[len(keys.ADMIN_PREFIX) :] not in dump
    assert keys.hash_secret(secret) in dump_database(store, only="admin_tokens")


def test_an_api_key_is_no_admin_token_and_an_admin_token_is_no_api_key(store: AccountStore) -> None:
    _, api_key = store.create_key(email="ana@example.org")
    _, admin = store.create_admin_token("ana")
    with pytest.raises(AdminDenied):
        store.authenticate_admin(api_key)
    # Even a key whose random part is an admin token's is refused: the prefixes differ.
    with pytest.raises(AdminDenied):
        store.authenticate_admin(keys.ADMIN_PREFIX + api_key[len(keys.KEY_PREFIX) :])
    for check in (lambda: store.admit(admin, "default"), lambda: store.identify(admin)):
        with pytest.raises(AdmissionDenied):
            check()


def test_admin_tokens_need_a_name_and_unknown_ids_are_not_found(store: AccountStore) -> None:
    with pytest.raises(InvalidValue):
        store.create_admin_token("   ")
    with pytest.raises(InvalidValue):
        store.create_admin_token("x" * 101)
    with pytest.raises(AdminTokenNotFound):
        store.revoke_admin_token(42)
    with pytest.raises(AdminDenied):
        store.console_session("no such session")


def test_a_console_session_opens_on_every_store_until_it_is_signed_out_expires_or_its_token_is_revoked(
    migrated_url: str,
) -> None:
    with AccountStore.from_url(migrated_url) as first, AccountStore.from_url(migrated_url) as second:
        ana, _ = first.create_admin_token("ana")
        bo, _ = first.create_admin_token("bo")
        kept, signed_out = first.open_console_session(ana.id, 3600), first.open_console_session(ana.id, 3600)
        brief, other = first.open_console_session(bo.id, 1e-6), first.open_console_session(bo.id, 3600)
        assert second.console_session(kept).id == ana.id == second.console_session(signed_out).id
        second.end_console_session(signed_out)
        for ended in (signed_out, brief):  # signed out on another frontend; expired
            with pytest.raises(AdminDenied):
                first.console_session(ended)
        assert first.console_session(kept).id == ana.id
        second.revoke_admin_token(bo.id)
        with pytest.raises(AdminDenied):
            first.console_session(other)
        # Only a session's hash is kept: the database opens none and lets no one make one.
        dump = dump_database(first, only="console_sessions")
        assert all(secret not in dump for secret in (kept, signed_out, brief, other)) and len(kept) >= 43


def test_keys_are_found_by_text_and_status_a_page_at_a_time(store: AccountStore) -> None:
    ana, _ = store.create_key(email="ana@example.org", name="Ana Lima", organisation="Acme")
    store.create_key(email="bo@example.org", note="trial 100%")
    _, secret = store.create_key(email="cy@example.org", max_requests=1)
    store.admit(secret, "default", now=NOW)
    store.create_key(email="di@example.org", valid_until=NOW - timedelta(days=1))
    store.create_key(email="ed@example.org", valid_from=NOW + timedelta(days=1))
    revoked, _ = store.create_key(email="fa@example.org")
    store.revoke_key(revoked.id)

    def emails(**query: object) -> list[str]:
        return [key.email for key in store.find_keys(now=NOW, **query).keys]  # type: ignore[arg-type]

    assert emails(search="ACME") == emails(search="lima") == emails(search=str(ana.id)) == ["ana@example.org"]
    assert emails(search="100%") == ["bo@example.org"] and emails(search="o%") == []
    assert emails(status="active") == ["ana@example.org", "bo@example.org"]
    assert emails(status="exhausted") == ["cy@example.org"] and emails(status="expired") == ["di@example.org"]
    assert emails(status="not yet valid") == ["ed@example.org"] and emails(status="revoked") == ["fa@example.org"]
    for key in store.find_keys(now=NOW).keys:
        assert emails(status=key.status(NOW), search=key.email) == [key.email]
    page = store.find_keys(limit=2, offset=2, now=NOW)
    assert page.total == 6 and [key.email for key in page.keys] == ["cy@example.org", "di@example.org"]
    for bad in ({"status": "sleeping"}, {"limit": 0}, {"offset": -1}, {"search": "x" * 201}):
        with pytest.raises(InvalidValue):
            store.find_keys(**bad)  # type: ignore[arg-type]


def test_the_keys_that_used_most_come_first_with_their_failures_and_tokens(store: AccountStore) -> None:
    ana, ana_secret = store.create_key(email="ana@example.org")
    bo, bo_secret = store.create_key(email="bo@example.org")
    for secret, outcome, count in ((ana_secret, "ok", 1), (bo_secret, "ok", 2), (bo_secret, "timeout", 1)):
        for _ in range(count):
            admission = store.admit(secret, "default", now=NOW)
            store.record_usage(
                UsageRecord(admission=admission, outcome=outcome, prompt_tokens=3, completion_tokens=5, at=NOW)
            )
    store.flush_usage()
    top = store.usage_by_key(since=date(2030, 6, 15), until=date(2030, 6, 15))
    assert [(row.key_id, row.requests, row.failures, row.prompt_tokens, row.completion_tokens) for row in top] == [
        (bo.id, 3, 1, 9, 15),
        (ana.id, 1, 0, 3, 5),
    ]
    assert store.usage_by_key(limit=1)[0].email == "bo@example.org"
    assert store.usage_by_key(service="other") == [] and store.usage_by_key(since=date(2030, 6, 16)) == []
    with pytest.raises(InvalidValue):
        store.usage_by_key(since=date(2030, 6, 16), until=date(2030, 6, 15))


def run(url: str, *argv: str) -> tuple[int, str, str]:
    args = build_parser().parse_args(["accounts", *argv])
    out, err = io.StringIO(), io.StringIO()
    return execute(args, AccountsSettings(database_url=url), out, err), out.getvalue(), err.getvalue()


def test_the_admin_command_creates_lists_and_revokes_tokens(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'accounts.db'}"
    assert run(url, "migrate")[0] == 0
    code, out, _ = run(url, "admin", "create", "--name", "ana")
    secret = TOKEN.search(out).group(0)  # type: ignore[union-attr]
    assert code == 0 and "shown only now" in out
    code, out, _ = run(url, "admin", "create", "--name", "bo", "--json")
    assert code == 0 and json.loads(out)["admin_token"]["name"] == "bo"
    code, out, _ = run(url, "admin", "list")
    assert code == 0 and re.search(r"1\s+llmadm_\w{8}\s+ana\s+active", out) and secret not in out
    code, out, _ = run(url, "admin", "revoke", "1", "--json")
    assert code == 0 and json.loads(out)[0]["revoked"] is True
    assert run(url, "admin", "revoke", "9")[::2] == (1, "llmapi accounts: error: no admin token with id 9\n")
    with AccountStore.from_url(url) as store, pytest.raises(AdminDenied):
        store.authenticate_admin(secret)
