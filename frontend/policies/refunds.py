"""Refunds: a request that failed uncharged gets its count back at once.

The usage record would give it back too (see ``accounts.ledger``), but only
when the background writer writes it: refunding now means a client that
retries a failure finds its quota there. A request that ended because its
client left is refunded by its record alone: nobody is there to retry.
"""

from __future__ import annotations

import structlog

from frontend import errors
from frontend.accounts_calls import AccountsCalls
from frontend.policies.base import Call, Ending, Policy

log = structlog.get_logger(__name__)


class Refunds(Policy):
    def __init__(self, accounts: AccountsCalls) -> None:
        self.accounts = accounts

    async def failed(self, call: Call, ending: Ending) -> None:
        admission = call.admission
        if ending.charged or ending.error is None or admission is None:
            return
        try:
            await self.accounts.run(lambda: self.accounts.store.refund(admission))
        except errors.ApiError:
            log.error("refund_failed", key_prefix=admission.key_prefix, outcome=ending.outcome)
