"""The admission run straight on a DBAPI connection, one per thread.

Through SQLAlchemy's execution layer a statement costs about 120 µs of
Python per call; run on the driver's own cursor it costs about 20. The
statements are the ones :mod:`accounts.admission` builds, compiled once for
the engine's dialect, with the same bind processing, so both paths count
and refuse exactly alike.

Counting a request and opening its admission must be atomic. On PostgreSQL
they are one statement (:func:`~accounts.admission.admit_and_open_statement`),
run in autocommit mode: atomic on its own, one round trip. On SQLite, which
has no data-modifying WITH, they are two statements in one ``BEGIN
IMMEDIATE`` transaction, which costs no round trip there. Requests that arrive
together are counted in one transaction (:meth:`FastAdmission.run_many`): one
commit, and on SQLite one write lock, for the group instead of one each.

The statements are run from what :class:`~sqlalchemy.sql.compiler.SQLCompiler`
documents of its result: ``string``, ``positiontup``, ``bind_names`` and
``construct_params()``, with each bind type's own ``bind_processor``. It is
not a public execution API, so ``tests/accounts/test_fast_admission.py``
checks, for SQLite and PostgreSQL, that what this module hands the driver is
what SQLAlchemy's own execution hands it; after a SQLAlchemy upgrade, that
test says what moved.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Mapping, Sequence
from datetime import datetime
from typing import Any

from sqlalchemy import Engine, exc
from sqlalchemy.engine.interfaces import DBAPICursor
from sqlalchemy.pool import PoolProxiedConnection
from sqlalchemy.sql import ClauseElement
from sqlalchemy.sql.compiler import SQLCompiler

from accounts import admission as rules
from accounts.database import database_errors


class _StaleConnection(Exception):
    """A kept connection failed before its statement ran."""


class _Compiled:
    """One statement compiled for ``engine``, with its bind processors."""

    def __init__(self, engine: Engine, statement: ClauseElement) -> None:
        compiled = statement.compile(dialect=engine.dialect)
        if not isinstance(compiled, SQLCompiler):
            raise TypeError(f"{type(compiled).__name__} is not a SQLCompiler: cannot run {statement!r} on the driver")
        self.sql = compiled.string
        self._positions = compiled.positiontup  # None for named parameter styles
        self._compiled = compiled
        self._processors: dict[str, Callable[[Any], Any]] = {
            name: processor
            for bind, name in compiled.bind_names.items()
            if (processor := bind.type.dialect_impl(engine.dialect).bind_processor(engine.dialect)) is not None
        }

    def parameters(self, given: Mapping[str, Any]) -> Sequence[Any] | Mapping[str, Any]:
        """The driver's parameters for ``given`` (by bind name): a list for positional styles, else a dict."""
        values = self._compiled.construct_params(given)
        for name, processor in self._processors.items():
            values[name] = processor(values[name])
        if self._positions is None:
            return values
        return [values[name] for name in self._positions]


class FastAdmission:
    """Counts a request and opens its admission for ``engine``, or lets nothing in.

    Each thread keeps one pooled DBAPI connection, in autocommit mode; a
    connection that fails is invalidated and replaced on the next call.
    """

    def __init__(self, engine: Engine) -> None:
        self._engine = engine
        self._one_statement = engine.dialect.name == "postgresql"
        if self._one_statement:
            self._steps = [_Compiled(engine, rules.admit_and_open_statement())]
        else:
            self._steps = [_Compiled(engine, rules.admit_statement()), _Compiled(engine, rules.open_statement())]
        # SQLite takes its write lock at BEGIN IMMEDIATE, so a count never waits on a reader's upgrade.
        self._begin = "BEGIN" if self._one_statement else "BEGIN IMMEDIATE"
        self._local = threading.local()
        self._lock = threading.Lock()
        self._connections: list[PoolProxiedConnection] = []

    def run(self, secret_hash: str, service: str, now: datetime, admission_id: str, request_id: str | None) -> Any:
        """The admitted key's (id, prefix) row, or None when the UPDATE let nothing in."""
        return self.run_many([rules.admit_parameters(secret_hash, service, now, admission_id, request_id)])[0]

    def run_many(self, asked: Sequence[dict[str, Any]]) -> list[Any]:
        """For each request asked (:func:`~accounts.admission.admit_parameters`), its admitted row or
        None, all counted in one transaction: each is judged against the counts of those before it,
        and if the database fails, none is counted."""
        with database_errors():
            try:
                return self._execute(asked)
            except _StaleConnection:
                # A kept connection the database dropped (a restart, say) fails
                # before anything ran: one fresh connection gets another go.
                return self._execute(asked)

    def _execute(self, asked: Sequence[dict[str, Any]]) -> list[Any]:
        driver_error = self._engine.dialect.loaded_dbapi.Error
        reused = getattr(self._local, "connection", None) is not None
        connection = None
        executed = False
        try:
            connection = self._connection()
            cursor = connection.cursor()
            try:
                if self._one_statement and len(asked) == 1:  # atomic alone: no transaction to open
                    cursor.execute(self._steps[0].sql, self._steps[0].parameters(asked[0]))
                    executed = True
                    return [cursor.fetchone()]
                executed = True
                return self._in_transaction(cursor, asked)
            finally:
                cursor.close()
        except driver_error as error:
            if connection is not None:
                self._discard(connection)
            if reused and not executed and self._engine.dialect.is_disconnect(error, None, None):
                raise _StaleConnection from error
            # Wrapped as SQLAlchemy would, so database_errors() names it alike.
            raise exc.DBAPIError.instance(self._steps[0].sql, None, error, driver_error) from error

    def _in_transaction(self, cursor: DBAPICursor, asked: Sequence[dict[str, Any]]) -> list[Any]:
        rows: list[Any] = [None] * len(asked)
        # Keys' rows are locked in one order by every frontend's group, so two groups never deadlock.
        order = sorted(range(len(asked)), key=lambda index: asked[index][rules.HASH])
        cursor.execute(self._begin)
        try:
            for index in order:
                rows[index] = self._count(cursor, asked[index])
        except BaseException:
            cursor.execute("ROLLBACK")
            raise
        cursor.execute("COMMIT")
        return rows

    def _count(self, cursor: DBAPICursor, given: dict[str, Any]) -> Any:
        if self._one_statement:
            statement = self._steps[0]
            cursor.execute(statement.sql, statement.parameters(given))
            return cursor.fetchone()
        count, open_ = self._steps
        cursor.execute(count.sql, count.parameters(given))
        row = cursor.fetchone()
        if row is not None:
            cursor.execute(open_.sql, open_.parameters({**given, rules.KEY_ID: row[0]}))
        return row

    def _connection(self) -> PoolProxiedConnection:
        connection: PoolProxiedConnection | None = getattr(self._local, "connection", None)
        if connection is None:
            connection = self._engine.raw_connection()
            dbapi_connection = connection.dbapi_connection
            if dbapi_connection is None:  # only once closed or invalidated, never fresh from the pool
                connection.close()
                raise exc.InvalidRequestError("the pool handed out a closed connection")
            # Statements need no transaction around them (or begin their own):
            # autocommit saves PostgreSQL a COMMIT round trip.
            self._engine.dialect.set_isolation_level(dbapi_connection, "AUTOCOMMIT")
            self._local.connection = connection
            with self._lock:
                self._connections.append(connection)
        return connection

    def _discard(self, connection: PoolProxiedConnection) -> None:
        self._local.connection = None
        with self._lock:
            self._connections.remove(connection)
        connection.invalidate()

    def close(self) -> None:
        with self._lock:
            connections, self._connections = self._connections, []
        for connection in connections:
            connection.close()
