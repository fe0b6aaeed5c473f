"""Migrations build the schema from nothing, change nothing when run again, and match the models."""

from __future__ import annotations

from datetime import date, datetime

import pytest
from alembic import command
from alembic.autogenerate import compare_metadata
from alembic.runtime.migration import MigrationContext
from sqlalchemy import inspect, text

from accounts import keys, schema
from accounts.errors import SchemaNotReady
from accounts.models import VERSION_TABLE, Base
from accounts.records import LedgerState, UsageRecord
from accounts.store import AccountStore

TABLES = {
    "api_keys",
    "key_failures",
    "key_services",
    "usage_records",
    "refunds",
    "idempotent_admissions",
    "open_admissions",
    "key_audit",
    "admin_tokens",
    "console_sessions",
    "stored_responses",
    VERSION_TABLE,
}


def test_migrating_an_empty_database_creates_every_table(database_url: str) -> None:
    with AccountStore.from_url(database_url) as store:
        assert store.schema_revision() is None
        store.migrate()
        assert set(inspect(store.engine).get_table_names()) == TABLES
        assert store.schema_revision() == schema.head_revision()


def test_migrating_twice_changes_nothing_and_keeps_the_keys(database_url: str) -> None:
    with AccountStore.from_url(database_url) as store:
        store.migrate()
        info, secret = store.create_key(email="ana@example.org", max_requests=3)
        store.admit(secret, "default")
        store.migrate()
        assert store.get_key(info.id).used == 1
        assert store.admit(secret, "default").key_id == info.id


def test_the_migrated_schema_matches_the_models(store: AccountStore) -> None:
    with store.engine.connect() as conn:
        context = MigrationContext.configure(
            conn, opts={"version_table": VERSION_TABLE, "compare_type": True}
        )
        assert compare_metadata(context, Base.metadata) == []


def migrate_to(store: AccountStore, revision: str) -> None:
    with store.engine.begin() as conn:
        command.upgrade(schema.alembic_config(conn), revision)


def insert_old_key(
    store: AccountStore, max_requests: int | None = None, services: tuple[str, ...] = ()
) -> tuple[int, str]:
    """A key as a store of revision 0003 or older wrote it (with no audit log to write to): its id and secret."""
    secret = keys.new_secret()
    with store.engine.begin() as conn:
        key_id = conn.execute(
            text(
                "INSERT INTO api_keys (secret_hash, prefix, email, name, organisation, max_requests, used, revoked,"
                " created_at, note) VALUES (:hash, :prefix, 'ana@example.org', '', '', :limit, 0, false, :at, '')"
                " RETURNING id"
            ),
            {"hash": keys.hash_secret(secret), "prefix": keys.display_prefix(secret), "limit": max_requests,
             "at": datetime(2030, 6, 1)},
        ).scalar_one()
        for service in services:
            conn.execute(text("INSERT INTO key_services (key_id, service) VALUES (:id, :service)"),
                         {"id": key_id, "service": service})
    return key_id, secret


def test_migration_0003_upgrades_a_database_at_0002_keeping_keys_usage_and_refunds(database_url: str) -> None:
    with AccountStore.from_url(database_url, usage_flush_interval=60.0) as store:
        migrate_to(store, "0002")
        assert store.schema_revision() == "0002"
        key_id, secret = insert_old_key(store, max_requests=5, services=("default",))
        with store.engine.begin() as conn:  # what a store of revision 0002 wrote: a count, a record, a refund
            conn.execute(text("UPDATE api_keys SET used = 1 WHERE id = :id"), {"id": key_id})
            conn.execute(
                text(
                    "INSERT INTO usage_records (key_id, at, day, service, outcome, latency_seconds, input_chars,"
                    " input_words, output_chars, output_words) VALUES (:id, :at, :day, 'default', 'ok', 0.5, 5, 3, 0, 0)"
                ),
                {"id": key_id, "at": datetime(2030, 6, 15, 12), "day": date(2030, 6, 15)},
            )
            conn.execute(
                text("INSERT INTO refunds (admission_id, key_id, refunded_at) VALUES ('a' || 'b', :id, :at)"),
                {"id": key_id, "at": datetime(2030, 6, 15, 12)},
            )
        with pytest.raises(SchemaNotReady):
            store.admit(secret, "default")
        before = (old_columns(store, key_id), old_usage(store))

        store.migrate()

        assert store.schema_revision() == schema.head_revision()
        assert (old_columns(store, key_id), old_usage(store)) == before
        assert store.ledger_state(key_id).balanced  # the old record counts as charged
        admission = store.admit(secret, "default")
        assert store.ledger_state(key_id) == LedgerState(used=2, charged=1, open=1, records=1)
        store.record_usage(UsageRecord(admission=admission, input_words=3))
        store.flush_usage()
        assert store.ledger_state(key_id) == LedgerState(used=2, charged=2, open=0, records=2)


def old_usage(store: AccountStore) -> list[tuple[object, ...]]:
    """The usage records' columns that every revision has."""
    with store.engine.begin() as conn:
        return [
            tuple(row)
            for row in conn.execute(
                text("SELECT key_id, day, service, outcome, input_words, output_chars FROM usage_records ORDER BY id")
            )
        ]


def old_columns(store: AccountStore, key_id: int) -> tuple[object, ...]:
    """The key's columns that every revision has, read without the newest code's queries."""
    with store.engine.begin() as conn:
        return tuple(
            conn.execute(
                text("SELECT prefix, email, max_requests, used, revoked, valid_from, valid_until FROM api_keys"
                     " WHERE id = :id"),
                {"id": key_id},
            ).one()
        )


def upgraded_from(store: AccountStore, revision: str) -> int:
    """Migrate from ``revision``, where a key was made as that revision's store made keys, to the newest;
    the key, found unchanged and still admitted."""
    migrate_to(store, revision)
    key_id, secret = insert_old_key(store)
    before = old_columns(store, key_id)
    store.migrate()
    assert store.schema_revision() == schema.head_revision()
    assert old_columns(store, key_id) == before and store.admit(secret, "default").key_id == key_id
    return key_id


def test_migration_0004_adds_the_audit_log_to_a_database_at_0003_keeping_its_keys(database_url: str) -> None:
    with AccountStore.from_url(database_url) as store:
        key_id = upgraded_from(store, "0003")
        assert store.audit_log() == []  # changes made before 0004 have no record
        store.update_key(key_id, note="after 0004")
        assert [(entry.key_id, entry.action) for entry in store.audit_log()] == [(key_id, "update")]


def test_migration_0005_adds_admin_tokens_to_a_database_at_0004_keeping_its_keys(database_url: str) -> None:
    with AccountStore.from_url(database_url) as store:
        upgraded_from(store, "0004")
        assert store.list_admin_tokens() == []
        info, token = store.create_admin_token("ana")
        assert store.authenticate_admin(token).id == info.id


def test_migration_0006_gives_keys_at_0005_no_new_limit_and_weight_1(database_url: str) -> None:
    with AccountStore.from_url(database_url) as store:
        key_id = upgraded_from(store, "0005")
        info = store.get_key(key_id)
        named = ("requests_per_minute", "tokens_per_minute", "token_budget", "max_concurrent")
        assert [info.limits[name] for name in named] == [None, None, None, None]
        assert (info.limits["weight"], info.tokens_used) == (1, 0)
        assert store.update_key(key_id, requests_per_minute=5).limits["requests_per_minute"] == 5


def test_migration_0007_adds_the_key_failures_table_to_a_database_at_0006_keeping_its_keys(database_url: str) -> None:
    with AccountStore.from_url(database_url) as store:
        upgraded_from(store, "0006")
        assert store.key_brake_state("203.0.113.5") is None
