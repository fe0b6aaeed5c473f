"""Idempotency keys: a retried request is admitted again without being counted again.

A client may send its own key (an ``Idempotency-Key`` header) with a
request. The first admission under a pair (API key, idempotency key) is
counted and the pair is claimed in ``idempotent_admissions``, in the same
transaction as the counting UPDATE. A later admission under the same pair
finds the claim and is a replay: admitted, not counted.

The claim is an INSERT that, on a conflict with the primary key, takes over
the existing row only if it is older than the retention period
(:func:`claim_statement`). When it returns no row the pair is already
claimed by a live admission: the transaction is rolled back, so its count
is undone, and the admission is a replay. This holds under concurrency on
both databases: on SQLite writers take turns (``BEGIN IMMEDIATE``); on
PostgreSQL the counting UPDATE locks the key's row, so a second retry's
claim runs only after the first has committed and then sees its row.

Only the SHA-256 of an idempotency key is stored (:func:`digest`), and the
key is never logged: clients may put anything in it.
"""

from __future__ import annotations

import hashlib
import re
from datetime import datetime

from sqlalchemy import Delete, Select, bindparam, delete, select, tuple_
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.sql.dml import ReturningInsert

from accounts.errors import InvalidValue
from accounts.models import IdempotentAdmission, UTCDateTime

MAX_LENGTH = 255
_PRINTABLE_ASCII = re.compile(r"[\x20-\x7e]*")

# Parameters of the statements below, bound at execution.
KEY_ID = "pair_key_id"
DIGEST = "pair_digest"
ADMISSION_ID = "pair_admission_id"
SERVICE = "pair_service"
REQUEST_HASH = "pair_request_hash"
NOW = "pair_created_at"
CUTOFF = "pair_cutoff"
LIMIT = "purge_limit"

_Pair = IdempotentAdmission


def check(idempotency_key: str) -> str:
    """``idempotency_key`` if it is 1 to 255 printable ASCII characters, else :class:`InvalidValue`.

    The message never quotes the key.
    """
    if not isinstance(idempotency_key, str):
        raise InvalidValue(f"an idempotency key must be text (got {type(idempotency_key).__name__})")
    if not 1 <= len(idempotency_key) <= MAX_LENGTH:
        raise InvalidValue(
            f"an idempotency key must be 1 to {MAX_LENGTH} characters (got {len(idempotency_key)})"
        )
    if _PRINTABLE_ASCII.fullmatch(idempotency_key) is None:
        raise InvalidValue("an idempotency key may hold only printable ASCII characters")
    return idempotency_key


def digest(idempotency_key: str) -> str:
    """The SHA-256 hex digest stored in place of the key."""
    return hashlib.sha256(idempotency_key.encode("ascii")).hexdigest()


def claim_statement(dialect: str) -> ReturningInsert[str]:
    """Claim (KEY_ID, DIGEST) for ADMISSION_ID at NOW, unless a claim newer than CUTOFF holds it.

    Returns the row when claimed (new, or taking over an expired claim) and
    nothing when a live claim already holds the pair.
    """
    upsert: postgresql.Insert | sqlite.Insert
    if dialect == "postgresql":
        upsert = postgresql.insert(_Pair)
    elif dialect == "sqlite":
        upsert = sqlite.insert(_Pair)
    else:
        raise InvalidValue(f"unsupported database {dialect!r}: use sqlite or postgresql")
    claim = upsert.values(
        key_id=bindparam(KEY_ID),
        idempotency_key_hash=bindparam(DIGEST),
        admission_id=bindparam(ADMISSION_ID),
        service=bindparam(SERVICE),
        created_at=bindparam(NOW, type_=UTCDateTime()),
        request_hash=bindparam(REQUEST_HASH),
    )
    return claim.on_conflict_do_update(
        index_elements=[_Pair.key_id, _Pair.idempotency_key_hash],
        set_={
            "admission_id": claim.excluded.admission_id,
            "service": claim.excluded.service,
            "created_at": claim.excluded.created_at,
            "request_hash": claim.excluded.request_hash,
        },
        where=_Pair.created_at <= bindparam(CUTOFF, type_=UTCDateTime()),
    ).returning(_Pair.admission_id)


def claim_parameters(
    key_id: int,
    key_digest: str,
    admission_id: str,
    service: str,
    now: datetime,
    cutoff: datetime,
    request_hash: str | None = None,
) -> dict[str, object]:
    return {
        KEY_ID: key_id,
        DIGEST: key_digest,
        ADMISSION_ID: admission_id,
        SERVICE: service,
        NOW: now,
        CUTOFF: cutoff,
        REQUEST_HASH: request_hash,
    }


def live_claim_query() -> Select[str, str, str | None]:
    """The admission id, service and request hash of the claim of (KEY_ID, DIGEST), if newer than CUTOFF."""
    return select(_Pair.admission_id, _Pair.service, _Pair.request_hash).where(
        _Pair.key_id == bindparam(KEY_ID),
        _Pair.idempotency_key_hash == bindparam(DIGEST),
        _Pair.created_at > bindparam(CUTOFF, type_=UTCDateTime()),
    )


def release_statement() -> Delete:
    """Forget the claim of (KEY_ID, DIGEST) if ADMISSION_ID still holds it (a refund)."""
    return delete(_Pair).where(
        _Pair.key_id == bindparam(KEY_ID),
        _Pair.idempotency_key_hash == bindparam(DIGEST),
        _Pair.admission_id == bindparam(ADMISSION_ID),
    )


def purge_statement() -> Delete:
    """Delete at most LIMIT claims made at or before CUTOFF, oldest first.

    On PostgreSQL rows another transaction holds are skipped, so concurrent
    purges (one per frontend process) never wait on each other or deadlock.
    """
    expired = (
        select(_Pair.key_id, _Pair.idempotency_key_hash)
        .where(_Pair.created_at <= bindparam(CUTOFF, type_=UTCDateTime()))
        .order_by(_Pair.created_at)
        .limit(bindparam(LIMIT))
        .with_for_update(skip_locked=True)
    )
    return delete(_Pair).where(tuple_(_Pair.key_id, _Pair.idempotency_key_hash).in_(expired))
