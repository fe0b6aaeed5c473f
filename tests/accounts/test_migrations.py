"""Migrations build the schema from nothing, change nothing when run again, and match the models."""

from __future__ import annotations

from alembic.autogenerate import compare_metadata
from alembic.runtime.migration import MigrationContext
from sqlalchemy import inspect

from accounts import schema
from accounts.models import VERSION_TABLE, Base
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
