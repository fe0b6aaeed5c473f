"""Responses kept for the Responses API: saved for their key, read and deleted by it alone.

A kept response is two JSON documents: the response object as it was sent,
and the conversation it ends (every input and output item up to it), which
a later request continues with ``previous_response_id``. Each function runs
in the caller's transaction; a response of another key, or one past its
expiry, is as good as absent.
"""

from __future__ import annotations

import json
from datetime import datetime
from typing import Any

from sqlalchemy import Connection, delete, insert, select

from accounts.models import StoredResponse


def save(
    conn: Connection, key_id: int, response: dict[str, Any], conversation: list[Any], now: datetime, expires: datetime
) -> None:
    conn.execute(
        insert(StoredResponse).values(
            id=response["id"],
            key_id=key_id,
            created_at=now,
            expires_at=expires,
            response=json.dumps(response, ensure_ascii=False),
            conversation=json.dumps(conversation, ensure_ascii=False),
        )
    )


def find(conn: Connection, key_id: int, response_id: str, now: datetime) -> tuple[dict[str, Any], list[Any]] | None:
    """The response and its conversation, when ``key_id`` kept it and it has not expired."""
    row = conn.execute(
        select(StoredResponse.response, StoredResponse.conversation).where(
            StoredResponse.id == response_id, StoredResponse.key_id == key_id, StoredResponse.expires_at > now
        )
    ).first()
    return None if row is None else (json.loads(row.response), json.loads(row.conversation))


def remove(conn: Connection, key_id: int, response_id: str) -> bool:
    """Forget the response; False when the key kept none of that id."""
    deleted = conn.execute(
        delete(StoredResponse).where(StoredResponse.id == response_id, StoredResponse.key_id == key_id)
    )
    return deleted.rowcount > 0


def purge(conn: Connection, now: datetime, limit: int) -> int:
    """Forget at most ``limit`` expired responses."""
    expired = select(StoredResponse.id).where(StoredResponse.expires_at <= now).limit(limit).scalar_subquery()
    return conn.execute(delete(StoredResponse).where(StoredResponse.id.in_(expired))).rowcount
