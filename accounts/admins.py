"""Admin tokens and the console's session secret: the statements that make, find and revoke them.

An admin token opens ``/admin/`` (the console and its API) and nothing else;
an API key never opens ``/admin/``. Tokens are made like API keys (256
random bits, a checksum) with their own prefix, ``llmadm_``, and only their
SHA-256 is stored. Each function runs in the caller's transaction.
"""

from __future__ import annotations

import secrets
from datetime import datetime

from sqlalchemy import Connection, exc, insert, select, update

from accounts import keys, records
from accounts.errors import AdminDenied, AdminTokenNotFound
from accounts.models import AdminToken, ConsoleSecret
from accounts.records import AdminTokenInfo

SESSION_SECRET = "session"
SESSION_SECRET_BYTES = 48

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
    """Refuse the token from now on, and every session it opened (idempotent)."""
    get(conn, token_id)
    conn.execute(
        update(AdminToken).where(AdminToken.id == token_id, AdminToken.revoked.is_(False)).values(
            revoked=True, revoked_at=now
        )
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


def live(conn: Connection, token_id: int) -> AdminTokenInfo:
    """The token of a console session, if it still exists and is not revoked; else :class:`AdminDenied`."""
    row = conn.execute(select(*_COLUMNS).where(AdminToken.id == token_id, AdminToken.revoked.is_(False))).first()
    if row is None:
        raise AdminDenied()
    return AdminTokenInfo(**row._asdict())


def session_secret(conn: Connection, now: datetime) -> str:
    """The secret that signs console sessions, made by whichever frontend asks first."""
    found = conn.execute(select(ConsoleSecret.value).where(ConsoleSecret.name == SESSION_SECRET)).scalar()
    if found is not None:
        return found
    made = secrets.token_urlsafe(SESSION_SECRET_BYTES)
    try:
        with conn.begin_nested():
            conn.execute(insert(ConsoleSecret).values(name=SESSION_SECRET, value=made, created_at=now))
    except exc.IntegrityError:  # another frontend made it first: use theirs
        return conn.execute(select(ConsoleSecret.value).where(ConsoleSecret.name == SESSION_SECRET)).scalar_one()
    return made
