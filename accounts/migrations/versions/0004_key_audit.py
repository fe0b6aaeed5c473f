"""The audit log: each admin change to a key, who made it and the fields before and after.

Only adds a table; nothing that exists is changed, and changes made before
this revision have no record.

Revision ID: 0004
Revises: 0003
Create Date: 2026-11-27 12:00:00
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0004"
down_revision = "0003"
branch_labels = None
depends_on = None

UTC_TIME = sa.DateTime(timezone=True)
BIG_ID = sa.BigInteger().with_variant(sa.Integer(), "sqlite")


def upgrade() -> None:
    op.create_table(
        "key_audit",
        sa.Column("id", BIG_ID, primary_key=True),
        sa.Column("at", UTC_TIME, nullable=False),
        sa.Column("key_id", sa.Integer(), nullable=False),
        sa.Column("action", sa.String(16), nullable=False),
        sa.Column("actor_user", sa.String(100), nullable=False),
        sa.Column("actor_host", sa.String(255), nullable=False),
        sa.Column("before", sa.Text(), nullable=True),
        sa.Column("after", sa.Text(), nullable=True),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_key_audit")),
    )
    op.create_index(op.f("ix_key_audit_at"), "key_audit", ["at"])
    op.create_index("ix_key_audit_key_id_at", "key_audit", ["key_id", "at"])


def downgrade() -> None:
    op.drop_table("key_audit")
