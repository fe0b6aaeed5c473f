"""The digest of what a request first admitted under an idempotency key carried, so that a
retry with another body is refused rather than answered with the first one's answer.

Only adds a column; claims made before it have none and are not compared.

Revision ID: 0008
Revises: 0007
Create Date: 2026-11-28 21:00:00
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0008"
down_revision = "0007"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("idempotent_admissions") as table:
        table.add_column(sa.Column("request_hash", sa.String(64), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("idempotent_admissions") as table:
        table.drop_column("request_hash")
