"""The account store: keys, admission, refunds and usage, on SQLite or PostgreSQL.

Synchronous and thread-safe: the HTTP frontend calls it from a thread pool.
Every method that touches the database raises :class:`DatabaseUnavailable`
when the database cannot answer, never a driver exception.
"""

from __future__ import annotations

import enum
import functools
import itertools
import time
from collections import defaultdict
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from datetime import date, datetime, timedelta
from decimal import Decimal
from typing import Any, cast

import structlog
from pydantic import ValidationError
from sqlalchemy import (
    Connection,
    Engine,
    Float,
    RowMapping,
    Select,
    case,
    delete,
    exc,
    func,
    insert,
    literal,
    or_,
    select,
    update,
)
from sqlalchemy.sql import ColumnElement

from accounts import (
    admins,
    audit,
    idempotency,
    key_brake,
    key_search,
    keys,
    ledger,
    limits,
    records,
    request_log,
    responses,
    times,
)
from accounts import admission as rules
from accounts.database import build_engine, database_errors, describe_url
from accounts.errors import (
    QUOTA_EXHAUSTED,
    REVOKED,
    UNKNOWN_KEY,
    AccountsError,
    AdmissionDenied,
    DatabaseUnavailable,
    IdempotencyKeyReused,
    InvalidValue,
    KeyNotFound,
    StoreClosed,
)
from accounts.fast_admission import FastAdmission
from accounts.key_brake import BrakePolicy
from accounts.models import ApiKey, KeyFailure, KeyService, OpenAdmission, UsageEntry, limit_column
from accounts.records import (
    Actor,
    AdminTokenInfo,
    Admission,
    AuditEntry,
    HourlyLatency,
    KeyInfo,
    KeyPage,
    KeyUsage,
    LedgerState,
    RequestEntry,
    UsageRecord,
    UsageRow,
)
from accounts.usage import Row, UsageBuffer
from config.settings import AccountsSettings

__all__ = ["UNCHANGED", "AccountStore", "Actor", "Admission", "AuditEntry", "KeyInfo", "UsageRecord", "UsageRow"]

log = structlog.get_logger(__name__)

# Rounds of "update refused, state looks fine" before giving up (refunds racing the quota edge).
_ADMIT_ATTEMPTS = 3

# Every this many idempotency keys claimed (per store), expired claims are
# purged, at most _PURGE_BATCH of them: twice as many as were claimed, so
# purging keeps up with any rate while no purge costs more than a few ms.
_PURGE_EVERY = 100
_PURGE_BATCH = 2 * _PURGE_EVERY


class _AlreadyClaimed(Exception):
    """Raised inside an admission's transaction to roll its count back: the pair is taken."""


class _Unchanged(enum.Enum):
    UNCHANGED = "unchanged"


UNCHANGED = _Unchanged.UNCHANGED
"""Default of :meth:`AccountStore.update_key` arguments: leave the field as it is."""

_KEY_COLUMNS = (
    ApiKey.id,
    ApiKey.prefix,
    ApiKey.email,
    ApiKey.name,
    ApiKey.organisation,
    ApiKey.max_requests,
    ApiKey.used,
    ApiKey.valid_from,
    ApiKey.valid_until,
    ApiKey.revoked,
    ApiKey.revoked_at,
    ApiKey.created_at,
    ApiKey.last_used_at,
    ApiKey.note,
    ApiKey.tokens_used,
    ApiKey.keep_texts,
    *(limit_column(name) for name in limits.BY_NAME),
)


@dataclass(frozen=True)
class AdmissionAsked:
    """What :meth:`AccountStore.admit` takes, for :meth:`AccountStore.admit_many`."""

    secret: str = field(repr=False)
    service: str
    idempotency_key: str | None = field(default=None, repr=False)
    request_id: str | None = None
    request_hash: str | None = None

    def fields(self) -> dict[str, Any]:
        return {
            "secret": self.secret,
            "service": self.service,
            "idempotency_key": self.idempotency_key,
            "request_id": self.request_id,
            "request_hash": self.request_hash,
        }


def _outcome(admit: Callable[[], Admission]) -> Admission | AccountsError:
    """``admit()``'s admission, or the accounts error it raised."""
    try:
        return admit()
    except AccountsError as error:
        return error


@dataclass(frozen=True)
class _Asked:
    """One admission asked for: the key's hash, the service, when, and what identifies the request
    (the frontend's request id; a client's idempotency key and a digest of what it carries)."""

    secret_hash: str
    service: str
    now: datetime
    request_id: str | None = None
    idempotency_key: str | None = field(default=None, repr=False)
    request_hash: str | None = None

    def admission(self, admission_id: str, row: Sequence[Any]) -> Admission:
        """The admission of this request, from the row its count returned: the key's id, prefix and
        whether it keeps texts, then the values of accounts.limits.TRAVELLING."""
        key_id, prefix, keep_texts, *travelling = row
        return Admission(
            key_id,
            prefix,
            self.service,
            self.now,
            admission_id,
            idempotency_key=self.idempotency_key,
            request_id=self.request_id,
            limits=dict(zip(limits.TRAVELLING, travelling, strict=True)),
            keep_texts=bool(keep_texts),
        )


class AccountStore:
    """API keys, exact quotas, validity windows and usage records in one database.

    Parameters:
        settings: the ``[accounts]`` section: ``database_url`` (SQLite file or
            PostgreSQL), ``store_texts`` (keep request and output texts in
            usage records), ``usage_flush_interval`` and ``usage_buffer_limit``
            (when buffered usage is written), ``usage_backlog_limit`` (usage
            kept while the database is down), ``busy_timeout`` (SQLite lock
            wait), ``connect_timeout`` (PostgreSQL) and
            ``idempotency_retention`` (seconds a client's idempotency key
            makes retries replays).
        create_database: whether a SQLite file that does not exist may be
            created; when false, a missing file is a :class:`SchemaNotReady`
            at once (commands that only read must not leave an empty file).

    Building a store opens no connection; :meth:`migrate` creates or upgrades
    the schema. Call :meth:`close` on shutdown so buffered usage is written.

    Every admin change (:meth:`create_key`, :meth:`update_key`,
    :meth:`revoke_key`, :meth:`rotate_key`) writes its audit record in its own
    transaction, naming its ``actor`` (by default the operating-system user
    running this process, on this host); :meth:`audit_log` reads them.
    """

    def __init__(self, settings: AccountsSettings, create_database: bool = True) -> None:
        self._settings = settings
        self._engine = build_engine(settings, create=create_database)
        self._usage = UsageBuffer(
            self._write_usage,
            flush_interval=settings.usage_flush_interval,
            buffer_limit=settings.usage_buffer_limit,
            backlog_limit=settings.usage_backlog_limit,
        )
        self._admit = rules.admit_statement()
        self._open = rules.open_statement()
        self._fast_admit = FastAdmission(self._engine)
        self._key_state = rules.state_query()
        self._key_services = rules.services_query()
        self._claim = idempotency.claim_statement(self._engine.dialect.name)
        self._live_claim = idempotency.live_claim_query()
        self._release = idempotency.release_statement()
        self._purge = idempotency.purge_statement()
        self._retention = timedelta(seconds=settings.idempotency_retention)
        self._claims = itertools.count(1)  # claims made by this store, to pace purges
        self._texts_forgotten_before: date | None = None  # no record before this day keeps texts
        self._key_failures = itertools.count(1)  # failed key checks counted by this store, likewise
        self._saved_responses = itertools.count(1)  # responses kept by this store, likewise
        self._closed = False

    @classmethod
    def from_url(cls, url: str, **overrides: Any) -> AccountStore:
        """A store for ``url``; ``overrides`` are other ``AccountsSettings`` fields."""
        try:
            settings = AccountsSettings.model_validate({"database_url": url, **overrides})
        except ValidationError as error:
            raise InvalidValue(f"invalid accounts settings: {error}") from None
        return cls(settings)

    @property
    def engine(self) -> Engine:
        return self._engine

    @property
    def useful_threads(self) -> int:
        """How many threads gain from calling the store at once: SQLite takes one
        writer at a time, so more threads would only wait on its lock."""
        return 1 if self._engine.dialect.name == "sqlite" else 8

    @property
    def usage_buffer(self) -> UsageBuffer:
        return self._usage

    def __enter__(self) -> AccountStore:
        return self

    def __exit__(self, *_exc: object) -> None:
        self.close()

    # -- schema -----------------------------------------------------------

    def migrate(self) -> None:
        """Create the schema in an empty database, or upgrade an older one; idempotent."""
        from accounts import schema  # alembic is only needed here

        with database_errors():
            schema.upgrade(self._engine)
        log.info("accounts_migrated", database=describe_url(self._engine))

    def schema_revision(self) -> str | None:
        """The migration the database is at (None before :meth:`migrate`)."""
        from accounts import schema

        with database_errors():
            return schema.current_revision(self._engine)

    # -- keys -------------------------------------------------------------

    def create_key(
        self,
        *,
        email: str,
        name: str = "",
        organisation: str = "",
        max_requests: int | None = None,
        valid_from: datetime | None = None,
        valid_until: datetime | None = None,
        services: Iterable[str] | None = None,
        note: str = "",
        keep_texts: bool = False,
        actor: Actor | None = None,
        **key_limits: int | None,
    ) -> tuple[KeyInfo, str]:
        """A new key and its secret. The secret is not kept: show it once, now.

        ``max_requests`` None means unlimited; ``services`` None means every
        service; the window is ``valid_from`` included to ``valid_until`` excluded.
        ``key_limits`` sets any of :data:`accounts.limits.LIMITS` (the rest get their defaults).
        """
        valid_from = times.optional_utc(valid_from, "valid_from")
        valid_until = times.optional_utc(valid_until, "valid_until")
        times.check_window(valid_from, valid_until)
        allowed = records.check_services(services)
        secret = keys.new_secret()
        created_at = times.utcnow()
        values = {
            "secret_hash": keys.hash_secret(secret),
            "prefix": keys.display_prefix(secret),
            "email": records.check_email(email),
            "name": records.check_owner_field(name, "name"),
            "organisation": records.check_owner_field(organisation, "organisation"),
            "max_requests": records.check_limit(max_requests),
            "used": 0,
            "valid_from": valid_from,
            "valid_until": valid_until,
            "revoked": False,
            "created_at": created_at,
            "note": note,
            "keep_texts": _flag(keep_texts, "keep_texts"),
            **limits.DEFAULTS,
            **limits.checked(key_limits),
        }
        actor = _actor(actor)
        with database_errors(), self._engine.begin() as conn:
            key_id = conn.execute(insert(ApiKey).values(values).returning(ApiKey.id)).scalar_one()
            _replace_services(conn, key_id, allowed)
            info = _load_key(conn, key_id)
            audit.record(conn, audit.CREATE, actor, created_at, None, info)
        log.info("key_created", key_id=key_id, key_prefix=info.prefix)
        return info, secret

    def get_key(self, key_id: int) -> KeyInfo:
        with database_errors(), self._engine.begin() as conn:
            return _load_key(conn, key_id)

    def list_keys(self, *, email: str | None = None, include_revoked: bool = True) -> list[KeyInfo]:
        """Keys in id order, optionally of one owner and without revoked ones."""
        conditions: list[ColumnElement[bool]] = []
        if email is not None:
            conditions.append(ApiKey.email == email.strip())
        if not include_revoked:
            conditions.append(ApiKey.revoked.is_(False))
        with database_errors(), self._engine.begin() as conn:
            return _load_keys(conn, conditions)

    def find_keys(
        self,
        search: str | None = None,
        status: str | None = None,
        limit: int = 50,
        offset: int = 0,
        now: datetime | None = None,
    ) -> KeyPage:
        """A page of keys in id order: those whose email, name, organisation, prefix or note
        holds ``search`` (any case; digits alone name the id), of ``status`` at ``now``
        (one of :data:`accounts.key_search.STATUSES`), skipping ``offset``."""
        now = times.utcnow() if now is None else times.as_utc(now, "now")
        key_search.check_page(limit, offset)
        conditions = key_search.conditions(search, status, now)
        with database_errors(), self._engine.begin() as conn:
            total = conn.execute(select(func.count()).select_from(ApiKey).where(*conditions)).scalar_one()
            return KeyPage(_load_keys(conn, conditions, limit=limit, offset=offset), total)

    def update_key(
        self,
        key_id: int,
        *,
        email: str | _Unchanged = UNCHANGED,
        name: str | _Unchanged = UNCHANGED,
        organisation: str | _Unchanged = UNCHANGED,
        max_requests: int | _Unchanged | None = UNCHANGED,
        valid_from: datetime | _Unchanged | None = UNCHANGED,
        valid_until: datetime | _Unchanged | None = UNCHANGED,
        services: Iterable[str] | _Unchanged | None = UNCHANGED,
        note: str | _Unchanged = UNCHANGED,
        keep_texts: bool | _Unchanged = UNCHANGED,
        reset_used: bool = False,
        actor: Actor | None = None,
        **key_limits: int | _Unchanged | None,
    ) -> KeyInfo:
        """Change some fields of a key; ``None`` clears a limit, a window edge or
        a service list. The resulting window must still end after it starts.
        ``key_limits`` changes any of :data:`accounts.limits.LIMITS`."""
        values = _checked_changes(
            email=email,
            name=name,
            organisation=organisation,
            max_requests=max_requests,
            valid_from=valid_from,
            valid_until=valid_until,
            note=note,
            keep_texts=keep_texts,
        ) | limits.checked({name: value for name, value in key_limits.items() if value is not UNCHANGED})
        if reset_used:
            values["used"] = 0
        allowed = UNCHANGED if services is UNCHANGED else records.check_services(services)
        actor = _actor(actor)
        with database_errors(), self._engine.begin() as conn:
            current = _load_key(conn, key_id, for_update=True)
            times.check_window(
                values.get("valid_from", current.valid_from),
                values.get("valid_until", current.valid_until),
            )
            if values:
                conn.execute(update(ApiKey).where(ApiKey.id == key_id).values(values))
            if allowed is not UNCHANGED:
                _replace_services(conn, key_id, allowed)
            info = _load_key(conn, key_id)
            audit.record(conn, audit.UPDATE, actor, times.utcnow(), current, info)
        changed = sorted(values) + ([] if allowed is UNCHANGED else ["services"])
        log.info("key_updated", key_id=key_id, key_prefix=info.prefix, fields=changed)
        return info

    def revoke_key(self, key_id: int, actor: Actor | None = None) -> KeyInfo:
        """Refuse the key from now on (idempotent: the first revocation time is kept)."""
        actor = _actor(actor)
        now = times.utcnow()
        with database_errors(), self._engine.begin() as conn:
            current = _load_key(conn, key_id, for_update=True)
            conn.execute(
                update(ApiKey)
                .where(ApiKey.id == key_id, ApiKey.revoked.is_(False))
                .values(revoked=True, revoked_at=now)
            )
            info = _load_key(conn, key_id)
            audit.record(conn, audit.REVOKE, actor, now, current, info)
        log.info("key_revoked", key_id=key_id, key_prefix=info.prefix)
        return info

    def rotate_key(self, key_id: int, actor: Actor | None = None) -> tuple[KeyInfo, str]:
        """A new secret for the same record; the old secret stops working at once."""
        secret = keys.new_secret()
        actor = _actor(actor)
        with database_errors(), self._engine.begin() as conn:
            current = _load_key(conn, key_id, for_update=True)
            conn.execute(
                update(ApiKey)
                .where(ApiKey.id == key_id)
                .values(secret_hash=keys.hash_secret(secret), prefix=keys.display_prefix(secret))
            )
            info = _load_key(conn, key_id)
            audit.record(conn, audit.ROTATE, actor, times.utcnow(), current, info)
        log.info("key_rotated", key_id=key_id, key_prefix=info.prefix)
        return info, secret

    def audit_log(self, key_id: int | None = None, since: datetime | None = None) -> list[AuditEntry]:
        """Admin changes to one key (or every key) made at or after ``since``, oldest first."""
        since = times.optional_utc(since, "since")
        with database_errors(), self._engine.begin() as conn:
            return [audit.entry(row) for row in conn.execute(audit.query(key_id, since))]

    def find_requests(
        self,
        key_id: int | None = None,
        outcome: str | None = None,
        since: datetime | None = None,
        until: datetime | None = None,
        limit: int = 50,
        offset: int = 0,
    ) -> list[RequestEntry]:
        """Admitted requests, newest first (see :mod:`accounts.request_log`). Only written records
        count: call :meth:`flush_usage` first to include queued ones."""
        since, until = times.optional_utc(since, "since"), times.optional_utc(until, "until")
        statement = request_log.query(key_id, outcome, since, until, limit, offset)
        with database_errors(), self._engine.begin() as conn:
            return [request_log.entry(row) for row in conn.execute(statement)]

    def latency_per_hour(self, since: datetime, service: str | None = None) -> list[HourlyLatency]:
        """Each service's latency and time to first token per UTC hour since ``since``: medians and
        99th percentiles of its answered requests (see :mod:`accounts.request_log`)."""
        statement = request_log.timed_query(times.as_utc(since, "since"), service)
        with database_errors(), self._engine.begin() as conn:
            return request_log.hourly(conn.execute(statement))

    # -- admin tokens -----------------------------------------------------

    def create_admin_token(self, name: str) -> tuple[AdminTokenInfo, str]:
        """A new admin token and its secret, which is not kept: show it once, now."""
        with database_errors(), self._engine.begin() as conn:
            info, secret = admins.create(conn, name, times.utcnow())
        log.info("admin_token_created", admin_token_id=info.id, admin_token_prefix=info.prefix)
        return info, secret

    def list_admin_tokens(self) -> list[AdminTokenInfo]:
        with database_errors(), self._engine.begin() as conn:
            return admins.listed(conn)

    def revoke_admin_token(self, token_id: int) -> AdminTokenInfo:
        """Refuse the token, and the console sessions it opened, from now on (idempotent)."""
        with database_errors(), self._engine.begin() as conn:
            info = admins.revoke(conn, token_id, times.utcnow())
        log.info("admin_token_revoked", admin_token_id=info.id, admin_token_prefix=info.prefix)
        return info

    def authenticate_admin(self, secret: str) -> AdminTokenInfo:
        """The live admin token of ``secret`` (its last use noted), else :class:`AdminDenied`."""
        with database_errors(), self._engine.begin() as conn:
            return admins.authenticate(conn, secret, times.utcnow())

    def open_console_session(self, token_id: int, lifetime_seconds: float) -> str:
        """A new console session of admin token ``token_id``: its secret, for the browser's cookie."""
        with database_errors(), self._engine.begin() as conn:
            return admins.open_session(conn, token_id, timedelta(seconds=lifetime_seconds), times.utcnow())

    def console_session(self, secret: str) -> AdminTokenInfo:
        """The admin token of a live console session; else :class:`AdminDenied`."""
        with database_errors(), self._engine.begin() as conn:
            return admins.session(conn, secret, times.utcnow())

    def end_console_session(self, secret: str) -> None:
        """Sign a console session out: it opens nothing from now on, on any frontend."""
        with database_errors(), self._engine.begin() as conn:
            admins.end_session(conn, secret, times.utcnow())

    # -- admission --------------------------------------------------------

    def admit(
        self,
        secret: str,
        service: str,
        now: datetime | None = None,
        idempotency_key: str | None = None,
        request_id: str | None = None,
        request_hash: str | None = None,
    ) -> Admission:
        """Let one request for ``service`` in and count it, or raise :class:`AdmissionDenied`.

        One conditional UPDATE decides and counts; a refused request is not counted.
        A counted request opens its entry in the ledger (see :mod:`accounts.ledger`),
        under ``request_id`` (the frontend's id of the request), in the same statement.

        With an ``idempotency_key`` (1 to 255 printable ASCII characters, else
        :class:`InvalidValue`) the first admission under this API key and
        idempotency key is counted and remembered for ``idempotency_retention``
        seconds; a later one is a replay (``Admission.replayed``): admitted
        without being counted, even when the quota is used up, as long as the
        key is not revoked, is inside its window and may use ``service``. A
        retry for another service, or with another ``request_hash`` (a digest of
        what the request carries, made by the caller) than the first admission
        under the key gave, is an :class:`IdempotencyKeyReused`.
        """
        now = times.utcnow() if now is None else times.as_utc(now, "now")
        if idempotency_key is not None:
            idempotency.check(idempotency_key)
        secret = secret.strip()
        if not keys.is_well_formed(secret):
            raise AdmissionDenied(UNKNOWN_KEY)
        asked = _Asked(keys.hash_secret(secret), service, now, request_id, idempotency_key, request_hash)
        if idempotency_key is not None:
            return self._admit_once(asked)
        with database_errors():
            for _ in range(_ADMIT_ATTEMPTS):
                admission_id = records.new_admission_id()
                admitted = self._fast_admit.run(asked.secret_hash, service, now, admission_id, request_id)
                if admitted is not None:
                    return asked.admission(admission_id, admitted)
                self._refusal_or_replay(asked)
        raise AdmissionDenied(QUOTA_EXHAUSTED)  # refunds kept racing the last request

    def admit_many(self, asked: Sequence[AdmissionAsked]) -> list[Admission | AccountsError]:
        """:meth:`admit` for each request ``asked``, the plain ones (without an idempotency key)
        counted in one transaction; each gets its own outcome, an :class:`Admission` or the
        error :meth:`admit` would have raised for it, exactly as if each had been admitted alone
        in this order."""
        outcomes: list[Admission | AccountsError | None] = [None] * len(asked)
        plain: list[tuple[int, _Asked, str]] = []
        now = times.utcnow()
        for index, request in enumerate(asked):
            secret = request.secret.strip()
            if request.idempotency_key is not None or not keys.is_well_formed(secret):
                outcomes[index] = _outcome(functools.partial(self.admit, **request.fields()))
                continue
            one = _Asked(keys.hash_secret(secret), request.service, now, request.request_id)
            plain.append((index, one, records.new_admission_id()))
        if plain:
            try:
                rows = self._fast_admit.run_many(
                    [rules.admit_parameters(one.secret_hash, one.service, now, admission_id, one.request_id)
                     for _, one, admission_id in plain]
                )
            except AccountsError as error:
                rows = [error] * len(plain)
            for (index, one, admission_id), row in zip(plain, rows, strict=True):
                outcomes[index] = self._admitted(asked[index], one, admission_id, row)
        return cast(list[Admission | AccountsError], outcomes)

    def _admitted(self, request: AdmissionAsked, one: _Asked, admission_id: str, row: Any) -> Admission | AccountsError:
        """The outcome of one request of a group, from the row its count returned."""
        if isinstance(row, AccountsError):
            return row
        if row is not None:
            return one.admission(admission_id, row)
        # Let nothing in: the refusal, or (a refund raced the count) a try of its own.
        return _outcome(lambda: self._refusal_or_replay(one) or self.admit(**request.fields()))

    def _admit_once(self, asked: _Asked) -> Admission:
        """:meth:`admit` under an idempotency key: counted the first time, replayed after."""
        with database_errors():
            for _ in range(_ADMIT_ATTEMPTS):
                admission = self._count_and_claim(asked) or self._refusal_or_replay(asked)
                if admission is not None:
                    break
            else:
                raise AdmissionDenied(QUOTA_EXHAUSTED)  # refunds kept racing the last request
        if admission.replayed:
            log.info(
                "admission_replayed",
                key_id=admission.key_id,
                key_prefix=admission.key_prefix,
                admission_id=admission.admission_id,
            )
        elif next(self._claims) % _PURGE_EVERY == 0:
            self._purge_quietly(asked.now)
        return admission

    def _count_and_claim(self, asked: _Asked) -> Admission | None:
        """Count the request and claim its idempotency key in one transaction.

        None when the UPDATE refused the request or a live claim already held
        the key; in the second case the transaction is rolled back, count included.
        """
        admission_id = records.new_admission_id()
        try:
            with self._engine.begin() as conn:
                parameters = rules.admit_parameters(
                    asked.secret_hash, asked.service, asked.now, admission_id, asked.request_id
                )
                counted = conn.execute(self._admit, parameters).first()
                if counted is None:
                    return None
                conn.execute(self._open, {**parameters, rules.KEY_ID: counted.id})
                claim = idempotency.claim_parameters(
                    counted.id,
                    idempotency.digest(cast(str, asked.idempotency_key)),
                    admission_id,
                    asked.service,
                    asked.now,
                    asked.now - self._retention,
                    asked.request_hash,
                )
                if conn.execute(self._claim, claim).first() is None:
                    raise _AlreadyClaimed
        except _AlreadyClaimed:
            return None
        return asked.admission(admission_id, counted)

    def _refusal_or_replay(self, asked: _Asked) -> Admission | None:
        """After the UPDATE let nothing in: raise the refusal, return the replay, or
        return None when nothing looks wrong (a refund raced it: try again)."""
        claim = None
        now = asked.now
        with self._engine.begin() as conn:
            state = self._read_state(conn, asked.secret_hash)
            if state is not None and asked.idempotency_key is not None:
                claim = conn.execute(
                    self._live_claim,
                    {
                        idempotency.KEY_ID: state.id,
                        idempotency.DIGEST: idempotency.digest(asked.idempotency_key),
                        idempotency.CUTOFF: now - self._retention,
                    },
                ).first()
        reason = rules.denial_reason(state, asked.service, now, counting=claim is None)
        if reason is not None:
            raise _refusal(reason, state, now)
        if state is None or claim is None:
            return None
        if claim.service != asked.service:
            raise IdempotencyKeyReused("this idempotency key was first used for another service")
        if None not in (claim.request_hash, asked.request_hash) and claim.request_hash != asked.request_hash:
            raise IdempotencyKeyReused("this idempotency key was first used for a request with another body")
        travelling = [state.limit(name) for name in limits.TRAVELLING]
        replay = asked.admission(claim.admission_id, [state.id, state.prefix, state.keep_texts, *travelling])
        return replace(replay, replayed=True)

    def identify(self, secret: str) -> KeyInfo:
        """The key this secret belongs to, counting nothing (for the caller's own usage).

        Refuses only unknown and revoked keys: an expired or used-up key may
        still see what it used. Raises :class:`AdmissionDenied` like :meth:`admit`.
        """
        secret = secret.strip()
        if not keys.is_well_formed(secret):
            raise AdmissionDenied(UNKNOWN_KEY)
        with database_errors(), self._engine.begin() as conn:
            found = _load_keys(conn, [ApiKey.secret_hash == keys.hash_secret(secret)])
        if not found:
            raise AdmissionDenied(UNKNOWN_KEY)
        if found[0].revoked:
            raise AdmissionDenied(REVOKED, key_id=found[0].id, key_prefix=found[0].prefix)
        return found[0]

    def _read_state(self, conn: Connection, secret_hash: str) -> rules.KeyState | None:
        row = conn.execute(self._key_state, {rules.HASH: secret_hash}).first()
        if row is None:
            return None
        services = frozenset(conn.execute(self._key_services, {rules.KEY_ID: row.id}).scalars())
        return rules.read_state(row, services or None)

    def refund(self, admission: Admission) -> None:
        """Give back the request counted by ``admission`` (for failures that are ours).

        Idempotent: a second refund of the same admission changes nothing. An
        admission made under an idempotency key also forgets that key, so the
        client's retry is counted afresh, once. A replayed admission was never
        counted: refunding it gives nothing back and changes nothing.
        """
        if admission.replayed:
            log.info(
                "replay_not_refunded", key_id=admission.key_id, key_prefix=admission.key_prefix
            )
            return
        with database_errors():
            try:
                with self._engine.begin() as conn:
                    given = ledger.refund(conn, admission.admission_id, admission.key_id, times.utcnow())
                    if given and admission.idempotency_key is not None:
                        conn.execute(self._release, _release_parameters(admission, admission.idempotency_key))
            except exc.IntegrityError:
                raise KeyNotFound(f"no key {admission.key_id} to refund") from None
        if given:
            log.info("request_refunded", key_id=admission.key_id, key_prefix=admission.key_prefix)

    # -- the brake on key guessing -----------------------------------------

    def record_key_failure(self, address: str, policy: BrakePolicy, now: float | None = None) -> float:
        """Count one failed key check from client ``address`` at ``now`` (epoch seconds); the
        seconds the address is now blocked for, 0 when it is not. See :mod:`accounts.key_brake`."""
        if not policy.enabled:
            return 0.0
        now = time.time() if now is None else now
        with database_errors(), self._engine.begin() as conn:
            seconds = key_brake.record_failure(conn, address, now, policy)
        if next(self._key_failures) % _PURGE_EVERY == 0:
            self.purge_key_failures(policy, now)
        return seconds

    def key_brake_state(self, address: str, scope: str = key_brake.API_SCOPE) -> tuple[int, int] | None:
        """The failures counted in ``address``'s current window (in a brake's ``scope``) and its blocks so far."""
        query = select(KeyFailure.failures, KeyFailure.blocks).where(KeyFailure.address == scope + address)
        with database_errors(), self._engine.begin() as conn:
            row = conn.execute(query).first()
        return None if row is None else (row.failures, row.blocks)

    def blocked_addresses(self, policy: BrakePolicy, now: float | None = None) -> list[tuple[str, float]]:
        """The client addresses the policy's brake blocks now, each with its seconds left."""
        with database_errors(), self._engine.begin() as conn:
            return key_brake.blocked(conn, time.time() if now is None else now, policy)

    def purge_key_failures(self, policy: BrakePolicy, now: float | None = None) -> int:
        """Forget the addresses quiet for a window and the longest block; how many were forgotten."""
        with database_errors(), self._engine.begin() as conn:
            return key_brake.purge(conn, time.time() if now is None else now, policy)

    def save_response(self, key_id: int, response: dict[str, Any], conversation: list[Any]) -> None:
        """Keep a Responses API answer for ``key_id`` for ``response_retention`` seconds, with the
        conversation it ends; now and then the expired ones are forgotten."""
        now = times.utcnow()
        expires = now + timedelta(seconds=self._settings.response_retention)
        with database_errors(), self._engine.begin() as conn:
            responses.save(conn, key_id, response, conversation, now, expires)
            if next(self._saved_responses) % _PURGE_EVERY == 0:
                responses.purge(conn, now, limit=1000)

    def stored_response(self, key_id: int, response_id: str) -> tuple[dict[str, Any], list[Any]] | None:
        """A response ``key_id`` kept, and its conversation; None when it kept none of that id."""
        with database_errors(), self._engine.begin() as conn:
            return responses.find(conn, key_id, response_id, times.utcnow())

    def delete_response(self, key_id: int, response_id: str) -> bool:
        with database_errors(), self._engine.begin() as conn:
            return responses.remove(conn, key_id, response_id)

    def purge_idempotency_keys(self, now: datetime | None = None, limit: int = 1000) -> int:
        """Forget at most ``limit`` idempotency keys claimed ``idempotency_retention``
        seconds or more before ``now``, oldest first; returns how many.

        Expired keys already count as new; this only keeps the table small.
        :meth:`admit` calls it now and then, so no schedule is needed.
        """
        if isinstance(limit, bool) or not isinstance(limit, int) or limit < 1:
            raise InvalidValue(f"a purge limit must be a whole number of at least 1 (got {limit!r})")
        now = times.utcnow() if now is None else times.as_utc(now, "now")
        parameters = {idempotency.CUTOFF: now - self._retention, idempotency.LIMIT: limit}
        with database_errors(), self._engine.begin() as conn:
            purged = conn.execute(self._purge, parameters).rowcount
        if purged:
            log.info("idempotency_keys_purged", count=purged)
        return purged

    def _purge_quietly(self, now: datetime) -> None:
        """Purge after an admission has committed: a failure must not fail the admission."""
        try:
            self.purge_idempotency_keys(now, limit=_PURGE_BATCH)
        except DatabaseUnavailable as error:
            log.warning("idempotency_purge_failed", reason=error.message)

    # -- usage ------------------------------------------------------------

    def record_usage(self, record: UsageRecord) -> None:
        """Queue ``record`` for the background writer; never waits for the database."""
        if self._closed:
            raise StoreClosed()
        self._usage.add(_usage_row(record, self._settings.store_texts))

    def flush_usage(self) -> None:
        """Write queued usage records now (raises DatabaseUnavailable if it cannot)."""
        self._usage.flush()

    def _write_usage(self, rows: list[Row]) -> None:
        with database_errors():
            try:
                with self._engine.begin() as conn:
                    ledger.write_records(conn, rows)
            except (exc.IntegrityError, exc.DataError):
                self._write_usage_one_by_one(rows)

    def _write_usage_one_by_one(self, rows: list[Row]) -> None:
        """Keep every good row of a batch that a bad row (a key id that no longer exists) broke."""
        for row in rows:
            try:
                with self._engine.begin() as conn:
                    ledger.write_records(conn, [row])
            except (exc.IntegrityError, exc.DataError) as error:
                log.error("usage_record_rejected", key_id=row["key_id"], error=type(error).__name__)

    def settle_abandoned(self, older_than: float | None = None, now: datetime | None = None, limit: int = 500) -> int:
        """Refund and record, as ``abandoned``, at most ``limit`` admissions still open
        ``older_than`` seconds (default ``accounts.abandoned_after``) before ``now``:
        requests whose frontend died before settling them. Returns how many.

        Safe to run from every frontend at once: each admission is settled once.
        """
        now = times.utcnow() if now is None else times.as_utc(now, "now")
        cutoff = now - timedelta(seconds=self._settings.abandoned_after if older_than is None else older_than)
        settled = 0
        with database_errors():
            with self._engine.begin() as conn:
                entries = ledger.abandoned(conn, cutoff, limit)
            for entry in entries:
                with self._engine.begin() as conn:
                    if ledger.settle_abandoned(conn, entry, now):
                        settled += 1
                        log.warning(
                            "admission_abandoned",
                            key_id=entry.key_id,
                            admission_id=entry.admission_id,
                            admitted_at=entry.admitted_at.isoformat(),
                        )
        return settled

    def forget_old_texts(self, now: datetime | None = None, limit: int = 1000) -> int:
        """Clear the texts of at most ``limit`` usage records older than ``accounts.text_retention_days``
        whole days before ``now`` (the records themselves stay); how many."""
        now = times.utcnow() if now is None else times.as_utc(now, "now")
        cutoff = now.date() - timedelta(days=self._settings.text_retention_days)
        with_texts = or_(UsageEntry.request_text.is_not(None), UsageEntry.output_text.is_not(None))
        oldest = select(UsageEntry.id).where(UsageEntry.day < cutoff, with_texts).limit(limit)
        if self._texts_forgotten_before is not None:
            # The days before it were cleared by an earlier sweep: read only those since.
            oldest = oldest.where(UsageEntry.day >= self._texts_forgotten_before)
        with database_errors(), self._engine.begin() as conn:
            ids = list(conn.execute(oldest).scalars())
            if ids:
                forgotten = update(UsageEntry).where(UsageEntry.id.in_(ids))
                conn.execute(forgotten.values(request_text=None, output_text=None))
        if ids:
            log.info("usage_texts_forgotten", count=len(ids), before=cutoff.isoformat())
        if len(ids) < limit:
            self._texts_forgotten_before = cutoff
        return len(ids)

    def ledger_state(self, key_id: int) -> LedgerState:
        """The key's count against its ledger: ``used`` must equal ``charged + open``."""
        with database_errors(), self._engine.begin() as conn:
            key = conn.execute(select(ApiKey.used, ApiKey.tokens_used).where(ApiKey.id == key_id)).one_or_none()
            if key is None:
                raise KeyNotFound(f"no key {key_id}")
            tokens = func.coalesce(UsageEntry.prompt_tokens, 0) + func.coalesce(UsageEntry.completion_tokens, 0)
            charged, charged_tokens = conn.execute(
                select(func.count(), func.coalesce(func.sum(tokens), 0)).where(
                    UsageEntry.key_id == key_id, UsageEntry.charged.is_(True)
                )
            ).one()
            records_ = conn.execute(select(func.count()).where(UsageEntry.key_id == key_id)).scalar_one()
            open_ = conn.execute(select(func.count()).where(OpenAdmission.key_id == key_id)).scalar_one()
        return LedgerState(
            used=key.used,
            charged=charged,
            open=open_,
            records=records_,
            tokens_used=key.tokens_used,
            charged_tokens=int(charged_tokens),
        )

    def usage_report(
        self,
        key_id: int | None = None,
        since: date | None = None,
        until: date | None = None,
        service: str | None = None,
    ) -> list[UsageRow]:
        """Usage per UTC day and service, ``since`` and ``until`` included, oldest first.

        Only written records count: call :meth:`flush_usage` first to include queued ones.
        """
        if since is not None and until is not None and until < since:
            raise InvalidValue(f"report ends ({until}) before it starts ({since})")
        query = _filtered(_report_query(self._settings.gpu_hour_prices), since, until, service)
        if key_id is not None:
            query = query.where(UsageEntry.key_id == key_id)
        with database_errors(), self._engine.begin() as conn:
            return [UsageRow(**_figures(row._mapping)) for row in conn.execute(query)]

    def usage_by_key(
        self,
        since: date | None = None,
        until: date | None = None,
        service: str | None = None,
        limit: int = 10,
    ) -> list[KeyUsage]:
        """The ``limit`` keys with the most requests from ``since`` to ``until`` (included), most first."""
        if since is not None and until is not None and until < since:
            raise InvalidValue(f"report ends ({until}) before it starts ({since})")
        key_search.check_page(limit, 0)
        query = _filtered(_by_key_query(self._settings.gpu_hour_prices), since, until, service).limit(limit)
        with database_errors(), self._engine.begin() as conn:
            return [KeyUsage(**_figures(row._mapping)) for row in conn.execute(query)]

    # -- lifetime ---------------------------------------------------------

    def close(self) -> None:
        """Write buffered usage, then close every connection; idempotent."""
        if self._closed:
            return
        self._closed = True
        self._usage.close()
        self._fast_admit.close()
        self._engine.dispose()


def _refusal(reason: str, state: rules.KeyState | None, now: datetime) -> AdmissionDenied:
    """The refusal for ``reason``, naming the key when it exists and, for a counted rule, when to retry."""
    if state is None:
        return AdmissionDenied(reason)
    retry_after = state.wait(now.timestamp()) if reason in rules.COUNTED_REASONS else None
    return AdmissionDenied(reason, key_id=state.id, key_prefix=state.prefix, retry_after=retry_after)


def _actor(actor: Actor | None) -> Actor:
    return Actor.current() if actor is None else actor


def _checked_changes(**changes: Any) -> dict[str, Any]:
    """The given (not UNCHANGED) fields, validated and normalised, as column values."""
    checks: dict[str, Callable[[Any], Any]] = {
        "email": records.check_email,
        "name": lambda v: records.check_owner_field(v, "name"),
        "organisation": lambda v: records.check_owner_field(v, "organisation"),
        "max_requests": records.check_limit,
        "valid_from": lambda v: times.optional_utc(v, "valid_from"),
        "valid_until": lambda v: times.optional_utc(v, "valid_until"),
        "note": str,
        "keep_texts": lambda v: _flag(v, "keep_texts"),
    }
    return {name: checks[name](value) for name, value in changes.items() if value is not UNCHANGED}


def _flag(value: object, what: str) -> bool:
    if not isinstance(value, bool):
        raise InvalidValue(f"{what} must be true or false (got {value!r})")
    return value


def _release_parameters(admission: Admission, idempotency_key: str) -> dict[str, object]:
    return {
        idempotency.KEY_ID: admission.key_id,
        idempotency.DIGEST: idempotency.digest(idempotency_key),
        idempotency.ADMISSION_ID: admission.admission_id,
    }


def _replace_services(conn: Connection, key_id: int, services: tuple[str, ...] | None) -> None:
    conn.execute(delete(KeyService).where(KeyService.key_id == key_id))
    if services:
        conn.execute(insert(KeyService), [{"key_id": key_id, "service": s} for s in services])


def _load_key(conn: Connection, key_id: int, *, for_update: bool = False) -> KeyInfo:
    found = _load_keys(conn, [ApiKey.id == key_id], for_update=for_update)
    if not found:
        raise KeyNotFound(f"no key with id {key_id}")
    return found[0]


def _load_keys(
    conn: Connection,
    conditions: list[ColumnElement[bool]],
    *,
    for_update: bool = False,
    limit: int | None = None,
    offset: int = 0,
) -> list[KeyInfo]:
    query = select(*_KEY_COLUMNS).where(*conditions).order_by(ApiKey.id).limit(limit).offset(offset)
    if for_update:
        query = query.with_for_update()
    rows = conn.execute(query).all()
    services = _services_of(conn, [row.id for row in rows])
    return [_key_info(row._asdict(), services.get(row.id)) for row in rows]


def _key_info(row: dict[str, Any], services: tuple[str, ...] | None) -> KeyInfo:
    key_limits = {name: row.pop(name) for name in limits.BY_NAME}
    return KeyInfo(**row, services=services, limits=key_limits)


def _services_of(conn: Connection, key_ids: list[int]) -> dict[int, tuple[str, ...]]:
    if not key_ids:
        return {}
    found: dict[int, list[str]] = defaultdict(list)
    query = select(KeyService.key_id, KeyService.service).where(KeyService.key_id.in_(key_ids))
    for key_id, service in conn.execute(query.order_by(KeyService.service)):
        found[key_id].append(service)
    return {key_id: tuple(names) for key_id, names in found.items()}


def _usage_row(record: UsageRecord, store_texts: bool) -> Row:
    """The record as a row to write; its texts only when every key's are kept (``store_texts``)
    or its own key keeps them."""
    keep_texts = store_texts or (record.admission is not None and record.admission.keep_texts)
    at = times.as_utc(record.at, "usage time")
    admission = record.admission
    # A replay carries its first admission's id, which that admission's own record holds.
    counted_id = admission.admission_id if admission is not None and not admission.replayed else None
    counted = counted_id is not None
    return {
        "admission_id": counted_id,
        "request_id": admission.request_id if admission is not None else None,
        "charged": record.charged and counted,
        ledger.COUNTED: counted,
        "key_id": record.resolved_key_id,
        "at": at,
        "day": at.date(),
        "service": record.resolved_service,
        "outcome": record.outcome,
        "latency_seconds": float(record.latency_seconds),
        "input_chars": record.input_chars,
        "input_words": record.input_words,
        "output_chars": record.output_chars,
        "output_words": record.output_words,
        "prompt_tokens": record.prompt_tokens,
        "completion_tokens": record.completion_tokens,
        "gpu_seconds": record.gpu_seconds,
        "first_token_seconds": record.first_token_seconds,
        "endpoint": record.endpoint,
        "request_text": record.request_text if keep_texts else None,
        "output_text": record.output_text if keep_texts else None,
    }


def _filtered(query: Select[Any], since: date | None, until: date | None, service: str | None) -> Select[Any]:
    """``query`` limited to the usage records of the days from ``since`` to ``until`` and of ``service``."""
    if since is not None:
        query = query.where(UsageEntry.day >= since)
    if until is not None:
        query = query.where(UsageEntry.day <= until)
    if service is not None:
        query = query.where(UsageEntry.service == service)
    return query


def _total(column: Any, name: str | None = None) -> Any:
    return func.coalesce(func.sum(column), 0).label(name or column.key)


def _failures() -> Any:
    return _total(case((UsageEntry.outcome != "ok", 1), else_=0), "failures")


def _gpu_time_and_cost(prices: Mapping[str, float]) -> list[Any]:
    """The GPU time of a report's records, and its cost at each service's price per GPU-hour
    (``"*"``: the price of services not named); null where no record has a price."""
    named = {service: price for service, price in prices.items() if service != "*"}
    other = prices.get("*")
    price: Any = case(named, value=UsageEntry.service, else_=other) if named else literal(other, Float)
    return [
        _total(func.coalesce(UsageEntry.gpu_seconds, 0.0), "gpu_seconds"),
        (func.sum(UsageEntry.gpu_seconds * price) / 3600).label("cost"),
    ]


def _figures(row: RowMapping) -> dict[str, Any]:
    """A report row as Python numbers: PostgreSQL sums big integers as decimals."""
    figures = {name: int(value) if isinstance(value, Decimal) else value for name, value in row.items()}
    figures["gpu_seconds"] = float(figures["gpu_seconds"])
    if figures["cost"] is not None:
        figures["cost"] = float(figures["cost"])
    return figures


def _by_key_query(prices: Mapping[str, float]) -> Select[Any]:
    requests = func.count().label("requests")
    return (
        select(
            UsageEntry.key_id,
            ApiKey.prefix,
            ApiKey.email,
            requests,
            _failures(),
            _total(UsageEntry.prompt_tokens),
            _total(UsageEntry.completion_tokens),
            *_gpu_time_and_cost(prices),
        )
        .join(ApiKey, ApiKey.id == UsageEntry.key_id)
        .group_by(UsageEntry.key_id, ApiKey.prefix, ApiKey.email)
        .order_by(requests.desc(), UsageEntry.key_id)
    )


def _report_query(prices: Mapping[str, float]) -> Select[Any]:
    total = _total
    return (
        select(
            UsageEntry.day,
            UsageEntry.service,
            func.count().label("requests"),
            _failures(),
            total(case((UsageEntry.charged, 1), else_=0), "charged"),
            total(UsageEntry.input_words),
            total(UsageEntry.input_chars),
            total(UsageEntry.output_words),
            total(UsageEntry.output_chars),
            total(UsageEntry.prompt_tokens),
            total(UsageEntry.completion_tokens),
            *_gpu_time_and_cost(prices),
        )
        .group_by(UsageEntry.day, UsageEntry.service)
        .order_by(UsageEntry.day, UsageEntry.service)
    )

