"""Per-key limits besides the quota: requests and tokens per minute, a token budget,
concurrent requests and a weight, with the counters the admission statement keeps.

Only adds columns; existing keys get no new limit and weight 1.

Revision ID: 0006
Revises: 0005
Create Date: 2026-11-28 18:00:00
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0006"
down_revision = "0005"
branch_labels = None
depends_on = None

_COLUMNS = (
    ("requests_per_minute", sa.Integer(), None),
    ("tokens_per_minute", sa.BigInteger(), None),
    ("token_budget", sa.BigInteger(), None),
    ("max_concurrent", sa.Integer(), None),
    ("weight", sa.Integer(), "1"),
    ("tokens_used", sa.BigInteger(), "0"),
    ("request_window_start", sa.Float(), None),
    ("request_window_count", sa.Integer(), "0"),
    ("token_window_start", sa.Float(), None),
    ("token_window_count", sa.BigInteger(), "0"),
)


def upgrade() -> None:
    with op.batch_alter_table("api_keys") as table:
        for name, type_, default in _COLUMNS:
            table.add_column(sa.Column(name, type_, nullable=default is None, server_default=default))


def downgrade() -> None:
    with op.batch_alter_table("api_keys") as table:
        for name, _type, _default in reversed(_COLUMNS):
            table.drop_column(name)
