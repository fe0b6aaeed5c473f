"""Helpers for fault tests: live stacks whose processes the tests kill, freeze and restart."""

from __future__ import annotations

import json
from typing import Any

from accounts.store import AccountStore
from broker.client import Client
from tests.harness import Stack, wait_until

DRIBBLE = "tests.fixtures.algorithms:Dribble"


def busy_worker_pid(stack: Stack, service: str) -> int:
    """The pid of the one busy worker of ``service`` (waiting until there is one)."""
    with Client(stack.endpoint, timeout=5) as client:

        def busy() -> list[int]:
            workers = client.status()["services"].get(service, {}).get("workers", [])
            return [worker["pid"] for worker in workers if worker["state"] == "busy"]

        (pid,) = wait_until(busy, timeout=10, what=f"a busy {service} worker")
    return pid


def balanced(store: AccountStore, key_id: int, records: int) -> Any:
    """The key's ledger once it holds ``records`` records and balances (polled: records are
    written in the background)."""

    def settled() -> Any:
        state = store.ledger_state(key_id)
        return state if state.balanced and state.records == records and state.open == 0 else None

    return wait_until(settled, timeout=15, interval=0.1, what=f"{records} usage records, balanced")


def usage_outcomes(store: AccountStore, key_id: int) -> list[tuple[str, bool]]:
    from sqlalchemy import text

    with store.engine.connect() as conn:
        rows = conn.execute(
            text("SELECT outcome, charged FROM usage_records WHERE key_id = :key ORDER BY id"), {"key": key_id}
        ).all()
    return [(outcome, bool(charged)) for outcome, charged in rows]


def sse_events(lines) -> list[Any]:
    """The data of every server-sent event, JSON decoded (``[DONE]`` kept as a string)."""
    events = []
    for line in lines:
        if line.startswith(b"data: "):
            data = line[6:]
            events.append(data.decode() if data == b"[DONE]" else json.loads(data))
    return events
