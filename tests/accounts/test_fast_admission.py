"""The fast admission path against SQLAlchemy itself: a tripwire for upgrades.

:mod:`accounts.fast_admission` compiles the admission statements once and runs
them on the driver's own cursor, reading ``string``, ``positiontup``,
``bind_names`` and ``construct_params()`` off SQLAlchemy's ``SQLCompiler`` and
applying each bind type's ``bind_processor`` itself. None of that is a public
execution API. These tests fail, naming what moved, when a SQLAlchemy release
changes any of it: then mend ``_Compiled`` in accounts/fast_admission.py (or
run the admission through ``Connection.execute``, about five times slower).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from datetime import datetime, timedelta, timezone
from typing import Any

import pytest
import sqlalchemy
from sqlalchemy import Engine, Executable, Insert, Select, Update, event
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.engine.interfaces import Dialect
from sqlalchemy.sql.compiler import SQLCompiler

from accounts import admission as rules
from accounts import keys
from accounts.fast_admission import _Compiled
from accounts.store import AccountStore

# Not in UTC, so that the bind processor of UTCDateTime changes it on both databases.
NOON_IN_PARIS = datetime(2030, 6, 15, 14, 0, tzinfo=timezone(timedelta(hours=2)))
FIX = (
    f"SQLAlchemy {sqlalchemy.__version__} changed what accounts/fast_admission.py's _Compiled relies on; "
    "mend _Compiled (or run the admission through Connection.execute)"
)

DIALECTS = [
    pytest.param(sqlite.pysqlite.dialect(), id="sqlite"),
    pytest.param(postgresql.psycopg2.dialect(), id="postgresql"),
]


def statements(dialect_name: str) -> dict[str, Update | Insert | Select[*tuple[Any, ...]]]:
    """What FastAdmission runs on this database, by name."""
    if dialect_name == "postgresql":
        return {"admit_and_open_statement": rules.admit_and_open_statement()}
    return {"admit_statement": rules.admit_statement(), "open_statement": rules.open_statement()}


def given(secret_hash: str, key_id: int) -> dict[str, Any]:
    return {
        **rules.admit_parameters(secret_hash, "default", NOON_IN_PARIS, "adm-tripwire", "req-tripwire"),
        rules.KEY_ID: key_id,
    }


def as_plain(parameters: Sequence[Any] | Mapping[str, Any]) -> list[str] | dict[str, str]:
    """Driver parameters as the reprs of their values, so that types and time zones count too, without
    their container's type (SQLAlchemy hands SQLite a tuple, the fast path a list)."""
    if isinstance(parameters, Mapping):
        return {name: repr(value) for name, value in parameters.items()}
    return [repr(value) for value in parameters]


@pytest.mark.parametrize("dialect", DIALECTS)
def test_each_admission_statement_compiles_to_what_the_fast_path_reads(dialect: Dialect) -> None:
    for name, statement in statements(dialect.name).items():
        compiled = statement.compile(dialect=dialect)
        assert isinstance(compiled, SQLCompiler), f"{FIX}: {name} compiles to {type(compiled).__name__}"
        assert isinstance(compiled.string, str) and compiled.string, f"{FIX}: SQLCompiler.string is empty"
        assert isinstance(compiled.bind_names, dict), f"{FIX}: SQLCompiler.bind_names is not a dict"
        if dialect.positional:
            assert isinstance(compiled.positiontup, list), f"{FIX}: positiontup is not a list for {dialect.paramstyle}"
            missing = set(compiled.positiontup) - set(compiled.bind_names.values())
            assert not missing, f"{FIX}: positiontup names {missing} that bind_names does not"
        else:
            assert compiled.positiontup is None, f"{FIX}: positiontup is set for {dialect.paramstyle}"
        # Parameters rendered or renamed at execution time are not applied by the fast path.
        assert not compiled.escaped_bind_names, f"{FIX}: {name} has escaped bind names"
        assert not compiled.literal_execute_params, f"{FIX}: {name} has parameters rendered at execution"
        assert not compiled.post_compile_params, f"{FIX}: {name} has post-compile parameters"


def sent_by_sqlalchemy(engine: Engine, statement: Executable, parameters: dict[str, Any]) -> tuple[str, Any]:
    """The SQL and parameters SQLAlchemy's own execution hands the driver (in a transaction rolled back)."""
    sent: list[tuple[str, Any]] = []

    def capture(conn: Any, cursor: Any, sql: str, driver_parameters: Any, context: Any, executemany: bool) -> None:
        sent.append((sql, driver_parameters))

    event.listen(engine, "before_cursor_execute", capture)
    try:
        with engine.connect() as conn:
            conn.execute(statement, parameters)
            conn.rollback()
    finally:
        event.remove(engine, "before_cursor_execute", capture)
    return sent[-1]  # after the BEGIN that SQLite's engine sends first


def test_the_fast_path_hands_the_driver_what_sqlalchemy_itself_would(store: AccountStore) -> None:
    info, secret = store.create_key(email="ana@example.org")
    parameters = given(keys.hash_secret(secret), info.id)
    engine = store.engine
    for name, statement in statements(engine.dialect.name).items():
        fast = _Compiled(engine, statement)
        sql, expected = sent_by_sqlalchemy(engine, statement, parameters)
        assert fast.sql == sql, f"{FIX}: the SQL of {name} differs from SQLAlchemy's"
        assert as_plain(fast.parameters(parameters)) == as_plain(expected), (
            f"{FIX}: the parameters of {name} differ from SQLAlchemy's"
        )

