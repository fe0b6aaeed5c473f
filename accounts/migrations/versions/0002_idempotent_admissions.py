"""Idempotent admissions: a client's idempotency key, per API key, and the admission it counted.

Only adds a table; existing keys, usage records and refunds are untouched.

Revision ID: 0002
Revises: 0001
Create Date: 2025-02-01 00:00:00
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0002"
down_revision = "0001"
branch_labels = None
depends_on = None

UTC_TIME = sa.DateTime(timezone=True)


def upgrade() -> None:
    op.create_table(
        "idempotent_admissions",
        sa.Column("key_id", sa.Integer(), nullable=False),
        sa.Column("idempotency_key_hash", sa.String(64), nullable=False),
        sa.Column("admission_id", sa.String(32), nullable=False),
        sa.Column("service", sa.String(100), nullable=False),
        sa.Column("created_at", UTC_TIME, nullable=False),
        sa.ForeignKeyConstraint(
            ["key_id"],
            ["api_keys.id"],
            name=op.f("fk_idempotent_admissions_key_id_api_keys"),
            ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint(
            "key_id", "idempotency_key_hash", name=op.f("pk_idempotent_admissions")
        ),
    )
    op.create_index(
        op.f("ix_idempotent_admissions_created_at"), "idempotent_admissions", ["created_at"]
    )


def downgrade() -> None:
    op.drop_table("idempotent_admissions")
