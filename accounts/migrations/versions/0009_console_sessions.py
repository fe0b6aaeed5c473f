"""Console sessions kept in the database, revocable; the stored session-signing secret goes.

A session is a random secret in the browser's cookie; only its SHA-256 is
stored, with the admin token that opened it and when it expires or ended.
Signing out, or revoking the token, ends it at once. The secret that signed
the cookies before is dropped: whoever could read it could forge sessions.
Sessions opened before this revision end (their cookies name no stored
session): admins sign in again.

Revision ID: 0009
Revises: 0008
Create Date: 2026-12-04 12:00:00
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0009"
down_revision = "0008"
branch_labels = None
depends_on = None

UTC_TIME = sa.DateTime(timezone=True)


def upgrade() -> None:
    op.create_table(
        "console_sessions",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("session_hash", sa.String(64), nullable=False),
        sa.Column("admin_token_id", sa.Integer(), nullable=False),
        sa.Column("created_at", UTC_TIME, nullable=False),
        sa.Column("expires_at", UTC_TIME, nullable=False),
        sa.Column("ended_at", UTC_TIME, nullable=True),
        sa.ForeignKeyConstraint(
            ["admin_token_id"], ["admin_tokens.id"], name=op.f("fk_console_sessions_admin_token_id_admin_tokens")
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_console_sessions")),
        sa.UniqueConstraint("session_hash", name=op.f("uq_console_sessions_session_hash")),
    )
    op.create_index(op.f("ix_console_sessions_admin_token_id"), "console_sessions", ["admin_token_id"])
    op.drop_table("console_secrets")


def downgrade() -> None:
    op.create_table(
        "console_secrets",
        sa.Column("name", sa.String(32), nullable=False),
        sa.Column("value", sa.String(128), nullable=False),
        sa.Column("created_at", UTC_TIME, nullable=False),
        sa.PrimaryKeyConstraint("name", name=op.f("pk_console_secrets")),
    )
    op.drop_index(op.f("ix_console_sessions_admin_token_id"), "console_sessions")
    op.drop_table("console_sessions")
