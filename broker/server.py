"""The broker's socket loop: receive, let :class:`BrokerState` decide, send.

One ROUTER socket serves clients and workers alike; the protocol header of
each message says which. The loop owns no routing rules.
"""

from __future__ import annotations

import threading
import time

import structlog
import zmq

from broker import protocol
from broker.errors import BadRequest, ProtocolError
from broker.state import BrokerState
from config.settings import BrokerSettings

log = structlog.get_logger(__name__)

RECV_BATCH = 256
TICK_SECONDS = 0.05
# Plain ints: pyzmq's flag enums cost more per frame than the send itself.
_NOBLOCK = int(zmq.NOBLOCK)
_MORE = int(zmq.NOBLOCK | zmq.SNDMORE)
_RCVMORE = int(zmq.RCVMORE)
_POLLIN = int(zmq.POLLIN)


class Broker:
    """A bound broker, ready to :meth:`run`.

    ``settings`` gives the endpoints to bind and the routing policy;
    ``context`` is the ZeroMQ context to use (a new one by default).
    """

    def __init__(self, settings: BrokerSettings, context: zmq.Context | None = None) -> None:
        self.settings = settings
        self.context = context or zmq.Context.instance()
        self.state = BrokerState(settings, time.monotonic())
        self.socket = self.context.socket(zmq.ROUTER)
        self.socket.setsockopt(zmq.LINGER, 0)
        self.socket.setsockopt(zmq.ROUTER_MANDATORY, 1)
        self.socket.setsockopt(zmq.MAXMSGSIZE, settings.max_message_bytes)
        self.endpoints = []
        for endpoint in settings.bind_endpoints:
            self.socket.bind(endpoint)
            self.endpoints.append(self.socket.getsockopt_string(zmq.LAST_ENDPOINT))
        log.info("broker_listening", endpoints=self.endpoints)

    def run(self, stop: threading.Event | None = None) -> None:
        """Serve until ``stop`` is set."""
        stop = stop or threading.Event()
        # The bare zmq_poll: the Poller wrapper's per-call overhead shows in CPU per request.
        watched = [(self.socket, _POLLIN)]
        next_tick = time.monotonic()
        while not stop.is_set():
            if zmq.zmq_poll(watched, int(TICK_SECONDS * 1000)):
                self._receive_batch()
            now = time.monotonic()
            if now >= next_tick:
                self.state.tick(now)
                next_tick = now + TICK_SECONDS
            self._flush(now)
        log.info("broker_stopped")

    def close(self) -> None:
        self.socket.close(linger=0)

    def _receive_batch(self) -> None:
        now = time.monotonic()
        recv, more = self.socket.recv, self.socket.getsockopt
        for _ in range(RECV_BATCH):
            try:
                frames = [recv(_NOBLOCK)]
            except zmq.Again:
                return
            while more(_RCVMORE):
                frames.append(recv(_NOBLOCK))
            self._handle(frames, now)

    def _handle(self, frames: list[bytes], now: float) -> None:
        try:
            sender, rest = protocol.split_envelope(frames)
            message = protocol.decode(rest)
            if message.side == protocol.CLIENT_SIDE:
                self.state.on_client(sender, message, now)
            else:
                self.state.on_worker(sender, message, now)
        except ProtocolError as exc:
            log.warning("malformed_message_dropped", reason=str(exc), frames=len(frames))
            self._refuse_malformed(frames, str(exc))
        except Exception:  # one bad message must never stop the broker
            log.exception("message_handling_failed", frames=len(frames))

    def _refuse_malformed(self, frames: list[bytes], reason: str) -> None:
        try:
            sender, rest = protocol.split_envelope(frames)
        except ProtocolError:
            return
        request_id = protocol.salvage_request_id(rest)
        if request_id is not None:
            self.state.outbox.append((sender, protocol.ClientError(request_id, BadRequest.code, reason, "")))

    def _flush(self, now: float) -> None:
        outbox = self.state.outbox
        while outbox:
            pending, outbox[:] = outbox[:], []
            for receiver, message in pending:
                self._send(receiver, message, now)

    def _send(self, receiver: protocol.Envelope, message: protocol.Message, now: float) -> None:
        frames = protocol.join_envelope(receiver, message)
        send = self.socket.send
        try:
            # ROUTER_MANDATORY fails the first frame if the peer is gone, so no
            # partial message is ever left behind.
            for frame in frames[:-1]:
                send(frame, _MORE)
            send(frames[-1], _NOBLOCK)
        except zmq.ZMQError as exc:
            if exc.errno not in (zmq.EHOSTUNREACH, zmq.EAGAIN):
                raise
            if message.side == protocol.WORKER_SIDE:
                self.state.worker_unreachable(receiver, now)
            else:
                log.info("client_unreachable", message=type(message).__name__, errno=exc.errno)
