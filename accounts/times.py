"""Time rules of the accounts package: everything is stored and compared in UTC.

A validity window is half-open: a key is valid from ``valid_from`` included
to ``valid_until`` excluded. A date without a time means the whole day in
UTC, so ``--valid-until 2025-03-31`` is stored as 2025-04-01 00:00 UTC and
the key works until the last microsecond of 31 March.
"""

from __future__ import annotations

from datetime import UTC, date, datetime, time, timedelta

from accounts.errors import InvalidValue

_FORMATS_HELP = "use YYYY-MM-DD, or an ISO 8601 date and time such as 2025-03-31T18:00:00+02:00"


def utcnow() -> datetime:
    return datetime.now(UTC)


def as_utc(moment: datetime, what: str = "time") -> datetime:
    """``moment`` converted to UTC; a naive datetime is an :class:`InvalidValue`."""
    if moment.tzinfo is None or moment.utcoffset() is None:
        raise InvalidValue(f"{what} must carry a timezone (got naive {moment.isoformat()})")
    return moment.astimezone(UTC)


def optional_utc(moment: datetime | None, what: str) -> datetime | None:
    return None if moment is None else as_utc(moment, what)


def check_window(valid_from: datetime | None, valid_until: datetime | None) -> None:
    """Refuse a window that ends before, or as, it starts (it would admit nothing)."""
    if valid_from is not None and valid_until is not None and valid_until <= valid_from:
        raise InvalidValue(
            f"validity window ends ({valid_until.isoformat()}) before it starts "
            f"({valid_from.isoformat()})"
        )


def in_window(valid_from: datetime | None, valid_until: datetime | None, now: datetime) -> bool:
    """``valid_from <= now < valid_until``, an absent edge being open."""
    return (valid_from is None or valid_from <= now) and (valid_until is None or now < valid_until)


def start_of_day(day: date) -> datetime:
    return datetime.combine(day, time.min, UTC)


def parse_date(text: str) -> date:
    """A calendar date ``YYYY-MM-DD`` (usage report bounds)."""
    try:
        return date.fromisoformat(text)
    except ValueError:
        raise InvalidValue(f"invalid date {text!r}: use YYYY-MM-DD") from None


def parse_window_start(text: str) -> datetime:
    """A window start: a date means its first moment (00:00 UTC)."""
    day, moment = _parse_moment(text)
    return start_of_day(day) if day is not None else moment


def parse_window_end(text: str) -> datetime:
    """A window end (excluded): a date means the whole day, so the next midnight UTC."""
    day, moment = _parse_moment(text)
    return start_of_day(day + timedelta(days=1)) if day is not None else moment


def _parse_moment(text: str) -> tuple[date | None, datetime]:
    text = text.strip()
    if not any(mark in text for mark in "T :"):
        try:
            day = date.fromisoformat(text)
        except ValueError:
            raise InvalidValue(f"invalid date {text!r}: {_FORMATS_HELP}") from None
        return day, start_of_day(day)
    try:
        moment = datetime.fromisoformat(text)
    except ValueError:
        raise InvalidValue(f"invalid date {text!r}: {_FORMATS_HELP}") from None
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=UTC)  # documented: a time without offset is UTC
    return None, moment.astimezone(UTC)
