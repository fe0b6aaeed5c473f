"""Migrations build the schema from nothing, change nothing when run again, and match the models."""

from __future__ import annotations

import pytest
from alembic import command
from alembic.autogenerate import compare_metadata
from alembic.runtime.migration import MigrationContext
from sqlalchemy import inspect

from accounts import schema
from accounts.errors import SchemaNotReady
from accounts.models import VERSION_TABLE, Base
from accounts.records import UsageRecord
from accounts.store import AccountStore

TABLES = {
    "api_keys",
    "key_services",
    "usage_records",
    "refunds",
    "idempotent_admissions",
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


def test_migration_0002_upgrades_a_database_at_0001_keeping_keys_usage_and_refunds(database_url: str) -> None:
    with AccountStore.from_url(database_url, usage_flush_interval=60.0) as store:
        migrate_to(store, "0001")
        assert store.schema_revision() == "0001"
        info, secret = store.create_key(email="ana@example.org", max_requests=5, services=["default"])
        kept = store.admit(secret, "default")
        refunded = store.admit(secret, "default")
        store.refund(refunded)
        store.record_usage(UsageRecord(admission=kept, input_words=3))
        store.flush_usage()
        with pytest.raises(SchemaNotReady):
            store.admit(secret, "default", idempotency_key="retry-1")
        before = (store.get_key(info.id), store.usage_report())

        store.migrate()

        assert store.schema_revision() == "0002" == schema.head_revision()
        assert (store.get_key(info.id), store.usage_report()) == before
        assert before[0].used == 1
        store.refund(refunded)  # still known as refunded: gives nothing back
        assert store.get_key(info.id).used == 1
        first = store.admit(secret, "default", idempotency_key="retry-1")
        assert store.admit(secret, "default", idempotency_key="retry-1").replayed
        assert not first.replayed and store.get_key(info.id).used == 2
