"""The broker's decisions, as plain objects with the clock passed in.

:class:`BrokerState` takes parsed messages and the current time and queues
the messages to send in :attr:`BrokerState.outbox`; it never touches a socket,
so every routing rule is unit-tested without ZeroMQ. ``broker.server`` is
the thin loop that feeds it.

A worker is sent requests only into free slots. One of protocol version 3
has as many slots as its declared capacity (which it may change with
CAPACITY): each answer frees a slot, which the next queued request of its
service fills at once. An older worker keeps the rule it was built for: it
is dispatched to only when it has no task, which it reaches only through
READY or through the REPLY, FINAL or ERROR that ends its last task. A
dispatch is one request, or for a worker of capacity above 1, a batch of up
to its free slots of queued requests, taken without waiting for more to
arrive, in turn between tenants (API keys or direct clients, see
``broker.fairqueue``) and in arrival order within each. A HEARTBEAT
refreshes liveness and nothing else.

A stream whose worker is lost after part of it reached its client goes on
elsewhere when every piece named the tokens it was decoded from: the
request is queued again with those tokens, and the next worker goes on from
them (a migrated stream); its client reads one uninterrupted answer.

With CURVE, every message comes with its connection's public key, and a
key acts only in the roles its allowlist gives it: a client key's READY and
a worker key's REQUEST are dropped unanswered. When the allowlists change,
the peers whose key left them are forgotten at once, as dead ones are.
Each peer is answered in the protocol version it spoke.
"""

from __future__ import annotations

import json
import math
import secrets
from collections import Counter, deque
from dataclasses import dataclass, field
from typing import Any

import structlog

from broker import errors, protocol
from broker.fairqueue import FairQueue
from broker.protocol import Envelope, Message
from broker.security import (
    CLIENT_ROLE,
    MAX_REMEMBERED_REFUSALS,
    WORKER_ROLE,
    Allowlists,
)
from config.settings import BrokerSettings

log = structlog.get_logger(__name__)

STATUS_SERVICE = "llm.status"
DISCOVERY_SERVICE = "llm.service"
# Refusals sent to a peer of a version not spoken here: the request id when none can be read.
NO_REQUEST_ID = "-"
_WORKER_HEARTBEATS = {version: protocol.WorkerHeartbeat(version=version) for version in protocol.SUPPORTED_VERSIONS}


@dataclass(frozen=True, slots=True)
class Credentials:
    """Who a connection is: the public key (z85) ZAP admitted it with, None without
    CURVE, and the name of that key in its allowlist ("" without CURVE)."""

    key: str | None = None
    name: str = ""


ANONYMOUS = Credentials()


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
    # Set once a PARTIAL has reached the client: the task can then only go on from what was sent.
    streamed: bool = False
    # The tokens of the pieces sent, while every piece named its tokens (else None: it cannot go on elsewhere).
    sent_tokens: list[int] | None = field(default_factory=list)
    credentials: Credentials = ANONYMOUS
    # Whom it is queued for (see broker.fairqueue).
    tenant: str = ""

    @property
    def key(self) -> tuple[Envelope, str]:
        return (self.client, self.request.request_id)

    @property
    def weight(self) -> int:
        """Its tenant's turn size in the fair queue, as its share says (1 without one)."""
        share = self.request.share
        return share.weight if share is not None else 1

    def remaining_ms(self, now: float) -> int:
        return max(1, int((self.deadline - now) * 1000))


@dataclass(slots=True)
class Worker:
    """One connected worker; it is busy exactly when ``tasks`` (its requests in
    hand, by request id, in dispatch order) is not empty."""

    identity: Envelope
    service: str
    expiry: float
    info: dict[str, Any] = field(default_factory=dict)
    capacity: int = 1
    tasks: dict[str, Task] = field(default_factory=dict)
    served: int = 0
    last_seen: float = 0.0
    credentials: Credentials = ANONYMOUS
    version: int = protocol.VERSION

    @property
    def busy(self) -> bool:
        return bool(self.tasks)

    @property
    def free(self) -> int:
        """Requests it may be sent now: its free slots, or (before version 3) its whole
        capacity when it has no task and none while it has one."""
        if self.version >= protocol.SLOTS_VERSION:
            return self.capacity - len(self.tasks)
        return 0 if self.tasks else self.capacity

    def is_expired(self, now: float) -> bool:
        return now >= self.expiry


@dataclass(slots=True)
class Service:
    """A service's queue, fair between tenants, and its workers; ``ready`` holds those
    with a free slot, least recently dispatched to first.

    A ``provisional`` service was asked for during the start-up grace period
    before any worker offered it; it is forgotten when the grace ends if none did.
    """

    name: str
    queue: FairQueue[Task] = field(default_factory=FairQueue)
    ready: deque[Worker] = field(default_factory=deque)
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

    def tenants(self) -> dict[str, dict[str, int]]:
        """Queued and running requests per tenant."""
        running = Counter(task.tenant for worker in self.workers.values() for task in worker.tasks.values())
        queued = self.queue.by_tenant()
        return {
            tenant: {"queued": queued.get(tenant, 0), "running": running[tenant]}
            for tenant in sorted({*queued, *running})
        }


@dataclass(slots=True)
class Client:
    """A client that heartbeats: silent for ``broker.client_timeout``, it is taken for gone."""

    expiry: float
    credentials: Credentials = ANONYMOUS


@dataclass(slots=True)
class Counters:
    """Running totals, reported by the status service and as metrics."""

    requests: int = 0
    dispatched: int = 0
    batches: int = 0
    redispatched: int = 0
    migrated: int = 0
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
    ``allowlists`` are the keys that may act as workers and as clients; None
    (no CURVE) lets every peer act in both roles, anonymously.
    """

    def __init__(
        self,
        settings: BrokerSettings,
        now: float,
        incarnation: str | None = None,
        allowlists: Allowlists | None = None,
    ) -> None:
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
        # Requests in flight per client key name and per tenant, kept by _track and _untrack alone.
        self.in_flight: Counter[str] = Counter()
        self.tenant_load: Counter[str] = Counter()
        self.outbox: list[tuple[Envelope, Message]] = []
        self.counters = Counters()
        self.next_heartbeat = now + settings.heartbeat_interval
        self.allowlists: Allowlists | None = None
        self._credentials: dict[str, dict[str, Credentials]] = {}
        self._refused: set[tuple[Envelope, str]] = set()
        if allowlists is not None:
            self.use_allowlists(allowlists, now)

    # -- who may do what ------------------------------------------------------

    def on_message(self, sender: Envelope, message: Message, now: float, key: str | None = None) -> None:
        """Route one message from ``sender``; ``key`` is the public key its connection was
        admitted with (ZAP's User-Id), None without CURVE."""
        role = CLIENT_ROLE if message.side == protocol.CLIENT_SIDE else WORKER_ROLE
        credentials = ANONYMOUS if self.allowlists is None else self._credentials_for(sender, role, key, message)
        if credentials is None:
            return
        if role == CLIENT_ROLE:
            self.on_client(sender, message, now, credentials)
        else:
            self.on_worker(sender, message, now, credentials)

    def on_unsupported_version(
        self, sender: Envelope, error: errors.UnsupportedVersion, request_id: str | None, key: str | None = None
    ) -> None:
        """A peer spoke a version not spoken here: a client is answered ERROR, a worker
        DISCONNECT, in its own version's header, naming both versions; logged once per peer."""
        role = CLIENT_ROLE if error.side == protocol.CLIENT_SIDE.decode() else WORKER_ROLE
        if self._credentials_for(sender, role, key) is None:
            return
        self._log_once(sender, "unsupported_version", role=role, version=error.version, supported=error.supported)
        if role == CLIENT_ROLE:
            refusal = errors.VersionRefused(str(error))
            self._fail(sender, request_id or NO_REQUEST_ID, refusal, error.version)
        else:
            self.outbox.append((sender, protocol.WorkerDisconnect(str(error), version=error.version)))

    def on_malformed_request(
        self, sender: Envelope, request_id: str, version: int, reason: str, key: str | None = None
    ) -> None:
        """A REQUEST that does not parse but names its id: its client is told BAD_REQUEST."""
        if self._credentials_for(sender, CLIENT_ROLE, key) is not None:
            self._fail(sender, request_id, errors.BadRequest(reason), version)

    def _credentials_for(
        self, sender: Envelope, role: str, key: str | None, message: Message | None = None
    ) -> Credentials | None:
        """``key``'s credentials in ``role``, or None (logged once per peer) when it may not act so."""
        if self.allowlists is None:
            return ANONYMOUS
        credentials = self._credentials[role].get(key) if key is not None else None
        if credentials is None:
            other = WORKER_ROLE if role == CLIENT_ROLE else CLIENT_ROLE
            name = self.allowlists.names(other).get(key) if key is not None else None
            reason = f"a {other} key may not act as a {role}" if name else "its key is not in the allowlists"
            what = type(message).__name__ if message is not None else None
            self._log_once(sender, "peer_refused", role=role, key_name=name, message=what, reason=reason)
        return credentials

    def _log_once(self, sender: Envelope, event: str, **fields: Any) -> None:
        if (sender, event) in self._refused:
            return
        if len(self._refused) >= MAX_REMEMBERED_REFUSALS:
            self._refused.clear()
        self._refused.add((sender, event))
        log.warning(event, peer=sender[-1].hex(), **fields)

    def use_allowlists(self, allowlists: Allowlists, now: float) -> None:
        """Let only the keys of ``allowlists`` act from now on. A worker whose key left its
        list is forgotten (its tasks go to other workers) and a client's requests are
        dropped or cancelled at their workers; whatever they send next is refused."""
        self.allowlists = allowlists
        self._credentials = {
            role: {key: Credentials(key, name) for key, name in allowlists.names(role).items()}
            for role in (WORKER_ROLE, CLIENT_ROLE)
        }
        self._refused.clear()
        for worker in [w for w in self.workers.values() if not self._allowed(w.credentials, WORKER_ROLE)]:
            log.warning("worker_key_removed", worker=worker.identity[-1].hex(), key_name=worker.credentials.name)
            self._remove_worker(worker, now, died=False)
        for client in [c for c, known in self.clients.items() if not self._allowed(known.credentials, CLIENT_ROLE)]:
            del self.clients[client]
        removed = [task for task in self.tasks.values() if not self._allowed(task.credentials, CLIENT_ROLE)]
        for task in removed:
            log.warning(
                "request_of_removed_key_dropped", request_id=task.request.request_id, client=task.credentials.name
            )
            self._abandon(task)

    def _allowed(self, credentials: Credentials, role: str) -> bool:
        return credentials.key in self._credentials[role]

    # -- clients -------------------------------------------------------------

    def on_client(
        self, client: Envelope, message: Message, now: float, credentials: Credentials = ANONYMOUS
    ) -> None:
        known = self.clients.get(client)
        if known is not None:
            known.expiry = now + self.settings.client_timeout
        if isinstance(message, protocol.ClientRequest):
            self._on_request(client, message, now, credentials)
        elif isinstance(message, protocol.ClientCancel):
            self._on_cancel(client, message.request_id)
        elif isinstance(message, protocol.ClientHeartbeat):
            if known is None:
                # A client that heartbeats is watched from now on; one that never does
                # (a REQ socket) relies on its requests' deadlines instead.
                self.clients[client] = Client(now + self.settings.client_timeout, credentials)
                log.info(
                    "client_connected", client=client[-1].hex(), key_name=credentials.name, version=message.version
                )
            answer = (
                message
                if message.incarnation is None
                else protocol.ClientHeartbeat(self.incarnation, version=message.version)
            )
            self.outbox.append((client, answer))
        else:
            raise errors.ProtocolError(f"{type(message).__name__} is not sent by clients")

    def _on_request(
        self, client: Envelope, request: protocol.ClientRequest, now: float, credentials: Credentials = ANONYMOUS
    ) -> None:
        self.counters.requests += 1
        if request.service in (STATUS_SERVICE, DISCOVERY_SERVICE):
            self._answer_internal(client, request, now)
            return
        tenant = _tenant(client, request, credentials)
        refusal = self._refusal(client, request, now, credentials, tenant)
        if refusal is not None:
            self._fail(client, request.request_id, refusal, request.version)
            return
        timeout = request.timeout_ms / 1000 or self.settings.default_timeout
        task = Task(client, request, received=now, deadline=now + timeout, credentials=credentials, tenant=tenant)
        self._track(task)
        service = self.services[request.service]
        service.queue.append(task)
        self._dispatch(service, now)

    def _track(self, task: Task) -> None:
        self.tasks[task.key] = task
        self.tenant_load[task.tenant] += 1
        if task.credentials.name:
            self.in_flight[task.credentials.name] += 1

    def _untrack(self, task: Task) -> None:
        del self.tasks[task.key]
        _decrement(self.tenant_load, task.tenant)
        if task.credentials.name:
            _decrement(self.in_flight, task.credentials.name)

    def _refusal(
        self, client: Envelope, request: protocol.ClientRequest, now: float, credentials: Credentials, tenant: str
    ) -> errors.BusError | None:
        if (client, request.request_id) in self.tasks:
            return errors.BadRequest(f"request id {request.request_id} is already in flight")
        limit = self.settings.client_limits.get(credentials.name) if credentials.name else None
        if limit is not None and self.in_flight[credentials.name] >= limit:
            return errors.ClientLimit(f"client {credentials.name} has {limit} requests in flight, its limit")
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
        return self._share_refusal(service, request, tenant)

    def _share_refusal(self, service: Service, request: protocol.ClientRequest, tenant: str) -> errors.BusError | None:
        share = request.share
        if share is not None and share.max_concurrent and self.tenant_load[tenant] >= share.max_concurrent:
            return errors.ConcurrencyLimited(
                f"{tenant} has {share.max_concurrent} requests queued or running, its limit"
            )
        limit = self.settings.queue_limit
        if len(service.queue) >= limit:
            self.counters.overloaded += 1
            return errors.Overloaded(f"service {service.name} has {len(service.queue)} queued")
        tenant_limit = max(1, int(limit * self.settings.tenant_queue_share))
        if service.queue.queued(tenant) >= tenant_limit:
            self.counters.overloaded += 1
            return errors.Overloaded(f"{tenant} has {tenant_limit} requests queued for {service.name}, its share")
        return None

    def _is_unavailable(self, service: Service, now: float) -> bool:
        return not service.workers and now - service.last_alive > self.settings.unavailable_after

    def _on_cancel(self, client: Envelope, request_id: str) -> None:
        task = self.tasks.get((client, request_id))
        if task is not None:
            where = "queue" if task.worker is None else "worker"
            log.info("request_cancelled", request_id=request_id, where=where, client=task.credentials.name)
            self._abandon(task)

    # -- workers -------------------------------------------------------------

    def on_worker(
        self, identity: Envelope, message: Message, now: float, credentials: Credentials = ANONYMOUS
    ) -> None:
        if isinstance(message, protocol.WorkerReady):
            self._on_ready(identity, message, now, credentials)
            return
        worker = self.workers.get(identity)
        if worker is None:
            # A worker we purged or never knew: tell it to start over.
            self.outbox.append((identity, protocol.WorkerDisconnect(version=message.version)))
            return
        worker.expiry = now + self.liveness_period
        worker.last_seen = now
        self.services[worker.service].last_alive = now
        if isinstance(message, protocol.WorkerHeartbeat):
            return
        if isinstance(message, protocol.WorkerPartial):
            self._on_partial(worker, message)
        elif isinstance(message, protocol.WorkerCapacity):
            self._on_capacity(worker, message.capacity, now)
        elif isinstance(message, (protocol.WorkerReply, protocol.WorkerFinal, protocol.WorkerError)):
            self._on_answer(worker, message, now)
        elif isinstance(message, protocol.WorkerDisconnect):
            self._remove_worker(worker, now, died=False)
            log.info("worker_left", worker=worker.identity[-1].hex(), service=worker.service)
        else:
            raise errors.ProtocolError(f"{type(message).__name__} is not sent by workers")

    def _on_ready(
        self, identity: Envelope, ready: protocol.WorkerReady, now: float, credentials: Credentials = ANONYMOUS
    ) -> None:
        known = self.workers.get(identity)
        if known is not None:
            # READY from a registered worker breaks the protocol: drop it.
            self._remove_worker(known, now)
            self.outbox.append((identity, protocol.WorkerDisconnect(version=ready.version)))
            return
        info = _json_object(ready.info)
        worker = Worker(
            identity,
            ready.service,
            now + self.liveness_period,
            info,
            capacity=ready.capacity,
            last_seen=now,
            credentials=credentials,
            version=ready.version,
        )
        service = self.services.setdefault(ready.service, Service(ready.service))
        service.last_alive = now
        service.provisional = False
        self.workers[identity] = worker
        service.workers[identity] = worker
        service.ready.append(worker)
        log.info(
            "worker_ready",
            worker=identity[-1].hex(),
            service=ready.service,
            capacity=ready.capacity,
            key_name=credentials.name,
            version=ready.version,
            info=worker.info,
        )
        self._dispatch(service, now)

    def _on_partial(self, worker: Worker, partial: protocol.WorkerPartial) -> None:
        task = worker.tasks.get(partial.request_id)
        if task is None:
            raise errors.ProtocolError(f"PARTIAL for {partial.request_id}, not one of the worker's tasks")
        if task.cancelled or not task.request.stream:
            return
        task.streamed = True
        if task.sent_tokens is not None:
            if partial.tokens:
                task.sent_tokens.extend(partial.tokens)
            else:
                task.sent_tokens = None
        self.outbox.append(
            (task.client, protocol.ClientPartial(partial.request_id, partial.body, version=task.request.version))
        )

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
            self.outbox.append((task.client, _to_client(answer, task.request.stream, task.request.version)))
            self.counters.answered += 1
            log.debug("request_answered", request_id=request_id, answer=type(answer).__name__)
        self._slots_changed(worker, now)

    def _on_capacity(self, worker: Worker, capacity: int, now: float) -> None:
        log.info("worker_capacity", worker=worker.identity[-1].hex(), capacity=capacity, rows=len(worker.tasks))
        worker.capacity = capacity
        self._slots_changed(worker, now)

    def _slots_changed(self, worker: Worker, now: float) -> None:
        """Keep ``worker`` among its service's ready workers exactly while it has a free slot;
        fill the slots it has."""
        service = self.services[worker.service]
        if worker.free <= 0:
            if worker in service.ready:
                service.ready.remove(worker)
            return
        if worker not in service.ready:
            service.ready.append(worker)
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
        self._untrack(task)
        return True

    def _remove_worker(self, worker: Worker, now: float, died: bool = True) -> None:
        """Forget ``worker``; each of its unanswered tasks goes back to the front of
        the queue, in its order (a worker that ``died`` used up one of each task's
        attempts), or fails WORKER_LOST: out of attempts, or already partly
        streamed to its client, which must never receive an answer twice."""
        service = self.services[worker.service]
        del self.workers[worker.identity]
        del service.workers[worker.identity]
        if worker in service.ready:
            service.ready.remove(worker)
        if not worker.busy:
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
        stuck = task.streamed and task.sent_tokens is None
        if stuck or task.attempts >= self.settings.max_attempts:
            self._untrack(task)
            reason = (
                "the worker serving this stream was lost after part of the answer was sent"
                if stuck
                else f"{task.attempts} workers died serving this request"
            )
            self._fail(task.client, task.request.request_id, errors.WorkerLost(reason), task.request.version)
            return False
        if task.streamed:
            self.counters.migrated += 1
            log.warning(
                "stream_migrated",
                request_id=task.request.request_id,
                client=task.credentials.name,
                tokens_sent=len(task.sent_tokens or ()),
                drained=not died,
            )
        else:
            self.counters.redispatched += 1
            log.warning("request_redispatched", request_id=task.request.request_id, client=task.credentials.name)
        return True

    # -- dispatch and time ---------------------------------------------------

    def _dispatch(self, service: Service, now: float) -> None:
        """Fill free slots with queued tasks, at once: a worker takes up to its free
        slots, and queued work is shared out when several workers have room."""
        while service.queue and service.ready:
            worker = service.ready[0]
            share = min(worker.free, math.ceil(len(service.queue) / len(service.ready)))
            tasks = self._take_live(service, share, now, worker)
            if not tasks:
                return
            service.ready.popleft()
            for task in tasks:
                self._assign(worker, task, now)
            requests = tuple(self._worker_request(task, now, worker.version) for task in tasks)
            self.counters.batches += 1
            message = protocol.WorkerBatch(requests, version=worker.version) if worker.capacity > 1 else requests[0]
            self.outbox.append((worker.identity, message))
            if worker.free > 0:
                service.ready.append(worker)

    def _take_live(self, service: Service, count: int, now: float, worker: Worker) -> list[Task]:
        """Up to ``count`` tasks from the head of the queue for ``worker``, timing out those
        whose deadline passed (and failing a migrated stream that ``worker``, of a version
        before 3, could only start again)."""
        taken: list[Task] = []
        while service.queue and len(taken) < count:
            task = service.queue.popleft()
            if now >= task.deadline:
                self._time_out(task)
            elif task.streamed and worker.version < protocol.SLOTS_VERSION:
                self._untrack(task)
                lost = errors.WorkerLost("the stream's worker was lost and no worker can go on from its tokens")
                self._fail(task.client, task.request.request_id, lost, task.request.version)
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
            client=task.credentials.name,
            attempt=task.attempts,
            rows=len(worker.tasks),
        )

    @staticmethod
    def _worker_request(task: Task, now: float, version: int) -> protocol.WorkerRequest:
        request = task.request
        return protocol.WorkerRequest(
            request.request_id,
            task.remaining_ms(now),
            request.stream,
            request.body,
            tenant=task.tenant,
            resume=tuple(task.sent_tokens or ()),
            version=version,
        )

    def _time_out(self, task: Task, where: str = "queue") -> None:
        """Answer TIMEOUT for ``task``, which is no longer queued (or is running ``where``)."""
        self.counters.timeouts += 1
        self._forget(task)
        log.info("request_timed_out", request_id=task.request.request_id, where=where, client=task.credentials.name)
        self._fail(task.client, task.request.request_id, errors.RequestTimeout(), task.request.version)

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
            self.outbox.extend((identity, _WORKER_HEARTBEATS[w.version]) for identity, w in self.workers.items())

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
                    self._cancel_at_worker(task, worker)

    def _expire_clients(self, now: float) -> None:
        """A client silent past ``client_timeout`` is gone: drop its queued requests and
        cancel its running ones, so no worker serves nobody."""
        silent = [client for client, state in self.clients.items() if now >= state.expiry]
        for client in silent:
            name = self.clients.pop(client).credentials.name
            tasks = [task for key, task in self.tasks.items() if key[0] == client]
            if tasks:
                self.counters.clients_expired += 1
                log.warning("client_expired", client=client[-1].hex(), key_name=name, requests=len(tasks))
            for task in tasks:
                self._abandon(task)

    def _abandon(self, task: Task) -> None:
        """Forget ``task``, whose client is gone; a running one is cancelled at its worker."""
        self._untrack(task)
        if task.worker is None:
            self.services[task.request.service].queue.remove(task)
        else:
            task.cancelled = True
            self._cancel_at_worker(task, task.worker)

    def _cancel_at_worker(self, task: Task, worker: Worker) -> None:
        cancel = protocol.WorkerCancel(task.request.request_id, version=worker.version)
        self.outbox.append((worker.identity, cancel))

    def _forget_provisional(self) -> None:
        for name in [name for name, service in self.services.items() if service.provisional and not service.queue]:
            del self.services[name]

    def _fail_queue(self, service: Service, error: errors.BusError) -> None:
        while service.queue:
            task = service.queue.popleft()
            self._untrack(task)
            self._fail(task.client, task.request.request_id, error, task.request.version)

    def _fail(self, client: Envelope, request_id: str, error: errors.BusError, version: int) -> None:
        """Answer ``error`` to ``client`` in the protocol version it speaks."""
        self.outbox.append(
            (client, protocol.ClientError(request_id, error.code, error.message, error.error_type, version=version))
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
        self.outbox.append((client, protocol.ClientReply(request.request_id, reply, version=request.version)))

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
                    "free": max(0, worker.free),
                    "served": worker.served,
                    "key": worker.credentials.name,
                    "version": worker.version,
                    "last_seen_seconds": round(now - worker.last_seen, 3),
                }
                for worker in service.workers.values()
            ]
            summary["tenants"] = service.tenants()
            services[name] = summary
        counters = {name: getattr(self.counters, name) for name in Counters.__slots__}
        return {
            "services": services,
            "counters": counters,
            "incarnation": self.incarnation,
            "clients": len(self.clients),
            "client_keys": self._client_keys(),
        }

    def _client_keys(self) -> dict[str, dict[str, Any]]:
        """Per named client key: its connections that heartbeat, its requests in flight and its limit."""
        connections = Counter(known.credentials.name for known in self.clients.values() if known.credentials.name)
        return {
            name: {
                "connections": connections[name],
                "in_flight": self.in_flight[name],
                "limit": self.settings.client_limits.get(name),
            }
            for name in sorted({*connections, *self.in_flight})
        }


def _tenant(client: Envelope, request: protocol.ClientRequest, credentials: Credentials) -> str:
    """Whom ``request`` is queued for: the tenant it names, else its client's key
    name, else the client connection itself."""
    if request.share is not None:
        return request.share.tenant
    return f"client-{credentials.name or client[-1].hex()}"


def _decrement(counter: Counter[str], name: str) -> None:
    counter[name] -= 1
    if not counter[name]:
        del counter[name]


def _json_object(raw: bytes) -> dict[str, Any]:
    """``raw`` as a JSON object, or empty when it is anything else (nesting deep
    enough to exhaust the parser's recursion included): peers' JSON is untrusted."""
    try:
        value = json.loads(raw)
    except (ValueError, RecursionError):
        return {}
    return value if isinstance(value, dict) else {}


def _to_client(answer: Message, stream: bool, version: int) -> Message:
    """The client message, in the client's protocol ``version``, that carries a worker's REPLY, FINAL or ERROR."""
    if isinstance(answer, protocol.WorkerError):
        return protocol.ClientError(answer.request_id, answer.code, answer.message, answer.error_type, version=version)
    if isinstance(answer, protocol.WorkerFinal) and stream:
        return protocol.ClientFinal(answer.request_id, answer.body, version=version)
    return protocol.ClientReply(answer.request_id, answer.body, version=version)  # type: ignore[attr-defined]
