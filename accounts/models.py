"""The accounts schema as SQLAlchemy 2.0 models (the migrations create the same).

Times are stored in UTC: ``timestamp with time zone`` on PostgreSQL, naive
UTC text on SQLite; both come back as aware UTC datetimes.
"""

from __future__ import annotations

from datetime import UTC, date, datetime

from sqlalchemy import (
    BigInteger,
    Boolean,
    CheckConstraint,
    Date,
    DateTime,
    Float,
    ForeignKey,
    Index,
    Integer,
    MetaData,
    String,
    Text,
    false,
    true,
)
from sqlalchemy.engine import Dialect
from sqlalchemy.orm import DeclarativeBase, InstrumentedAttribute, Mapped, mapped_column
from sqlalchemy.types import TypeDecorator

from accounts.limits import LIMITS

# Stable constraint names, so later migrations can alter them on both databases.
NAMING_CONVENTION = {
    "ix": "ix_%(column_0_label)s",
    "uq": "uq_%(table_name)s_%(column_0_name)s",
    "ck": "ck_%(table_name)s_%(constraint_name)s",
    "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
    "pk": "pk_%(table_name)s",
}

VERSION_TABLE = "accounts_alembic_version"

# SQLite only auto-increments a column declared exactly INTEGER PRIMARY KEY.
BigId = BigInteger().with_variant(Integer(), "sqlite")


class UTCDateTime(TypeDecorator[datetime]):
    """An aware datetime, stored in UTC and read back as aware UTC."""

    impl = DateTime(timezone=True)
    cache_ok = True

    def process_bind_param(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        if value is None:
            return None
        if value.tzinfo is None:
            raise ValueError("naive datetime given to a UTC column")
        value = value.astimezone(UTC)
        return value.replace(tzinfo=None) if dialect.name == "sqlite" else value

    def process_result_value(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        if value is None:
            return None
        return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)


class Base(DeclarativeBase):
    metadata = MetaData(naming_convention=NAMING_CONVENTION)


class ApiKey(Base):
    """One key: its hash (never the secret), owner, quota, window and state."""

    __tablename__ = "api_keys"
    __table_args__ = (
        CheckConstraint("used >= 0", name="used_not_negative"),
        CheckConstraint("max_requests IS NULL OR max_requests >= 0", name="limit_not_negative"),
        CheckConstraint(
            "valid_from IS NULL OR valid_until IS NULL OR valid_until > valid_from",
            name="window_ordered",
        ),
    )

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    secret_hash: Mapped[str] = mapped_column(String(64), unique=True)
    prefix: Mapped[str] = mapped_column(String(32))
    email: Mapped[str] = mapped_column(String(254), index=True)
    name: Mapped[str] = mapped_column(String(200), default="")
    organisation: Mapped[str] = mapped_column(String(200), default="")
    max_requests: Mapped[int | None] = mapped_column(Integer)
    used: Mapped[int] = mapped_column(Integer, default=0)
    valid_from: Mapped[datetime | None] = mapped_column(UTCDateTime)
    valid_until: Mapped[datetime | None] = mapped_column(UTCDateTime)
    revoked: Mapped[bool] = mapped_column(Boolean, default=False)
    revoked_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime)
    last_used_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    note: Mapped[str] = mapped_column(Text, default="")
    # Whether its requests' texts (prompt and answer) are kept in their usage records.
    keep_texts: Mapped[bool] = mapped_column(Boolean, default=False, server_default=false())
    # Tokens of the key's charged requests, in all and in the current minute-long window,
    # and the requests admitted in the current request window; windows start at epoch seconds.
    tokens_used: Mapped[int] = mapped_column(BigInteger, default=0, server_default="0")
    request_window_start: Mapped[float | None] = mapped_column(Float)
    request_window_count: Mapped[int] = mapped_column(Integer, default=0, server_default="0")
    token_window_start: Mapped[float | None] = mapped_column(Float)
    token_window_count: Mapped[int] = mapped_column(BigInteger, default=0, server_default="0")
    # And one column per limit of accounts.limits (None: no limit), added below.


def limit_column(name: str) -> InstrumentedAttribute[int | None]:
    """The column of the limit ``name`` (one of accounts.limits.LIMITS)."""
    column: InstrumentedAttribute[int | None] = getattr(ApiKey, name)
    return column


for _limit in LIMITS:
    setattr(
        ApiKey,
        _limit.name,
        mapped_column(
            BigInteger if _limit.wide else Integer,
            default=_limit.default,
            server_default=None if _limit.default is None else str(_limit.default),
            nullable=_limit.optional,
        ),
    )


class KeyService(Base):
    """A service a key may use; a key with no rows here may use every service."""

    __tablename__ = "key_services"

    key_id: Mapped[int] = mapped_column(
        ForeignKey("api_keys.id", ondelete="CASCADE"), primary_key=True
    )
    service: Mapped[str] = mapped_column(String(100), primary_key=True)


class UsageEntry(Base):
    """One answered or failed request: what it carried and how it ended."""

    __tablename__ = "usage_records"
    __table_args__ = (
        Index("ix_usage_records_day_service", "day", "service"),
        Index("ix_usage_records_key_day", "key_id", "day"),
    )

    id: Mapped[int] = mapped_column(BigId, primary_key=True)
    key_id: Mapped[int] = mapped_column(ForeignKey("api_keys.id", ondelete="CASCADE"))
    at: Mapped[datetime] = mapped_column(UTCDateTime)
    day: Mapped[date] = mapped_column(Date)
    service: Mapped[str] = mapped_column(String(100))
    outcome: Mapped[str] = mapped_column(String(32))
    latency_seconds: Mapped[float] = mapped_column(Float)
    input_chars: Mapped[int] = mapped_column(Integer)
    input_words: Mapped[int] = mapped_column(Integer)
    output_chars: Mapped[int] = mapped_column(Integer)
    output_words: Mapped[int] = mapped_column(Integer)
    prompt_tokens: Mapped[int | None] = mapped_column(Integer)
    completion_tokens: Mapped[int | None] = mapped_column(Integer)
    gpu_seconds: Mapped[float | None] = mapped_column(Float)
    first_token_seconds: Mapped[float | None] = mapped_column(Float)
    # The API path the request was sent to (/v1/chat/completions, say).
    endpoint: Mapped[str | None] = mapped_column(String(64))
    request_text: Mapped[str | None] = mapped_column(Text)
    output_text: Mapped[str | None] = mapped_column(Text)
    # The admission this record settles (none for records older than migration 0003).
    admission_id: Mapped[str | None] = mapped_column(String(32), unique=True)
    # Whether the request counts against the key: a key's `used` equals its charged records.
    charged: Mapped[bool] = mapped_column(Boolean, default=True, server_default=true())
    # The id the frontend gave the request (its X-Request-Id), to find its record.
    request_id: Mapped[str | None] = mapped_column(String(64))


class Refund(Base):
    """An admission whose request was given back; its id makes refunds idempotent."""

    __tablename__ = "refunds"

    admission_id: Mapped[str] = mapped_column(String(32), primary_key=True)
    key_id: Mapped[int] = mapped_column(ForeignKey("api_keys.id", ondelete="CASCADE"), index=True)
    refunded_at: Mapped[datetime] = mapped_column(UTCDateTime)


class OpenAdmission(Base):
    """A counted admission whose usage record is not written yet: its request is in flight.

    Made in the same statement that counts the request, and deleted in the
    transaction that writes its usage record, so a key's ``used`` always
    equals its charged records plus its open admissions. One left behind by
    a frontend that died is settled as abandoned (refunded) once it is older
    than any request can run (``accounts.abandoned_after``).
    """

    __tablename__ = "open_admissions"

    admission_id: Mapped[str] = mapped_column(String(32), primary_key=True)
    key_id: Mapped[int] = mapped_column(ForeignKey("api_keys.id", ondelete="CASCADE"), index=True)
    service: Mapped[str] = mapped_column(String(100))
    admitted_at: Mapped[datetime] = mapped_column(UTCDateTime, index=True)
    request_id: Mapped[str | None] = mapped_column(String(64))


class IdempotentAdmission(Base):
    """A counted admission made under a client's idempotency key; a retry with that key replays it.

    Only the SHA-256 of the client's key is kept (the key may be sensitive).
    The primary key makes a second claim of the same pair conflict, so two
    concurrent retries cannot both be counted.
    """

    __tablename__ = "idempotent_admissions"

    key_id: Mapped[int] = mapped_column(
        ForeignKey("api_keys.id", ondelete="CASCADE"), primary_key=True
    )
    idempotency_key_hash: Mapped[str] = mapped_column(String(64), primary_key=True)
    admission_id: Mapped[str] = mapped_column(String(32))
    service: Mapped[str] = mapped_column(String(100))
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, index=True)
    # The SHA-256 of what the first request carried (see AccountStore.admit); a retry must carry the same.
    request_hash: Mapped[str | None] = mapped_column(String(64))


class KeyAudit(Base):
    """One admin change to a key: when, who made it (an operating-system user on a host), and
    the fields it changed, before and after, as JSON; never a secret or a secret's hash.

    No foreign key: the record of a key outlives the key.
    """

    __tablename__ = "key_audit"
    __table_args__ = (Index("ix_key_audit_key_id_at", "key_id", "at"),)

    id: Mapped[int] = mapped_column(BigId, primary_key=True)
    at: Mapped[datetime] = mapped_column(UTCDateTime, index=True)
    key_id: Mapped[int] = mapped_column(Integer)
    action: Mapped[str] = mapped_column(String(16))
    actor_user: Mapped[str] = mapped_column(String(100))
    actor_host: Mapped[str] = mapped_column(String(255))
    # The changed fields' old and new values; none before a creation, none after a deletion.
    before: Mapped[str | None] = mapped_column(Text)
    after: Mapped[str | None] = mapped_column(Text)


class KeyFailure(Base):
    """Failed key checks from one client address, and its block (see accounts.key_brake).

    Times are epoch seconds. ``blocks`` counts the blocks so far, so each lasts twice as
    long as the last; the row is forgotten once the address has been quiet a while.
    """

    __tablename__ = "key_failures"

    address: Mapped[str] = mapped_column(String(64), primary_key=True)
    failures: Mapped[int] = mapped_column(Integer)
    window_start: Mapped[float | None] = mapped_column(Float)
    blocked_until: Mapped[float | None] = mapped_column(Float)
    blocks: Mapped[int] = mapped_column(Integer)


class AdminToken(Base):
    """A credential for the admin console and ``/admin/api/``: its hash (never the secret),
    a name saying whose it is, and its state. It opens nothing else: never the model API."""

    __tablename__ = "admin_tokens"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    token_hash: Mapped[str] = mapped_column(String(64), unique=True)
    prefix: Mapped[str] = mapped_column(String(32))
    name: Mapped[str] = mapped_column(String(100))
    created_at: Mapped[datetime] = mapped_column(UTCDateTime)
    last_used_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    revoked: Mapped[bool] = mapped_column(Boolean, default=False)
    revoked_at: Mapped[datetime | None] = mapped_column(UTCDateTime)


class ConsoleSession(Base):
    """A console session: the SHA-256 of its secret (the cookie; never stored), the admin token
    that opened it, and when it expires or ended (signed out, or its token revoked)."""

    __tablename__ = "console_sessions"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    session_hash: Mapped[str] = mapped_column(String(64), unique=True)
    admin_token_id: Mapped[int] = mapped_column(ForeignKey("admin_tokens.id"), index=True)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime)
    expires_at: Mapped[datetime] = mapped_column(UTCDateTime)
    ended_at: Mapped[datetime | None] = mapped_column(UTCDateTime)


class StoredResponse(Base):
    """A Responses API answer kept for its key (``store``): the response object as sent, and the
    conversation up to and with it (input and output items), which ``previous_response_id``
    continues. Only the key that made it reads or deletes it; it is forgotten at ``expires_at``."""

    __tablename__ = "stored_responses"
    __table_args__ = (Index("ix_stored_responses_expires_at", "expires_at"),)

    id: Mapped[str] = mapped_column(String(64), primary_key=True)
    key_id: Mapped[int] = mapped_column(ForeignKey("api_keys.id", ondelete="CASCADE"), index=True)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime)
    expires_at: Mapped[datetime] = mapped_column(UTCDateTime)
    response: Mapped[str] = mapped_column(Text)
    conversation: Mapped[str] = mapped_column(Text)
