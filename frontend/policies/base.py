"""The hooks every request policy has, the request they act on, and how it ended.

A policy sees each API request that goes to the broker at three moments:
``before`` it is sent (where it may refuse it by raising an ApiError, or
answer it itself, as a replay does), and when it ends, either ``answered``
or ``failed``, with its :class:`Ending`. :class:`Policies` runs an ordered
list of them: the ``before`` hooks in order, and once the request has ended,
every ending hook in the same order, each whatever the others did.

A request ends exactly once when it was admitted, whichever way it ends:
answered, failed, refused by a policy after admission, cancelled, or
admitted only after its caller stopped waiting. Its :class:`Ending` says how
(``outcome``, as the usage record names it) and whether it is charged (by
the rule of ``frontend.billing``).
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from dataclasses import dataclass, field
from functools import cached_property
from typing import Any

import structlog

from accounts.records import Admission
from broker.contract.generation import GenerationResult
from frontend import billing

log = structlog.get_logger(__name__)


@dataclass
class Call:
    """One API request on its way through the policies.

    The handler fills in what the request says; the policies fill in the rest:
    ``admission`` once the key admitted it, ``admitting`` while an admission is
    still running that the caller stopped waiting for, ``replay`` when the request
    is answered by an earlier attempt's answer, and ``first_attempt`` (the future
    its retries wait on) when it is an idempotent request's first attempt.
    """

    secret: str
    service: str
    request_id: str
    endpoint: str = ""  # the API path it was sent to
    address: str = ""
    idempotency_key: str | None = None
    request_hash: str | None = None
    streamed: bool = False
    payload: dict[str, Any] = field(default_factory=dict)
    sent_at: float | None = None  # monotonic time it went to the broker
    admission: Admission | None = None
    admitting: asyncio.Future[Admission] | None = None
    replay: list[Any] | None = None  # [the earlier attempt's answer]
    first_attempt: asyncio.Future[Any] | None = None
    running_as: bytes | None = None  # its key, as the admission counts its requests in flight here
    # Whether the client has gone (its connection closed), asked before a whole answer is charged.
    client_left: Callable[[], bool] = lambda: False
    ending: Ending | None = None  # how it ended, once it has (its ending hooks may still be running)


@dataclass(frozen=True)
class Ending:
    """How a request ended: its usage record's ``outcome``, whether it is ``charged``,
    what was delivered (``result``: one answer, or a list of one per choice), the
    ``error`` it failed with (a bus error or an ApiError), and whether the answer was
    an earlier attempt's (``replayed``) rather than generated for it."""

    outcome: str
    charged: bool
    result: Any = None
    error: Exception | None = None
    replayed: bool = False

    @property
    def answered(self) -> bool:
        return self.outcome == billing.OK

    @property
    def results(self) -> list[Any]:
        """What was delivered, one per choice."""
        return self.result if isinstance(self.result, list) else [self.result]

    @cached_property
    def answers(self) -> list[GenerationResult]:
        """:attr:`results` read as the contract's answers, once for every policy."""
        return [GenerationResult.read(result) for result in self.results]


class Policy:
    """A request policy: each hook does nothing unless the policy overrides it."""

    async def before(self, call: Call) -> None:
        """Before ``call`` is sent; raise an ApiError to refuse it."""

    async def answered(self, call: Call, ending: Ending) -> None:
        """``call`` ended with its answer."""

    async def failed(self, call: Call, ending: Ending) -> None:
        """``call`` ended without its whole answer: an error, a refusal after admission, a cancel."""


class Policies:
    """An ordered list of policies, run as the module says."""

    def __init__(self, policies: list[Policy]) -> None:
        self.policies = list(policies)

    async def before(self, call: Call) -> None:
        for policy in self.policies:
            await policy.before(call)
            if call.replay is not None:
                return  # answered already: nothing further to judge

    async def end(self, call: Call, ending: Ending) -> None:
        """Run every ending hook for ``call``; one that fails is logged, and the rest still run."""
        for policy in self.policies:
            hook = policy.answered if ending.answered else policy.failed
            try:
                await hook(call, ending)
            except Exception:
                log.exception("policy_failed", policy=type(policy).__name__, outcome=ending.outcome)
