"""No secret, whole or as its random part, is ever written to the database or the logs."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest
import structlog
from sqlalchemy import MetaData, select

from accounts.errors import AdmissionDenied
from accounts.keys import KEY_PREFIX, hash_secret
from accounts.records import UsageRecord
from accounts.store import AccountStore

NOON = datetime(2030, 6, 15, 12, 0, tzinfo=UTC)


def exercise(store: AccountStore) -> list[str]:
    """Create, use, refund, rotate and revoke keys; every secret ever issued."""
    info, first = store.create_key(email="ana@example.org", max_requests=2, services=["default"])
    admission = store.admit(first, "default", now=NOON)
    store.record_usage(UsageRecord.from_texts(admission=admission, request_text=first, output_text="ok"))
    store.flush_usage()
    store.refund(admission)
    _, second = store.rotate_key(info.id)
    store.admit(second, "default", now=NOON)
    with pytest.raises(AdmissionDenied):
        store.admit(first, "default", now=NOON)
    store.revoke_key(info.id)
    with pytest.raises(AdmissionDenied):
        store.admit(second, "default", now=NOON)
    _, third = store.create_key(email="bo@example.org")
    store.admit(third, "other", now=NOON)
    return [first, second, third]


def dump_database(store: AccountStore, only: str | None = None) -> str:
    """Every row of every table (or of the table ``only``), including Alembic's, as text."""
    tables = MetaData()
    tables.reflect(store.engine)
    assert {"api_keys", "key_services", "usage_records", "refunds", "key_audit"} <= set(tables.tables)
    chosen = [table for table in tables.sorted_tables if only in (None, table.name)]
    with store.engine.connect() as conn:
        rows = [repr(row) for table in chosen for row in conn.execute(select(table))]
    return "\n".join(rows)


def fragments(secret: str) -> list[str]:
    """The secret, and its random part alone (what a dump might show without the prefix)."""
    return [secret, secret[len(KEY_PREFIX) :]]


def test_the_database_holds_hashes_and_never_a_secret(store: AccountStore) -> None:
    issued = exercise(store)
    dump = dump_database(store)
    for secret in issued:
        assert not any(fragment in dump for fragment in fragments(secret))
    for secret in issued[1:]:  # the first was replaced by rotation
        assert hash_secret(secret) in dump


def test_the_audit_log_records_every_change_and_holds_neither_a_secret_nor_a_secret_hash(store: AccountStore) -> None:
    issued = exercise(store)
    assert [entry.action for entry in store.audit_log()] == ["create", "rotate", "revoke", "create"]
    audit_rows = dump_database(store, only="key_audit")
    for secret in issued:
        assert not any(fragment in audit_rows for fragment in [*fragments(secret), hash_secret(secret)])


def test_the_logs_never_show_a_secret(store: AccountStore) -> None:
    with structlog.testing.capture_logs() as events:
        issued = exercise(store)
    assert {"key_created", "key_rotated", "key_revoked", "request_refunded"} <= {e["event"] for e in events}
    logged = repr(events)
    for secret in issued:
        assert not any(fragment in logged for fragment in fragments(secret))
