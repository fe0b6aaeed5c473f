"""What the console's pages show, computed from the store's plain values: status badges,
daily series for the charts, totals per service, and keys as the forms edit them."""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass
from datetime import date, datetime, time, timedelta
from typing import Any

from accounts.limits import LIMITS as LIMITS  # the console's templates read it here
from accounts.limits import Limit
from accounts.output import audit_changes as audit_changes  # and the change tables this
from accounts.records import KeyInfo, UsageRow
from frontend.admin.charts import Series, bar_chart, legend
from frontend.admin.operations import status_of_outcome

# Status -> (the words shown, the badge's CSS class). Words, not colour, carry the meaning.
BADGES = {
    "active": ("active", "ok"),
    "not yet valid": ("not yet valid", "wait"),
    "expired": ("expired", "off"),
    "exhausted": ("quota used up", "warn"),
    "revoked": ("revoked", "off"),
}


def badge(status: str) -> tuple[str, str]:
    return BADGES.get(status, (status, "off"))


def moment(value: datetime | None, absent: str = "never") -> str:
    return absent if value is None else value.strftime("%Y-%m-%d %H:%M UTC")


def form_values(info: KeyInfo) -> dict[str, str]:
    """A key's fields as the edit form shows them; sent back unchanged, they change nothing."""
    return {
        "email": info.email,
        "name": info.name,
        "organisation": info.organisation,
        "note": info.note,
        "max_requests": "" if info.max_requests is None else str(info.max_requests),
        "valid_from": window_field(info.valid_from, is_end=False),
        "valid_until": window_field(info.valid_until, is_end=True),
        "services": "" if info.services is None else ", ".join(info.services),
        "keep_texts": "1" if info.keep_texts else "",
    } | {name: "" if value is None else str(value) for name, value in info.limits.items()}


def window_field(moment: datetime | None, is_end: bool) -> str:
    """A window's start or end as the form takes it back: a date alone where the window starts or
    ends with a whole day (an end's date is the last day it covers), else the time, in UTC."""
    if moment is None:
        return ""
    if moment.time() == time.min:
        return (moment - timedelta(days=1) if is_end else moment).date().isoformat()
    return moment.strftime("%Y-%m-%d %H:%M:%S")


def valid_until(moment: datetime | None, absent: str = "never") -> str:
    """A window's end as people read it: the last whole day it covers, or the moment it ends."""
    if moment is None:
        return absent
    if moment.time() == time.min:
        return f"{window_field(moment, is_end=True)} (through that day)"
    return f"{moment.strftime('%Y-%m-%d %H:%M')} UTC (excluded)"


def limit_label(limit: Limit) -> str:
    return limit.name.replace("_", " ").capitalize()


@dataclass(frozen=True)
class Charts:
    """The charts of a usage report, and their legends."""

    requests: str
    requests_legend: str
    tokens: str
    tokens_legend: str
    gpu: str


def daily_charts(chart_id: str, rows: list[UsageRow], days: list[date]) -> Charts:
    """Requests per day (answered, and failed or refused apart: red and hatched, the one colour
    that means failure), tokens per day (prompt and completion) and GPU seconds per day."""
    totals: dict[date, dict[str, float]] = defaultdict(lambda: defaultdict(int))  # counts stay whole
    for row in rows:
        day = totals[row.day]
        day["answered"] += row.requests - row.failures
        day["failed"] += row.failures
        day["prompt"] += row.prompt_tokens
        day["completion"] += row.completion_tokens
        day["gpu"] += row.gpu_seconds

    def values(name: str) -> list[float]:
        return [totals[day][name] if day in totals else 0 for day in days]

    requests = [
        Series("answered", values("answered"), "bar-main"),
        Series("failed or refused", values("failed"), "bar-other", hatched=True),
    ]
    tokens = [
        Series("prompt tokens", values("prompt"), "bar-main"),
        Series("completion tokens", values("completion"), "bar-second"),
    ]
    gpu = [Series("GPU seconds", [round(seconds, 3) for seconds in values("gpu")], "bar-main")]
    return Charts(
        bar_chart(f"{chart_id}-requests", "Requests per day", days, requests),
        legend(f"{chart_id}-requests", requests),
        bar_chart(f"{chart_id}-tokens", "Tokens per day", days, tokens),
        legend(f"{chart_id}-tokens", tokens),
        bar_chart(f"{chart_id}-gpu", "GPU seconds per day", days, gpu),
    )


def per_service(rows: list[UsageRow]) -> list[dict[str, Any]]:
    """Each service's totals over the report, most requests first; ``cost`` None when the service
    has no price per GPU-hour."""
    counted = ("requests", "failures", "prompt_tokens", "completion_tokens", "gpu_seconds")
    services: dict[str, dict[str, Any]] = {}
    for row in rows:
        total = services.setdefault(row.service, {"service": row.service, **dict.fromkeys(counted, 0), "cost": None})
        for name in counted:
            total[name] += getattr(row, name)
        if row.cost is not None:
            total["cost"] = (total["cost"] or 0) + row.cost
    return sorted(services.values(), key=lambda total: (-total["requests"], total["service"]))


def gpu_time(seconds: float) -> str:
    """GPU time to the millisecond under a minute, else in hours, minutes and seconds."""
    if seconds < 60:
        return f"{seconds:.3f} s"
    minutes, rest = divmod(round(seconds), 60)
    hours, minutes = divmod(minutes, 60)
    return f"{hours} h {minutes:02d} min {rest:02d} s" if hours else f"{minutes} min {rest:02d} s"


def cost(value: float | None) -> str:
    return "-" if value is None else f"{value:,.4f}"


def milliseconds(seconds: float | None) -> str:
    return "-" if seconds is None else f"{seconds * 1000:,.0f} ms"


def http_status(outcome: str) -> str:
    status = status_of_outcome(outcome)
    return "-" if status is None else str(status)


def mebibytes(value: Any) -> str:
    return f"{value / 2**20:,.0f} MiB" if isinstance(value, (int, float)) else "-"
