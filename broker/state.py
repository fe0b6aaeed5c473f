"""The broker's decisions, as plain objects with the clock passed in.

:class:`BrokerState` takes parsed messages and the current time and queues
the messages to send in :attr:`BrokerState.outbox`; it never touches a socket,
so every routing rule is unit-tested without ZeroMQ. ``broker.server`` is
the thin loop that feeds it.

The one-dispatch-at-a-time guarantee lives here: a worker is dispatched to
only when it has no task, which it reaches only through READY or through the
REPLY, FINAL or ERROR that ends its last task. A dispatch is one request, or
for a worker that declared a capacity above 1, a batch of up to that many
queued requests of its service, taken in FIFO order without waiting for more
to arrive. A HEARTBEAT refreshes liveness and nothing else.
"""

from __future__ import annotations

import json
import math
import secrets
from collections import deque
from dataclasses import dataclass, field
from typing import Any

import structlog

from broker import errors, protocol
from broker.protocol import Envelope, Message
from config.settings import BrokerSettings

log = structlog.get_logger(__name__)

STATUS_SERVICE = "llm.status"
DISCOVERY_SERVICE = "llm.service"


@dataclass(slots=True)
class Task:
    """One client request, from receipt until it is answered."""

    client: Envelope
    request: protocol.ClientRequest
    received: float
    deadline: float
    attempts: int = 0
    cancelled: bool = False
    worker: Worker | None = None
    # Set once a PARTIAL has reached the client: the task can no longer be run again.
    streamed: bool = False

    @property
    def key(self) -> tuple[Envelope, str]:
        return (self.client, self.request.request_id)

    def remaining_ms(self, now: float) -> int:
        return max(1, int((self.deadline - now) * 1000))


@dataclass(slots=True)
class Worker:
    """One connected worker; it is busy exactly when ``tasks`` (its current
    dispatch, by request id, in dispatch order) is not empty."""

    identity: Envelope
    service: str
    expiry: float
    info: dict[str, Any] = field(default_factory=dict)
    capacity: int = 1
    tasks: dict[str, Task] = field(default_factory=dict)
    served: int = 0
    last_seen: float = 0.0

    @property
    def busy(self) -> bool:
        return bool(self.tasks)

    def is_expired(self, now: float) -> bool:
        return now >= self.expiry


@dataclass(slots=True)
class Service:
    """A service's FIFO queue and its workers, idle ones in least-recently-used order.

    A ``provisional`` service was asked for during the start-up grace period
    before any worker offered it; it is forgotten when the grace ends if none did.
    """

    name: str
    queue: deque[Task] = field(default_factory=deque)
    idle: deque[Worker] = field(default_factory=deque)
    workers: dict[Envelope, Worker] = field(default_factory=dict)
    last_alive: float = 0.0
    provisional: bool = False

    def summary(self) -> dict[str, Any]:
        busy = sum(1 for worker in self.workers.values() if worker.busy)
        return {
            "service": self.name,
            "exists": True,
            "idle": len(self.workers) - busy,
            "busy": busy,
            "queued": len(self.queue),
        }


@dataclass(slots=True)
class Client:
    """A client that heartbeats: silent for ``broker.client_timeout``, it is taken for gone."""

    expiry: float


@dataclass(slots=True)
class Counters:
    """Running totals, reported by the status service and as metrics."""

    requests: int = 0
    dispatched: int = 0
    batches: int = 0
    redispatched: int = 0
    answered: int = 0
    timeouts: int = 0
    overloaded: int = 0
    workers_expired: int = 0
    clients_expired: int = 0
    dispatch_seconds: float = 0.0


class BrokerState:
    """Routing state of one broker.

    ``settings`` supplies heartbeat timing, queue bound, dispatch attempts,
    deadlines, the services known before any worker registers and the
    start-up grace period. ``now`` is the monotonic time the state starts at.
    ``incarnation`` names this run of the broker (random by default).
    """

    def __init__(self, settings: BrokerSettings, now: float, incarnation: str | None = None) -> None:
        self.settings = settings
        self.incarnation = incarnation or secrets.token_hex(8)
        self.grace_ends = now + settings.startup_grace
        self.liveness_period = settings.heartbeat_interval * settings.heartbeat_liveness
        self.clients: dict[Envelope, Client] = {}
        self.services: dict[str, Service] = {
            name: Service(name, last_alive=now) for name in settings.services
        }
        self.workers: dict[Envelope, Worker] = {}
        self.tasks: dict[tuple[Envelope, str], Task] = {}
        self.outbox: list[tuple[Envelope, Message]] = []
        self.counters = Counters()
        self.next_heartbeat = now + settings.heartbeat_interval

    # -- clients -------------------------------------------------------------

    def on_client(self, client: Envelope, message: Message, now: float) -> None:
        known = self.clients.get(client)
        if known is not None:
            known.expiry = now + self.settings.client_timeout
        if isinstance(message, protocol.ClientRequest):
            self._on_request(client, message, now)
        elif isinstance(message, protocol.ClientCancel):
            self._on_cancel(client, message.request_id)
        elif isinstance(message, protocol.ClientHeartbeat):
            # A client that heartbeats is watched from now on; one that never does
            # (a REQ socket) relies on its requests' deadlines instead.
            self.clients.setdefault(client, Client(now + self.settings.client_timeout))
            answer = message if message.incarnation is None else protocol.ClientHeartbeat(self.incarnation)
            self.outbox.append((client, answer))
        else:
            raise errors.ProtocolError(f"{type(message).__name__} is not sent by clients")

    def _on_request(self, client: Envelope, request: protocol.ClientRequest, now: float) -> None:
        self.counters.requests += 1
        if request.service in (STATUS_SERVICE, DISCOVERY_SERVICE):
            self._answer_internal(client, request, now)
            return
        refusal = self._refusal(client, request, now)
        if refusal is not None:
            self._fail(client, request.request_id, refusal)
            return
        timeout = request.timeout_ms / 1000 or self.settings.default_timeout
        task = Task(client, request, received=now, deadline=now + timeout)
        self.tasks[task.key] = task
        service = self.services[request.service]
        service.queue.append(task)
        self._dispatch(service, now)

    def _refusal(
        self, client: Envelope, request: protocol.ClientRequest, now: float
    ) -> errors.BusError | None:
        if (client, request.request_id) in self.tasks:
            return errors.BadRequest(f"request id {request.request_id} is already in flight")
        if request.timeout_ms / 1000 > self.settings.max_timeout:
            return errors.BadRequest(
                f"timeout {request.timeout_ms} ms exceeds the broker's maximum "
                f"of {self.settings.max_timeout:g} s"
            )
        service = self.services.get(request.service)
        if service is None and now < self.grace_ends:
            # Just started: its workers may not have registered yet. Queue, do not refuse.
            service = self.services[request.service] = Service(request.service, last_alive=now, provisional=True)
        if service is None:
            return errors.UnknownService(f"no such service: {request.service}")
        if self._is_unavailable(service, now):
            return errors.ServiceUnavailable(f"service {service.name} has no live worker")
        if len(service.queue) >= self.settings.queue_limit:
            self.counters.overloaded += 1
            return errors.Overloaded(f"service {service.name} has {len(service.queue)} queued")
        return None

    def _is_unavailable(self, service: Service, now: float) -> bool:
        return not service.workers and now - service.last_alive > self.settings.unavailable_after

    def _on_cancel(self, client: Envelope, request_id: str) -> None:
        task = self.tasks.get((client, request_id))
        if task is not None:
            log.info("request_cancelled", request_id=request_id, where="queue" if task.worker is None else "worker")
            self._abandon(task)

    # -- workers -------------------------------------------------------------

    def on_worker(self, identity: Envelope, message: Message, now: float) -> None:
        if isinstance(message, protocol.WorkerReady):
            self._on_ready(identity, message, now)
            return
        worker = self.workers.get(identity)
        if worker is None:
            # A worker we purged or never knew: tell it to start over.
            self.outbox.append((identity, protocol.WorkerDisconnect()))
            return
        worker.expiry = now + self.liveness_period
        worker.last_seen = now
        self.services[worker.service].last_alive = now
        if isinstance(message, protocol.WorkerHeartbeat):
            return
        if isinstance(message, protocol.WorkerPartial):
            self._on_partial(worker, message)
        elif isinstance(message, (protocol.WorkerReply, protocol.WorkerFinal, protocol.WorkerError)):
            self._on_answer(worker, message, now)
        elif isinstance(message, protocol.WorkerDisconnect):
            self._remove_worker(worker, now, died=False)
            log.info("worker_left", worker=worker.identity[-1].hex(), service=worker.service)
        else:
            raise errors.ProtocolError(f"{type(message).__name__} is not sent by workers")

    def _on_ready(self, identity: Envelope, ready: protocol.WorkerReady, now: float) -> None:
        known = self.workers.get(identity)
        if known is not None:
            # READY from a registered worker breaks the protocol: drop it.
            self._remove_worker(known, now)
            self.outbox.append((identity, protocol.WorkerDisconnect()))
            return
        info = _json_object(ready.info)
        worker = Worker(
            identity, ready.service, now + self.liveness_period, info, capacity=ready.capacity, last_seen=now
        )
        service = self.services.setdefault(ready.service, Service(ready.service))
        service.last_alive = now
        service.provisional = False
        self.workers[identity] = worker
        service.workers[identity] = worker
        service.idle.append(worker)
        log.info(
            "worker_ready", worker=identity[-1].hex(), service=ready.service, capacity=ready.capacity, info=worker.info
        )
        self._dispatch(service, now)

    def _on_partial(self, worker: Worker, partial: protocol.WorkerPartial) -> None:
        task = worker.tasks.get(partial.request_id)
        if task is None:
            raise errors.ProtocolError(f"PARTIAL for {partial.request_id}, not one of the worker's tasks")
        if task.cancelled or not task.request.stream:
            return
        task.streamed = True
        self.outbox.append((task.client, protocol.ClientPartial(partial.request_id, partial.body)))

    def _on_answer(self, worker: Worker, answer: Message, now: float) -> None:
        request_id = answer.request_id  # type: ignore[attr-defined]
        task = worker.tasks.pop(request_id, None)
        if task is None:
            raise errors.ProtocolError(f"answer for {request_id}, not one of the worker's tasks")
        task.worker = None
        worker.served += 1
        if task.cancelled or self.tasks.get(task.key) is not task:
            self._forget(task)
        elif now >= task.deadline and not isinstance(answer, protocol.WorkerError):
            # The worker stopped the answer at the deadline (or finished it too late):
            # its client must not mistake a cut-off answer for a whole one.
            self._time_out(task, where="worker")
        else:
            self._forget(task)
            self.outbox.append((task.client, _to_client(answer, task.request.stream)))
            self.counters.answered += 1
            log.debug("request_answered", request_id=request_id, answer=type(answer).__name__)
        if not worker.busy:
            service = self.services[worker.service]
            service.idle.append(worker)
            self._dispatch(service, now)

    def worker_unreachable(self, identity: Envelope, now: float) -> None:
        """A send to this worker failed (its socket is gone): treat it as dead."""
        worker = self.workers.get(identity)
        if worker is not None:
            log.warning("worker_unreachable", worker=identity[-1].hex(), service=worker.service)
            self._remove_worker(worker, now)

    def _forget(self, task: Task) -> bool:
        """Drop ``task`` from the tasks in flight, unless a retry under the same id
        has taken its place; True when it was still there."""
        if self.tasks.get(task.key) is not task:
            return False
        del self.tasks[task.key]
        return True

    def _remove_worker(self, worker: Worker, now: float, died: bool = True) -> None:
        """Forget ``worker``; each of its unanswered tasks goes back to the front of
        the queue, in its order (a worker that ``died`` used up one of each task's
        attempts), or fails WORKER_LOST: out of attempts, or already partly
        streamed to its client, which must never receive an answer twice."""
        service = self.services[worker.service]
        del self.workers[worker.identity]
        del service.workers[worker.identity]
        if not worker.busy:
            service.idle.remove(worker)
            return
        tasks, worker.tasks = list(worker.tasks.values()), {}
        again = [task for task in tasks if self._runs_again(task, died)]
        service.queue.extendleft(reversed(again))
        self._dispatch(service, now)

    def _runs_again(self, task: Task, died: bool) -> bool:
        """Whether ``task``, whose worker is gone, goes back to the queue; if not, it is
        forgotten (cancelled or replaced) or failed."""
        task.worker = None
        if not died:
            task.attempts -= 1
        if task.cancelled or self.tasks.get(task.key) is not task:
            self._forget(task)
            return False
        if task.streamed or task.attempts >= self.settings.max_attempts:
            del self.tasks[task.key]
            reason = (
                "the worker serving this stream was lost after part of the answer was sent"
                if task.streamed
                else f"{task.attempts} workers died serving this request"
            )
            self._fail(task.client, task.request.request_id, errors.WorkerLost(reason))
            return False
        self.counters.redispatched += 1
        log.warning("request_redispatched", request_id=task.request.request_id)
        return True

    # -- dispatch and time ---------------------------------------------------

    def _dispatch(self, service: Service, now: float) -> None:
        """Hand queued tasks to idle workers, at once: a batching worker takes up to
        its capacity, and queued work is shared out when several workers are idle."""
        while service.queue and service.idle:
            worker = service.idle[0]
            share = min(worker.capacity, math.ceil(len(service.queue) / len(service.idle)))
            tasks = self._take_live(service, share, now)
            if not tasks:
                return
            service.idle.popleft()
            for task in tasks:
                self._assign(worker, task, now)
            requests = tuple(self._worker_request(task, now) for task in tasks)
            self.counters.batches += 1
            message = protocol.WorkerBatch(requests) if worker.capacity > 1 else requests[0]
            self.outbox.append((worker.identity, message))

    def _take_live(self, service: Service, count: int, now: float) -> list[Task]:
        """Up to ``count`` tasks from the head of the queue, timing out those whose deadline passed."""
        taken: list[Task] = []
        while service.queue and len(taken) < count:
            task = service.queue.popleft()
            if now >= task.deadline:
                self._time_out(task)
            else:
                taken.append(task)
        return taken

    def _assign(self, worker: Worker, task: Task, now: float) -> None:
        worker.tasks[task.request.request_id] = task
        task.worker = worker
        task.attempts += 1
        self.counters.dispatched += 1
        self.counters.dispatch_seconds += now - task.received
        log.debug(
            "request_dispatched",
            request_id=task.request.request_id,
            worker=worker.identity[-1].hex(),
            attempt=task.attempts,
            rows=len(worker.tasks),
        )

    @staticmethod
    def _worker_request(task: Task, now: float) -> protocol.WorkerRequest:
        request = task.request
        return protocol.WorkerRequest(request.request_id, task.remaining_ms(now), request.stream, request.body)

    def _time_out(self, task: Task, where: str = "queue") -> None:
        """Answer TIMEOUT for ``task``, which is no longer queued (or is running ``where``)."""
        self.counters.timeouts += 1
        self._forget(task)
        log.info("request_timed_out", request_id=task.request.request_id, where=where)
        self._fail(task.client, task.request.request_id, errors.RequestTimeout())

    def tick(self, now: float) -> None:
        """Expire deadlines, dead workers and silent clients, and heartbeat workers when due."""
        self._expire_tasks(now)
        self._expire_clients(now)
        if now >= self.grace_ends:
            self._forget_provisional()
        for worker in [w for w in self.workers.values() if w.is_expired(now)]:
            self.counters.workers_expired += 1
            log.warning("worker_expired", worker=worker.identity[-1].hex(), service=worker.service, busy=worker.busy)
            self._remove_worker(worker, now)
        for service in self.services.values():
            if service.queue and self._is_unavailable(service, now):
                self._fail_queue(service, errors.ServiceUnavailable(f"service {service.name} has no live worker"))
        if now >= self.next_heartbeat:
            self.next_heartbeat = now + self.settings.heartbeat_interval
            heartbeat = protocol.WorkerHeartbeat()
            self.outbox.extend((identity, heartbeat) for identity in self.workers)

    def _expire_tasks(self, now: float) -> None:
        for service in self.services.values():
            expired = [task for task in service.queue if now >= task.deadline]
            for task in expired:
                service.queue.remove(task)
                self._time_out(task)
        for worker in self.workers.values():
            for task in worker.tasks.values():
                if not task.cancelled and now >= task.deadline:
                    # The worker stays busy until it answers; its client hears now.
                    task.cancelled = True
                    self._time_out(task, where="worker")
                    self.outbox.append((worker.identity, protocol.WorkerCancel(task.request.request_id)))

    def _expire_clients(self, now: float) -> None:
        """A client silent past ``client_timeout`` is gone: drop its queued requests and
        cancel its running ones, so no worker serves nobody."""
        silent = [client for client, state in self.clients.items() if now >= state.expiry]
        for client in silent:
            del self.clients[client]
            tasks = [task for key, task in self.tasks.items() if key[0] == client]
            if tasks:
                self.counters.clients_expired += 1
                log.warning("client_expired", client=client[-1].hex(), requests=len(tasks))
            for task in tasks:
                self._abandon(task)

    def _abandon(self, task: Task) -> None:
        """Forget ``task``, whose client is gone; a running one is cancelled at its worker."""
        del self.tasks[task.key]
        if task.worker is None:
            self.services[task.request.service].queue.remove(task)
        else:
            task.cancelled = True
            self.outbox.append((task.worker.identity, protocol.WorkerCancel(task.request.request_id)))

    def _forget_provisional(self) -> None:
        for name in [name for name, service in self.services.items() if service.provisional and not service.queue]:
            del self.services[name]

    def _fail_queue(self, service: Service, error: errors.BusError) -> None:
        while service.queue:
            task = service.queue.popleft()
            del self.tasks[task.key]
            self._fail(task.client, task.request.request_id, error)

    def _fail(self, client: Envelope, request_id: str, error: errors.BusError) -> None:
        self.outbox.append(
            (client, protocol.ClientError(request_id, error.code, error.message, error.error_type))
        )

    # -- status --------------------------------------------------------------

    def _answer_internal(self, client: Envelope, request: protocol.ClientRequest, now: float) -> None:
        if request.service == STATUS_SERVICE:
            body = self.status(now)
        else:
            name = _json_object(request.body).get("service")
            service = self.services.get(name) if isinstance(name, str) else None
            body = service.summary() if service is not None else {"service": None, "exists": False}
        reply = json.dumps(body).encode()
        self.outbox.append((client, _to_client(protocol.WorkerReply(request.request_id, reply), False)))

    def status(self, now: float) -> dict[str, Any]:
        """Services, their workers and queues, and the running counters."""
        services = {}
        for name, service in self.services.items():
            summary = service.summary()
            summary["workers"] = [
                {
                    **worker.info,
                    "id": worker.identity[-1].hex(),
                    "state": "busy" if worker.busy else "idle",
                    "capacity": worker.capacity,
                    "tasks": len(worker.tasks),
                    "served": worker.served,
                    "last_seen_seconds": round(now - worker.last_seen, 3),
                }
                for worker in service.workers.values()
            ]
            services[name] = summary
        counters = {name: getattr(self.counters, name) for name in Counters.__slots__}
        return {"services": services, "counters": counters, "incarnation": self.incarnation, "clients": len(self.clients)}


def _json_object(raw: bytes) -> dict[str, Any]:
    """``raw`` as a JSON object, or empty when it is anything else (nesting deep
    enough to exhaust the parser's recursion included): peers' JSON is untrusted."""
    try:
        value = json.loads(raw)
    except (ValueError, RecursionError):
        return {}
    return value if isinstance(value, dict) else {}


def _to_client(answer: Message, stream: bool) -> Message:
    """The client message that carries a worker's REPLY, FINAL or ERROR."""
    if isinstance(answer, protocol.WorkerError):
        return protocol.ClientError(answer.request_id, answer.code, answer.message, answer.error_type)
    if isinstance(answer, protocol.WorkerFinal) and stream:
        return protocol.ClientFinal(answer.request_id, answer.body)
    return protocol.ClientReply(answer.request_id, answer.body)  # type: ignore[attr-defined]
