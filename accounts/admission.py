"""Admission: the one conditional UPDATE that lets a request in, and why it did not.

:func:`admit_statement` counts a request only if every condition holds, in
the database, in the same statement: no read-then-write, so concurrent
requests can never overshoot a quota. When it matches no row,
:func:`denial_reason` reads the key's state and names the first failed
condition, in this order: unknown key, revoked, not yet valid, expired,
service not allowed, then the :data:`COUNTED_RULES` in their order (quota
exhausted, token budget exhausted, rate limited). Each counted rule states
its condition once for each side (SQL on the key's row, Python on the state
read back), next to each other, so that the two test the same things; a new
limit kept in the database is one more rule here, its column and migration,
and its entry in :mod:`accounts.limits`. A replay under an idempotency key
(see :mod:`accounts.idempotency`) is judged by every rule but the counted
ones: its request was paid for when it was first admitted.

Rate windows (see :mod:`accounts.limits`) are fixed minute-long windows,
each starting at the first request after the previous one ended, kept as
epoch seconds in the key's row: the same UPDATE that counts a request starts
a new request window or counts into the current one. Tokens are counted
into theirs when a request's usage record is written (:mod:`accounts.ledger`).

A counted admission also opens its entry in ``open_admissions``
(:func:`open_statement`), atomically with the count, so that the ledger
never holds a count without the record that will settle it.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, fields
from datetime import datetime
from typing import Any

from sqlalchemy import (
    ColumnElement,
    Float,
    Insert,
    Select,
    SQLColumnExpression,
    Update,
    and_,
    bindparam,
    case,
    exists,
    insert,
    or_,
    select,
    true,
    update,
)

from accounts import errors, limits, times
from accounts.models import ApiKey, KeyService, OpenAdmission, UTCDateTime, limit_column


@dataclass(frozen=True)
class KeyState:
    """What a refused admission is judged on (never the secret)."""

    id: int
    prefix: str
    revoked: bool
    valid_from: datetime | None
    valid_until: datetime | None
    max_requests: int | None
    used: int
    request_window_start: float | None
    request_window_count: int
    token_window_start: float | None
    token_window_count: int
    tokens_used: int
    keep_texts: bool
    services: frozenset[str] | None  # None: every service
    limits: dict[str, int | None]  # each of accounts.limits.LIMITS by name; None: no limit

    def limit(self, name: str) -> int | None:
        return self.limits[name]

    def wait(self, now: float) -> float | None:
        """Seconds until every spent counted rule has cleared at ``now`` (epoch seconds), or
        None when waiting will not help (or nothing is spent)."""
        waits = [rule.clears_in(self, now) for rule in COUNTED_RULES if rule.spent(self, now)]
        known = [wait for wait in waits if wait is not None]
        return max(known) if known and len(known) == len(waits) else None


# Parameters of the two statements, bound at execution. Both statements are
# built once per store: building one costs more than running it on SQLite.
HASH = "key_hash"
SERVICE = "asked_service"
NOW = "at_time"
NOW_SECONDS = "at_epoch_seconds"
KEY_ID = "key_id_"
ADMISSION_ID = "admission_id_"
REQUEST_ID = "request_id_"


def _service_allowed() -> ColumnElement[bool]:
    restricted = exists().where(KeyService.key_id == ApiKey.id)
    listed = exists().where(KeyService.key_id == ApiKey.id, KeyService.service == bindparam(SERVICE))
    return or_(~restricted, listed)


def window_over(
    start: SQLColumnExpression[float | None],
    now_seconds: SQLColumnExpression[float],
    length: float = limits.WINDOW_SECONDS,
) -> ColumnElement[bool]:
    """Whether a window of ``length`` seconds that began at ``start`` has ended (or never began) at ``now_seconds``."""
    return or_(start.is_(None), start + length <= now_seconds)


def _within(
    limit: SQLColumnExpression[int | None],
    start: SQLColumnExpression[float | None],
    count: SQLColumnExpression[int],
    now_seconds: SQLColumnExpression[float],
) -> ColumnElement[bool]:
    return or_(limit.is_(None), window_over(start, now_seconds), count < limit)


@dataclass(frozen=True)
class CountedRule:
    """A limit judged where a request is counted: ``allows`` is its condition on the key's
    row at NOW_SECONDS (SQL), ``spent`` the same test on a :class:`KeyState` read back at
    ``now`` (epoch seconds), ``reason`` the refusal's code, and ``clears_in`` the seconds
    until a spent one lets requests in again (None: never, by waiting)."""

    reason: str
    allows: Callable[[ColumnElement[float]], ColumnElement[bool]]
    spent: Callable[[KeyState, float], bool]
    clears_in: Callable[[KeyState, float], float | None] = lambda state, now: None


def _window_spent(limit: int | None, start: float | None, count: int, now: float) -> bool:
    return limit is not None and count >= limit and limits.seconds_until_reset(start, now) is not None


# In the order refusals are named.
COUNTED_RULES = (
    CountedRule(
        errors.QUOTA_EXHAUSTED,
        allows=lambda now: or_(ApiKey.max_requests.is_(None), ApiKey.used < ApiKey.max_requests),
        spent=lambda state, now: state.max_requests is not None and state.used >= state.max_requests,
    ),
    CountedRule(
        errors.TOKEN_BUDGET_EXHAUSTED,
        allows=lambda now: or_(
            limit_column("token_budget").is_(None), ApiKey.tokens_used < limit_column("token_budget")
        ),
        spent=lambda state, now: (budget := state.limit("token_budget")) is not None and state.tokens_used >= budget,
    ),
    CountedRule(
        errors.RATE_LIMITED,
        allows=lambda now: _within(
            limit_column("requests_per_minute"), ApiKey.request_window_start, ApiKey.request_window_count, now
        ),
        spent=lambda state, now: _window_spent(
            state.limit("requests_per_minute"), state.request_window_start, state.request_window_count, now
        ),
        clears_in=lambda state, now: limits.seconds_until_reset(state.request_window_start, now),
    ),
    CountedRule(
        errors.RATE_LIMITED,
        allows=lambda now: _within(
            limit_column("tokens_per_minute"), ApiKey.token_window_start, ApiKey.token_window_count, now
        ),
        spent=lambda state, now: _window_spent(
            state.limit("tokens_per_minute"), state.token_window_start, state.token_window_count, now
        ),
        clears_in=lambda state, now: limits.seconds_until_reset(state.token_window_start, now),
    ),
)
COUNTED_REASONS = frozenset(rule.reason for rule in COUNTED_RULES)


def admit_statement() -> Update:
    """Count one request for the key with hash HASH if it may use SERVICE at NOW (NOW_SECONDS
    in epoch seconds); returns id, prefix, whether its texts are kept and the limits that travel
    (accounts.limits.TRAVELLING)."""
    now = bindparam(NOW, type_=UTCDateTime())
    now_seconds = bindparam(NOW_SECONDS, type_=Float())
    new_request_window = window_over(ApiKey.request_window_start, now_seconds)
    return (
        update(ApiKey)
        .where(
            and_(
                ApiKey.secret_hash == bindparam(HASH),
                ApiKey.revoked.is_(False),
                or_(ApiKey.valid_from.is_(None), ApiKey.valid_from <= now),
                or_(ApiKey.valid_until.is_(None), ApiKey.valid_until > now),
                _service_allowed(),
                *(rule.allows(now_seconds) for rule in COUNTED_RULES),
            )
        )
        .values(
            used=ApiKey.used + 1,
            last_used_at=now,
            request_window_start=case((new_request_window, now_seconds), else_=ApiKey.request_window_start),
            request_window_count=case((new_request_window, 1), else_=ApiKey.request_window_count + 1),
        )
        .returning(ApiKey.id, ApiKey.prefix, ApiKey.keep_texts, *(limit_column(name) for name in limits.TRAVELLING))
    )


def admit_parameters(
    secret_hash: str, service: str, now: datetime, admission_id: str, request_id: str | None = None
) -> dict[str, object]:
    return {
        HASH: secret_hash,
        SERVICE: service,
        NOW: now,
        NOW_SECONDS: now.timestamp(),
        ADMISSION_ID: admission_id,
        REQUEST_ID: request_id,
    }


def open_statement() -> Insert:
    """Open admission ADMISSION_ID of key KEY_ID for SERVICE at NOW (after the counting UPDATE)."""
    return insert(OpenAdmission).values(
        admission_id=bindparam(ADMISSION_ID),
        key_id=bindparam(KEY_ID),
        service=bindparam(SERVICE),
        admitted_at=bindparam(NOW, type_=UTCDateTime()),
        request_id=bindparam(REQUEST_ID),
    )


def admit_and_open_statement() -> Select[*tuple[Any, ...]]:
    """The counting UPDATE and the opening INSERT as one statement (PostgreSQL's data-modifying
    WITH): atomic without a transaction around it, in one round trip. Returns what
    :func:`admit_statement` returns."""
    admitted = admit_statement().cte("admitted")
    opened = (
        insert(OpenAdmission)
        .from_select(
            ["admission_id", "key_id", "service", "admitted_at", "request_id"],
            select(
                bindparam(ADMISSION_ID),
                admitted.c.id,
                bindparam(SERVICE),
                bindparam(NOW, type_=UTCDateTime()),
                bindparam(REQUEST_ID),
            ),
        )
        .returning(OpenAdmission.admission_id)
        .cte("opened")
    )
    returned = (
        admitted.c.id, admitted.c.prefix, admitted.c.keep_texts, *(admitted.c[name] for name in limits.TRAVELLING)
    )
    return select(*returned).select_from(admitted.join(opened, true()))


# The columns :func:`state_query` reads, in order: the fields of :class:`KeyState` but services
# and limits, then each limit.
_STATE_COLUMNS = tuple(each.name for each in fields(KeyState) if each.name not in ("services", "limits"))


def state_query() -> Select[*tuple[Any, ...]]:
    """The state of the key with hash HASH (the columns of :class:`KeyState`), to name the
    reason of a refusal."""
    columns = [getattr(ApiKey, name) for name in _STATE_COLUMNS + tuple(limits.BY_NAME)]
    return select(*columns).where(ApiKey.secret_hash == bindparam(HASH))


def read_state(row: Sequence[Any], services: frozenset[str] | None) -> KeyState:
    """The :class:`KeyState` of a row of :func:`state_query` and the key's services (None: every service)."""
    fixed, limit_values = row[: len(_STATE_COLUMNS)], row[len(_STATE_COLUMNS) :]
    return KeyState(
        **dict(zip(_STATE_COLUMNS, fixed, strict=True)),
        services=services,
        limits=dict(zip(limits.BY_NAME, limit_values, strict=True)),
    )


def services_query() -> Select[str]:
    """The services allowed to key KEY_ID (none listed: all)."""
    return select(KeyService.service).where(KeyService.key_id == bindparam(KEY_ID))


def denial_reason(
    state: KeyState | None, service: str, now: datetime, *, counting: bool = True
) -> str | None:
    """The first condition of :func:`admit_statement` that ``state`` fails, or None.

    ``counting=False`` judges a replay, which is not counted and so is not
    held to the quota, the budget or the rates: its request was paid for when
    it was first admitted.
    """
    if state is None:
        return errors.UNKNOWN_KEY
    if state.revoked:
        return errors.REVOKED
    if state.valid_from is not None and now < state.valid_from:
        return errors.NOT_YET_VALID
    if not times.in_window(state.valid_from, state.valid_until, now):
        return errors.EXPIRED
    if state.services is not None and service not in state.services:
        return errors.SERVICE_NOT_ALLOWED
    if not counting:
        return None
    return next((rule.reason for rule in COUNTED_RULES if rule.spent(state, now.timestamp())), None)
