"""The admin API's request and response bodies, as typed models.

Requests are validated by them (an error names the field at fault) and
``/openapi.json`` describes ``/admin/api/`` from them. A key is shown as
``llmapi accounts show --json`` shows it; usage rows as ``llmapi accounts
usage --json`` does.
"""

from __future__ import annotations

from datetime import datetime
from typing import TYPE_CHECKING, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, create_model, model_validator

from accounts import limits, times
from accounts.records import MAX_LIMIT, MAX_OWNER_FIELD, KeyUsage, UsageRow

Status = Literal["active", "not yet valid", "expired", "exhausted", "revoked"]
MAX_NOTE = 10_000
WHEN = (
    "UTC; a date alone (YYYY-MM-DD) means that day's first moment for `valid_from` and the whole day "
    "for `valid_until`, as on the command line; a time without an offset is UTC"
)


class _Body(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True)


Limit = Field(None, ge=0, le=MAX_LIMIT, description="Requests allowed in all; null: unlimited")
Services = Field(None, min_length=1, description="Services the key may use; null: every service")
KeepTexts = Field(False, description="Keep its requests' texts (prompt and answer) in their usage records")


def _limit_fields(with_bounds: bool) -> dict[str, Any]:
    """A field per limit of accounts.limits: as a body takes it (bounded, with its default), or as
    a view shows it."""
    return {
        limit.name: (
            int | None if limit.optional else int,
            Field(limit.default, ge=limit.minimum, le=limit.maximum, description=limit.help.capitalize())
            if with_bounds
            else Field(description=limit.help.capitalize()),
        )
        for limit in limits.LIMITS
    }


# The limits besides the quota (see docs/accounts.md; null: no limit), as fields of the models
# below: made from their declarations, which a type checker cannot read.
if TYPE_CHECKING:
    _KeyLimits = _Body
    _KeyLimitsView = BaseModel
else:
    _KeyLimits = create_model("_KeyLimits", __base__=_Body, **_limit_fields(with_bounds=True))
    _KeyLimitsView = create_model("_KeyLimitsView", **_limit_fields(with_bounds=False))


class KeyCreate(_KeyLimits):
    """A new key; only `email` is required."""

    email: str = Field(max_length=254)
    name: str = Field("", max_length=MAX_OWNER_FIELD)
    organisation: str = Field("", max_length=MAX_OWNER_FIELD)
    note: str = Field("", max_length=MAX_NOTE)
    keep_texts: bool = KeepTexts
    max_requests: int | None = Limit
    valid_from: str | None = Field(None, description=f"First valid moment; {WHEN}")
    valid_until: str | None = Field(None, description=f"End of validity (excluded); {WHEN}")
    services: list[str] | None = Services

    def fields(self) -> dict[str, Any]:
        """The store's ``create_key`` arguments (dates parsed as the command line parses them)."""
        return {**self.model_dump(exclude={"valid_from", "valid_until"}), **_window(self, self.model_fields_set)}


class KeyUpdate(_KeyLimits):
    """The fields to change; a field left out is kept, and null clears a limit, a window edge or a
    service list (unlimited, open-ended, every service)."""

    email: str | None = Field(None, max_length=254)
    name: str | None = Field(None, max_length=MAX_OWNER_FIELD)
    organisation: str | None = Field(None, max_length=MAX_OWNER_FIELD)
    note: str | None = Field(None, max_length=MAX_NOTE)
    keep_texts: bool = KeepTexts
    max_requests: int | None = Limit
    valid_from: str | None = Field(None, description=f"First valid moment; {WHEN}")
    valid_until: str | None = Field(None, description=f"End of validity (excluded); {WHEN}")
    services: list[str] | None = Services
    reset_used: bool = Field(False, description="Set the count of used requests to 0")

    @model_validator(mode="after")
    def _email_not_cleared(self) -> KeyUpdate:
        if "email" in self.model_fields_set and self.email is None:
            raise ValueError("'email' cannot be null: every key has an owner")
        return self

    def changes(self) -> dict[str, Any]:
        """The store's ``update_key`` arguments for the fields given; text fields given as null become empty."""
        given = self.model_fields_set - {"reset_used", "valid_from", "valid_until"}
        changes = {name: getattr(self, name) for name in given}
        for name in ("name", "organisation", "note"):
            if name in changes and changes[name] is None:
                changes[name] = ""
        return {**changes, **_window(self, self.model_fields_set), "reset_used": self.reset_used}


def _window(body: KeyCreate | KeyUpdate, given: set[str]) -> dict[str, datetime | None]:
    parsed: dict[str, datetime | None] = {}
    for name, parse in (("valid_from", times.parse_window_start), ("valid_until", times.parse_window_end)):
        if name in given:
            text = getattr(body, name)
            parsed[name] = None if text is None else parse(text)
    return parsed


class KeyView(_KeyLimitsView):
    id: int
    prefix: str = Field(description="The secret's first characters, to recognise it; never the secret")
    status: Status
    email: str
    name: str
    organisation: str
    max_requests: int | None
    used: int
    remaining: int | None = Field(description="Requests left; null when unlimited")
    valid_from: datetime | None
    valid_until: datetime | None = Field(description="End of validity, excluded")
    revoked: bool
    revoked_at: datetime | None
    services: list[str] | None = Field(description="null: every service")
    created_at: datetime
    last_used_at: datetime | None
    note: str
    tokens_used: int = Field(description="Tokens (prompt + completion) of the key's charged requests")
    keep_texts: bool = KeepTexts


class KeyAnswer(BaseModel):
    key: KeyView
    request_id: str


class KeyPageAnswer(BaseModel):
    keys: list[KeyView]
    total: int = Field(description="Keys matching in all, on every page")
    limit: int
    offset: int
    request_id: str


class KeySecretAnswer(BaseModel):
    key: KeyView
    secret: str = Field(description="The key's secret: shown in this answer only, never stored")
    request_id: str


class UsageAnswer(BaseModel):
    usage: list[UsageRow] = Field(description="Per UTC day and service, oldest first, as `accounts usage --json`")
    request_id: str


class RequestView(BaseModel):
    id: int
    at: datetime
    key_id: int
    key_prefix: str
    service: str
    endpoint: str | None = Field(description="The API path the request was sent to")
    outcome: str = Field(description="How it ended: ok, or the error code it failed with")
    status: int | None = Field(description="The HTTP status it was answered with (499: the client left)")
    charged: bool
    prompt_tokens: int | None
    completion_tokens: int | None
    gpu_seconds: float | None = Field(description="Its share of its worker's device time")
    latency_seconds: float
    first_token_seconds: float | None
    request_id: str | None
    request_text: str | None = Field(description="Kept only for a key that keeps its texts")
    output_text: str | None = Field(description="Kept only for a key that keeps its texts")


class RequestsAnswer(BaseModel):
    requests: list[RequestView] = Field(description="Admitted requests, newest first")
    request_id: str


class TopKeysAnswer(BaseModel):
    keys: list[KeyUsage] = Field(description="The keys with the most requests, most first")
    request_id: str


class AuditEntryView(BaseModel):
    id: int
    at: datetime
    key_id: int
    action: Literal["create", "update", "rotate", "revoke", "delete"]
    user: str = Field(description="Who: an operating-system user, or an admin token's name for the console")
    host: str = Field(description="Where from: a host name, or the client address for the console")
    before: dict[str, Any] | None
    after: dict[str, Any] | None


class AuditAnswer(BaseModel):
    entries: list[AuditEntryView]
    request_id: str


class WorkerView(BaseModel):
    model_config = ConfigDict(extra="allow")

    id: str
    state: Literal["idle", "busy"]
    capacity: int = Field(description="Tasks the worker takes at once")
    tasks: int = Field(description="Tasks it has now")
    served: int = Field(description="Tasks it has answered")
    last_seen_seconds: float
    device: str | None = None
    model: str | None = None
    pid: int | None = None
    max_rss_bytes: int | None = None
    gpu_memory_bytes: int | None = None


class ServiceView(BaseModel):
    model_config = ConfigDict(extra="allow")

    idle: int
    busy: int
    queued: int = Field(description="Requests waiting in the service's queue")
    workers: list[WorkerView]


class ClusterAnswer(BaseModel):
    services: dict[str, ServiceView]
    counters: dict[str, float]
    request_id: str


MODELS: list[type[BaseModel]] = [
    KeyCreate,
    KeyUpdate,
    KeyAnswer,
    KeyPageAnswer,
    KeySecretAnswer,
    UsageAnswer,
    TopKeysAnswer,
    RequestsAnswer,
    AuditAnswer,
    ClusterAnswer,
]
