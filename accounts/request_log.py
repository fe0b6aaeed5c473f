"""The requests view: each admitted request as its usage record tells it (when, whose, where
it went, how it ended, its tokens, GPU time, latency and time to first token), newest first,
filtered by key, outcome and time. It reads the records the ledger keeps, so it lists every
admitted request exactly once; requests refused before admission are not in it (the access
log and ``/metrics`` count those).
"""

from __future__ import annotations

import math
from collections import defaultdict
from collections.abc import Iterable, Sequence
from datetime import datetime
from typing import Any

from sqlalchemy import Row, Select, select

from accounts.errors import InvalidValue
from accounts.models import ApiKey, UsageEntry
from accounts.records import MAX_OUTCOME, HourlyLatency, RequestEntry

MAX_PAGE = 1000
# Outcome filters besides a single outcome: every request answered, and every one that was not.
ANSWERED = "ok"
FAILED = "failed"

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
    UsageEntry.request_text,
    UsageEntry.output_text,
)


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



def entry(row: Row[Any]) -> RequestEntry:
    """A row of :func:`query` as a plain value."""
    return RequestEntry(**row._mapping)


# The most records the hourly latency report reads: beyond it, the newest are read.
MAX_TIMED = 50_000
TIMED: tuple[Any, ...] = (UsageEntry.at, UsageEntry.service, UsageEntry.latency_seconds, UsageEntry.first_token_seconds)


def timed_query(since: datetime, service: str | None) -> Select[Any]:
    """The answered requests' times since ``since``, newest first, at most :data:`MAX_TIMED`."""
    statement: Select[Any] = (
        select(*TIMED)
        .where(UsageEntry.at >= since, UsageEntry.outcome == ANSWERED)
        .order_by(UsageEntry.id.desc())
        .limit(MAX_TIMED)
    )
    return statement if service is None else statement.where(UsageEntry.service == service)


def hourly(rows: Iterable[Row[Any]]) -> list[HourlyLatency]:
    """:func:`timed_query`'s rows as percentiles per service and hour, oldest hour first."""
    groups: dict[tuple[datetime, str], tuple[list[float], list[float]]] = defaultdict(lambda: ([], []))
    for row in rows:
        latencies, first_tokens = groups[row.at.replace(minute=0, second=0, microsecond=0), row.service]
        latencies.append(row.latency_seconds)
        if row.first_token_seconds is not None:
            first_tokens.append(row.first_token_seconds)
    return [
        HourlyLatency(
            hour, service, len(latencies), percentile(latencies, 50), percentile(latencies, 99),
            percentile(first_tokens, 50) if first_tokens else None,
            percentile(first_tokens, 99) if first_tokens else None,
        )
        for (hour, service), (latencies, first_tokens) in sorted(groups.items())
    ]


def percentile(values: Sequence[float], rank: float) -> float:
    """The nearest-rank percentile: the smallest value with at least ``rank``% of them at or below it."""
    ordered = sorted(values)
    return ordered[max(0, math.ceil(rank / 100 * len(ordered)) - 1)]
