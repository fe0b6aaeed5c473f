"""The plain values the account store hands out and takes in.

None of these hold a secret: a key is named by its id and its display
prefix only, both safe to log.
"""

from __future__ import annotations

import getpass
import math
import os
import socket
import uuid
from collections.abc import Iterable, Mapping
from dataclasses import asdict, dataclass, field
from datetime import date, datetime
from typing import Any, cast

from accounts import times
from accounts.errors import InvalidValue

MAX_SERVICE_NAME = 100
MAX_OUTCOME = 32
MAX_ENDPOINT = 64
MAX_OWNER_FIELD = 200
MAX_LIMIT = 2**31 - 1  # limits and counts are 32-bit integers on PostgreSQL
MAX_ACTOR_USER = 100
MAX_ACTOR_HOST = 255


def new_admission_id() -> str:
    return uuid.uuid4().hex


@dataclass(frozen=True)
class Admission:
    """One request let in and counted against ``key_id``, or let in again as a replay.

    ``admission_id`` makes :meth:`AccountStore.refund` idempotent: refunding
    the same admission twice gives the request back once.

    ``replayed`` is true when the request came with an idempotency key whose
    first admission was already counted: it was let in without being counted,
    carries the first admission's ``admission_id``, and refunding it gives
    nothing back. ``idempotency_key`` is the client's key (never shown by
    ``repr``), kept so that a refund can forget it.
    """

    key_id: int
    key_prefix: str
    service: str
    admitted_at: datetime
    admission_id: str = field(default_factory=new_admission_id)
    replayed: bool = False
    idempotency_key: str | None = field(default=None, repr=False)
    request_id: str | None = None
    # The key's limits that travel with each request, to the broker or the worker
    # (accounts.limits.TRAVELLING); a limit absent or None is no limit.
    limits: Mapping[str, int | None] = field(default_factory=dict)
    # Whether the key keeps its requests' texts in their usage records.
    keep_texts: bool = False

    def limit(self, name: str) -> int | None:
        return self.limits.get(name)


@dataclass(frozen=True, kw_only=True)
class UsageRecord:
    """One answered (or failed) request, written later in a batch.

    Give ``admission`` (preferred) or ``key_id``; ``service`` defaults to the
    admission's. ``at`` defaults to the moment the record is made. The texts
    are kept only when ``accounts.store_texts`` is on. ``charged`` is false
    for a request that was refunded; a replay is never charged (it was not
    counted), and a record without an admission is kept as charged only if
    it says so.
    """

    admission: Admission | None = None
    key_id: int | None = None
    service: str = ""
    outcome: str = "ok"
    latency_seconds: float = 0.0
    input_chars: int = 0
    input_words: int = 0
    output_chars: int = 0
    output_words: int = 0
    prompt_tokens: int | None = None
    completion_tokens: int | None = None
    # The request's share of its worker's device time, when the worker measures it.
    gpu_seconds: float | None = None
    # From its arrival to its first token, when its worker reports its timing.
    first_token_seconds: float | None = None
    endpoint: str | None = None
    request_text: str | None = None
    output_text: str | None = None
    charged: bool = True
    at: datetime = field(default_factory=times.utcnow)

    def __post_init__(self) -> None:
        if self.admission is None and self.key_id is None:
            raise InvalidValue("a usage record needs an admission or a key_id")
        if self.admission is not None and self.key_id not in (None, self.admission.key_id):
            raise InvalidValue("a usage record's key_id differs from its admission's")
        if not self.resolved_service or len(self.resolved_service) > MAX_SERVICE_NAME:
            raise InvalidValue("a usage record needs a service name of 1 to 100 characters")
        if not self.outcome or len(self.outcome) > MAX_OUTCOME:
            raise InvalidValue("a usage record needs an outcome of 1 to 32 characters")
        counts = (self.input_chars, self.input_words, self.output_chars, self.output_words)
        tokens = (self.prompt_tokens, self.completion_tokens)
        numbers = [*counts, *(t for t in tokens if t is not None)]
        if min(numbers) < 0 or max(numbers) > MAX_LIMIT:
            raise InvalidValue(f"usage counts must be between 0 and {MAX_LIMIT}")
        if self.latency_seconds < 0:
            raise InvalidValue("latency cannot be negative")
        for name in ("gpu_seconds", "first_token_seconds"):
            seconds = getattr(self, name)
            if seconds is not None and not (0 <= seconds < math.inf):
                raise InvalidValue(f"{name} must be a finite number of seconds, not negative")
        if self.endpoint is not None and len(self.endpoint) > MAX_ENDPOINT:
            raise InvalidValue(f"a usage record's endpoint is at most {MAX_ENDPOINT} characters")
        times.as_utc(self.at, "usage time")

    @classmethod
    def from_texts(
        cls, *, request_text: str, output_text: str = "", **fields: Any
    ) -> UsageRecord:
        """A record whose character and word counts are taken from the texts."""
        return cls(
            input_chars=len(request_text),
            input_words=len(request_text.split()),
            output_chars=len(output_text),
            output_words=len(output_text.split()),
            request_text=request_text,
            output_text=output_text,
            **fields,
        )

    @property
    def resolved_key_id(self) -> int:
        key_id = self.admission.key_id if self.admission is not None else self.key_id
        return cast(int, key_id)  # __post_init__ made sure one of them is set

    @property
    def resolved_service(self) -> str:
        if self.service:
            return self.service
        return self.admission.service if self.admission is not None else ""


@dataclass(frozen=True)
class LedgerState:
    """One key's count against its ledger: ``used == charged + open`` always holds
    (``open``: admissions in flight, their records not yet written), and so does
    ``tokens_used == charged_tokens`` (the prompt and completion tokens of its charged records)."""

    used: int
    charged: int
    open: int
    records: int
    tokens_used: int = 0
    charged_tokens: int = 0

    @property
    def balanced(self) -> bool:
        return self.used == self.charged + self.open and self.tokens_used == self.charged_tokens


@dataclass(frozen=True)
class KeyInfo:
    """A read-only view of one key; never holds the secret or its hash.

    The validity window is half-open: valid from ``valid_from`` included to
    ``valid_until`` excluded. ``services`` is ``None`` when every service is
    allowed.
    """

    id: int
    prefix: str
    email: str
    name: str
    organisation: str
    max_requests: int | None
    used: int
    valid_from: datetime | None
    valid_until: datetime | None
    revoked: bool
    revoked_at: datetime | None
    services: tuple[str, ...] | None
    created_at: datetime
    last_used_at: datetime | None
    note: str
    # The tokens charged so far (against token_budget, say).
    tokens_used: int
    # Whether its requests' texts (prompt and answer) are kept in their usage records.
    keep_texts: bool
    # Each limit of accounts.limits.LIMITS by name; None is no limit.
    limits: Mapping[str, int | None]

    @property
    def token_budget(self) -> int | None:
        return self.limits["token_budget"]

    @property
    def remaining(self) -> int | None:
        """Requests left, or ``None`` for an unlimited key."""
        return None if self.max_requests is None else max(0, self.max_requests - self.used)

    @property
    def tokens_remaining(self) -> int | None:
        """Tokens left of the budget, or ``None`` without one."""
        return None if self.token_budget is None else max(0, self.token_budget - self.tokens_used)

    def status(self, now: datetime) -> str:
        """``active``, or the first reason it would be refused for any service."""
        if self.revoked:
            return "revoked"
        if self.valid_from is not None and now < self.valid_from:
            return "not yet valid"
        if self.valid_until is not None and now >= self.valid_until:
            return "expired"
        if self.remaining == 0 or (self.token_budget is not None and self.tokens_used >= self.token_budget):
            return "exhausted"
        return "active"

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready: datetimes as ISO 8601 strings, services as a list or null, each limit
        a field of its own."""
        data = asdict(self)
        for name, value in data.items():
            if isinstance(value, datetime):
                data[name] = value.isoformat()
        data["services"] = None if self.services is None else list(self.services)
        return data | dict(data.pop("limits"))


@dataclass(frozen=True)
class UsageRow:
    """Usage of one service on one UTC day: requests and what they carried.

    ``failures`` counts the requests whose outcome was not ``ok``; ``charged``
    those counted against the key (answered, or refused for the caller's own
    input; the rest were refunded); token sums cover only the requests whose
    algorithm reported tokens, ``gpu_seconds`` those whose worker measured its
    device's time. ``cost`` is that time at the service's price per GPU-hour
    (``accounts.gpu_hour_prices``), None when it has none.
    """

    day: date
    service: str
    requests: int
    failures: int
    charged: int
    input_words: int
    input_chars: int
    output_words: int
    output_chars: int
    prompt_tokens: int
    completion_tokens: int
    gpu_seconds: float = 0.0
    cost: float | None = None

    def to_dict(self) -> dict[str, Any]:
        data = asdict(self)
        data["day"] = self.day.isoformat()
        return data


def check_limit(max_requests: int | None) -> int | None:
    if max_requests is None:
        return None
    if isinstance(max_requests, bool) or not isinstance(max_requests, int):
        raise InvalidValue(f"max_requests must be a whole number (got {max_requests!r})")
    if max_requests < 0:
        raise InvalidValue(f"max_requests cannot be negative (got {max_requests})")
    if max_requests > MAX_LIMIT:
        raise InvalidValue(f"max_requests cannot exceed {MAX_LIMIT} (got {max_requests})")
    return max_requests


def check_owner_field(value: str, what: str) -> str:
    """A name or organisation: trimmed, at most 200 characters."""
    value = value.strip()
    if len(value) > MAX_OWNER_FIELD:
        raise InvalidValue(f"{what} cannot be longer than {MAX_OWNER_FIELD} characters")
    return value


def check_services(services: Iterable[str] | None) -> tuple[str, ...] | None:
    """Sorted, de-duplicated names; ``None`` means every service is allowed."""
    if services is None:
        return None
    if isinstance(services, str):
        raise InvalidValue("services must be a list of names, not one string")
    names = {name.strip() for name in services}
    if not names:
        raise InvalidValue("an allowed-services list needs at least one name (omit it to allow all)")
    if any(not name or len(name) > MAX_SERVICE_NAME for name in names):
        raise InvalidValue("service names must be 1 to 100 characters")
    return tuple(sorted(names))


def check_email(email: str) -> str:
    email = email.strip()
    local, _, domain = email.rpartition("@")
    if not local or not domain or len(email) > 254 or any(c.isspace() for c in email):
        raise InvalidValue(f"invalid email address {email!r}")
    return email


@dataclass(frozen=True)
class Actor:
    """Who made an admin change: an operating-system user, on a host."""

    user: str
    host: str

    def __post_init__(self) -> None:
        if not 0 < len(self.user) <= MAX_ACTOR_USER or not 0 < len(self.host) <= MAX_ACTOR_HOST:
            raise InvalidValue(
                f"an actor needs a user of 1 to {MAX_ACTOR_USER} and a host of 1 to {MAX_ACTOR_HOST} characters"
            )

    @classmethod
    def current(cls) -> Actor:
        """The operating-system user running this process, on this host."""
        try:
            user = getpass.getuser()
        except (OSError, KeyError):  # a user id without a name, as in some containers
            user = f"uid {os.getuid()}"
        return cls(user[:MAX_ACTOR_USER] or "?", socket.gethostname()[:MAX_ACTOR_HOST] or "?")

    def __str__(self) -> str:
        return f"{self.user}@{self.host}"


@dataclass(frozen=True)
class AuditEntry:
    """One admin change to a key, as the audit log keeps it (see :mod:`accounts.audit`).

    ``before`` and ``after`` map the fields the change touched to their old and
    new values, JSON-ready; ``before`` is None for a creation (``after`` holds
    every field), ``after`` None for a deletion. A change that changed nothing,
    such as revoking a revoked key, has both empty.
    """

    id: int
    at: datetime
    key_id: int
    action: str
    actor: Actor
    before: dict[str, Any] | None
    after: dict[str, Any] | None

    def to_dict(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "at": self.at.isoformat(),
            "key_id": self.key_id,
            "action": self.action,
            "user": self.actor.user,
            "host": self.actor.host,
            "before": self.before,
            "after": self.after,
        }


@dataclass(frozen=True)
class KeyPage:
    """One page of a key search: the keys on it, in id order, and how many match in all."""

    keys: list[KeyInfo]
    total: int


@dataclass(frozen=True)
class KeyUsage:
    """One key's usage over a report's days: for the keys that used the most."""

    key_id: int
    prefix: str
    email: str
    requests: int
    failures: int
    prompt_tokens: int
    completion_tokens: int
    gpu_seconds: float = 0.0
    # The cost of its GPU time over the services that have a price (None: none has).
    cost: float | None = None

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass(frozen=True)
class RequestEntry:
    """One admitted request as the requests view lists it (see :mod:`accounts.request_log`)."""

    id: int
    at: datetime
    key_id: int
    key_prefix: str
    service: str
    endpoint: str | None
    outcome: str
    charged: bool
    prompt_tokens: int | None
    completion_tokens: int | None
    gpu_seconds: float | None
    latency_seconds: float
    first_token_seconds: float | None
    request_id: str | None
    # Kept only for a key that keeps its texts, or when accounts.store_texts keeps every key's.
    request_text: str | None = None
    output_text: str | None = None

    def to_dict(self) -> dict[str, Any]:
        return asdict(self) | {"at": self.at.isoformat()}


@dataclass(frozen=True)
class HourlyLatency:
    """One service's latency and time to first token over one UTC hour: medians and 99th
    percentiles of its answered requests (first token: of those whose worker timed it)."""

    hour: datetime
    service: str
    requests: int
    latency_p50: float
    latency_p99: float
    first_token_p50: float | None
    first_token_p99: float | None


@dataclass(frozen=True)
class AdminTokenInfo:
    """A read-only view of one admin token; never holds the secret or its hash."""

    id: int
    prefix: str
    name: str
    created_at: datetime
    last_used_at: datetime | None
    revoked: bool
    revoked_at: datetime | None

    def to_dict(self) -> dict[str, Any]:
        data = asdict(self)
        for name, value in data.items():
            if isinstance(value, datetime):
                data[name] = value.isoformat()
        return data


def check_admin_name(name: str) -> str:
    """Whose an admin token is: 1 to 100 characters, trimmed."""
    name = name.strip()
    if not 0 < len(name) <= MAX_ACTOR_USER:
        raise InvalidValue(f"an admin token needs a name of 1 to {MAX_ACTOR_USER} characters")
    return name
