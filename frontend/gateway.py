"""What one API request does past HTTP: admit the key, ask the broker, settle the bill.

Database calls run on threads, batched (see ``frontend.blocking``), so they
never block the event loop.
A request is counted at admission and settled by the rule of
``frontend.billing``; every admitted request leaves exactly one usage
record, whatever happens to it: it fails, its client leaves, or its
admission comes back only after the caller was told it timed out.

A request for ``n`` choices is one admission and one usage record; each
choice is its own bus request (``<request id>.<index>``), sent together so
that a batching worker decodes them as rows of one batch.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from functools import partial
from typing import Any, TypeVar

import structlog

from accounts import errors as accounts_errors
from accounts.key_brake import BrakePolicy
from accounts.records import Admission, KeyInfo, UsageRecord
from accounts.store import AccountStore
from broker.client import AsyncClient
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
from frontend import billing, errors
from frontend.blocking import BatchedCalls
from frontend.key_brake import KeyBrake
from frontend.replays import FirstAttemptFailed, ReplayCache
from frontend.services import ServiceDirectory

log = structlog.get_logger(__name__)
T = TypeVar("T")


def share_of(admission: Admission) -> Share:
    """The broker queues each key's requests as one tenant's, with the key's concurrency limit and weight."""
    return Share(f"key-{admission.key_id}", admission.max_concurrent or 0, admission.weight)


class Gateway:
    """The frontend's link to the accounts store and the broker.

    ``settings`` gives deadlines and limits; ``store`` is the accounts store
    (called on as many threads as it can use); ``bus`` the asyncio broker
    client, started by the caller; ``services`` those this frontend was
    configured with, which are never "unknown": while the broker does not
    know one yet (it just restarted, its workers are loading) its requests
    are answered 503, to be retried, not 404.
    """

    def __init__(
        self, settings: FrontendSettings, store: AccountStore, bus: AsyncClient, services: list[str] = ()
    ) -> None:
        self.settings = settings
        self.store = store
        self.bus = bus
        self.services = frozenset(services)
        self.directory = ServiceDirectory(bus, self.services)
        self._database = BatchedCalls(store.useful_threads, "accounts")
        self.replays = ReplayCache()
        self.brake = KeyBrake(
            BrakePolicy(
                settings.key_failure_limit,
                settings.key_failure_window,
                settings.key_block_seconds,
                settings.key_block_max_seconds,
            )
        )
        # Set when the server is stopping: requests cancelled then were not left by their client.
        self.closing = False

    def close(self) -> None:
        self._database.close()

    async def _in_thread(self, call: Callable[..., T], *args: Any, address: str | None = None) -> T:
        """``call(*args)`` on a database thread; an accounts error becomes its ApiError, and a wrong
        key from client ``address`` (when given) counts towards blocking that address."""
        try:
            return await self._database.call(lambda: call(*args))
        except accounts_errors.AccountsError as error:
            if address is not None and isinstance(error, accounts_errors.AdmissionDenied):
                await self._count_key_failure(address, error)
            raise errors.from_accounts(error) from None

    async def accounts(self, call: Callable[[], T]) -> T:
        """``call``, a call on the store, off the event loop; an accounts error becomes its ApiError."""
        return await self._in_thread(call)

    async def identify(self, secret: str, address: str) -> KeyInfo:
        """The caller's key, without counting a request; ``address`` is the client's, for the brake."""
        self._refuse_if_blocked(address)
        return await self._in_thread(self.store.identify, secret, address=address)

    def _refuse_if_blocked(self, address: str) -> None:
        blocked_for = self.brake.blocked_for(address, time.monotonic())
        if blocked_for > 0:
            raise errors.too_many_failed_keys(blocked_for)

    async def _count_key_failure(self, address: str, denial: accounts_errors.AdmissionDenied) -> None:
        """Count a wrong key from ``address`` towards blocking it (the refusal itself stands)."""
        if denial.reason in accounts_errors.KEY_CHECK_FAILURES:
            await self.brake.count_failure(address, self.record_failure, time.monotonic())

    async def record_failure(self, address: str, policy: BrakePolicy) -> float:
        """Count a failure of ``address`` in the accounts database (see :mod:`accounts.key_brake`)."""
        return await self._in_thread(self.store.record_key_failure, address, policy)

    async def admit(
        self,
        secret: str,
        service: str,
        idempotency_key: str | None = None,
        request_id: str | None = None,
        address: str = "",
        request_hash: str | None = None,
    ) -> Admission:
        """Admit and count one request, within the admission deadline.

        Past ``admission_timeout`` (or the request's own deadline, if shorter)
        the caller gets a 503; if the database admits the request later after
        all, or after its client left, it is recorded and refunded then. An
        ``address`` (the client's) that sent too many wrong keys is refused
        before its key is looked at; see :mod:`accounts.key_brake`.
        """
        self._refuse_if_blocked(address)
        pending = asyncio.ensure_future(
            self._in_thread(
                lambda: self.store.admit(
                    secret, service, idempotency_key=idempotency_key, request_id=request_id, request_hash=request_hash
                ),
                address=address,
            )
        )
        deadline = min(self.settings.admission_timeout, self.settings.request_timeout)
        try:
            return await asyncio.wait_for(asyncio.shield(pending), deadline)
        except TimeoutError:
            log.warning("admission_timed_out", seconds=deadline, service=service)
            pending.add_done_callback(self._settled_late(billing.ADMISSION_TIMEOUT))
            raise errors.admission_timeout(deadline) from None
        except asyncio.CancelledError:
            pending.add_done_callback(self._settled_late(self._cancelled_outcome()))
            raise

    def _settled_late(self, outcome: str) -> Callable[[asyncio.Future[Admission]], None]:
        """A callback that records, uncharged, an admission nobody waits for any more."""

        def settle(pending: asyncio.Future[Admission]) -> None:
            if not pending.cancelled() and pending.exception() is None:
                self._record(pending.result(), outcome, {}, None, time.monotonic(), charged=False)

        return settle

    def _as_configured(self, error: BusError, service: str) -> BusError:
        if isinstance(error, UnknownService) and service in self.services:
            return ServiceUnavailable(f"service {service} has no worker yet (starting or restarting); retry")
        return error

    def _cancelled_outcome(self) -> str:
        """Why a request was cancelled: its client left, or the server is stopping."""
        return billing.SHUTDOWN if self.closing else billing.CLIENT_LEFT

    async def settle_abandoned(self) -> None:
        """Refund and record the admissions that a frontend which died left open."""
        try:
            await self._in_thread(self.store.settle_abandoned)
        except errors.ApiError as error:
            log.warning("abandoned_sweep_failed", reason=error.message)

    async def usage(self, key_id: int, **filters: Any) -> list[Any]:
        return await self._in_thread(lambda: self.store.usage_report(key_id, **filters))

    async def complete(self, admission: Admission, request_id: str, payload: dict[str, Any]) -> Any:
        """The algorithm's result for ``payload``; raises ApiError, refunding when the server failed.

        A request with an idempotency key keeps its result for its retries:
        a replay gets the first attempt's result (waiting for it if needed).
        """
        ask = lambda: self.bus.request(  # noqa: E731
            admission.service,
            payload,
            timeout=self.settings.request_timeout,
            request_id=request_id,
            share=share_of(admission),
        )
        return await self._replayable(admission, payload, lambda: self._complete(admission, payload, ask))

    async def complete_choices(
        self, admission: Admission, request_id: str, payload: dict[str, Any], choices: int
    ) -> list[Any]:
        """``choices`` results for ``payload``, asked for together; as :meth:`complete` otherwise."""
        ask = lambda: _all_or_none(  # noqa: E731
            [
                self.bus.request(
                    admission.service,
                    _choice(payload, index),
                    timeout=self.settings.request_timeout,
                    request_id=f"{request_id}.{index}",
                    share=share_of(admission),
                )
                for index in range(choices)
            ]
        )
        return await self._replayable(admission, payload, lambda: self._complete(admission, payload, ask))

    async def _replayable(self, admission: Admission, payload: dict[str, Any], work: Callable[[], Awaitable[T]]) -> T:
        if admission.idempotency_key is None:
            return await work()
        first = self.replays.get(admission.admission_id)
        if admission.replayed and first is not None:
            log.info("request_replayed", key_prefix=admission.key_prefix)
            started = time.monotonic()
            try:
                result = await asyncio.shield(first)
            except FirstAttemptFailed:
                return await work()
            self._record(admission, billing.OK, payload, result, started, charged=False)
            return result
        pending = self.replays.begin(admission.admission_id)
        try:
            result = await work()
        except BaseException:
            self.replays.failed(admission.admission_id, pending)
            raise
        self.replays.succeeded(pending, result)
        return result

    async def _complete(self, admission: Admission, payload: dict[str, Any], ask: Callable[[], Awaitable[T]]) -> T:
        started = time.monotonic()
        try:
            result = await ask()
            for each in result if isinstance(result, list) else [result]:
                _check_whole(each)
        except BusError as error:
            error = self._as_configured(error, admission.service)
            await self._settle_failure(admission, error, payload, started, delivered=False)
            raise errors.from_bus(error) from None
        except asyncio.CancelledError:
            self._record(admission, self._cancelled_outcome(), payload, None, started, charged=False)
            raise
        except Exception:
            log.exception("request_crashed", key_prefix=admission.key_prefix)
            crash = InternalError("internal error")
            await self._settle_failure(admission, crash, payload, started, delivered=False)
            raise errors.from_bus(crash) from None
        self._record(admission, billing.OK, payload, result, started, charged=True)
        return result

    async def stream(
        self, admission: Admission, request_id: str, payload: dict[str, Any], choices: int = 1
    ) -> AsyncIterator[StreamEvent]:
        """Each streamed piece, then each choice's final summary; leaving early cancels the request."""
        started = time.monotonic()
        pieces: list[list[Any]] = [[] for _ in range(choices)]
        outcome = self._cancelled_outcome()
        delivered = False
        try:
            async for index, answer in self._answers(admission, request_id, payload, choices):
                # A choice's last answer is its summary: hold each one until the next arrives.
                if pieces[index]:
                    delivered = True
                    yield StreamEvent(piece=pieces[index][-1], index=index)
                pieces[index].append(answer)
            for answers in pieces:
                _check_whole(answers[-1] if answers else {})
            outcome = billing.OK
            delivered = True
            for index, answers in enumerate(pieces):
                yield StreamEvent(summary=answers[-1] if answers and isinstance(answers[-1], dict) else {}, index=index)
        except BusError as error:
            outcome = ""
            error = self._as_configured(error, admission.service)
            await self._settle_failure(admission, error, payload, started, delivered, [_joined(a) for a in pieces])
            raise errors.from_bus(error) from None
        finally:
            if outcome:
                joined = [_joined(answers) for answers in pieces]
                self._record(admission, outcome, payload, joined, started, charged=billing.is_charged(delivered))

    def _answers(
        self, admission: Admission, request_id: str, payload: dict[str, Any], choices: int
    ) -> AsyncIterator[tuple[int, Any]]:
        """(choice index, answer) of every choice's stream, as they arrive."""
        ask = partial(
            self.bus.stream, admission.service, timeout=self.settings.request_timeout, share=share_of(admission)
        )
        if choices == 1:
            return _indexed(ask(payload, request_id=request_id))
        return _merged([ask(_choice(payload, index), request_id=f"{request_id}.{index}") for index in range(choices)])

    async def _settle_failure(
        self,
        admission: Admission,
        error: BusError,
        payload: dict[str, Any],
        started: float,
        delivered: bool,
        result: Any = None,
    ) -> None:
        charged = billing.is_charged(delivered, error)
        if not charged:
            try:  # at once, so a retry finds its quota back; the record would do it otherwise
                await self._in_thread(self.store.refund, admission)
            except errors.ApiError:
                log.error("refund_failed", key_prefix=admission.key_prefix, code=error.code)
        log.info("request_failed", code=error.code, refunded=not charged, key_prefix=admission.key_prefix)
        self._record(admission, billing.outcome_of(error), payload, result, started, charged=charged)

    def _record(
        self, admission: Admission, outcome: str, payload: dict[str, Any], result: Any, started: float, charged: bool
    ) -> None:
        text = _input_text(payload)
        results = result if isinstance(result, list) else [result]
        output = "".join(_output_text(each) for each in results)
        usage = _summed_usage(results)
        try:
            self.store.record_usage(
                UsageRecord.from_texts(
                    admission=admission,
                    outcome=outcome,
                    latency_seconds=time.monotonic() - started,
                    request_text=text,
                    output_text=output,
                    prompt_tokens=_count(usage.get("prompt_tokens")),
                    completion_tokens=_count(usage.get("completion_tokens")),
                    charged=charged,
                )
            )
        except accounts_errors.AccountsError as error:
            log.error("usage_not_recorded", reason=error.message, key_prefix=admission.key_prefix)


def _check_whole(result: Any) -> None:
    """Raise when the worker says it cut the answer short: at the deadline (a timeout)
    or cancelled. Such an answer must never reach a client as a whole one."""
    if not isinstance(result, dict) or not result.get("interrupted"):
        return
    if result["interrupted"] == "deadline":
        raise RequestTimeout("the deadline passed before the answer was finished")
    raise WorkerError(f"the worker stopped the answer early ({result['interrupted']})")


def _summed_usage(results: list[Any]) -> dict[str, int | None]:
    """Token counts of one or more results (choices share one prompt)."""
    usages = [each.get("usage") if isinstance(each, dict) else None for each in results]
    usages = [usage for usage in usages if isinstance(usage, dict)]
    if not usages:
        return {}
    completions = [_count(usage.get("completion_tokens")) for usage in usages]
    return {
        "prompt_tokens": usages[0].get("prompt_tokens"),
        "completion_tokens": None if None in completions else sum(completions),  # type: ignore[arg-type]
    }


def _choice(payload: dict[str, Any], index: int) -> dict[str, Any]:
    """The payload of choice ``index``: a seeded request gets a different seed per choice."""
    seed = payload.get("seed")
    if index == 0 or not isinstance(seed, int) or isinstance(seed, bool):
        return payload
    return {**payload, "seed": seed + index}


async def _all_or_none(requests: list[Awaitable[T]]) -> list[T]:
    """Every request's result, in order; when one fails the others are cancelled and it raises."""
    tasks = [asyncio.ensure_future(request) for request in requests]
    try:
        return list(await asyncio.gather(*tasks))
    finally:
        for task in tasks:
            task.cancel()


async def _indexed(answers: AsyncIterator[Any]) -> AsyncIterator[tuple[int, Any]]:
    async with contextlib.aclosing(answers):
        async for answer in answers:
            yield 0, answer


async def _merged(streams: list[AsyncIterator[Any]]) -> AsyncIterator[tuple[int, Any]]:
    """(index, answer) from several streams as they arrive; the first failure ends them all."""
    arrivals: asyncio.Queue[tuple[int, Any, BaseException | None]] = asyncio.Queue()
    done = object()

    async def pump(index: int, stream: AsyncIterator[Any]) -> None:
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


def _count(value: Any) -> int | None:
    return value if isinstance(value, int) and not isinstance(value, bool) and value >= 0 else None


def _input_text(payload: dict[str, Any]) -> str:
    text = payload.get("text")
    if isinstance(text, str):
        return text
    messages = payload.get("messages")
    if isinstance(messages, list):
        return "\n".join(
            m.get("content", "") for m in messages if isinstance(m, dict) and isinstance(m.get("content"), str)
        )
    prompt = payload.get("prompt") or payload.get("input")
    if isinstance(prompt, list):
        return "\n".join(p for p in prompt if isinstance(p, str))
    return prompt if isinstance(prompt, str) else ""


def _output_text(result: Any) -> str:
    """The text an answer carries, for the usage record's character and word
    counts; answers that are not text (embeddings, say) count none, rather
    than being serialised again on the event loop just to be measured."""
    if isinstance(result, str):
        return result
    if isinstance(result, dict) and isinstance(result.get("output"), str):
        return result["output"]
    return ""


def _joined(pieces: list[Any]) -> dict[str, Any]:
    """A stream's pieces as one result, for the usage record."""
    summary = pieces[-1] if pieces and isinstance(pieces[-1], dict) else {}
    text = "".join(p["text"] for p in pieces[:-1] if isinstance(p, dict) and isinstance(p.get("text"), str))
    return {"output": text or summary.get("output", ""), "usage": summary.get("usage")}


@dataclass(frozen=True, slots=True)
class StreamEvent:
    """One step of a stream: a ``piece`` of output, or the final ``summary``, of choice ``index``."""

    piece: Any = None
    summary: dict[str, Any] | None = None
    index: int = 0
