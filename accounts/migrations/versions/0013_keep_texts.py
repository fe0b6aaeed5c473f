"""Keys say whether their requests' texts are kept (keep_texts): off for every existing key, so
nothing is kept that was not before unless accounts.store_texts keeps every key's.

Revision ID: 0013
Revises: 0012
Create Date: 2026-12-04 17:45:00
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0013"
down_revision = "0012"
branch_labels = None
depends_on = None


def upgrade() -> None:
    # A plain ADD COLUMN: a batch operation may copy api_keys on SQLite, and dropping the old
    # copy would cascade to every key's records.
    op.add_column("api_keys", sa.Column("keep_texts", sa.Boolean(), nullable=False, server_default=sa.false()))


def downgrade() -> None:
    with op.batch_alter_table("api_keys") as table:
        table.drop_column("keep_texts")
