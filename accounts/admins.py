"""Admin tokens and the console sessions they open: the statements that make, find and end them.

An admin token opens ``/admin/`` (the console and its API) and nothing else;
an API key never opens ``/admin/``. Tokens are made like API keys (256
random bits, a checksum) with their own prefix, ``llmadm_``, and only their
SHA-256 is stored. A console session is 256 random bits too, held by the
browser; only its SHA-256 is stored, so nothing in the database lets anyone
open or forge one. A session lives until it expires, its admin signs out,
or its token is revoked. Each function runs in the caller's transaction.
"""

from __future__ import annotations

import hashlib
import secrets
from datetime import datetime, timedelta

from sqlalchemy import Connection, delete, insert, select, update

from accounts import keys, records
from accounts.errors import AdminDenied, AdminTokenNotFound
from accounts.models import AdminToken, ConsoleSession
from accounts.records import AdminTokenInfo

SESSION_BYTES = 32
# How long an ended or expired session is kept (for the record) before it is deleted.
SESSION_KEPT = timedelta(days=7)

_COLUMNS = (
    AdminToken.id,
    AdminToken.prefix,
    AdminToken.name,
    AdminToken.created_at,
    AdminToken.last_used_at,
    AdminToken.revoked,
    AdminToken.revoked_at,
)


def create(conn: Connection, name: str, now: datetime) -> tuple[AdminTokenInfo, str]:
    """A new token named ``name``, and its secret (kept nowhere: show it once)."""
    secret = keys.new_secret(keys.ADMIN_PREFIX)
    token_id = conn.execute(
        insert(AdminToken)
        .values(
            token_hash=keys.hash_secret(secret),
            prefix=keys.display_prefix(secret),
            name=records.check_admin_name(name),
            created_at=now,
            revoked=False,
        )
        .returning(AdminToken.id)
    ).scalar_one()
    return get(conn, token_id), secret


def get(conn: Connection, token_id: int) -> AdminTokenInfo:
    row = conn.execute(select(*_COLUMNS).where(AdminToken.id == token_id)).first()
    if row is None:
        raise AdminTokenNotFound(f"no admin token with id {token_id}")
    return AdminTokenInfo(**row._asdict())


def listed(conn: Connection) -> list[AdminTokenInfo]:
    return [AdminTokenInfo(**row._asdict()) for row in conn.execute(select(*_COLUMNS).order_by(AdminToken.id))]


def revoke(conn: Connection, token_id: int, now: datetime) -> AdminTokenInfo:
    """Refuse the token from now on, and end every session it opened (idempotent)."""
    get(conn, token_id)
    conn.execute(
        update(AdminToken).where(AdminToken.id == token_id, AdminToken.revoked.is_(False)).values(
            revoked=True, revoked_at=now
        )
    )
    conn.execute(
        update(ConsoleSession)
        .where(ConsoleSession.admin_token_id == token_id, ConsoleSession.ended_at.is_(None))
        .values(ended_at=now)
    )
    return get(conn, token_id)


def authenticate(conn: Connection, secret: str, now: datetime) -> AdminTokenInfo:
    """The live token whose secret this is, its last use set to ``now``; else :class:`AdminDenied`."""
    secret = secret.strip()
    if not keys.is_well_formed(secret, keys.ADMIN_PREFIX):
        raise AdminDenied()
    token_id = conn.execute(
        update(AdminToken)
        .where(AdminToken.token_hash == keys.hash_secret(secret), AdminToken.revoked.is_(False))
        .values(last_used_at=now)
        .returning(AdminToken.id)
    ).scalar_one_or_none()
    if token_id is None:
        raise AdminDenied()
    return get(conn, token_id)


def open_session(conn: Connection, token_id: int, lifetime: timedelta, now: datetime) -> str:
    """A new session of the live token ``token_id``, lasting ``lifetime``: its secret (for the cookie)."""
    secret = secrets.token_urlsafe(SESSION_BYTES)
    conn.execute(delete(ConsoleSession).where(ConsoleSession.expires_at < now - SESSION_KEPT))
    conn.execute(
        insert(ConsoleSession).values(
            session_hash=_session_hash(secret), admin_token_id=token_id, created_at=now, expires_at=now + lifetime
        )
    )
    return secret


def session(conn: Connection, secret: str, now: datetime) -> AdminTokenInfo:
    """The token of the live session ``secret`` (not ended, not expired, its token not revoked);
    else :class:`AdminDenied`."""
    row = conn.execute(
        select(*_COLUMNS)
        .join(ConsoleSession, ConsoleSession.admin_token_id == AdminToken.id)
        .where(
            ConsoleSession.session_hash == _session_hash(secret),
            ConsoleSession.ended_at.is_(None),
            ConsoleSession.expires_at > now,
            AdminToken.revoked.is_(False),
        )
    ).first()
    if row is None:
        raise AdminDenied()
    return AdminTokenInfo(**row._asdict())


def end_session(conn: Connection, secret: str, now: datetime) -> None:
    """End the session ``secret`` (signing out); one already ended stays so."""
    conn.execute(
        update(ConsoleSession)
        .where(ConsoleSession.session_hash == _session_hash(secret), ConsoleSession.ended_at.is_(None))
        .values(ended_at=now)
    )


def _session_hash(secret: str) -> str:
    return hashlib.sha256(secret.encode("utf-8", "replace")).hexdigest()
