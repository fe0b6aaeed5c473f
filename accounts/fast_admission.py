"""The admission UPDATE run straight on a DBAPI connection, one per thread.

Through SQLAlchemy's execution layer the statement costs about 120 µs of
Python per call; run on the driver's own cursor it costs about 20. The
statement itself is the one :func:`accounts.admission.admit_statement`
builds, compiled once for the engine's dialect, with the same bind
processing, so both paths count and refuse exactly alike. It is a single
statement, run in autocommit mode: atomic on its own on SQLite and
PostgreSQL alike.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from datetime import datetime
from typing import Any

from sqlalchemy import Engine, Update, exc

from accounts import admission as rules
from accounts.database import database_errors


class _StaleConnection(Exception):
    """A kept connection failed before its statement ran."""


class FastAdmission:
    """Runs ``statement`` (the admission UPDATE ... RETURNING) for ``engine``.

    Each thread keeps one pooled DBAPI connection; a connection that fails
    is invalidated and replaced on the next call.
    """

    def __init__(self, engine: Engine, statement: Update) -> None:
        self._engine = engine
        compiled = statement.compile(dialect=engine.dialect)
        self._sql = compiled.string
        self._positions = compiled.positiontup  # None for named parameter styles
        self._compiled = compiled
        self._processors: dict[str, Callable[[Any], Any]] = {
            name: processor
            for name, bind in compiled.binds.items()
            if (processor := bind.type.dialect_impl(engine.dialect).bind_processor(engine.dialect)) is not None
        }
        self._local = threading.local()
        self._lock = threading.Lock()
        self._connections: list[Any] = []

    def run(self, secret_hash: str, service: str, now: datetime) -> Any:
        """The admitted key's (id, prefix) row, or None when the UPDATE let nothing in."""
        parameters = self._parameters(rules.admit_parameters(secret_hash, service, now))
        with database_errors():
            try:
                return self._execute(parameters)
            except _StaleConnection:
                # A kept connection the database dropped (a restart, say) fails
                # before anything ran: one fresh connection gets another go.
                return self._execute(parameters)

    def _execute(self, parameters: Any) -> Any:
        driver_error = self._engine.dialect.loaded_dbapi.Error
        reused = getattr(self._local, "connection", None) is not None
        connection = None
        executed = False
        try:
            connection = self._connection()
            cursor = connection.cursor()
            try:
                cursor.execute(self._sql, parameters)
                executed = True
                row = cursor.fetchone()
            finally:
                cursor.close()
        except driver_error as error:
            if connection is not None:
                self._discard(connection)
            if reused and not executed and self._engine.dialect.is_disconnect(error, None, None):
                raise _StaleConnection from error
            # Wrapped as SQLAlchemy would, so database_errors() names it alike.
            raise exc.DBAPIError.instance(self._sql, None, error, driver_error) from error
        return row

    def _parameters(self, given: dict[str, Any]) -> Any:
        values = self._compiled.construct_params(given)
        for name, processor in self._processors.items():
            values[name] = processor(values[name])
        if self._positions is None:
            return values
        return [values[name] for name in self._positions]

    def _connection(self) -> Any:
        connection = getattr(self._local, "connection", None)
        if connection is None:
            connection = self._engine.raw_connection()
            # One statement needs no transaction around it: autocommit saves
            # PostgreSQL a COMMIT round trip (SQLite is in autocommit already).
            self._engine.dialect.set_isolation_level(connection.dbapi_connection, "AUTOCOMMIT")
            self._local.connection = connection
            with self._lock:
                self._connections.append(connection)
        return connection

    def _discard(self, connection: Any) -> None:
        self._local.connection = None
        with self._lock:
            self._connections.remove(connection)
        connection.invalidate()

    def close(self) -> None:
        with self._lock:
            connections, self._connections = self._connections, []
        for connection in connections:
            connection.close()
