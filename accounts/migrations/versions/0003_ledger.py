"""The ledger: each usage record names its admission, its request and whether it was charged,
and admissions still in flight are kept in ``open_admissions`` until their record is written.

Existing usage records keep no admission id and count as charged.

Revision ID: 0003
Revises: 0002
Create Date: 2026-11-27 00:00:00
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0003"
down_revision = "0002"
branch_labels = None
depends_on = None

UTC_TIME = sa.DateTime(timezone=True)


def upgrade() -> None:
    with op.batch_alter_table("usage_records") as table:
        table.add_column(sa.Column("admission_id", sa.String(32), nullable=True))
        table.add_column(sa.Column("charged", sa.Boolean(), nullable=False, server_default=sa.true()))
        table.add_column(sa.Column("request_id", sa.String(64), nullable=True))
        table.create_unique_constraint(op.f("uq_usage_records_admission_id"), ["admission_id"])
    op.create_table(
        "open_admissions",
        sa.Column("admission_id", sa.String(32), nullable=False),
        sa.Column("key_id", sa.Integer(), nullable=False),
        sa.Column("service", sa.String(100), nullable=False),
        sa.Column("admitted_at", UTC_TIME, nullable=False),
        sa.Column("request_id", sa.String(64), nullable=True),
        sa.ForeignKeyConstraint(
            ["key_id"], ["api_keys.id"], name=op.f("fk_open_admissions_key_id_api_keys"), ondelete="CASCADE"
        ),
        sa.PrimaryKeyConstraint("admission_id", name=op.f("pk_open_admissions")),
    )
    op.create_index(op.f("ix_open_admissions_key_id"), "open_admissions", ["key_id"])
    op.create_index(op.f("ix_open_admissions_admitted_at"), "open_admissions", ["admitted_at"])


def downgrade() -> None:
    op.drop_table("open_admissions")
    with op.batch_alter_table("usage_records") as table:
        table.drop_constraint(op.f("uq_usage_records_admission_id"), type_="unique")
        table.drop_column("request_id")
        table.drop_column("charged")
        table.drop_column("admission_id")
