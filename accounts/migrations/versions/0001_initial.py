"""Keys, their allowed services, usage records and refunds.

Revision ID: 0001
Revises:
Create Date: 2025-01-01 00:00:00
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0001"
down_revision = None
branch_labels = None
depends_on = None

UTC_TIME = sa.DateTime(timezone=True)
BIG_ID = sa.BigInteger().with_variant(sa.Integer(), "sqlite")


def upgrade() -> None:
    op.create_table(
        "api_keys",
        sa.Column("id", sa.Integer(), primary_key=True),
        sa.Column("secret_hash", sa.String(64), nullable=False),
        sa.Column("prefix", sa.String(32), nullable=False),
        sa.Column("email", sa.String(254), nullable=False),
        sa.Column("name", sa.String(200), nullable=False),
        sa.Column("organisation", sa.String(200), nullable=False),
        sa.Column("max_requests", sa.Integer(), nullable=True),
        sa.Column("used", sa.Integer(), nullable=False),
        sa.Column("valid_from", UTC_TIME, nullable=True),
        sa.Column("valid_until", UTC_TIME, nullable=True),
        sa.Column("revoked", sa.Boolean(), nullable=False),
        sa.Column("revoked_at", UTC_TIME, nullable=True),
        sa.Column("created_at", UTC_TIME, nullable=False),
        sa.Column("last_used_at", UTC_TIME, nullable=True),
        sa.Column("note", sa.Text(), nullable=False),
        sa.CheckConstraint("used >= 0", name=op.f("ck_api_keys_used_not_negative")),
        sa.CheckConstraint(
            "max_requests IS NULL OR max_requests >= 0",
            name=op.f("ck_api_keys_limit_not_negative"),
        ),
        sa.CheckConstraint(
            "valid_from IS NULL OR valid_until IS NULL OR valid_until > valid_from",
            name=op.f("ck_api_keys_window_ordered"),
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_api_keys")),
        sa.UniqueConstraint("secret_hash", name=op.f("uq_api_keys_secret_hash")),
    )
    op.create_index(op.f("ix_api_keys_email"), "api_keys", ["email"])

    op.create_table(
        "key_services",
        sa.Column("key_id", sa.Integer(), nullable=False),
        sa.Column("service", sa.String(100), nullable=False),
        sa.ForeignKeyConstraint(
            ["key_id"],
            ["api_keys.id"],
            name=op.f("fk_key_services_key_id_api_keys"),
            ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint("key_id", "service", name=op.f("pk_key_services")),
    )

    op.create_table(
        "usage_records",
        sa.Column("id", BIG_ID, primary_key=True),
        sa.Column("key_id", sa.Integer(), nullable=False),
        sa.Column("at", UTC_TIME, nullable=False),
        sa.Column("day", sa.Date(), nullable=False),
        sa.Column("service", sa.String(100), nullable=False),
        sa.Column("outcome", sa.String(32), nullable=False),
        sa.Column("latency_seconds", sa.Float(), nullable=False),
        sa.Column("input_chars", sa.Integer(), nullable=False),
        sa.Column("input_words", sa.Integer(), nullable=False),
        sa.Column("output_chars", sa.Integer(), nullable=False),
        sa.Column("output_words", sa.Integer(), nullable=False),
        sa.Column("prompt_tokens", sa.Integer(), nullable=True),
        sa.Column("completion_tokens", sa.Integer(), nullable=True),
        sa.Column("request_text", sa.Text(), nullable=True),
        sa.Column("output_text", sa.Text(), nullable=True),
        sa.ForeignKeyConstraint(
            ["key_id"],
            ["api_keys.id"],
            name=op.f("fk_usage_records_key_id_api_keys"),
            ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_usage_records")),
    )
    op.create_index("ix_usage_records_day_service", "usage_records", ["day", "service"])
    op.create_index("ix_usage_records_key_day", "usage_records", ["key_id", "day"])

    op.create_table(
        "refunds",
        sa.Column("admission_id", sa.String(32), nullable=False),
        sa.Column("key_id", sa.Integer(), nullable=False),
        sa.Column("refunded_at", UTC_TIME, nullable=False),
        sa.ForeignKeyConstraint(
            ["key_id"],
            ["api_keys.id"],
            name=op.f("fk_refunds_key_id_api_keys"),
            ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint("admission_id", name=op.f("pk_refunds")),
    )
    op.create_index(op.f("ix_refunds_key_id"), "refunds", ["key_id"])


def downgrade() -> None:
    op.drop_table("refunds")
    op.drop_table("usage_records")
    op.drop_table("key_services")
    op.drop_table("api_keys")
