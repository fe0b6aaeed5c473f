"""Usage records carry the GPU time their request used (its share of its worker's device time).

Only adds a column; records written before it have none.

Revision ID: 0012
Revises: 0011
Create Date: 2026-12-04 17:20:00
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0012"
down_revision = "0011"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("usage_records") as table:
        table.add_column(sa.Column("gpu_seconds", sa.Float(), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("usage_records") as table:
        table.drop_column("gpu_seconds")
