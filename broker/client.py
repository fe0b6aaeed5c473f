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

The two faces share one core: :class:`Connection` (the socket, what is sent
and heard on it, the watch on its handshakes) and :class:`Link` (what the
client knows of the broker, with the clock passed in). A face only waits:
:class:`Client` by polling its socket, :class:`AsyncClient` in the event loop.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import json
import secrets
import time
from collections.abc import AsyncGenerator, Generator, Iterator
from typing import Any, Protocol, cast

import structlog
import zmq

from broker import protocol
from broker.errors import BrokerUnavailable, BusError, ProtocolError, VersionRefused, error_from_code
from broker.security import Context, CurveKeys, HandshakeWatch, Socket, connect_to_broker
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


def answer_wait(request: protocol.ClientRequest) -> float:
    """Seconds to wait for the last answer to ``request`` before giving up on the broker."""
    return request.timeout_ms / 1000 + DEADLINE_GRACE


def outcome(message: protocol.ClientAnswer) -> Any:
    """The JSON body of a REPLY, PARTIAL or FINAL; raises the error an ERROR carries."""
    if isinstance(message, protocol.ClientError):
        raise error_from_code(message.code, message.message, message.error_type)
    return json.loads(message.body)


def is_last(message: protocol.ClientAnswer) -> bool:
    return not isinstance(message, protocol.ClientPartial)


def milliseconds(seconds: float) -> int:
    """A wait in whole milliseconds, as ZeroMQ's poll takes it."""
    return max(0, int(seconds * 1000))


class Connection:
    """One socket to the broker: what is sent and heard on it, and why the broker refused it.

    ``socket_type`` is ``zmq.DEALER`` or ``zmq.REQ`` (lockstep: no delimiter
    frame, and no heartbeat can go out while an answer is awaited).
    A malformed message from the broker is logged and dropped: it cannot be
    told which request it answers.
    """

    def __init__(
        self, context: Context, socket_type: int, endpoint: str, curve: CurveKeys | None
    ) -> None:
        self.endpoint = endpoint
        self.lockstep = socket_type == zmq.REQ
        self.socket: Socket = connect_to_broker(context, socket_type, endpoint, curve)
        self.watch = HandshakeWatch(self.socket)

    @property
    def fd(self) -> int:
        """The edge-triggered descriptor that signals the socket may have become readable."""
        return self.socket.FD

    @property
    def readable(self) -> bool:
        return bool(cast(int, self.socket.get(zmq.EVENTS)) & zmq.POLLIN)

    def send(self, message: protocol.Message) -> bool:
        """Queue ``message`` without blocking; False when the socket takes nothing now."""
        try:
            self.socket.send_multipart(protocol.encode(message, not self.lockstep), zmq.NOBLOCK)
        except zmq.Again:
            return False
        return True

    def receive(self) -> protocol.Message | None:
        """The next well-formed message waiting on the socket, or None when none is."""
        while self.readable:
            frames = self.socket.recv_multipart(zmq.NOBLOCK)
            try:
                return protocol.decode(frames, not self.lockstep)
            except ProtocolError as exc:
                log.warning("malformed_answer_dropped", endpoint=self.endpoint, reason=str(exc))
        return None

    def refusal(self) -> BrokerUnavailable | None:
        """The error to fail requests with when the broker refused this connection's handshake."""
        reason = self.watch.failure()
        if reason is None:
            return None
        return BrokerUnavailable(f"the broker at {self.endpoint} refused this client: {reason}")

    def close(self, linger_ms: int = 0) -> None:
        self.watch.close()
        self.socket.close(linger=linger_ms)


class Link:
    """What a client knows of the broker on one connection, with the clock passed in:
    when it last heard from it and pinged it, and which incarnation of it answers.

    ``heartbeat_interval`` is the seconds between pings; silent for
    ``liveness_period`` seconds, the broker is taken for lost.
    """

    def __init__(self, endpoint: str, heartbeat_interval: float, liveness_period: float, now: float) -> None:
        self.endpoint = endpoint
        self.heartbeat_interval = heartbeat_interval
        self.liveness_period = liveness_period
        self.heard = self.pinged = now
        self.incarnation: str | None = None

    def heartbeat_due(self, now: float) -> bool:
        return now - self.pinged >= self.heartbeat_interval

    def ping(self, now: float) -> None:
        self.pinged = now

    def silent(self, now: float) -> bool:
        return now - self.heard > self.liveness_period

    def lost(self) -> BrokerUnavailable:
        return BrokerUnavailable(f"no answer from the broker at {self.endpoint}")

    def hear(self, message: protocol.Message, now: float) -> BusError | None:
        """Note ``message`` from the broker. Returns the error every request in flight fails
        with when the message says they are all lost, else None: a heartbeat from a new
        incarnation (the broker restarted), or a refusal of this client's protocol version
        (under any request id)."""
        self.heard = now
        if isinstance(message, protocol.ClientHeartbeat) and message.incarnation:
            restarted = self.incarnation not in (None, message.incarnation)
            self.incarnation = message.incarnation
            if restarted:
                return BrokerUnavailable("the broker restarted and lost the requests it held")
        if isinstance(message, protocol.ClientError) and message.code == VersionRefused.code:
            return VersionRefused(message.message)
        return None


class _BusClient:
    """What both faces share: the broker's address, its keys and the clock's settings.

    ``endpoint`` is the broker's; ``timeout`` the default deadline in seconds;
    ``heartbeat_interval`` the seconds between pings and ``liveness`` the silent
    intervals after which the broker is taken for lost; ``context`` the ZeroMQ
    context (the process's own by default); ``curve``, this client's key pair
    and the broker's public key, makes the connection CURVE (needed by a broker
    with ``curve.server_key``).
    """

    def __init__(
        self,
        endpoint: str,
        timeout: float,
        heartbeat_interval: float,
        liveness: int,
        context: Context | None,
        curve: CurveKeys | None,
    ) -> None:
        self.endpoint = endpoint
        self.timeout = timeout
        self.heartbeat_interval = heartbeat_interval
        self.liveness_period = heartbeat_interval * liveness
        self.context: Context = context or zmq.Context.instance()
        self.curve = curve

    def _connect(self, socket_type: int) -> Connection:
        return Connection(self.context, socket_type, self.endpoint, self.curve)

    def _new_link(self, now: float) -> Link:
        return Link(self.endpoint, self.heartbeat_interval, self.liveness_period, now)

    def _request(
        self,
        service: str,
        payload: Any,
        timeout: float | None,
        stream: bool,
        request_id: str | None,
        share: protocol.Share | None = None,
    ) -> protocol.ClientRequest:
        return build_request(service, payload, timeout or self.timeout, stream, request_id, share)


class Client(_BusClient):
    """A blocking client; one request at a time.

    Its parameters are :class:`_BusClient`'s, and ``socket_type``:
    ``zmq.DEALER`` (default, heartbeats while waiting so a dead broker is
    noticed within ``heartbeat_interval`` x ``liveness``) or ``zmq.REQ``
    (plain lockstep, no heartbeats). A broker that refuses the connection (a
    key not in its allowlists, CURVE on one side only) makes a request raise
    ``BrokerUnavailable`` saying so, within the request's timeout, never hang.
    """

    def __init__(
        self,
        endpoint: str,
        timeout: float = 60.0,
        socket_type: int = zmq.DEALER,
        heartbeat_interval: float = 1.0,
        liveness: int = 3,
        context: Context | None = None,
        curve: CurveKeys | None = None,
    ) -> None:
        super().__init__(endpoint, timeout, heartbeat_interval, liveness, context, curve)
        self.socket_type = socket_type
        self._connection = self._connect(socket_type)

    def __enter__(self) -> Client:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        self._connection.close()

    def request(self, service: str, payload: Any, timeout: float | None = None, request_id: str | None = None) -> Any:
        """Send ``payload`` to ``service`` and return the result."""
        with contextlib.closing(self._exchange(self._request(service, payload, timeout, False, request_id))) as answers:
            return outcome(next(answers))

    def stream(self, service: str, payload: Any, timeout: float | None = None) -> Iterator[Any]:
        """Yield each streamed piece, then the final summary, of one request."""
        for message in self._exchange(self._request(service, payload, timeout, True, None)):
            yield outcome(message)

    def status(self) -> dict[str, Any]:
        """The broker's view: services, workers, queues and counters."""
        status: dict[str, Any] = self.request(STATUS_SERVICE, {})
        return status

    def service_info(self, service: str) -> dict[str, Any]:
        """Whether ``service`` exists, and its idle and busy workers and queue depth."""
        info: dict[str, Any] = self.request(DISCOVERY_SERVICE, {"service": service})
        return info

    def _exchange(self, request: protocol.ClientRequest) -> Generator[protocol.ClientAnswer, None, None]:
        """The answers to ``request``, the last one included; abandoning them cancels it."""
        now = time.monotonic()
        give_up = now + answer_wait(request)
        link = self._new_link(now)
        heartbeats = not self._connection.lockstep
        self._send(request, give_up)
        finished = False
        try:
            while not finished:
                now = time.monotonic()
                if now >= give_up or (heartbeats and link.silent(now)):
                    raise link.lost()
                if heartbeats and link.heartbeat_due(now):
                    # While waiting, even while pieces arrive: the broker drops silent clients.
                    self._send(protocol.ClientHeartbeat(), give_up)
                    link.ping(now)
                wait = min(self.heartbeat_interval, give_up - now)
                if not self._connection.socket.poll(milliseconds(wait)):
                    self._raise_if_refused()  # a refused handshake delivers nothing: checked when idle
                    continue
                message = self._connection.receive()
                if message is None:
                    continue
                lost = link.hear(message, time.monotonic())
                if lost is not None:
                    raise lost
                if isinstance(message, protocol.ClientAnswer) and message.request_id == request.request_id:
                    finished = is_last(message)
                    yield message
        finally:
            if not finished:
                self._abandon(request.request_id)

    def _raise_if_refused(self) -> None:
        refusal = self._connection.refusal()
        if refusal is not None:
            raise refusal

    def _send(self, message: protocol.Message, give_up: float) -> None:
        """Send ``message`` without ever blocking past ``give_up``: a socket that cannot send (no
        connection: the broker is down or refused the handshake) fails the request instead."""
        while not self._connection.send(message):
            self._raise_if_refused()
            left = give_up - time.monotonic()
            if left <= 0:
                raise BrokerUnavailable(f"cannot send to the broker at {self.endpoint}")
            self._connection.socket.poll(milliseconds(min(left, 0.1)), zmq.POLLOUT)

    def _abandon(self, request_id: str) -> None:
        if self._connection.lockstep:  # a REQ socket stuck mid-exchange must be replaced (lazy pirate)
            self._connection.close()
            self._connection = self._connect(self.socket_type)
        else:  # without a connection there is nobody to tell
            self._connection.send(protocol.ClientCancel(request_id))


class _Answers(Protocol):
    """Where a request's answers go as they arrive: a queue for a stream, one future for a request."""

    def put_nowait(self, item: protocol.ClientAnswer | BusError) -> None: ...


class _OneAnswer:
    """A request's one answer (or the error that ended it), into a future; later ones are dropped."""

    __slots__ = ("future",)

    def __init__(self, future: asyncio.Future[protocol.ClientAnswer | BusError]) -> None:
        self.future = future

    def put_nowait(self, item: protocol.ClientAnswer | BusError) -> None:
        if not self.future.done():
            self.future.set_result(item)


def _past_deadline() -> BrokerUnavailable:
    """No answer came in time (the request may still be alive: it is not finished)."""
    return BrokerUnavailable("the broker did not answer before the deadline")


def _no_answer(answer: asyncio.Future[protocol.ClientAnswer | BusError]) -> None:
    if not answer.done():
        answer.set_exception(_past_deadline())


class AsyncClient(_BusClient):
    """An asyncio client with many requests in flight on one DEALER socket.

    Its parameters are :class:`_BusClient`'s. It pings the broker every
    ``heartbeat_interval``; after ``liveness`` silent intervals the broker is
    taken for lost: pending requests fail with ``BrokerUnavailable``, new
    ones fail at once, and a fresh socket keeps pinging until the broker
    answers again. A broker that refuses the connection's handshake fails the
    pending requests, saying why, within a heartbeat.

    The socket is a plain one watched with ``loop.add_reader`` and drained
    in one go whenever it is readable: zmq.asyncio's future per receive
    cost more CPU per request than the rest of the frontend's bus work.
    """

    def __init__(
        self,
        endpoint: str,
        timeout: float = 60.0,
        heartbeat_interval: float = 1.0,
        liveness: int = 3,
        context: Context | None = None,
        curve: CurveKeys | None = None,
    ) -> None:
        super().__init__(endpoint, timeout, heartbeat_interval, liveness, context, curve)
        self.available = True
        self._pending: dict[str, _Answers] = {}
        self._connection: Connection | None = None
        self._link = self._new_link(0.0)
        self._heartbeats: asyncio.Task[None] | None = None
        self._closing = False

    async def __aenter__(self) -> AsyncClient:
        self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    def start(self) -> None:
        """Connect and start heartbeating (inside a running loop)."""
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
        self._close_connection(CLOSE_LINGER_MS if abandoned else 0)

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
        request = self._request(service, payload, timeout, False, request_id, share)
        # The answer comes as one message: one future and one timer, rather than a queue
        # read through wait_for, which costs a task and more per call.
        loop = asyncio.get_running_loop()
        answer: asyncio.Future[protocol.ClientAnswer | BusError] = loop.create_future()
        self._register(request, _OneAnswer(answer))
        give_up = loop.call_later(max(answer_wait(request), 0), _no_answer, answer)
        finished = False
        try:
            self._send(request)
            result = await answer
            finished = True
            if isinstance(result, BusError):
                raise result
            return outcome(result)
        finally:
            give_up.cancel()
            self._unregister(request.request_id, finished)

    async def stream(
        self,
        service: str,
        payload: Any,
        timeout: float | None = None,
        request_id: str | None = None,
        share: protocol.Share | None = None,
    ) -> AsyncGenerator[Any, None]:
        """Yield each streamed piece, then the final summary; leaving early cancels the request."""
        request = self._request(service, payload, timeout, True, request_id, share)
        async for message in self._exchange(request):
            yield outcome(message)

    async def status(self) -> dict[str, Any]:
        """The broker's view, as :meth:`Client.status`; waits no longer than the liveness period."""
        status: dict[str, Any] = await self.request(STATUS_SERVICE, {}, timeout=self.liveness_period)
        return status

    def _register(self, request: protocol.ClientRequest, answers: _Answers) -> None:
        if not self.available:
            raise BrokerUnavailable(f"the broker at {self.endpoint} is not answering")
        if request.request_id in self._pending:
            raise ValueError(f"request id {request.request_id} is already in flight")
        self._pending[request.request_id] = answers

    def _unregister(self, request_id: str, finished: bool) -> None:
        del self._pending[request_id]
        if not finished and self.available and not self._closing:
            self._send(protocol.ClientCancel(request_id))

    @staticmethod
    async def _next(
        answers: asyncio.Queue[protocol.ClientAnswer | BusError], wait: float
    ) -> protocol.ClientAnswer | BusError:
        """The next answer to one request, or the error that ended it; BrokerUnavailable when
        none comes in ``wait`` seconds (the request may still be alive: it is not finished)."""
        try:
            return await asyncio.wait_for(answers.get(), max(wait, 0))
        except TimeoutError:
            raise _past_deadline() from None

    async def _exchange(self, request: protocol.ClientRequest) -> AsyncGenerator[protocol.ClientAnswer, None]:
        answers: asyncio.Queue[protocol.ClientAnswer | BusError] = asyncio.Queue()
        self._register(request, answers)
        loop = asyncio.get_running_loop()
        give_up = loop.time() + answer_wait(request)
        finished = False
        try:
            self._send(request)
            while not finished:
                answer = await self._next(answers, give_up - loop.time())
                if isinstance(answer, BusError):
                    finished = True
                    raise answer
                finished = is_last(answer)
                yield answer
        finally:
            self._unregister(request.request_id, finished)

    def _open(self) -> None:
        self._close_connection(0)
        loop = asyncio.get_running_loop()
        self._connection = connection = self._connect(zmq.DEALER)
        self._link = self._new_link(loop.time())
        loop.add_reader(connection.fd, self._drain)

    def _close_connection(self, linger_ms: int) -> None:
        if self._connection is not None:
            asyncio.get_running_loop().remove_reader(self._connection.fd)
            self._connection.close(linger_ms)
            self._connection = None

    def _send(self, message: protocol.Message) -> None:
        connection = self._connection
        if connection is None:
            raise BrokerUnavailable("client closed")
        if not connection.send(message):
            raise BrokerUnavailable(f"too many messages queued for the broker at {self.endpoint}")
        # ZeroMQ's descriptor signals edges: a send can swallow the edge of an
        # arrival, so look for waiting messages ourselves.
        if connection.readable:
            asyncio.get_running_loop().call_soon(self._drain)

    def _drain(self) -> None:
        """Take every message waiting on the socket and hand each to its request."""
        connection = self._connection
        now = asyncio.get_running_loop().time
        while connection is not None and (message := connection.receive()) is not None:
            self.available = True
            lost = self._link.hear(message, now())
            if lost is not None:
                log.warning("requests_lost", endpoint=self.endpoint, reason=lost.message, requests=len(self._pending))
                self._fail_pending(lost)
                continue
            if isinstance(message, protocol.ClientAnswer) and message.request_id in self._pending:
                self._pending[message.request_id].put_nowait(message)

    async def _heartbeat_loop(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            try:
                self._send(protocol.ClientHeartbeat())
            except BrokerUnavailable:
                self._open()  # heartbeats piled up on a socket nobody reads: start afresh
            await asyncio.sleep(self.heartbeat_interval)
            refusal = self._connection.refusal() if self._connection is not None else None
            if refusal is not None:
                log.error("broker_refused_client", endpoint=self.endpoint, reason=refusal.message)
                self._fail_pending(refusal)
            elif self.available and self._link.silent(loop.time()):
                self._broker_lost()

    def _broker_lost(self) -> None:
        """Fail what is pending and start over on a fresh socket, so requests
        queued on the old one never reach a restarted broker."""
        log.warning("broker_lost", endpoint=self.endpoint)
        self.available = False
        self._fail_pending(self._link.lost())
        self._open()

    def _fail_pending(self, error: BusError) -> None:
        for answers in self._pending.values():
            answers.put_nowait(error)
