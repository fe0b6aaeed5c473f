"""The broker's socket loop: receive, let :class:`BrokerState` decide, send.

One ROUTER socket serves clients and workers alike; the protocol header of
each message says which. The loop owns no routing rules.

With a :class:`~broker.security.Gatekeeper`, the socket is a CURVE server on
every endpoint, each message is passed on with the public key of the
connection it came on, and the allowlists are re-read on :meth:`Broker.reload`
(SIGHUP) and when their files change. Without one, the broker refuses to
bind an endpoint other hosts can reach, unless ``broker.allow_plaintext``.
"""

from __future__ import annotations

import threading
import time
from typing import cast

import structlog
import zmq

from broker import protocol
from broker.errors import ProtocolError, UnsupportedVersion
from broker.security import Context, Gatekeeper, check_plaintext_bind
from broker.state import BrokerState
from config.logs import Sampled
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
    ``context`` is the ZeroMQ context to use (a new one by default);
    ``gatekeeper``, built on that context, makes every endpoint CURVE and
    admits only its allowlists' keys (None: plaintext, ConfigError for an
    endpoint other hosts can reach unless ``settings.allow_plaintext``).
    """

    def __init__(
        self, settings: BrokerSettings, context: Context | None = None, gatekeeper: Gatekeeper | None = None
    ) -> None:
        self.settings = settings
        self.context = context or zmq.Context.instance()
        self.gatekeeper = gatekeeper
        if gatekeeper is None:
            for endpoint in settings.bind_endpoints:
                check_plaintext_bind(endpoint, settings.allow_plaintext)
        self.state = BrokerState(
            settings, time.monotonic(), allowlists=gatekeeper.allowlists if gatekeeper is not None else None
        )
        self.socket = self.context.socket(zmq.ROUTER)
        self.socket.setsockopt(zmq.LINGER, 0)
        self.socket.setsockopt(zmq.ROUTER_MANDATORY, 1)
        self.socket.setsockopt(zmq.MAXMSGSIZE, settings.max_message_bytes)
        if gatekeeper is not None:
            gatekeeper.start()
            gatekeeper.apply(self.socket)
        self.endpoints = []
        for endpoint in settings.bind_endpoints:
            self.socket.bind(endpoint)
            self.endpoints.append(self.socket.getsockopt_string(zmq.LAST_ENDPOINT))
        self._reload_requested = False
        self._next_key_check = time.monotonic() + settings.heartbeat_interval
        # A dead frontend's streams, or a fuzzer, would otherwise write a line per message.
        self.sampled = Sampled(log)
        log.info("broker_listening", endpoints=self.endpoints, curve=gatekeeper is not None)

    def reload(self) -> None:
        """Re-read the allowlists at the next turn of the loop (safe from a signal handler)."""
        self._reload_requested = True

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
                self._check_keys(now)
                self.sampled.flush(now)
            self._flush(now)
        log.info("broker_stopped")

    def close(self) -> None:
        self.socket.close(linger=0)
        if self.gatekeeper is not None:
            self.gatekeeper.stop()

    def _check_keys(self, now: float) -> None:
        """Re-read the allowlists when asked to, or when their files changed (looked at once a heartbeat)."""
        if self.gatekeeper is None:
            if self._reload_requested:
                log.info("allowlists_not_reloaded", reason="the broker runs without CURVE")
                self._reload_requested = False
            return
        due = now >= self._next_key_check
        if due:
            self._next_key_check = now + self.settings.heartbeat_interval
        if self._reload_requested or (due and self.gatekeeper.changed()):
            self._reload_requested = False
            self.state.use_allowlists(self.gatekeeper.reload(), now)

    def _receive_batch(self) -> None:
        now = time.monotonic()
        recv, more = self.socket.recv, self.socket.getsockopt
        curve = self.gatekeeper is not None
        key: str | None = None
        for _ in range(RECV_BATCH):
            try:
                if curve:
                    # The first frame carries the connection's metadata: ZAP's User-Id, its public key.
                    first = recv(_NOBLOCK, copy=False)
                    key = cast("str | None", first.get("User-Id"))  # a text property, never an int
                    frames = [first.bytes]
                else:
                    frames = [recv(_NOBLOCK)]
            except zmq.Again:
                return
            while more(_RCVMORE):
                frames.append(recv(_NOBLOCK))
            self._handle(frames, now, key)

    def _handle(self, frames: list[bytes], now: float, key: str | None = None) -> None:
        try:
            sender, rest = protocol.split_envelope(frames)
            try:
                message = protocol.decode(rest)
            except UnsupportedVersion as exc:
                self.state.on_unsupported_version(sender, exc, protocol.salvage_request_id(rest), key)
                return
            self.state.on_message(sender, message, now, key)
        except ProtocolError as exc:
            self.sampled.warning("malformed_message_dropped", _peer(frames), now, reason=str(exc), frames=len(frames))
            self._refuse_malformed(frames, str(exc), key)
        except Exception:  # one bad message must never stop the broker
            log.exception("message_handling_failed", frames=len(frames))

    def _refuse_malformed(self, frames: list[bytes], reason: str, key: str | None) -> None:
        try:
            sender, rest = protocol.split_envelope(frames)
        except ProtocolError:
            return
        request_id = protocol.salvage_request_id(rest)
        if request_id is not None:
            self.state.on_malformed_request(sender, request_id, protocol.header_version(rest), reason, key)

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
                self.sampled.warning(
                    "client_unreachable", receiver[-1].hex(), now, message=type(message).__name__, errno=exc.errno
                )


def _peer(frames: list[bytes]) -> str:
    """Who sent ``frames``, as the logs name peers: its identity in hex ("-" when it has none)."""
    return frames[0].hex() if frames and frames[0] else "-"
