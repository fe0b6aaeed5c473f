"""Admission: the key's checks, its quota, budget and rates, judged and counted at once.

The accounts store judges every database-kept limit in one conditional
UPDATE (see ``accounts.admission``), so concurrent requests on any frontend
never overshoot one. The limits the broker keeps (``max_concurrent``,
``weight``) come back with the admission and travel with the request.
"""

from __future__ import annotations

import asyncio

import structlog

from frontend import errors
from frontend.accounts_calls import AccountsCalls
from frontend.policies.base import Call, Policy

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

    async def before(self, call: Call) -> None:
        self.accounts.refuse_if_blocked(call.address)
        store = self.accounts.store
        pending = asyncio.ensure_future(
            self.accounts.run(
                lambda: store.admit(
                    call.secret,
                    call.service,
                    idempotency_key=call.idempotency_key,
                    request_id=call.request_id,
                    request_hash=call.request_hash,
                ),
                address=call.address,
            )
        )
        try:
            call.admission = await asyncio.wait_for(asyncio.shield(pending), self.deadline)
        except TimeoutError:
            log.warning("admission_timed_out", seconds=self.deadline, service=call.service)
            call.admitting = pending
            raise errors.admission_timeout(self.deadline) from None
        except asyncio.CancelledError:
            call.admitting = pending
            raise
