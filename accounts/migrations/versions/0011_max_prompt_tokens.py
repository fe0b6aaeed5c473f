"""The per-key limit max_prompt_tokens: the most prompt tokens one request of the key may send.

Only adds a column; existing keys get no such limit.

Revision ID: 0011
Revises: 0010
Create Date: 2026-12-04 14:30:00
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0011"
down_revision = "0010"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("api_keys") as table:
        table.add_column(sa.Column("max_prompt_tokens", sa.BigInteger(), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("api_keys") as table:
        table.drop_column("max_prompt_tokens")
