"""Finding keys: a text search over their owner fields and a status, as SQL conditions.

A key's status (see :meth:`KeyInfo.status`) depends on the time; the
conditions here say the same in SQL, so a page of keys of one status is
found by the database, not by reading every key.
"""

from __future__ import annotations

from datetime import datetime

from sqlalchemy import and_, false, func, not_, or_
from sqlalchemy.sql import ColumnElement

from accounts.errors import InvalidValue
from accounts.models import ApiKey, limit_column

STATUSES = ("active", "not yet valid", "expired", "exhausted", "revoked")
MAX_SEARCH = 200
MAX_PAGE = 500
_SEARCHED = (ApiKey.email, ApiKey.name, ApiKey.organisation, ApiKey.prefix, ApiKey.note)


def conditions(search: str | None, status: str | None, now: datetime) -> list[ColumnElement[bool]]:
    """The WHERE conditions for keys whose owner fields hold ``search`` (any case; digits alone
    name the key's id) and whose status is ``status``."""
    found: list[ColumnElement[bool]] = []
    if search is not None and search.strip():
        found.append(_matches(search.strip()))
    if status is not None:
        found.append(status_condition(status, now))
    return found


def status_condition(status: str, now: datetime) -> ColumnElement[bool]:
    if status not in STATUSES:
        raise InvalidValue(f"unknown key status {status!r}: use one of {', '.join(STATUSES)}")
    live = ApiKey.revoked.is_(False)
    started = or_(ApiKey.valid_from.is_(None), ApiKey.valid_from <= now)
    not_ended = or_(ApiKey.valid_until.is_(None), ApiKey.valid_until > now)
    used_up = or_(
        and_(ApiKey.max_requests.is_not(None), ApiKey.used >= ApiKey.max_requests),
        and_(limit_column("token_budget").is_not(None), ApiKey.tokens_used >= limit_column("token_budget")),
    )
    return {
        "revoked": ApiKey.revoked.is_(True),
        "not yet valid": and_(live, not_(started)),
        "expired": and_(live, started, not_(not_ended)),
        "exhausted": and_(live, started, not_ended, used_up),
        "active": and_(live, started, not_ended, not_(used_up)),
    }.get(status, false())


def check_page(limit: int, offset: int) -> None:
    if not 1 <= limit <= MAX_PAGE:
        raise InvalidValue(f"a page holds 1 to {MAX_PAGE} keys (got {limit})")
    if offset < 0:
        raise InvalidValue(f"a page cannot start before the first key (offset {offset})")


def _matches(search: str) -> ColumnElement[bool]:
    if len(search) > MAX_SEARCH:
        raise InvalidValue(f"a search cannot be longer than {MAX_SEARCH} characters")
    if search.isdigit():
        return ApiKey.id == int(search) if len(search) < 10 else false()
    escaped = search.lower().replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_")
    pattern = f"%{escaped}%"
    return or_(*(func.lower(column).like(pattern, escape="\\") for column in _SEARCHED))
