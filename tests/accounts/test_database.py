"""Database trouble is a typed error the frontend can answer 503 to, never a driver exception."""

from __future__ import annotations

import socket
from pathlib import Path

import pytest

from accounts.errors import DatabaseUnavailable, InvalidValue, SchemaNotReady
from accounts.keys import new_secret
from accounts.store import AccountStore


def closed_port() -> int:
    """A port on which nothing listens (chosen now, then released)."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def test_an_unreachable_postgresql_makes_admission_raise_database_unavailable() -> None:
    url = f"postgresql+psycopg2://postgres@127.0.0.1:{closed_port()}/test"
    with AccountStore.from_url(url) as store:
        with pytest.raises(DatabaseUnavailable, match="unavailable") as caught:
            store.admit(new_secret(), "default")
    assert caught.value.code == "DATABASE_UNAVAILABLE"


def test_a_sqlite_file_in_a_missing_directory_is_a_clear_error(tmp_path: Path) -> None:
    with pytest.raises(DatabaseUnavailable, match=r"directory .* does not exist"):
        AccountStore.from_url(f"sqlite:///{tmp_path / 'missing' / 'accounts.db'}")


def test_a_database_that_was_never_migrated_says_to_migrate(database_url: str) -> None:
    with AccountStore.from_url(database_url) as store:
        with pytest.raises(SchemaNotReady, match="llmapi accounts migrate") as caught:
            store.admit(new_secret(), "default")
        with pytest.raises(SchemaNotReady):
            store.list_keys()
    assert isinstance(caught.value, DatabaseUnavailable)


@pytest.mark.parametrize("url", ["sqlite://", "sqlite:///:memory:", "mysql://x@y/z", "not a url"])
def test_unsupported_database_urls_are_refused(url: str) -> None:
    with pytest.raises(InvalidValue):
        AccountStore.from_url(url)


def test_a_locked_sqlite_database_is_unavailable_after_the_busy_timeout(sqlite_url: str) -> None:
    with AccountStore.from_url(sqlite_url, busy_timeout=0.05) as store:
        store.migrate()
        _, secret = store.create_key(email="ana@example.org")
        with store.engine.begin() as holder:  # BEGIN IMMEDIATE: holds the write lock
            with pytest.raises(DatabaseUnavailable, match="locked"):
                store.admit(secret, "default")
            holder.exec_driver_sql("SELECT 1")
        assert store.admit(secret, "default")


@pytest.mark.postgres
def test_admission_survives_the_database_dropping_its_connection(postgres_admin, migrated_postgres_url: str) -> None:
    with AccountStore.from_url(migrated_postgres_url) as store:
        info, secret = store.create_key(email="ana@example.org")
        store.admit(secret, "default")  # this thread now keeps a connection
        with postgres_admin.connect() as admin:
            admin.exec_driver_sql(
                "SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
                "WHERE application_name = 'llmapi-accounts' AND pid <> pg_backend_pid()"
            )
            admin.commit()
        store.admit(secret, "default")  # a fresh connection, not a 503
        assert store.get_key(info.id).used == 2
