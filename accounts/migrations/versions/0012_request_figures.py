"""Usage records carry what the console's requests view shows: the GPU time the request used (its
share of its worker's device time), the endpoint it was sent to and its time to first token.

Only adds columns; records written before them have none.

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

COLUMNS = (
    ("gpu_seconds", sa.Float()),
    ("first_token_seconds", sa.Float()),
    ("endpoint", sa.String(64)),
)


def upgrade() -> None:
    with op.batch_alter_table("usage_records") as table:
        for name, kind in COLUMNS:
            table.add_column(sa.Column(name, kind, nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("usage_records") as table:
        for name, _ in reversed(COLUMNS):
            table.drop_column(name)
