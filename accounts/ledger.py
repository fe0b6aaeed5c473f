"""The ledger: every admitted request ends in exactly one usage record, and a key's
``used`` equals its charged records plus its admissions still in flight.

A counted admission opens an entry in ``open_admissions`` in the same
statement that counts it (see :mod:`accounts.admission`). Its usage record
is written later, in a batch (see :mod:`accounts.usage`), in the transaction
that deletes the open entry: :func:`write_records` inserts a record only for
an admission whose entry it deleted itself, so a record is never written
twice, not even when a slow frontend and the reaper below settle the same
admission at once. A record that says ``charged = false`` gives its
admission's count back in that same transaction, unless
:meth:`AccountStore.refund` already did: the ``refunds`` table, keyed by
admission, makes the two one refund. A charged record's tokens (prompt and
completion) are added to its key's ``tokens_used`` and token window in that
same transaction too, so a key's tokens always equal its charged records'.

When a frontend dies, its requests' entries stay open. Once older than any
request can run (``accounts.abandoned_after``), :func:`settle_abandoned`
refunds each one and writes its record (outcome ``abandoned``, not
charged): what happened to such a request is unknown, and the ledger errs
in the customer's favour.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Sequence
from datetime import datetime
from typing import Any, TypeAlias

import structlog
from sqlalchemy import Connection, Float, Row, case, delete, insert, literal, select, update
from sqlalchemy.dialects import postgresql, sqlite

from accounts.admission import window_over
from accounts.models import ApiKey, IdempotentAdmission, OpenAdmission, Refund, UsageEntry

log = structlog.get_logger(__name__)

ABANDONED = "abandoned"
# Set on a usage row that settles a counted admission (so one with an open entry).
COUNTED = "_counted"


def write_records(conn: Connection, rows: list[dict[str, Any]]) -> int:
    """Insert ``rows`` (see :func:`accounts.store._usage_row`), closing their admissions;
    returns how many were inserted. A row of a counted admission that is no longer
    open (already settled, by the reaper say) is dropped and logged."""
    counted = [row["admission_id"] for row in rows if row[COUNTED]]
    closed: set[str] = set()
    if counted:
        closed = set(
            conn.execute(
                delete(OpenAdmission).where(OpenAdmission.admission_id.in_(counted)).returning(OpenAdmission.admission_id)
            ).scalars()
        )
    kept = [row for row in rows if not row[COUNTED] or row["admission_id"] in closed]
    if len(kept) < len(rows):
        log.warning("usage_records_already_settled", count=len(rows) - len(kept))
    refunds: dict[int, list[tuple[str, datetime]]] = defaultdict(list)
    tokens: dict[int, tuple[int, datetime]] = {}
    for row in kept:
        key_id = row["key_id"]
        if row[COUNTED] and not row["charged"]:
            refunds[key_id].append((row["admission_id"], row["at"]))
        elif row["charged"] and (used := (row["prompt_tokens"] or 0) + (row["completion_tokens"] or 0)):
            total, last = tokens.get(key_id, (0, row["at"]))
            tokens[key_id] = (total + used, max(last, row["at"]))
    # Keys are locked in id order, so that two frontends' batches cannot deadlock.
    for key_id in sorted(refunds.keys() | tokens.keys()):
        for admission_id, at in sorted(refunds.get(key_id, ())):
            refund(conn, admission_id, key_id, at)
        if key_id in tokens:
            count_tokens(conn, key_id, *tokens[key_id])
    if kept:
        conn.execute(insert(UsageEntry), [_columns(row) for row in kept])
    return len(kept)


def refund(conn: Connection, admission_id: str, key_id: int, at: datetime) -> bool:
    """Give back the count of one admission, once however often it is asked; True if given now."""
    dialect = postgresql if conn.dialect.name == "postgresql" else sqlite
    given = conn.execute(
        dialect.insert(Refund)
        .values(admission_id=admission_id, key_id=key_id, refunded_at=at)
        .on_conflict_do_nothing()
        .returning(Refund.admission_id)
    ).first()
    if given is not None:
        conn.execute(update(ApiKey).where(ApiKey.id == key_id, ApiKey.used > 0).values(used=ApiKey.used - 1))
    return given is not None


def count_tokens(conn: Connection, key_id: int, tokens: int, at: datetime) -> None:
    """Add ``tokens`` of a charged request that ended at ``at`` to the key's total and to its token
    window, starting a new window at ``at`` when the last one has ended."""
    at_seconds = literal(at.timestamp(), Float())
    new_window = window_over(ApiKey.token_window_start, at_seconds)
    conn.execute(
        update(ApiKey)
        .where(ApiKey.id == key_id)
        .values(
            tokens_used=ApiKey.tokens_used + tokens,
            token_window_start=case((new_window, at_seconds), else_=ApiKey.token_window_start),
            token_window_count=case((new_window, tokens), else_=ApiKey.token_window_count + tokens),
        )
    )


def _columns(row: dict[str, Any]) -> dict[str, Any]:
    return {name: value for name, value in row.items() if name != COUNTED}


# An open admission: admission_id, key_id, service, admitted_at, request_id. Quoted: Row takes
# one type parameter per column only from SQLAlchemy 2.1 on.
OpenEntry: TypeAlias = "Row[str, int, str, datetime, str | None]"


def abandoned(conn: Connection, cutoff: datetime, limit: int) -> Sequence[OpenEntry]:
    """Open admissions made before ``cutoff``, oldest first, at most ``limit``."""
    return conn.execute(
        select(
            OpenAdmission.admission_id,
            OpenAdmission.key_id,
            OpenAdmission.service,
            OpenAdmission.admitted_at,
            OpenAdmission.request_id,
        )
        .where(OpenAdmission.admitted_at < cutoff)
        .order_by(OpenAdmission.admitted_at)
        .limit(limit)
    ).all()


def settle_abandoned(conn: Connection, entry: OpenEntry, now: datetime) -> bool:
    """Refund one abandoned admission and write its record, in ``conn``'s transaction;
    False when someone settled it first."""
    claimed = conn.execute(
        delete(OpenAdmission).where(OpenAdmission.admission_id == entry.admission_id).returning(OpenAdmission.key_id)
    ).first()
    if claimed is None:
        return False
    refund(conn, entry.admission_id, entry.key_id, now)
    # A retry under the same idempotency key is then counted afresh, as after any refund.
    conn.execute(delete(IdempotentAdmission).where(IdempotentAdmission.admission_id == entry.admission_id))
    conn.execute(
        insert(UsageEntry).values(
            key_id=entry.key_id,
            at=now,
            day=now.date(),
            service=entry.service,
            outcome=ABANDONED,
            latency_seconds=(now - entry.admitted_at).total_seconds(),
            input_chars=0,
            input_words=0,
            output_chars=0,
            output_words=0,
            admission_id=entry.admission_id,
            request_id=entry.request_id,
            charged=False,
        )
    )
    return True
