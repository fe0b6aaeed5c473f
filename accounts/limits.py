"""The per-key limits besides the request quota, their bounds, and how each is checked.

``requests_per_minute``, ``tokens_per_minute`` and ``token_budget`` are kept
in the accounts database and judged by the admission statement (see
:mod:`accounts.admission`), so every frontend sees the same counts;
``max_concurrent`` and ``weight`` travel with each request to the broker,
which enforces them (see ``broker/fairqueue.py``). docs/accounts.md says what
each counts and what happens at its edges.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

from accounts.errors import InvalidValue

# A rate window lasts this long, from the first request (or tokens) after the last one ended.
WINDOW_SECONDS = 60.0
MAX_COUNT = 2**31 - 1  # counts are 32-bit integers on PostgreSQL
MAX_TOKENS = 2**62  # token counts are 64-bit
MAX_WEIGHT = 1000  # the broker's bound (broker.protocol.MAX_WEIGHT)


@dataclass(frozen=True)
class Limit:
    """One limit: its bounds and the value a new key gets; one whose default is ``None`` (no limit)
    may be set back to ``None``."""

    name: str
    minimum: int
    maximum: int
    default: int | None
    help: str

    @property
    def optional(self) -> bool:
        return self.default is None

    def check(self, value: object) -> int | None:
        if value is None and self.optional:
            return None
        if isinstance(value, bool) or not isinstance(value, int):
            raise InvalidValue(f"{self.name} must be a whole number (got {value!r})")
        if not self.minimum <= value <= self.maximum:
            raise InvalidValue(f"{self.name} must be {self.minimum} to {self.maximum} (got {value})")
        return value


LIMITS = (
    Limit("requests_per_minute", 1, MAX_COUNT, None, "requests admitted in one minute-long window"),
    Limit("tokens_per_minute", 1, MAX_TOKENS, None, "tokens (prompt + completion) in one minute-long window"),
    Limit("token_budget", 0, MAX_TOKENS, None, "tokens (prompt + completion) the key may use in all"),
    Limit("max_concurrent", 1, MAX_COUNT, None, "requests queued or running at once, across every frontend"),
    Limit("weight", 1, MAX_WEIGHT, 1, "the key's share of a busy service against other keys' (1 by default)"),
)
BY_NAME = {limit.name: limit for limit in LIMITS}
DEFAULTS = {limit.name: limit.default for limit in LIMITS}


def checked(given: Mapping[str, object]) -> dict[str, int | None]:
    """``given`` limits, each within its bounds; an unknown name is an :class:`InvalidValue`."""
    unknown = sorted(set(given) - set(BY_NAME))
    if unknown:
        raise InvalidValue(f"no such limit: {', '.join(unknown)}")
    return {name: BY_NAME[name].check(value) for name, value in given.items()}


def seconds_until_reset(window_start: float | None, now: float) -> float | None:
    """Seconds until a window that began at ``window_start`` (epoch seconds) ends; None when it has."""
    if window_start is None or window_start + WINDOW_SECONDS <= now:
        return None
    return window_start + WINDOW_SECONDS - now
