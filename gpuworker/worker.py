"""The worker's socket loop: register, take requests into free slots, heartbeat, reconnect, drain.

It talks to the broker on a DEALER socket so that it can heartbeat while
busy, as the zguide's paranoid-pirate worker does. The broker sends it a
REQUEST, or a BATCH, only into its free slots (as many as the capacity it
declared in READY, or later in CAPACITY): at capacity 1, one request at a
time, as REQ's discipline wants; above 1, a slot frees as soon as its
request is answered and the broker fills it at once.

SIGTERM drains the worker: it says CAPACITY 0, lets the requests in hand
finish for ``drain_grace`` seconds, then hands back those still running
(they stop here, and the broker gives them to other workers: a stream goes
on from the tokens it already sent) and says DISCONNECT.
"""

from __future__ import annotations

import json
import math
import os
import random
import resource
import sys
import threading
import time
from typing import Any

import structlog
import zmq

from broker import protocol
from broker.errors import ProtocolError
from broker.security import CurveKeys, HandshakeWatch, connect_to_broker
from config.settings import BrokerSettings, WorkerSettings
from gpuworker.algorithm import LoadedAlgorithm, TaskContext
from gpuworker.runner import RoomChanged, TaskRunner

log = structlog.get_logger(__name__)


class Backoff:
    """Reconnect delays: ``initial`` doubling up to ``maximum``, each with jitter."""

    def __init__(self, initial: float, maximum: float) -> None:
        self.initial = initial
        self.maximum = maximum
        self.current = initial

    def next_delay(self) -> float:
        delay = self.current * random.uniform(0.75, 1.25)
        self.current = min(self.current * 2, self.maximum)
        return min(delay, self.maximum)

    def reset(self) -> None:
        self.current = self.initial


class Worker:
    """Serves ``algorithm`` as ``settings.service`` through the broker at ``broker.endpoint``.

    ``broker`` gives the endpoint and heartbeat timing; ``settings`` the
    service name, reconnect delays and drain grace. ``stop`` drains the
    worker (SIGTERM sets it). ``curve``, the worker's key pair and the
    broker's public key, makes the connection CURVE.
    """

    def __init__(
        self,
        algorithm: LoadedAlgorithm,
        broker: BrokerSettings,
        settings: WorkerSettings,
        stop: threading.Event | None = None,
        curve: CurveKeys | None = None,
    ) -> None:
        self.algorithm = algorithm
        self.curve = curve
        self.endpoint = broker.endpoint
        self.interval = broker.heartbeat_interval
        self.liveness_period = broker.heartbeat_interval * broker.heartbeat_liveness
        self.service = settings.service
        self.drain_grace = settings.drain_grace
        self.capacity = min(algorithm.capacity, protocol.MAX_BATCH)
        self.backoff = Backoff(settings.reconnect_initial, settings.reconnect_max)
        self.stop = stop or threading.Event()
        self.context = zmq.Context()
        self.pipe = self.context.socket(zmq.PAIR)
        pipe_endpoint = f"inproc://task-runner-{id(self)}"
        self.pipe.bind(pipe_endpoint)
        self.runner = TaskRunner(algorithm, self.context, pipe_endpoint)
        self.socket: zmq.Socket | None = None
        self.watch: HandshakeWatch | None = None
        self.handshake_failure: str | None = None
        # The unanswered requests in hand, by id; empty when idle.
        self.tasks: dict[str, TaskContext] = {}
        # When the drain that SIGTERM started hands back what is still running (None: not draining).
        self.hand_back_at: float | None = None
        # Whether the algorithm's rows wait for memory, and the capacity the broker was last told.
        self.full = False
        self.advertised = self.capacity
        self.task_session = 0
        self.session = 0
        # Set from sending READY until the broker next sends anything but DISCONNECT.
        self.registering = False
        self.served = 0

    # -- lifecycle -----------------------------------------------------------

    def run(self) -> None:
        """Serve until stopped; returns after sending DISCONNECT."""
        self.runner.start()
        self._connect()
        try:
            while not (self.stop.is_set() and not self.tasks):
                self._step()
                if self.stop.is_set():
                    self._drain()
            self._send(protocol.WorkerDisconnect())
            log.info("worker_stopped", served=self.served)
        finally:
            self.runner.stop()
            self._close_socket(linger=100)
            self.pipe.close(linger=0)
            self.context.term()

    def _connect(self) -> None:
        self._close_socket()
        self.session += 1
        self.socket = connect_to_broker(self.context, zmq.DEALER, self.endpoint, self.curve)
        self.watch = HandshakeWatch(self.socket)
        self.poller = zmq.Poller()
        self.poller.register(self.pipe, zmq.POLLIN)
        self.poller.register(self.socket, zmq.POLLIN)
        self.poller.register(self.watch.monitor, zmq.POLLIN)
        self.broker_expiry = time.monotonic() + self.liveness_period
        self.next_heartbeat = time.monotonic() + self.interval
        if not self.tasks:
            self._register()

    def _register(self) -> None:
        self._send(protocol.WorkerReady(self.service, json.dumps(self.info()).encode(), self.capacity))
        self.advertised = self.capacity
        self.registering = True
        log.info("worker_registered", service=self.service, endpoint=self.endpoint, capacity=self.capacity)

    def _drain(self) -> None:
        """Stop taking requests; once the grace has passed, hand back those still running."""
        now = time.monotonic()
        if self.hand_back_at is None:
            self.hand_back_at = now + self.drain_grace
            self._advertise()
            log.info("worker_draining", rows=len(self.tasks), grace=self.drain_grace)
        if self.tasks and now >= self.hand_back_at:
            log.warning("rows_handed_back", request_ids=sorted(self.tasks))
            self._abandon_tasks()
            self.tasks.clear()

    def _advertise(self) -> None:
        """Tell the broker how many rows to send: none while draining, none beyond those in hand
        while the algorithm's rows wait for memory, else the whole capacity."""
        if self.hand_back_at is not None:
            capacity = 0
        elif self.full:
            capacity = min(len(self.tasks), self.capacity)
        else:
            capacity = self.capacity
        if capacity != self.advertised:
            self.advertised = capacity
            self._send(protocol.WorkerCapacity(capacity))

    def _abandon_tasks(self) -> None:
        """Stop the tasks in hand: the broker that gave them has re-dispatched or failed them."""
        for task in self.tasks.values():
            task.cancelled.set()

    def _reconnect(self, reason: str) -> None:
        delay = self.backoff.next_delay()
        log.warning("broker_lost", reason=reason, retry_in=round(delay, 2))
        self._abandon_tasks()
        self._close_socket()
        # Wait, but keep taking the runner's output so a finishing task is noticed.
        deadline = time.monotonic() + delay
        while (left := deadline - time.monotonic()) > 0 and not self.stop.is_set():
            if self.pipe.poll(int(left * 1000)):
                self._from_runner()
        self._connect()

    def _close_socket(self, linger: int = 0) -> None:
        if self.watch is not None:
            self.watch.close()
            self.watch = None
        if self.socket is not None:
            self.socket.close(linger=linger)
            self.socket = None

    def info(self) -> dict[str, Any]:
        return {**self.algorithm.describe(), "pid": os.getpid(), **memory_use()}

    # -- the loop ------------------------------------------------------------

    def _step(self) -> None:
        wake = min(self.next_heartbeat, self.broker_expiry, self.hand_back_at or math.inf)
        timeout = max(0.0, wake - time.monotonic())
        events = dict(self.poller.poll(int(timeout * 1000)))
        if self.pipe in events:
            self._from_runner()
        if self.socket in events:
            self._from_broker()
        if self.watch is not None and self.watch.monitor in events:
            self._on_handshake_failure(self.watch.failure())
        now = time.monotonic()
        if now >= self.broker_expiry:
            self._reconnect("heartbeat expired")
        elif now >= self.next_heartbeat:
            self.next_heartbeat = now + self.interval
            self._send(protocol.WorkerHeartbeat())

    def _from_broker(self) -> None:
        while self.socket is not None:
            try:
                frames = self.socket.recv_multipart(zmq.NOBLOCK)
            except zmq.Again:
                return
            heard_at = time.monotonic()
            try:
                message = protocol.decode(frames)
            except ProtocolError as exc:
                self.broker_expiry = heard_at + self.liveness_period
                log.warning("malformed_message_dropped", reason=str(exc))
                continue
            if not (self.registering and isinstance(message, protocol.WorkerDisconnect)):
                # A DISCONNECT while registering says nothing of our READY (see _on_forgotten):
                # were the READY lost, a broker answering each heartbeat so must not keep us here.
                self.broker_expiry = heard_at + self.liveness_period
            if isinstance(message, protocol.WorkerDisconnect) and message.reason is not None:
                # Refused, not forgotten: try again later, backing off, rather than at once.
                log.error("broker_refused_worker", reason=message.reason)
                self._reconnect(message.reason)
                return
            self.backoff.reset()
            self.handshake_failure = None
            self._on_broker_message(message)

    def _on_handshake_failure(self, reason: str | None) -> None:
        """ZeroMQ retries a refused handshake by itself: say why, once until the broker answers."""
        if reason is not None and reason != self.handshake_failure:
            log.error("broker_refused_connection", endpoint=self.endpoint, reason=reason)
        self.handshake_failure = reason or self.handshake_failure

    def _on_broker_message(self, message: protocol.Message) -> None:
        if isinstance(message, protocol.WorkerDisconnect):
            self._on_forgotten()
            return
        self.registering = False
        if isinstance(message, (protocol.WorkerRequest, protocol.WorkerBatch)):
            requests = list(message.requests) if isinstance(message, protocol.WorkerBatch) else [message]
            if len(self.tasks) + len(requests) > self.capacity:
                log.error("requests_over_capacity_refused", request_ids=[r.request_id for r in requests])
                return
            self.tasks.update(self.runner.submit(requests))
            self.task_session = self.session
        elif isinstance(message, protocol.WorkerCancel):
            task = self.tasks.get(message.request_id)
            if task is not None:
                task.cancelled.set()
                log.info("task_cancel_requested", request_id=message.request_id)
        elif not isinstance(message, protocol.WorkerHeartbeat):
            log.warning("unexpected_message", message=type(message).__name__)

    def _on_forgotten(self) -> None:
        """The broker does not know us (it restarted, say): register again, once the tasks in
        hand, whose answers nobody will read, have stopped.

        A DISCONNECT that comes after our READY and before anything else from the broker
        answers a message we sent before that READY (a heartbeat queued while the broker
        restarted): the broker, which reads in order, has our READY next. Registering again
        for it would be a second READY, which the broker takes for a protocol violation and
        drops us for, tasks included. Were the READY itself lost, the broker would answer every
        heartbeat with DISCONNECT; those do not count as signs of life while we register, so
        the connection ends after ``heartbeat_liveness`` intervals and we register afresh.
        """
        if self.registering:
            log.debug("stale_disconnect_ignored")
            return
        if not self.tasks or self.task_session == self.session:
            log.warning("broker_forgot_worker", busy=bool(self.tasks))
            self.session += 1
        self._abandon_tasks()
        if not self.tasks:
            self._register()

    def _from_runner(self) -> None:
        while True:
            try:
                messages = self.pipe.recv_pyobj(zmq.NOBLOCK)
            except zmq.Again:
                return
            current = self.task_session == self.session
            for message in messages:
                if isinstance(message, RoomChanged):
                    self.full = message.full
                    if current and not self.registering:
                        self._advertise()
                    continue
                # A request handed back (draining) or abandoned is no longer ours to answer.
                ours = message.request_id in self.tasks
                if not isinstance(message, protocol.WorkerPartial):
                    self.tasks.pop(message.request_id, None)
                    self.served += 1
                if current and ours:
                    self._send(message)
            if not current and not self.tasks and self.socket is not None:
                # The broker gave these tasks to other workers when we lost it.
                self._register()

    def _send(self, message: protocol.Message) -> None:
        if self.socket is None:
            return
        try:
            self.socket.send_multipart(protocol.encode(message), zmq.NOBLOCK)
        except zmq.Again:
            log.warning("send_dropped", message=type(message).__name__)


def memory_use() -> dict[str, int]:
    """Peak resident memory of this process and, where CUDA is in use, GPU memory."""
    usage = {"max_rss_bytes": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024}
    torch = sys.modules.get("torch")
    if torch is not None and torch.cuda.is_available():
        usage["gpu_memory_bytes"] = int(torch.cuda.memory_allocated())
        usage["gpu_memory_reserved_bytes"] = int(torch.cuda.memory_reserved())
    return usage
