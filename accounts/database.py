"""Engines for the accounts database, and database failures turned into typed errors.

SQLite runs in WAL mode (readers never wait for the writer) with a busy
timeout, and every transaction starts with ``BEGIN IMMEDIATE``: it takes
the write lock up front, so two transactions never both read and then
deadlock trying to write, and lock waits obey the busy timeout.
PostgreSQL connections are checked before use, so a database restart costs
no failed requests once it is back.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import structlog
from sqlalchemy import Engine, create_engine, event, exc
from sqlalchemy.engine import URL, make_url

from accounts.errors import DatabaseUnavailable, InvalidValue, SchemaNotReady
from config.settings import AccountsSettings

log = structlog.get_logger(__name__)

# SQLSTATEs of PostgreSQL meaning "the schema is not what the code expects".
_UNDEFINED_TABLE = "42P01"
_UNDEFINED_COLUMN = "42703"
_SQLITE_SCHEMA_MESSAGES = ("no such table", "no such column")


def build_engine(settings: AccountsSettings, create: bool = True) -> Engine:
    """An engine for ``settings.database_url``; SQLite and PostgreSQL are supported.

    With ``create`` false, a SQLite file that does not exist yet is a
    :class:`SchemaNotReady` (saying to migrate) instead of a new empty file.
    """
    try:
        url = make_url(settings.database_url)
    except exc.ArgumentError:
        raise InvalidValue(f"invalid database URL {settings.database_url!r}") from None
    if url.get_backend_name() == "sqlite":
        return _sqlite_engine(url, settings, create)
    if url.get_backend_name() == "postgresql":
        return _postgresql_engine(url, settings)
    raise InvalidValue(f"unsupported database {url.get_backend_name()!r}: use sqlite or postgresql")


def sqlite_file(database_url: str) -> Path | None:
    """The absolute path of a SQLite database file, or None for any other URL."""
    try:
        url = make_url(database_url)
    except exc.ArgumentError:
        return None
    path = url.database or ""
    if url.get_backend_name() != "sqlite" or path in ("", ":memory:") or path.startswith("file:"):
        return None
    return Path(path).expanduser().absolute()


def make_sqlite_directory(database_url: str) -> None:
    """Create the directory of a SQLite database (for the commands that create the database)."""
    file = sqlite_file(database_url)
    if file is not None:
        file.parent.mkdir(parents=True, exist_ok=True)


def _sqlite_engine(url: URL, settings: AccountsSettings, create: bool) -> Engine:
    path = url.database or ""
    if path in ("", ":memory:") or path.startswith("file::memory:"):
        raise InvalidValue(
            "in-memory SQLite gives every connection its own empty database; use a file"
        )
    file = Path(path).expanduser().absolute()
    if not file.parent.is_dir():
        raise DatabaseUnavailable(f"the directory of the SQLite database does not exist: {file.parent}")
    if not create and not file.exists():
        raise SchemaNotReady(f"there is no accounts database at {file}; create it with `llmapi accounts migrate`")
    engine = create_engine(url, hide_parameters=True)
    busy_ms = int(settings.busy_timeout * 1000)

    @event.listens_for(engine, "connect")
    def _configure(dbapi_connection: Any, _record: Any) -> None:
        dbapi_connection.isolation_level = None  # BEGIN is ours, see below
        cursor = dbapi_connection.cursor()
        cursor.execute(f"PRAGMA busy_timeout = {busy_ms}")
        cursor.execute("PRAGMA journal_mode = WAL")
        cursor.execute("PRAGMA synchronous = NORMAL")
        cursor.execute("PRAGMA foreign_keys = ON")
        cursor.close()

    @event.listens_for(engine, "begin")
    def _begin(connection: Any) -> None:
        connection.exec_driver_sql("BEGIN IMMEDIATE")

    return engine


def _postgresql_engine(url: URL, settings: AccountsSettings) -> Engine:
    return create_engine(
        url,
        hide_parameters=True,
        pool_pre_ping=True,
        connect_args={
            "connect_timeout": settings.connect_timeout,
            "application_name": "llmapi-accounts",
        },
    )


def describe_url(engine: Engine) -> str:
    """The database URL with any password hidden, for logs and messages."""
    return engine.url.render_as_string(hide_password=True)


def describe_database_url(database_url: str) -> str:
    """``database_url`` with any password hidden, for messages (unparsable URLs as given)."""
    try:
        return make_url(database_url).render_as_string(hide_password=True)
    except exc.ArgumentError:
        return database_url


@contextmanager
def database_errors() -> Iterator[None]:
    """Turn driver and pool failures into :class:`DatabaseUnavailable` or
    :class:`SchemaNotReady`; other errors (constraint violations, bugs) pass through."""
    try:
        yield
    except (exc.OperationalError, exc.InterfaceError, exc.TimeoutError) as error:
        raise _unavailable(error) from error
    except exc.ProgrammingError as error:
        if getattr(error.orig, "pgcode", None) in (_UNDEFINED_TABLE, _UNDEFINED_COLUMN):
            raise SchemaNotReady() from error
        raise
    except exc.DBAPIError as error:
        if error.connection_invalidated:
            raise _unavailable(error) from error
        raise


def _unavailable(error: exc.SQLAlchemyError) -> DatabaseUnavailable:
    reason = _driver_message(error)
    if any(text in reason for text in _SQLITE_SCHEMA_MESSAGES):
        return SchemaNotReady()
    log.warning("accounts_database_unavailable", error=type(error).__name__, reason=reason)
    return DatabaseUnavailable(f"the accounts database is unavailable: {reason}")


def _driver_message(error: exc.SQLAlchemyError) -> str:
    """The driver's own message, first line only: never the statement or its parameters."""
    original = getattr(error, "orig", None) or error
    lines = str(original).strip().splitlines()
    return lines[0] if lines else type(original).__name__
