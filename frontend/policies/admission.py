"""Admission: the key's checks, its quota, budget and rates, judged and counted at once.

The accounts store judges every database-kept limit in one conditional
UPDATE (see ``accounts.admission``), so concurrent requests on any frontend
never overshoot one. The limits the broker keeps (``max_concurrent``,
``weight``) come back with the admission and travel with the request.

A key that already has ``max_concurrent`` requests running through this
frontend is refused here, before admission, as the broker would refuse it:
refusing it there would cost an admission, a refund and a usage record, and
a client hammering at its limit would turn each refusal into database
writes. The frontend knows a key's limit from its last admission here (a
changed limit takes effect with the next one) and counts the key's
requests it has in flight; beyond that, across frontends, the broker
judges.
"""

from __future__ import annotations

import asyncio
import hmac
import secrets

import structlog

from accounts.records import Admission
from accounts.store import AdmissionAsked
from frontend import errors
from frontend.accounts_calls import AccountsCalls
from frontend.blocking import done_within
from frontend.policies.base import Call, Ending, Policy

log = structlog.get_logger(__name__)


class KeyAdmission(Policy):
    """Admits and counts ``call`` within ``deadline`` seconds.

    An address that sent too many wrong keys is refused before its key is
    looked at (see ``accounts.key_brake``). Past the deadline the caller gets
    a 503 and nothing is charged; an admission that the database makes later
    after all (or after its client left) is left in ``call.admitting``, for
    the gateway to end, uncharged, once it comes.
    """

    def __init__(self, accounts: AccountsCalls, deadline: float) -> None:
        self.accounts = accounts
        self.deadline = deadline
        self.running = RunningPerKey()

    async def before(self, call: Call) -> None:
        self.accounts.refuse_if_blocked(call.address)
        self.running.enter(call)
        try:
            await self._admit(call)
        except BaseException:
            self.running.leave(call)
            raise
        self.running.learn(call)

    async def answered(self, call: Call, ending: Ending) -> None:
        self.running.leave(call)

    async def failed(self, call: Call, ending: Ending) -> None:
        self.running.leave(call)

    async def _admit(self, call: Call) -> None:
        asked = AdmissionAsked(call.secret, call.service, call.idempotency_key, call.request_id, call.request_hash)
        pending = self.accounts.admitting(asked)
        try:
            done = await done_within(pending, self.deadline)
        except asyncio.CancelledError:
            self._left_to_end(call, pending)
            raise
        if not done:
            log.warning("admission_timed_out", seconds=self.deadline, service=call.service)
            self._left_to_end(call, pending)
            raise errors.admission_timeout(self.deadline)
        call.admission = await self.accounts.admitted(pending, call.address)

    def _left_to_end(self, call: Call, pending: asyncio.Future[Admission]) -> None:
        """``call`` stopped waiting for its admission: the gateway ends it once it comes, and a
        wrong key it turns out to carry still counts towards the brake."""
        call.admitting = pending
        self.accounts.check_when_done(pending, call.address)


class RunningPerKey:
    """Each key's requests in flight through this frontend, and its ``max_concurrent`` as its last
    admission here said; a key is known by a keyed digest of its secret (never the secret), and
    forgotten when it has nothing in flight."""

    def __init__(self) -> None:
        self._salt = secrets.token_bytes(16)
        self._running: dict[bytes, int] = {}
        self._limits: dict[bytes, int] = {}

    def enter(self, call: Call) -> None:
        """Count ``call`` as in flight for its key; a 429 when the key is at its limit here."""
        digest = hmac.digest(self._salt, call.secret.encode("utf-8", "replace"), "sha256")
        limit, running = self._limits.get(digest, 0), self._running.get(digest, 0)
        if limit and running >= limit:
            raise errors.ApiError(
                "concurrency_limited", f"this key has {limit} requests in flight, its max_concurrent"
            ).wait(1)
        self._running[digest] = running + 1
        call.running_as = digest

    def learn(self, call: Call) -> None:
        if call.running_as is not None and call.admission is not None:
            self._limits[call.running_as] = call.admission.limit("max_concurrent") or 0

    def leave(self, call: Call) -> None:
        digest, call.running_as = call.running_as, None
        if digest is None:
            return
        left = self._running[digest] - 1
        if left:
            self._running[digest] = left
        else:
            del self._running[digest]
            self._limits.pop(digest, None)
