"""Databases for the accounts tests: SQLite files and PostgreSQL schemas made for the run.

PostgreSQL comes from ``$LLMAPI_TEST_POSTGRES_URL``, else the CI default
below. If it cannot be reached, its tests skip with the reason, or fail when
``LLMAPI_REQUIRE_POSTGRES=1`` (CI), so a missing database never passes
silently there.

``database_url`` is an empty database, new for each test. ``store`` is a
store on a migrated database holding no rows: a copy of a migrated SQLite
file, or a PostgreSQL schema migrated once per run and truncated before each
test. Every schema has a random name and is dropped at the end, so no run
sees another's data.
"""

from __future__ import annotations

import os
import shutil
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest
from sqlalchemy import Engine, create_engine, text
from sqlalchemy.engine import make_url

from accounts.models import Base
from accounts.store import AccountStore

POSTGRES_URL_ENV = "LLMAPI_TEST_POSTGRES_URL"
REQUIRE_POSTGRES_ENV = "LLMAPI_REQUIRE_POSTGRES"
DEFAULT_POSTGRES_URL = "postgresql+psycopg2://postgres@127.0.0.1:5432/test"

DATABASES = [
    pytest.param("sqlite", id="sqlite"),
    pytest.param("postgres", id="postgresql", marks=pytest.mark.postgres),
]


@pytest.fixture(scope="session")
def postgres_admin() -> Iterator[Engine]:
    """An engine on the test PostgreSQL database, or a skip (or failure in CI) saying why not."""
    url = os.environ.get(POSTGRES_URL_ENV) or DEFAULT_POSTGRES_URL
    engine = create_engine(url, isolation_level="AUTOCOMMIT", connect_args={"connect_timeout": 3})
    try:
        with engine.connect() as conn:
            conn.execute(text("SELECT 1"))
    except Exception as error:  # any failure to connect means "no PostgreSQL here"
        engine.dispose()
        where = make_url(url).render_as_string(hide_password=True)
        reason = str(getattr(error, "orig", error)).strip().splitlines()[0]
        message = (
            f"PostgreSQL is unreachable at {where} ({reason}); "
            f"set {POSTGRES_URL_ENV} to a reachable database"
        )
        if os.environ.get(REQUIRE_POSTGRES_ENV) == "1":
            pytest.fail(f"{REQUIRE_POSTGRES_ENV}=1 but {message}", pytrace=False)
        pytest.skip(message)
    yield engine
    engine.dispose()


@contextmanager
def fresh_schema(admin: Engine) -> Iterator[tuple[str, str]]:
    """A new empty schema: its name, and a URL whose connections use it."""
    schema = f"accounts_test_{uuid.uuid4().hex[:16]}"
    with admin.connect() as conn:
        conn.execute(text(f'CREATE SCHEMA "{schema}"'))
    url = admin.url.update_query_dict({"options": f"-csearch_path={schema}"})
    try:
        yield schema, url.render_as_string(hide_password=False)
    finally:
        with admin.connect() as conn:
            conn.execute(text(f'DROP SCHEMA "{schema}" CASCADE'))


@pytest.fixture
def postgres_url(postgres_admin: Engine) -> Iterator[str]:
    """An empty schema for this test alone."""
    with fresh_schema(postgres_admin) as (_, url):
        yield url


@pytest.fixture
def sqlite_url(tmp_path: Path) -> str:
    return f"sqlite:///{tmp_path / 'accounts.db'}"


@pytest.fixture(params=DATABASES)
def database_url(request: pytest.FixtureRequest) -> str:
    """An empty database of each kind (not migrated)."""
    return str(request.getfixturevalue(f"{request.param}_url"))


@pytest.fixture(scope="session")
def migrated_postgres_schema(postgres_admin: Engine) -> Iterator[tuple[str, str]]:
    with fresh_schema(postgres_admin) as (schema, url):
        with AccountStore.from_url(url) as store:
            store.migrate()
        yield schema, url


@pytest.fixture
def migrated_postgres_url(postgres_admin: Engine, migrated_postgres_schema: tuple[str, str]) -> str:
    """The run's migrated schema, emptied of every row."""
    schema, url = migrated_postgres_schema
    tables = ", ".join(f'"{schema}"."{table.name}"' for table in Base.metadata.sorted_tables)
    with postgres_admin.connect() as conn:
        conn.execute(text(f"TRUNCATE {tables} RESTART IDENTITY CASCADE"))
    return url


@pytest.fixture(scope="session")
def migrated_sqlite_file(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("template") / "accounts.db"
    with AccountStore.from_url(f"sqlite:///{path}") as store:
        store.migrate()
    return path  # closed: the write-ahead log is folded back into the file


@pytest.fixture
def migrated_sqlite_url(migrated_sqlite_file: Path, tmp_path: Path) -> str:
    path = tmp_path / "accounts.db"
    shutil.copyfile(migrated_sqlite_file, path)
    return f"sqlite:///{path}"


@pytest.fixture(params=DATABASES)
def migrated_url(request: pytest.FixtureRequest) -> str:
    """A migrated database of each kind, holding no rows."""
    return str(request.getfixturevalue(f"migrated_{request.param}_url"))


@pytest.fixture
def store(migrated_url: str) -> Iterator[AccountStore]:
    """A store on a migrated, empty database; usage is written only when a test flushes it."""
    with AccountStore.from_url(migrated_url, usage_flush_interval=60.0) as account_store:
        yield account_store
