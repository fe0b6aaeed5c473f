"""Schema migrations, run from code: no ``alembic.ini`` is needed.

The Alembic scripts live in ``accounts/migrations``; their version table is
``accounts_alembic_version`` so the accounts tables can share a database
with others. :func:`upgrade` brings an empty or older database to the
newest schema and does nothing on one already there.
"""

from __future__ import annotations

from pathlib import Path

from alembic import command
from alembic.config import Config
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory
from sqlalchemy import Connection, Engine

from accounts.models import VERSION_TABLE

MIGRATIONS = Path(__file__).with_name("migrations")


def alembic_config(connection: Connection | None = None) -> Config:
    """A configuration built in memory; ``connection`` is handed to ``env.py``."""
    config = Config()
    config.set_main_option("script_location", str(MIGRATIONS))
    config.attributes["connection"] = connection
    return config


def upgrade(engine: Engine) -> None:
    """Apply every migration not yet applied, in one transaction."""
    with engine.begin() as connection:
        command.upgrade(alembic_config(connection), "head")


def head_revision() -> str | None:
    return ScriptDirectory.from_config(alembic_config()).get_current_head()


def current_revision(engine: Engine) -> str | None:
    with engine.connect() as connection:
        context = MigrationContext.configure(connection, opts={"version_table": VERSION_TABLE})
        return context.get_current_revision()
