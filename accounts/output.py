"""How the admin command shows keys and usage: aligned text for people, JSON for scripts."""

from __future__ import annotations

import json
from collections.abc import Sequence
from datetime import datetime, time, timedelta
from typing import Any

from accounts.limits import LIMITS
from accounts.records import AdminTokenInfo, AuditEntry, KeyInfo, UsageRow

_USAGE_COLUMNS = (
    ("requests", "REQUESTS"),
    ("failures", "FAILED"),
    ("charged", "CHARGED"),
    ("input_words", "IN WORDS"),
    ("input_chars", "IN CHARS"),
    ("output_words", "OUT WORDS"),
    ("output_chars", "OUT CHARS"),
    ("prompt_tokens", "PROMPT TOKENS"),
    ("completion_tokens", "COMPLETION TOKENS"),
    ("gpu_seconds", "GPU SECONDS"),
)


def to_json(data: Any) -> str:
    return json.dumps(data, indent=2, ensure_ascii=False)


def key_json(info: KeyInfo, now: datetime) -> dict[str, Any]:
    return info.to_dict() | {"status": info.status(now), "remaining": info.remaining}


def moment(value: datetime | None, absent: str) -> str:
    return absent if value is None else value.isoformat(timespec="seconds")


def window_end(value: datetime | None) -> str:
    """The stored (excluded) end, and the last whole day it covers when it is a midnight."""
    if value is None:
        return "never"
    text = moment(value, "never") + " (excluded)"
    if value.time() == time.min:
        text += f", valid through {(value - timedelta(days=1)).date().isoformat()}"
    return text


def key_details(info: KeyInfo, now: datetime) -> str:
    limit = "unlimited" if info.max_requests is None else f"of {info.max_requests} ({info.remaining} left)"
    fields = [
        ("id", str(info.id)),
        ("prefix", info.prefix),
        ("status", info.status(now)),
        ("email", info.email),
        ("name", info.name),
        ("organisation", info.organisation),
        ("requests", f"{info.used} used {limit}"),
        ("tokens", f"{info.tokens_used} used {_budget(info)}"),
        *((limit.name.replace("_", " "), limit.describe(info.limits[limit.name])) for limit in LIMITS),
        ("valid from", moment(info.valid_from, "always")),
        ("valid until", window_end(info.valid_until)),
        ("services", "all" if info.services is None else ", ".join(info.services)),
        ("revoked", "no" if not info.revoked else f"yes, at {moment(info.revoked_at, '?')}"),
        ("created", moment(info.created_at, "?")),
        ("last used", moment(info.last_used_at, "never")),
        ("note", info.note),
    ]
    width = max(len(label) for label, _ in fields)
    return "\n".join(f"{label:<{width}}  {value}".rstrip() for label, value in fields)


def _budget(info: KeyInfo) -> str:
    if info.token_budget is None:
        return "(no budget)"
    return f"of {info.token_budget} ({info.tokens_remaining} left)"


def _share(info: KeyInfo) -> str:
    """The limits a key has besides the defaults, in one short cell."""
    parts = [
        limit.describe(value)
        for limit in LIMITS
        if (value := info.limits[limit.name]) is not None and value != limit.default
    ]
    return "; ".join(parts) or "-"


def key_table(infos: Sequence[KeyInfo], now: datetime) -> str:
    if not infos:
        return "no keys"
    header = ("ID", "PREFIX", "EMAIL", "STATUS", "USED", "LIMIT", "VALID UNTIL", "SERVICES", "OTHER LIMITS")
    rows = [
        (
            str(info.id),
            info.prefix,
            info.email,
            info.status(now),
            str(info.used),
            "-" if info.max_requests is None else str(info.max_requests),
            moment(info.valid_until, "-"),
            "all" if info.services is None else ",".join(info.services),
            _share(info),
        )
        for info in infos
    ]
    return table(header, rows, numeric={0, 4, 5})


def admin_table(tokens: Sequence[AdminTokenInfo]) -> str:
    if not tokens:
        return "no admin tokens"
    header = ("ID", "PREFIX", "NAME", "STATUS", "CREATED", "LAST USED")
    rows = [
        (
            str(token.id),
            token.prefix,
            token.name,
            f"revoked {moment(token.revoked_at, '?')}" if token.revoked else "active",
            moment(token.created_at, "?"),
            moment(token.last_used_at, "never"),
        )
        for token in tokens
    ]
    return table(header, rows, numeric={0})


def usage_table(rows: Sequence[UsageRow]) -> str:
    """Usage per day and service, and the totals; a COST column when some service has a price."""
    if not rows:
        return "no usage recorded"
    columns = [*_USAGE_COLUMNS, *([("cost", "COST")] if any(row.cost is not None for row in rows) else [])]
    header = ("DAY", "SERVICE", *(title for _, title in columns))
    body = [(row.day.isoformat(), row.service, *(_figure(getattr(row, name)) for name, _ in columns)) for row in rows]
    totals = ("TOTAL", "", *(_figure(sum(getattr(r, name) or 0 for r in rows)) for name, _ in columns))
    numeric = set(range(2, len(header)))
    return table(header, [*body, totals], numeric=numeric)


def _figure(value: float | None) -> str:
    """A count as it is; seconds and money to 3 decimals; no price as '-'."""
    if value is None:
        return "-"
    return f"{value:.3f}" if isinstance(value, float) else str(value)


def audit_table(entries: Sequence[AuditEntry]) -> str:
    if not entries:
        return "no changes recorded"
    header = ("AT", "KEY", "ACTION", "BY", "CHANGES")
    rows = [
        (moment(e.at, "?"), str(e.key_id), e.action, str(e.actor), audit_changes(e.before, e.after))
        for e in entries
    ]
    return table(header, rows, numeric={1})


def audit_changes(before: dict[str, Any] | None, after: dict[str, Any] | None) -> str:
    """``field: old -> new`` for each changed field; the fields set, for a creation or a deletion."""
    if before is None or after is None:
        fields = after if after is not None else before or {}
        set_ = {name: value for name, value in fields.items() if value not in (None, "") and value is not False}
        shown = ", ".join(f"{name}={_value(value)}" for name, value in set_.items())
        return shown if after is not None else f"deleted: {shown}"
    if not after:
        return "nothing changed"
    return "; ".join(f"{name}: {_value(before[name])} -> {_value(after[name])}" for name in after)


def _value(value: Any) -> str:
    return json.dumps(value, ensure_ascii=False)


def table(header: Sequence[str], rows: Sequence[Sequence[str]], numeric: set[int]) -> str:
    """Columns separated by two spaces; numeric columns right-aligned."""
    widths = [max(len(line[i]) for line in [header, *rows]) for i in range(len(header))]

    def line(cells: Sequence[str]) -> str:
        padded = (
            cell.rjust(width) if i in numeric else cell.ljust(width)
            for i, (cell, width) in enumerate(zip(cells, widths, strict=True))
        )
        return "  ".join(padded).rstrip()

    return "\n".join(line(cells) for cells in [header, *rows])
