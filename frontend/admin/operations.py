"""What the console and the admin API do: the account store's own calls, off the event loop,
and the broker's status.

The pages and the API both come here, and here goes straight to
:class:`accounts.store.AccountStore`, the store ``llmapi accounts`` uses:
one implementation of every change, each recorded in the audit log with
the admin token's name and the client's address as its actor.
"""

from __future__ import annotations

from datetime import date, datetime, timedelta
from typing import Any

from accounts import times
from accounts.output import key_json
from accounts.records import (
    Actor,
    AdminTokenInfo,
    AuditEntry,
    HourlyLatency,
    KeyInfo,
    KeyPage,
    KeyUsage,
    RequestEntry,
    UsageRow,
)
from accounts.store import AccountStore
from broker.errors import BusError
from frontend import billing, errors
from frontend.admin.schemas import KeyCreate, KeyUpdate
from frontend.gateway import Gateway
from frontend.handlers.base import CLIENT_CLOSED_REQUEST

CHART_DAYS = 30


def console_actor(token: AdminTokenInfo, address: str) -> Actor:
    """Who the audit log names for a change made with ``token`` from ``address``."""
    return Actor(f"{token.name} (admin token {token.id})"[:100], (address or "?")[:255])


def key_view(info: KeyInfo) -> dict[str, Any]:
    """A key as ``llmapi accounts show --json`` prints it: its fields, status and remaining requests."""
    return key_json(info, times.utcnow())


def status_of_outcome(outcome: str) -> int | None:
    """The HTTP status a request that ended with ``outcome`` was answered with (None: not known,
    an outcome of an older version, say)."""
    if outcome == billing.OK:
        return 200
    if outcome == billing.CLIENT_LEFT:
        return CLIENT_CLOSED_REQUEST
    code = errors.CODES.get(outcome)
    return None if code is None else code.status


def last_days(today: date, count: int = CHART_DAYS) -> list[date]:
    """The ``count`` days up to ``today``, oldest first."""
    return days_between(today - timedelta(days=count - 1), today)


def days_between(first: date, last: date) -> list[date]:
    """Every day from ``first`` to ``last``, both included."""
    return [first + timedelta(days=n) for n in range((last - first).days + 1)]


class AdminOperations:
    """The admin's operations on ``gateway``'s store and broker connection."""

    def __init__(self, gateway: Gateway) -> None:
        self.gateway = gateway

    @property
    def store(self) -> AccountStore:
        return self.gateway.store

    async def authenticate(self, secret: str) -> AdminTokenInfo:
        return await self.gateway.accounts(lambda: self.store.authenticate_admin(secret))

    async def open_console_session(self, token_id: int, lifetime: float) -> str:
        return await self.gateway.accounts(lambda: self.store.open_console_session(token_id, lifetime))

    async def console_session(self, session: str) -> AdminTokenInfo:
        return await self.gateway.accounts(lambda: self.store.console_session(session))

    async def end_console_session(self, session: str) -> None:
        await self.gateway.accounts(lambda: self.store.end_console_session(session))

    async def find_keys(self, search: str | None, status: str | None, limit: int, offset: int) -> KeyPage:
        return await self.gateway.accounts(lambda: self.store.find_keys(search, status, limit, offset))

    async def key(self, key_id: int) -> KeyInfo:
        return await self.gateway.accounts(lambda: self.store.get_key(key_id))

    async def create_key(self, request: KeyCreate, actor: Actor) -> tuple[KeyInfo, str]:
        return await self.gateway.accounts(lambda: self.store.create_key(**request.fields(), actor=actor))

    async def update_key(self, key_id: int, request: KeyUpdate, actor: Actor) -> KeyInfo:
        return await self.gateway.accounts(lambda: self.store.update_key(key_id, **request.changes(), actor=actor))

    async def revoke_key(self, key_id: int, actor: Actor) -> KeyInfo:
        return await self.gateway.accounts(lambda: self.store.revoke_key(key_id, actor=actor))

    async def rotate_key(self, key_id: int, actor: Actor) -> tuple[KeyInfo, str]:
        return await self.gateway.accounts(lambda: self.store.rotate_key(key_id, actor=actor))

    async def usage(
        self, key_id: int | None, since: date | None, until: date | None, service: str | None
    ) -> list[UsageRow]:
        """Usage per day and service, as ``llmapi accounts usage``: an unknown key is a 404, not an empty report."""

        def report() -> list[UsageRow]:
            if key_id is not None:
                self.store.get_key(key_id)
            return self.store.usage_report(key_id=key_id, since=since, until=until, service=service)

        return await self.gateway.accounts(report)

    async def top_keys(self, since: date | None, until: date | None, service: str | None, limit: int) -> list[KeyUsage]:
        return await self.gateway.accounts(lambda: self.store.usage_by_key(since, until, service, limit))

    async def requests(
        self, key_id: int | None, outcome: str | None, since: datetime | None, until: datetime | None,
        limit: int, offset: int,
    ) -> list[RequestEntry]:
        return await self.gateway.accounts(
            lambda: self.store.find_requests(key_id, outcome, since, until, limit, offset)
        )

    async def latency(self, since: datetime, service: str | None) -> list[HourlyLatency]:
        return await self.gateway.accounts(lambda: self.store.latency_per_hour(since, service))

    async def admin_tokens(self) -> list[AdminTokenInfo]:
        return await self.gateway.accounts(self.store.list_admin_tokens)

    async def create_admin_token(self, name: str) -> tuple[AdminTokenInfo, str]:
        return await self.gateway.accounts(lambda: self.store.create_admin_token(name))

    async def revoke_admin_token(self, token_id: int) -> AdminTokenInfo:
        return await self.gateway.accounts(lambda: self.store.revoke_admin_token(token_id))

    async def audit(self, key_id: int | None, since: date | None) -> list[AuditEntry]:
        start = None if since is None else times.start_of_day(since)
        return await self.gateway.accounts(lambda: self.store.audit_log(key_id=key_id, since=start))

    async def cluster(self) -> dict[str, Any]:
        """The broker's status: services, their workers and queues, and its counters."""
        try:
            return await self.gateway.bus.status()
        except BusError as error:
            raise errors.from_bus(error) from None
