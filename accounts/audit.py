"""The audit log of admin changes to keys: what each one changed, who made it, and when.

The store writes a record in the transaction of the change it describes, so
no change is made without its record, and no record names a change that was
rolled back. A record holds the fields of the key that the change touched,
before and after: never the secret or its hash (the key's view, ``KeyInfo``,
holds neither), nor the last use, which requests change, not admins.
"""

from __future__ import annotations

import json
from datetime import datetime
from typing import Any

from sqlalchemy import Connection, Row, Select, insert, select

from accounts.models import KeyAudit
from accounts.records import Actor, AuditEntry, KeyInfo

CREATE = "create"
UPDATE = "update"
ROTATE = "rotate"
REVOKE = "revoke"
DELETE = "delete"

# The record's own columns hold the id and the time; the last use is not an admin's doing.
_NOT_RECORDED = frozenset({"id", "created_at", "last_used_at"})


def record(
    conn: Connection,
    action: str,
    actor: Actor,
    at: datetime,
    before: KeyInfo | None,
    after: KeyInfo | None,
) -> None:
    """Record ``action`` on the key seen as ``before`` and ``after`` (None when it did not exist)."""
    key = after if after is not None else before
    if key is None:
        raise ValueError("an audit record needs the key before or after the change")
    old, new = changes(before, after)
    conn.execute(
        insert(KeyAudit).values(
            at=at,
            key_id=key.id,
            action=action,
            actor_user=actor.user,
            actor_host=actor.host,
            before=_json(old),
            after=_json(new),
        )
    )


def changes(before: KeyInfo | None, after: KeyInfo | None) -> tuple[dict[str, Any] | None, dict[str, Any] | None]:
    """The recorded fields that differ, old and new; every field on the side that exists alone."""
    old, new = _fields(before), _fields(after)
    if old is None or new is None:
        return old, new
    changed = [name for name in old if old[name] != new[name]]
    return {name: old[name] for name in changed}, {name: new[name] for name in changed}


def query(key_id: int | None = None, since: datetime | None = None) -> Select[Any]:
    """Records of one key (or all) from ``since`` on (or ever), oldest first."""
    statement = select(KeyAudit.__table__).order_by(KeyAudit.at, KeyAudit.id)
    if key_id is not None:
        statement = statement.where(KeyAudit.key_id == key_id)
    if since is not None:
        statement = statement.where(KeyAudit.at >= since)
    return statement


def entry(row: Row[Any]) -> AuditEntry:
    """A row of :func:`query` as a plain value."""
    return AuditEntry(
        id=row.id,
        at=row.at,
        key_id=row.key_id,
        action=row.action,
        actor=Actor(row.actor_user, row.actor_host),
        before=_parsed(row.before),
        after=_parsed(row.after),
    )


def _fields(info: KeyInfo | None) -> dict[str, Any] | None:
    if info is None:
        return None
    return {name: value for name, value in info.to_dict().items() if name not in _NOT_RECORDED}


def _json(fields: dict[str, Any] | None) -> str | None:
    return None if fields is None else json.dumps(fields, sort_keys=True, ensure_ascii=False)


def _parsed(text: str | None) -> dict[str, Any] | None:
    return None if text is None else json.loads(text)
