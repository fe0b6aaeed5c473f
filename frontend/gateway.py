"""What one API request does past HTTP: pass the policies, ask the broker, end once.

Every request goes through the ordered list of :mod:`frontend.policies`
(admission, replays, refunds, usage records, metrics): their ``before``
hooks before it is sent, then their ending hooks exactly once, whatever
happens to it: it is answered, it fails, its client leaves, or its
admission comes back only after the caller was told it timed out. Whether
it is charged follows the rule of ``frontend.billing``. Failures come out
as :class:`frontend.errors.ApiError`, which names a code and nothing of
HTTP: answering is the handlers' business.

A request for ``n`` choices is one admission and one usage record; each
choice is its own bus request (``<request id>.<index>``), sent together so
that a batching worker decodes them as rows of one batch.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncGenerator, Callable, Coroutine, Sequence
from dataclasses import dataclass
from functools import partial
from typing import TYPE_CHECKING, Any, NoReturn, TypeVar

import structlog

from accounts import limits
from accounts.key_brake import BrakePolicy
from accounts.records import Admission, KeyInfo
from accounts.store import AccountStore
from broker.client import AsyncClient
from broker.contract.generation import GenerationPiece, GenerationResult
from broker.errors import (
    BusError,
    InternalError,
    RequestTimeout,
    ServiceUnavailable,
    UnknownService,
    WorkerError,
)
from broker.protocol import Share
from config.settings import FrontendSettings
from frontend import billing, errors, policies
from frontend.accounts_calls import AccountsCalls
from frontend.key_brake import KeyBrake
from frontend.policies import Call, Ending
from frontend.policies.usage import with_every_workers_time
from frontend.services import ServiceDirectory

if TYPE_CHECKING:
    from frontend.metrics import Metrics

log = structlog.get_logger(__name__)
T = TypeVar("T")


def share_of(admission: Admission) -> Share:
    """The broker queues each key's requests as one tenant's, with the key's concurrency limit and weight."""
    return Share(f"key-{admission.key_id}", admission.limit("max_concurrent") or 0, admission.limit("weight") or 1)


class Gateway:
    """The frontend's link to the accounts store and the broker.

    ``settings`` gives deadlines and limits; ``store`` is the accounts store
    (called on as many threads as it can use); ``bus`` the asyncio broker
    client, started by the caller; ``services`` those this frontend was
    configured with, which are never "unknown": while the broker does not
    know one yet (it just restarted, its workers are loading) its requests
    are answered 503, to be retried, not 404. ``metrics``, when given, gets
    each generated answer's figures.

    Every request goes through the ordered :mod:`frontend.policies`;
    failures come out as :class:`frontend.errors.ApiError`, which names a
    code and nothing of HTTP.
    """

    def __init__(
        self,
        settings: FrontendSettings,
        store: AccountStore,
        bus: AsyncClient,
        services: Sequence[str] = (),
        metrics: Metrics | None = None,
    ) -> None:
        self.settings = settings
        self.store = store
        self.bus = bus
        self.services = frozenset(services)
        self.directory = ServiceDirectory(bus, self.services)
        self._accounts = AccountsCalls(store, settings)
        self.policies = policies.standard(settings, self._accounts, metrics)
        # Requests ending in the background: answered ones, and those admitted after their caller left.
        self._ending: set[asyncio.Future[None]] = set()
        # Set when the server is stopping: requests cancelled then were not left by their client.
        self.closing = False

    def close(self) -> None:
        self._accounts.close()

    async def accounts(self, call: Callable[[], T]) -> T:
        """``call``, a call on the store, off the event loop; an accounts error becomes its ApiError."""
        return await self._accounts.run(call)

    async def identify(self, secret: str, address: str) -> KeyInfo:
        """The caller's key, without counting a request; ``address`` is the client's, for the brake."""
        self._accounts.refuse_if_blocked(address)
        return await self._accounts.run(lambda: self.store.identify(secret), address=address)

    async def sync_brakes(self, *others: KeyBrake) -> None:
        """Take in the blocked addresses every frontend recorded: the API's brake and ``others``
        (the console's)."""
        for brake in (self._accounts.brake, *others):
            await brake.sync(self._accounts.blocked_addresses, time.monotonic())

    async def record_failure(self, address: str, policy: BrakePolicy) -> float:
        """Count a failure of ``address`` in the accounts database (see :mod:`accounts.key_brake`)."""
        return await self._accounts.record_failure(address, policy)

    async def sweep(self) -> None:
        """Refund and record the admissions that a frontend which died left open, and forget the
        texts past their retention."""
        try:
            await self._accounts.run(self.store.settle_abandoned)
            await self._accounts.run(self.store.forget_old_texts)
        except errors.ApiError as error:
            log.warning("accounts_sweep_failed", reason=error.message)

    async def usage(self, key_id: int, **filters: Any) -> list[Any]:
        return await self._accounts.run(lambda: self.store.usage_report(key_id, **filters))

    def _as_configured(self, error: BusError, service: str) -> BusError:
        if isinstance(error, UnknownService) and service in self.services:
            return ServiceUnavailable(f"service {service} has no worker yet (starting or restarting); retry")
        return error

    def _cancelled_outcome(self) -> str:
        """Why a request was cancelled: its client left, or the server is stopping."""
        return billing.SHUTDOWN if self.closing else billing.CLIENT_LEFT

    async def _end(self, call: Call, ending: Ending) -> None:
        """End ``call`` before going on (a failure's refund lands before its error is answered);
        a cancel meanwhile does not stop its ending (it is raised after)."""
        call.ending = ending
        await asyncio.shield(self.policies.end(call, ending))

    def _end_soon(self, call: Call, ending: Ending) -> None:
        """End ``call`` in the background. An answer is handed over at once: waiting for its
        ending would let a cancel (a shutdown) turn a charged answer into an error."""
        call.ending = ending
        task = asyncio.ensure_future(self.policies.end(call, ending))
        self._ending.add(task)
        task.add_done_callback(self._ending.discard)

    async def wait_for_endings(self, timeout: float) -> None:
        """Let the requests ending in the background end, within ``timeout`` seconds (at shutdown)."""
        if self._ending:
            await asyncio.wait(set(self._ending), timeout=timeout)

    async def _send_after_policies(self, call: Call) -> None:
        """Run the policies' ``before`` hooks; a request they stop after admitting it ends
        there, uncharged (and so does one admitted after its caller stopped waiting)."""
        try:
            await self.policies.before(call)
        except asyncio.CancelledError:
            await self._end_unsent(call, self._cancelled_outcome(), None)
            raise
        except errors.ApiError as error:
            outcome = billing.ADMISSION_TIMEOUT if call.admitting is not None else error.code
            await self._end_unsent(call, outcome, error)
            raise
        call.sent_at = time.monotonic()

    async def _end_unsent(self, call: Call, outcome: str, error: errors.ApiError | None) -> None:
        if call.admission is not None:
            await self._end(call, Ending(outcome, charged=False, error=error))
        elif call.admitting is not None:
            call.admitting.add_done_callback(lambda admitting: self._end_when_admitted(call, admitting, outcome))

    def _end_when_admitted(self, call: Call, admitting: asyncio.Future[Admission], outcome: str) -> None:
        if admitting.cancelled() or admitting.exception() is not None:
            return
        call.admission = admitting.result()
        self._end_soon(call, Ending(outcome, charged=False))

    async def complete(self, call: Call, payload: dict[str, Any], choices: int | None = None) -> Any:
        """The algorithm's result for ``payload`` (a list of ``choices`` results, asked for
        together, when ``choices`` is given); raises ApiError, refunding when the server failed."""
        call.payload = payload
        await self._send_after_policies(call)
        if call.replay is not None:
            self._end_soon(call, Ending(billing.OK, charged=False, result=call.replay[0], replayed=True))
            return call.replay[0]
        admission = call.admission
        assert admission is not None
        try:
            asks = self._per_choice(call, self.bus.request, choices)
            result = await asks[0] if choices is None else await _all_or_none(asks)
            for each in result if isinstance(result, list) else [result]:
                _check_whole(GenerationResult.read(each))
        except BusError as error:
            await self._fail(call, self._as_configured(error, admission.service), delivered=False)
        except asyncio.CancelledError:
            await self._end(call, Ending(self._cancelled_outcome(), charged=False))
            raise
        except Exception:
            log.exception("request_crashed", key_prefix=admission.key_prefix)
            await self._fail(call, InternalError("internal error"), delivered=False)
        if call.client_left():  # its close not yet handled: the answer can reach nobody
            await self._end(call, Ending(billing.CLIENT_LEFT, charged=False))
            raise asyncio.CancelledError
        self._end_soon(call, Ending(billing.OK, charged=True, result=result))
        return result

    async def stream(
        self, call: Call, payload: dict[str, Any], choices: int = 1
    ) -> AsyncGenerator[StreamEvent, None]:
        """Each streamed piece, then each choice's final summary; leaving early cancels the request."""
        call.payload = payload
        call.streamed = True
        await self._send_after_policies(call)
        pieces: list[list[GenerationPiece]] = [[] for _ in range(choices)]
        # A choice's last answer is its summary: each one is held until the next arrives.
        held: list[Any] = [_NOTHING] * choices
        answered: Ending | None = None
        delivered = failed = False
        try:
            async for index, answer in self._answers(call, choices):
                # Swapped before the yield: a stream closed there keeps each answer once.
                previous, held[index] = held[index], answer
                if previous is not _NOTHING:
                    delivered = True
                    pieces[index].append(piece := GenerationPiece.read(previous))
                    yield StreamEvent(piece=piece, index=index)
            summaries = [GenerationResult() if last is _NOTHING else GenerationResult.read(last) for last in held]
            for summary in summaries:
                _check_whole(summary)
            answered = Ending(billing.OK, charged=True, result=list(map(_joined, pieces, summaries)))
            for index, summary in enumerate(summaries):
                yield StreamEvent(summary=summary, index=index)
        except BusError as error:
            assert call.admission is not None
            failed = True
            error = self._as_configured(error, call.admission.service)
            await self._fail(call, error, delivered, _cut_short(pieces, held))
        finally:
            if answered is not None:
                self._end_soon(call, answered)
            elif not failed:
                joined = _cut_short(pieces, held)
                await self._end(call, Ending(self._cancelled_outcome(), billing.is_charged(delivered), joined))

    def _answers(self, call: Call, choices: int) -> AsyncGenerator[tuple[int, Any], None]:
        """(choice index, answer) of every choice's stream, as they arrive."""
        if choices == 1:
            return _indexed(self._per_choice(call, self.bus.stream, None)[0])
        return _merged(self._per_choice(call, self.bus.stream, choices))

    def _per_choice(self, call: Call, send: Callable[..., T], choices: int | None) -> list[T]:
        """``send`` (a bus request or stream) of ``call``'s payload: once under its request id when
        ``choices`` is None, else once per choice, each under ``<request id>.<index>``."""
        admission = call.admission
        assert admission is not None
        send = partial(send, admission.service, timeout=self.settings.request_timeout, share=share_of(admission))
        payload = _with_key_limits(call.payload, admission)
        if choices is None:
            return [send(payload, request_id=call.request_id)]
        return [send(_choice(payload, index), request_id=f"{call.request_id}.{index}") for index in range(choices)]

    async def _fail(self, call: Call, error: BusError, delivered: bool, result: Any = None) -> NoReturn:
        """End ``call`` as failed with ``error`` (after ``delivered`` anything or not) and raise its ApiError."""
        assert call.admission is not None, "only an admitted call reaches the bus"
        charged = billing.is_charged(delivered, error)
        log.info("request_failed", code=error.code, refunded=not charged, key_prefix=call.admission.key_prefix)
        await self._end(call, Ending(billing.outcome_of(error), charged=charged, result=result, error=error))
        raise errors.from_bus(error) from None


def _check_whole(result: GenerationResult) -> None:
    """Raise when the worker says it cut the answer short: at the deadline (a timeout)
    or cancelled. Such an answer must never reach a client as a whole one."""
    if not result.interrupted:
        return
    if result.interrupted == "deadline":
        raise RequestTimeout("the deadline passed before the answer was finished")
    raise WorkerError(f"the worker stopped the answer early ({result.interrupted})")


def _with_key_limits(payload: Any, admission: Admission) -> Any:
    """The payload with the key's limits that workers judge (the contract's ``key_limits``)."""
    if not isinstance(payload, dict):
        return payload
    judged = {name: value for name in limits.JUDGED_BY_WORKERS if (value := admission.limit(name)) is not None}
    if judged:
        return {**payload, "key_limits": judged}
    if "key_limits" in payload:  # only the key's own limits reach a worker, never a client's
        return {name: value for name, value in payload.items() if name != "key_limits"}
    return payload


def _choice(payload: dict[str, Any], index: int) -> dict[str, Any]:
    """The payload of choice ``index``: a seeded request gets a different seed per choice."""
    seed = payload.get("seed")
    if index == 0 or not isinstance(seed, int) or isinstance(seed, bool):
        return payload
    return {**payload, "seed": seed + index}


async def _all_or_none(requests: Sequence[Coroutine[Any, Any, T]]) -> list[T]:
    """Every request's result, in order; when one fails the others are cancelled and it raises."""
    tasks = [asyncio.ensure_future(request) for request in requests]
    try:
        return list(await asyncio.gather(*tasks))
    finally:
        for task in tasks:
            task.cancel()


async def _indexed(answers: AsyncGenerator[Any, None]) -> AsyncGenerator[tuple[int, Any], None]:
    async with contextlib.aclosing(answers):
        async for answer in answers:
            yield 0, answer


async def _merged(streams: list[AsyncGenerator[Any, None]]) -> AsyncGenerator[tuple[int, Any], None]:
    """(index, answer) from several streams as they arrive; the first failure ends them all."""
    arrivals: asyncio.Queue[tuple[int, Any, BaseException | None]] = asyncio.Queue()
    done = object()

    async def pump(index: int, stream: AsyncGenerator[Any, None]) -> None:
        try:
            async with contextlib.aclosing(stream):
                async for answer in stream:
                    arrivals.put_nowait((index, answer, None))
            arrivals.put_nowait((index, done, None))
        except Exception as error:  # handed to the consumer, which raises it
            arrivals.put_nowait((index, None, error))

    tasks = [asyncio.ensure_future(pump(index, stream)) for index, stream in enumerate(streams)]
    try:
        running = len(tasks)
        while running:
            index, answer, error = await arrivals.get()
            if error is not None:
                raise error
            if answer is done:
                running -= 1
            else:
                yield index, answer
    finally:
        for task in tasks:
            task.cancel()


def _joined(pieces: list[GenerationPiece], summary: GenerationResult) -> dict[str, Any]:
    """A choice's stream that ended, as one result for the policies: the text it streamed (or,
    from an algorithm that does not stream, its summary's) and the summary's usage, with the
    device time of every worker it went through."""
    joined = {**summary.to_answer(), "output": "".join(piece.text for piece in pieces) or summary.output}
    if "usage" in summary.model_fields_set:
        joined["usage"] = with_every_workers_time(summary.usage, [*pieces, summary])
    return joined


def _cut_short(pieces: list[list[GenerationPiece]], held: list[Any]) -> list[dict[str, Any]]:
    """Each choice of a stream cut short (its client left, its worker or broker was lost), as
    one result for the policies: what reached this frontend, the held answer included, and
    the usage of its last piece that carries one, so that those tokens are billed all the same."""
    results = []
    for received, last in zip(pieces, held):
        if last is not _NOTHING:
            received = [*received, GenerationPiece.read(last)]
        joined: dict[str, Any] = {"output": "".join(piece.text for piece in received)}
        usage = next((piece.usage for piece in reversed(received) if piece.usage is not None), None)
        if usage is not None:
            joined["usage"] = with_every_workers_time(usage, received)
        results.append(joined)
    return results


_NOTHING = object()


@dataclass(frozen=True, slots=True)
class StreamEvent:
    """One step of a stream: a ``piece`` of output, or the final ``summary``, of choice ``index``."""

    piece: GenerationPiece | None = None
    summary: GenerationResult | None = None
    index: int = 0
