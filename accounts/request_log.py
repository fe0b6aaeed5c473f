"""The requests view: each admitted request as its usage record tells it (when, whose, where
it went, how it ended, its tokens, GPU time, latency and time to first token), newest first,
filtered by key, outcome and time. It reads the records the ledger keeps, so it lists every
admitted request exactly once; requests refused before admission are not in it (the access
log and ``/metrics`` count those).
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

from sqlalchemy import Row, Select, select

from accounts.errors import InvalidValue
from accounts.models import ApiKey, UsageEntry
from accounts.records import MAX_OUTCOME, RequestEntry

MAX_PAGE = 1000
# Outcome filters besides a single outcome: every request answered, and every one that was not.
ANSWERED = "ok"
FAILED = "failed"


def query(
    key_id: int | None, outcome: str | None, since: datetime | None, until: datetime | None, limit: int, offset: int
) -> Select[Any]:
    """Records of one key (or all) with ``outcome`` (or any; ``failed``: any but ``ok``), made in
    ``[since, until)``, newest first: the page of ``limit`` from ``offset``."""
    if not 1 <= limit <= MAX_PAGE or offset < 0:
        raise InvalidValue(f"a page holds 1 to {MAX_PAGE} requests from an offset of 0 or more")
    statement: Select[Any] = (
        select(*COLUMNS, ApiKey.prefix.label("key_prefix"))
        .join(ApiKey, ApiKey.id == UsageEntry.key_id)
        .order_by(UsageEntry.id.desc())
        .limit(limit)
        .offset(offset)
    )
    if key_id is not None:
        statement = statement.where(UsageEntry.key_id == key_id)
    if outcome == FAILED:
        statement = statement.where(UsageEntry.outcome != ANSWERED)
    elif outcome is not None:
        if len(outcome) > MAX_OUTCOME:
            raise InvalidValue(f"an outcome is at most {MAX_OUTCOME} characters")
        statement = statement.where(UsageEntry.outcome == outcome)
    if since is not None:
        statement = statement.where(UsageEntry.at >= since)
    if until is not None:
        statement = statement.where(UsageEntry.at < until)
    return statement


COLUMNS: tuple[Any, ...] = (
    UsageEntry.id,
    UsageEntry.at,
    UsageEntry.key_id,
    UsageEntry.service,
    UsageEntry.endpoint,
    UsageEntry.outcome,
    UsageEntry.charged,
    UsageEntry.prompt_tokens,
    UsageEntry.completion_tokens,
    UsageEntry.gpu_seconds,
    UsageEntry.latency_seconds,
    UsageEntry.first_token_seconds,
    UsageEntry.request_id,
)


def entry(row: Row[Any]) -> RequestEntry:
    """A row of :func:`query` as a plain value."""
    return RequestEntry(**row._mapping)
