"""The brake on key guessing: failed key checks counted per client address in the accounts
database, so that every frontend sees the same count.

An address that fails ``limit`` key checks (an unknown, malformed or revoked
key) within ``window`` seconds is blocked for ``block`` seconds, twice as
long for each further block, up to ``block_max``. :func:`record_failure`
counts one failure and says how long the address is blocked; the frontend
remembers that and refuses the address without asking the database again
until the block ends (see ``frontend/key_brake.py``), and every frontend
reads the blocked addresses (:func:`blocked`) twice a second, so a block
recorded by one is refused by all within a second. Counting is one upsert;
blocking is a conditional UPDATE, so two frontends crossing the threshold
at once block the address once.
"""

from __future__ import annotations

from dataclasses import dataclass

from sqlalchemy import Connection, Float, and_, case, delete, literal, or_, select, update
from sqlalchemy.dialects import postgresql, sqlite

from accounts.admission import window_over
from accounts.models import KeyFailure

API_SCOPE = "api "  # wrong API keys; the console's sign-ins are "admin "


@dataclass(frozen=True)
class BrakePolicy:
    """``limit`` failures within ``window`` seconds block an address for ``block`` seconds,
    doubling with each further block up to ``block_max``; ``limit`` 0 turns the brake off.
    ``scope`` prefixes the addresses it counts, keeping its counts apart from another
    brake's (the console's sign-ins from the API's keys); no scope is a prefix of another,
    so each brake's purge forgets only its own addresses."""

    limit: int = 20
    window: float = 60.0
    block: float = 30.0
    block_max: float = 3600.0
    scope: str = API_SCOPE

    @property
    def enabled(self) -> bool:
        return self.limit > 0

    def block_for(self, blocks_before: int) -> float:
        return min(self.block_max, self.block * 2 ** min(blocks_before, 32))


def record_failure(conn: Connection, address: str, now: float, policy: BrakePolicy) -> float:
    """Count one failed key check from ``address`` at ``now`` (epoch seconds), in the policy's
    scope; the seconds it is now blocked for (0: not blocked)."""
    address = policy.scope + address
    dialect = postgresql if conn.dialect.name == "postgresql" else sqlite
    at = literal(now, Float())
    new_window = window_over(KeyFailure.window_start, at, policy.window)
    blocked_now = and_(KeyFailure.blocked_until.is_not(None), KeyFailure.blocked_until > at)
    counted = conn.execute(
        dialect.insert(KeyFailure)
        .values(address=address, failures=1, window_start=now, blocked_until=None, blocks=0)
        .on_conflict_do_update(
            index_elements=[KeyFailure.address],
            set_={
                # A failure during a block is not counted towards the next one.
                "failures": case((blocked_now, KeyFailure.failures), (new_window, 1), else_=KeyFailure.failures + 1),
                "window_start": case((blocked_now, KeyFailure.window_start), (new_window, at),
                                     else_=KeyFailure.window_start),
            },
        )
        .returning(KeyFailure.failures, KeyFailure.blocked_until, KeyFailure.blocks)
    ).one()
    if counted.blocked_until is not None and counted.blocked_until > now:
        return counted.blocked_until - now
    if counted.failures < policy.limit:
        return 0.0
    # The upsert holds the row (a row lock, or SQLite's one writer) until the transaction ends.
    until = now + policy.block_for(counted.blocks)
    conn.execute(
        update(KeyFailure)
        .where(KeyFailure.address == address)
        .values(blocked_until=until, blocks=KeyFailure.blocks + 1, failures=0, window_start=None)
    )
    return until - now


def blocked(conn: Connection, now: float, policy: BrakePolicy) -> list[tuple[str, float]]:
    """The addresses of the policy's scope blocked at ``now``, each with its seconds left."""
    rows = conn.execute(
        select(KeyFailure.address, KeyFailure.blocked_until).where(
            KeyFailure.address.startswith(policy.scope, autoescape=True),
            KeyFailure.blocked_until.is_not(None),
            KeyFailure.blocked_until > now,
        )
    )
    # The query reads no row without blocked_until; the test only tells the type so.
    return [(address[len(policy.scope):], until - now) for address, until in rows if until is not None]


def purge(conn: Connection, now: float, policy: BrakePolicy) -> int:
    """Forget the addresses of the policy's scope quiet for longer than a window and the longest
    block (their back-off starts over)."""
    quiet_since = now - policy.window - policy.block_max
    return conn.execute(
        delete(KeyFailure).where(
            KeyFailure.address.startswith(policy.scope, autoescape=True),
            or_(KeyFailure.window_start.is_(None), KeyFailure.window_start < quiet_since),
            or_(KeyFailure.blocked_until.is_(None), KeyFailure.blocked_until < quiet_since),
        )
    ).rowcount
