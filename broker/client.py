"""Direct ZeroMQ clients of the broker, for internal services: synchronous and asyncio.

Both send a request to a service and return the algorithm's JSON result, or
raise a :class:`broker.errors.BusError` subclass (``RequestTimeout``,
``Overloaded``, ``WorkerError``, ``UnknownService``, ``BrokerUnavailable``...).

    with Client("tcp://127.0.0.1:5555") as client:
        client.request("default", {"text": "Is this real?"})

    async with AsyncClient("tcp://127.0.0.1:5555") as client:
        await client.request("default", {"text": "Is this real?"})
        async for piece in client.stream("default", {"text": "Tell me"}):
            ...

Against a broker with CURVE, pass the client's key pair and the broker's
public key: ``Client(endpoint, curve=CurveKeys.load("me.key_secret", "broker.key"))``
(``broker.security.peer_keys`` reads them from settings).
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import json
import secrets
import time
from collections.abc import AsyncIterator, Iterator
from typing import Any

import structlog
import zmq

from broker import protocol
from broker.errors import BrokerUnavailable, BusError, ProtocolError, VersionRefused, error_from_code
from broker.security import CurveKeys, HandshakeWatch, connect_to_broker
from broker.state import DISCOVERY_SERVICE, STATUS_SERVICE

log = structlog.get_logger(__name__)

# Extra seconds past a request's deadline before the client stops waiting
# for the broker's own TIMEOUT answer.
DEADLINE_GRACE = 1.0
# How long closing an AsyncClient may wait to deliver the CANCELs of abandoned requests.
CLOSE_LINGER_MS = 200


class RequestIds:
    """Request ids unique across processes without a system call each: a
    random per-process prefix and a counter (os.urandom is slow on some VMs)."""

    def __init__(self) -> None:
        self._prefix = secrets.token_hex(6)
        self._counter = itertools.count(1)

    def __call__(self) -> str:
        return f"{self._prefix}{next(self._counter):x}"


new_request_id = RequestIds()


def build_request(
    service: str,
    payload: Any,
    timeout: float,
    stream: bool,
    request_id: str | None,
    share: protocol.Share | None = None,
) -> protocol.ClientRequest:
    body = json.dumps(payload, ensure_ascii=False).encode("utf-8")
    return protocol.ClientRequest(
        service, request_id or new_request_id(), max(1, int(timeout * 1000)), stream, body, share
    )


def outcome(message: protocol.Message) -> Any:
    """The JSON body of a REPLY, PARTIAL or FINAL; raises the error an ERROR carries."""
    if isinstance(message, protocol.ClientError):
        raise error_from_code(message.code, message.message, message.error_type)
    return json.loads(message.body)  # type: ignore[attr-defined]


def is_last(message: protocol.Message) -> bool:
    return not isinstance(message, protocol.ClientPartial)


def is_version_refusal(message: protocol.Message) -> bool:
    """The broker does not speak our protocol version: every request fails, whatever its id."""
    return isinstance(message, protocol.ClientError) and message.code == VersionRefused.code


class Client:
    """A blocking client; one request at a time.

    ``endpoint`` is the broker's; ``timeout`` the default deadline in
    seconds; ``socket_type`` is ``zmq.DEALER`` (default, heartbeats while
    waiting so a dead broker is noticed within ``heartbeat_interval`` x
    ``liveness``) or ``zmq.REQ`` (plain lockstep, no heartbeats).
    ``curve``, this client's key pair and the broker's public key, makes
    the connection CURVE (needed by a broker with ``curve.server_key``).
    A broker that refuses the connection (a key not in its allowlists, CURVE
    on one side only) makes a request raise ``BrokerUnavailable`` saying so,
    within the request's timeout, never hang.
    """

    def __init__(
        self,
        endpoint: str,
        timeout: float = 60.0,
        socket_type: int = zmq.DEALER,
        heartbeat_interval: float = 1.0,
        liveness: int = 3,
        context: zmq.Context | None = None,
        curve: CurveKeys | None = None,
    ) -> None:
        self.endpoint = endpoint
        self.timeout = timeout
        self.socket_type = socket_type
        self.heartbeat_interval = heartbeat_interval
        self.liveness_period = heartbeat_interval * liveness
        self.context = context or zmq.Context.instance()
        self.curve = curve
        self.socket = self._open()

    def __enter__(self) -> Client:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        self.watch.close()
        self.socket.close(linger=0)

    def _open(self) -> zmq.Socket:
        socket = connect_to_broker(self.context, self.socket_type, self.endpoint, self.curve)
        self.watch = HandshakeWatch(socket)
        return socket

    def _refused(self) -> None:
        """Raise, saying why, when the broker refused this client's handshake."""
        reason = self.watch.failure()
        if reason is not None:
            raise BrokerUnavailable(f"the broker at {self.endpoint} refused this client: {reason}")

    def _send(self, frames: list[bytes], give_up: float) -> None:
        """Send ``frames`` without ever blocking past ``give_up``: a socket that cannot send (no
        connection: the broker is down or refused the handshake) fails the request instead."""
        while True:
            try:
                self.socket.send_multipart(frames, zmq.NOBLOCK)
                return
            except zmq.Again:
                self._refused()
                left = give_up - time.monotonic()
                if left <= 0:
                    raise BrokerUnavailable(f"cannot send to the broker at {self.endpoint}") from None
                self.socket.poll(min(left, 0.1) * 1000, zmq.POLLOUT)

    @property
    def _delimiter(self) -> bool:
        return self.socket_type != zmq.REQ

    def request(self, service: str, payload: Any, timeout: float | None = None, request_id: str | None = None) -> Any:
        """Send ``payload`` to ``service`` and return the result."""
        for message in self._exchange(build_request(service, payload, timeout or self.timeout, False, request_id)):
            return outcome(message)

    def stream(self, service: str, payload: Any, timeout: float | None = None) -> Iterator[Any]:
        """Yield each streamed piece, then the final summary, of one request."""
        for message in self._exchange(build_request(service, payload, timeout or self.timeout, True, None)):
            yield outcome(message)

    def status(self) -> dict[str, Any]:
        """The broker's view: services, workers, queues and counters."""
        return self.request(STATUS_SERVICE, {})

    def service_info(self, service: str) -> dict[str, Any]:
        """Whether ``service`` exists, and its idle and busy workers and queue depth."""
        return self.request(DISCOVERY_SERVICE, {"service": service})

    def _exchange(self, request: protocol.ClientRequest) -> Iterator[protocol.Message]:
        give_up = time.monotonic() + request.timeout_ms / 1000 + DEADLINE_GRACE
        self._send(protocol.encode(request, self._delimiter), give_up)
        heard = pinged = time.monotonic()
        incarnation = None
        finished = False
        try:
            while True:
                now = time.monotonic()
                self._refused()
                if now >= give_up or (self._delimiter and now - heard > self.liveness_period):
                    raise BrokerUnavailable(f"no answer from the broker at {self.endpoint}")
                if self._delimiter and now - pinged >= self.heartbeat_interval:
                    # While waiting, even while pieces arrive: the broker drops silent clients.
                    self._send(protocol.encode(protocol.ClientHeartbeat()), give_up)
                    pinged = now
                if not self.socket.poll(min(self.heartbeat_interval, give_up - now) * 1000):
                    continue
                heard = time.monotonic()
                message = self._receive()
                if isinstance(message, protocol.ClientHeartbeat) and message.incarnation:
                    if incarnation not in (None, message.incarnation):
                        raise BrokerUnavailable("the broker restarted and lost this request")
                    incarnation = message.incarnation
                if getattr(message, "request_id", None) != request.request_id and not is_version_refusal(message):
                    continue  # a heartbeat, or a late answer to an abandoned request
                finished = is_last(message)
                yield message
                if finished:
                    return
        finally:
            if not finished:
                self._abandon(request.request_id)

    def _receive(self) -> protocol.Message:
        try:
            return protocol.decode(self.socket.recv_multipart(), self._delimiter)
        except ProtocolError as exc:
            raise BusError(f"malformed answer from the broker: {exc}") from None

    def _abandon(self, request_id: str) -> None:
        if self._delimiter:
            with contextlib.suppress(zmq.Again):  # no connection: nobody to tell
                self.socket.send_multipart(protocol.encode(protocol.ClientCancel(request_id)), zmq.NOBLOCK)
        else:  # a REQ socket stuck mid-exchange must be replaced (lazy pirate)
            self.close()
            self.socket = self._open()


class AsyncClient:
    """An asyncio client with many requests in flight on one DEALER socket.

    ``endpoint`` is the broker's; ``timeout`` the default deadline in
    seconds. It pings the broker every ``heartbeat_interval``; after
    ``liveness`` silent intervals the broker is taken for lost: pending
    requests fail with ``BrokerUnavailable``, new ones fail at once, and a
    fresh socket keeps pinging until the broker answers again.

    The socket is a plain one watched with ``loop.add_reader`` and drained
    in one go whenever it is readable: zmq.asyncio's future per receive
    cost more CPU per request than the rest of the frontend's bus work.
    ``curve``, as for :class:`Client`, makes the connection CURVE.
    """

    def __init__(
        self,
        endpoint: str,
        timeout: float = 60.0,
        heartbeat_interval: float = 1.0,
        liveness: int = 3,
        context: zmq.Context | None = None,
        curve: CurveKeys | None = None,
    ) -> None:
        self.endpoint = endpoint
        self.curve = curve
        self.timeout = timeout
        self.heartbeat_interval = heartbeat_interval
        self.liveness_period = heartbeat_interval * liveness
        self.context = context or zmq.Context.instance()
        self.available = True
        self._pending: dict[str, asyncio.Queue[protocol.Message | BusError]] = {}
        self._socket: zmq.Socket | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._heartbeats: asyncio.Task[None] | None = None
        self._heard = 0.0
        self._closing = False
        self.incarnation: str | None = None

    async def __aenter__(self) -> AsyncClient:
        self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    def start(self) -> None:
        """Connect and start heartbeating (inside a running loop)."""
        self._loop = asyncio.get_running_loop()
        self._open()
        self._heartbeats = asyncio.create_task(self._heartbeat_loop())

    async def close(self) -> None:
        self._closing = True
        if self._heartbeats is not None:
            self._heartbeats.cancel()
            await asyncio.gather(self._heartbeats, return_exceptions=True)
        # A stream left with `break` is finalised only later, by the event loop: cancel
        # what is still in flight now, so no worker stays busy for a closed client.
        abandoned = list(self._pending) if self.available else []
        for request_id in abandoned:
            self._send(protocol.ClientCancel(request_id))
        self._fail_pending(BrokerUnavailable("client closed"))
        self._close_socket(CLOSE_LINGER_MS if abandoned else 0)

    @property
    def in_flight(self) -> int:
        return len(self._pending)

    async def request(
        self,
        service: str,
        payload: Any,
        timeout: float | None = None,
        request_id: str | None = None,
        share: protocol.Share | None = None,
    ) -> Any:
        """Send ``payload`` to ``service`` and return the result; ``share`` names the
        tenant it is queued for (the client itself without one)."""
        request = build_request(service, payload, timeout or self.timeout, False, request_id, share)
        answers = self._register(request)
        # The answer comes as one message: wait on the queue directly rather
        # than through _exchange's generator, which costs a finaliser per call.
        deadline = request.timeout_ms / 1000 + DEADLINE_GRACE
        finished = False
        try:
            self._send(request)
            try:
                answer = await asyncio.wait_for(answers.get(), deadline)
            except TimeoutError:
                raise BrokerUnavailable("the broker did not answer before the deadline") from None
            finished = True
            if isinstance(answer, BusError):
                raise answer
            return outcome(answer)
        finally:
            self._unregister(request.request_id, finished)

    async def stream(
        self,
        service: str,
        payload: Any,
        timeout: float | None = None,
        request_id: str | None = None,
        share: protocol.Share | None = None,
    ) -> AsyncIterator[Any]:
        """Yield each streamed piece, then the final summary; leaving early cancels the request."""
        request = build_request(service, payload, timeout or self.timeout, True, request_id, share)
        async for message in self._exchange(request):
            yield outcome(message)

    async def status(self) -> dict[str, Any]:
        return await self.request(STATUS_SERVICE, {}, timeout=self.liveness_period)

    def _register(self, request: protocol.ClientRequest) -> asyncio.Queue[protocol.Message | BusError]:
        if not self.available:
            raise BrokerUnavailable(f"the broker at {self.endpoint} is not answering")
        if request.request_id in self._pending:
            raise ValueError(f"request id {request.request_id} is already in flight")
        answers: asyncio.Queue[protocol.Message | BusError] = asyncio.Queue()
        self._pending[request.request_id] = answers
        return answers

    def _unregister(self, request_id: str, finished: bool) -> None:
        del self._pending[request_id]
        if not finished and self.available and not self._closing:
            self._send(protocol.ClientCancel(request_id))

    async def _exchange(self, request: protocol.ClientRequest) -> AsyncIterator[protocol.Message]:
        answers = self._register(request)
        give_up = asyncio.get_running_loop().time() + request.timeout_ms / 1000 + DEADLINE_GRACE
        finished = False
        try:
            self._send(request)
            while not finished:
                left = give_up - asyncio.get_running_loop().time()
                try:
                    answer = await asyncio.wait_for(answers.get(), max(left, 0))
                except TimeoutError:
                    raise BrokerUnavailable("the broker did not answer before the deadline") from None
                if isinstance(answer, BusError):
                    finished = True
                    raise answer
                finished = is_last(answer)
                yield answer
        finally:
            self._unregister(request.request_id, finished)

    def _open(self) -> None:
        self._close_socket(0)
        socket = connect_to_broker(self.context, zmq.DEALER, self.endpoint, self.curve)
        self._socket = socket
        self._loop.add_reader(socket.getsockopt(zmq.FD), self._drain)
        self._heard = self._loop.time()

    def _close_socket(self, linger: int) -> None:
        if self._socket is not None:
            self._loop.remove_reader(self._socket.getsockopt(zmq.FD))
            self._socket.close(linger=linger)
            self._socket = None

    def _send(self, message: protocol.Message) -> None:
        if self._socket is None:
            raise BrokerUnavailable("client closed")
        try:
            self._socket.send_multipart(protocol.encode(message), zmq.NOBLOCK)
        except zmq.Again:
            raise BrokerUnavailable(f"too many messages queued for the broker at {self.endpoint}") from None
        # ZeroMQ's descriptor signals edges: a send can swallow the edge of an
        # arrival, so look for waiting messages ourselves.
        if self._socket.getsockopt(zmq.EVENTS) & zmq.POLLIN:
            self._loop.call_soon(self._drain)

    def _drain(self) -> None:
        """Take every message waiting on the socket and hand each to its request."""
        socket = self._socket
        while socket is not None and socket.getsockopt(zmq.EVENTS) & zmq.POLLIN:
            frames = socket.recv_multipart(zmq.NOBLOCK)
            self._heard = self._loop.time()
            self.available = True
            try:
                message = protocol.decode(frames)
            except ProtocolError:
                continue
            if isinstance(message, protocol.ClientHeartbeat):
                self._heard_from(message.incarnation)
                continue
            answers = self._pending.get(getattr(message, "request_id", ""))
            if answers is not None:
                answers.put_nowait(message)
            elif is_version_refusal(message):
                log.error("protocol_version_refused", endpoint=self.endpoint, reason=message.message)
                self._fail_pending(VersionRefused(message.message))

    def _heard_from(self, incarnation: str | None) -> None:
        """A heartbeat answer: a new incarnation means the broker restarted and every
        request sent to the old one is lost; fail them now, not at their deadlines."""
        if not incarnation:
            return
        if self.incarnation is not None and incarnation != self.incarnation:
            log.warning("broker_restarted", endpoint=self.endpoint, requests_lost=len(self._pending))
            self._fail_pending(BrokerUnavailable("the broker restarted and lost the requests it held"))
        self.incarnation = incarnation

    async def _heartbeat_loop(self) -> None:
        while True:
            try:
                self._send(protocol.ClientHeartbeat())
            except BrokerUnavailable:
                self._open()  # heartbeats piled up on a socket nobody reads: start afresh
            await asyncio.sleep(self.heartbeat_interval)
            if self.available and self._loop.time() - self._heard > self.liveness_period:
                self._broker_lost()

    def _broker_lost(self) -> None:
        """Fail what is pending and start over on a fresh socket, so requests
        queued on the old one never reach a restarted broker."""
        log.warning("broker_lost", endpoint=self.endpoint)
        self.available = False
        self._fail_pending(BrokerUnavailable(f"the broker at {self.endpoint} stopped answering"))
        self._open()

    def _fail_pending(self, error: BusError) -> None:
        for answers in self._pending.values():
            answers.put_nowait(error)
