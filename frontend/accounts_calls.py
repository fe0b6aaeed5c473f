"""The accounts store as the event loop calls it: off the loop, its errors as ApiErrors,
and wrong keys counted towards blocking the address that sent them.

Database calls run on threads, batched (see ``frontend.blocking``), so they
never block the event loop. The brake on key guessing is here because every
call that checks a key (admitting a request, identifying a caller) feeds it.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Awaitable, Callable
from typing import TypeVar

from accounts import errors as accounts_errors
from accounts.key_brake import BrakePolicy
from accounts.records import Admission
from accounts.store import AccountStore, AdmissionAsked
from config.settings import FrontendSettings
from frontend import errors
from frontend.blocking import BatchedCalls
from frontend.key_brake import KeyBrake

T = TypeVar("T")


class AccountsCalls:
    """Calls on ``store`` for the event loop, under the brake ``settings`` describe."""

    def __init__(self, store: AccountStore, settings: FrontendSettings) -> None:
        self.store = store
        self._database = BatchedCalls(store.useful_threads, "accounts")
        self._late: set[asyncio.Task[None]] = set()  # admissions nobody waits for, checked as they end
        self.brake = KeyBrake(
            BrakePolicy(
                settings.key_failure_limit,
                settings.key_failure_window,
                settings.key_block_seconds,
                settings.key_block_max_seconds,
            )
        )

    def close(self) -> None:
        self._database.close()

    async def run(self, call: Callable[[], T], address: str | None = None) -> T:
        """``call()`` on a database thread; an accounts error becomes its ApiError, and a wrong
        key from client ``address`` (when given) counts towards blocking that address."""
        return await self._checked(self._database.call(call), address)

    def admitting(self, asked: AdmissionAsked) -> asyncio.Future[Admission]:
        """The future of the store's admission of ``asked``, counted with the others asked
        meanwhile in one transaction (:meth:`AccountStore.admit_many`); it holds the store's
        own error, which :meth:`admitted` turns into :meth:`run`'s."""
        return self._database.grouped(asked, self.store.admit_many)

    async def admitted(self, admitting: asyncio.Future[Admission], address: str) -> Admission:
        """The admission ``admitting`` (done) holds; its error as :meth:`run` raises it."""
        return await self._checked(admitting, address)

    def check_when_done(self, admitting: asyncio.Future[Admission], address: str) -> None:
        """An admission its caller stopped waiting for (past its deadline, or gone) still counts a
        wrong key from ``address`` towards the brake once it ends."""

        async def checked() -> None:
            with contextlib.suppress(errors.ApiError):
                await self._checked(admitting, address)

        task = asyncio.ensure_future(checked())
        self._late.add(task)
        task.add_done_callback(self._late.discard)

    async def _checked(self, pending: Awaitable[T], address: str | None) -> T:
        try:
            return await pending
        except accounts_errors.AccountsError as error:
            wrong_key = isinstance(error, accounts_errors.AdmissionDenied) and (
                error.reason in accounts_errors.KEY_CHECK_FAILURES
            )
            if address is not None and wrong_key:
                await self.brake.count_failure(address, self.record_failure, time.monotonic())
            raise errors.from_accounts(error) from None

    def refuse_if_blocked(self, address: str) -> None:
        """A 429 for an ``address`` blocked for sending too many wrong keys, before its key is looked at."""
        blocked_for = self.brake.blocked_for(address, time.monotonic())
        if blocked_for > 0:
            raise errors.too_many_failed_keys(blocked_for)

    async def blocked_addresses(self, policy: BrakePolicy) -> list[tuple[str, float]]:
        """The addresses the policy's brake blocks now, from the accounts database."""
        return await self.run(lambda: self.store.blocked_addresses(policy))

    async def record_failure(self, address: str, policy: BrakePolicy) -> float:
        """Count a failure of ``address`` in the accounts database (see :mod:`accounts.key_brake`)."""
        return await self.run(lambda: self.store.record_key_failure(address, policy))
