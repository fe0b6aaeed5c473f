"""The per-key limits besides the request quota: one declaration each, from which come the
key's column, the admin command's options and output, the admin API's fields and the console's
form and display.

Each is judged in one place, which :attr:`Limit.judged_by` names:

* ``database``: by the admission statement (:data:`accounts.admission.COUNTED_RULES`), so
  every frontend sees the same counts (``requests_per_minute``, ``tokens_per_minute``,
  ``token_budget``);
* ``broker``: the value travels with each admitted request to the broker, which enforces it
  (``max_concurrent``, ``weight``: ``broker/fairqueue.py``);
* ``worker``: the value travels in the request to the worker, which enforces it once it has
  read the request (``max_prompt_tokens``: ``gpuworker/models/generation.py``).

docs/accounts.md says what each counts and what happens at its edges.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Literal

from accounts.errors import InvalidValue

# A rate window lasts this long, from the first request (or tokens) after the last one ended.
WINDOW_SECONDS = 60.0
MAX_COUNT = 2**31 - 1  # counts are 32-bit integers on PostgreSQL
MAX_TOKENS = 2**62  # token counts are 64-bit
MAX_WEIGHT = 1000  # the broker's bound (broker.protocol.MAX_WEIGHT)


@dataclass(frozen=True)
class Limit:
    """One limit: its bounds and the value a new key gets; one whose default is ``None`` (no limit)
    may be set back to ``None``. ``shown`` is how a value reads (``{}`` is the value)."""

    name: str
    minimum: int
    maximum: int
    default: int | None
    help: str
    shown: str
    judged_by: Literal["database", "broker", "worker"]

    @property
    def optional(self) -> bool:
        return self.default is None

    @property
    def wide(self) -> bool:
        """Whether its values need 64 bits."""
        return self.maximum > MAX_COUNT

    @property
    def travels(self) -> bool:
        """Whether its value goes with each admitted request, to the broker or to the worker."""
        return self.judged_by != "database"

    def describe(self, value: int | None) -> str:
        return "unlimited" if value is None else self.shown.format(value)

    def check(self, value: object) -> int | None:
        if value is None and self.optional:
            return None
        if isinstance(value, bool) or not isinstance(value, int):
            raise InvalidValue(f"{self.name} must be a whole number (got {value!r})")
        if not self.minimum <= value <= self.maximum:
            raise InvalidValue(f"{self.name} must be {self.minimum} to {self.maximum} (got {value})")
        return value


LIMITS = (
    Limit("requests_per_minute", 1, MAX_COUNT, None, "requests admitted in one minute-long window",
          "{} requests a minute", "database"),
    Limit("tokens_per_minute", 1, MAX_TOKENS, None, "tokens (prompt + completion) in one minute-long window",
          "{} tokens a minute", "database"),
    Limit("token_budget", 0, MAX_TOKENS, None, "tokens (prompt + completion) the key may use in all",
          "{} tokens in all", "database"),
    Limit("max_concurrent", 1, MAX_COUNT, None, "requests queued or running at once, across every frontend",
          "{} at once", "broker"),
    Limit("weight", 1, MAX_WEIGHT, 1, "the key's share of a busy service against other keys' (1 by default)",
          "weight {}", "broker"),
    Limit("max_prompt_tokens", 1, MAX_TOKENS, None, "prompt tokens one request may send",
          "{} prompt tokens a request", "worker"),
)
BY_NAME = {limit.name: limit for limit in LIMITS}
DEFAULTS = {limit.name: limit.default for limit in LIMITS}
TRAVELLING = tuple(limit.name for limit in LIMITS if limit.travels)
JUDGED_BY_WORKERS = tuple(limit.name for limit in LIMITS if limit.judged_by == "worker")


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
