"""Runs requests off the socket loop, so the worker heartbeats during long tasks.

One long-lived thread warms the algorithm up and then serves what the broker
sends: a batch of the requests waiting for it, handed to the algorithm, which
may take in the requests that arrive while it runs (see
:class:`gpuworker.algorithm.Batch`). Every request is answered on its own:
its PARTIAL pieces and its one REPLY, FINAL or ERROR go back, a list at a
time, over an in-process ZeroMQ pipe that the worker's loop polls next to
its broker socket.

Generation stays on this one thread on purpose: CUDA libraries keep
per-thread state (handles, plan caches, captured graphs), and a model run
from a freshly started thread was measured several times slower.
"""

from __future__ import annotations

import json
import queue
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import structlog
import zmq

from broker import protocol
from broker.errors import BusError, InvalidInput
from config.logs import QueuedLog
from gpuworker.algorithm import Batch, LoadedAlgorithm, Row, TaskContext

log = structlog.get_logger(__name__)

Arrival = tuple[protocol.WorkerRequest, TaskContext]


@dataclass(frozen=True, slots=True)
class RoomChanged:
    """Sent to the worker's loop with the answers: the algorithm's rows wait for memory
    (``full``), or have room again."""

    full: bool


class TaskRunner:
    """A thread that serves requests with ``algorithm`` and reports on ``pipe_endpoint``.

    ``context`` is the ZeroMQ context shared with the worker loop, which
    binds a PAIR socket at ``pipe_endpoint`` before starting the runner.
    """

    def __init__(self, algorithm: LoadedAlgorithm, context: zmq.Context, pipe_endpoint: str) -> None:
        self.algorithm = algorithm
        self._context = context
        self._endpoint = pipe_endpoint
        self._inbox: queue.SimpleQueue[list[Arrival] | None] = queue.SimpleQueue()
        self._stopping = False
        self._thread = threading.Thread(target=self._loop, name="task-runner", daemon=True)
        self._warmed = threading.Event()
        self._warm_up_error: BaseException | None = None
        # contextvars do not cross into new threads: carry the process's log context over.
        self._log_context = structlog.contextvars.get_contextvars()

    def start(self) -> None:
        """Start the thread and wait until it has warmed the algorithm up (re-raising its failure)."""
        self._thread.start()
        self._warmed.wait()
        if self._warm_up_error is not None:
            self._thread.join()
            raise self._warm_up_error

    def submit(self, requests: Sequence[protocol.WorkerRequest]) -> dict[str, TaskContext]:
        """Hand over requests; the returned contexts' ``cancelled`` events stop them."""
        now = time.monotonic()
        arrivals = [
            (request, TaskContext(request.request_id, now + request.timeout_ms / 1000, tenant=request.tenant,
                                  resume=request.resume))
            for request in requests
        ]
        self._inbox.put(arrivals)
        return {context.request_id: context for _, context in arrivals}

    def stop(self) -> None:
        self._inbox.put(None)
        self._thread.join()

    def _loop(self) -> None:
        structlog.contextvars.bind_contextvars(**self._log_context)
        try:
            self.algorithm.warm_up()
        except BaseException as exc:  # handed to start(), which raises it in the worker
            self._warm_up_error = exc
            return
        finally:
            self._warmed.set()
        pipe = self._context.socket(zmq.PAIR)
        pipe.connect(self._endpoint)
        # Each request's lines (answered, and its call's end), written by a thread of their own.
        rows_log = QueuedLog(__name__)
        try:
            while not self._stopping and (arrivals := self._inbox.get()) is not None:
                _Serving(self, pipe, rows_log).serve(arrivals)
        finally:
            pipe.close(linger=0)
            rows_log.close()

    def take_arrivals(self) -> list[Arrival]:
        """Whatever arrived since the last look, without waiting."""
        taken: list[Arrival] = []
        while not self._stopping:
            try:
                arrivals = self._inbox.get_nowait()
            except queue.Empty:
                break
            if arrivals is None:
                self._stopping = True
            else:
                taken.extend(arrivals)
        return taken


class _Serving:
    """One call of the algorithm: the rows handed to it, and the messages they produce."""

    def __init__(self, runner: TaskRunner, pipe: zmq.Socket, rows_log: QueuedLog) -> None:
        self.runner = runner
        self.rows_log = rows_log
        self.algorithm = runner.algorithm
        self.pipe = pipe
        self.outbox: list[protocol.Message | RoomChanged] = []
        self.rows: list[Row] = []
        self.full = False

    def serve(self, arrivals: list[Arrival]) -> None:
        started = time.perf_counter()
        first = self._rows(arrivals)
        try:
            if first:
                self.algorithm.serve_batch(Batch(first, self.flush, self._arrivals, self._full))
            self.rows_log.info("task_done", rows=len(self.rows), seconds=round(time.perf_counter() - started, 4))
        except Exception as exc:  # an algorithm's failure must not kill the worker
            if not isinstance(exc, BusError):
                log.exception("task_failed", error_type=type(exc).__name__)
            for row in self.rows:
                if not row.ended:
                    row.fail(exc)
        for row in self.rows:
            if not row.ended:
                log.error("row_left_unanswered", request_id=row.request_id)
                row.fail(RuntimeError("the algorithm returned without answering this request"))
        self._full(False)
        self.flush()

    def _full(self, full: bool) -> None:
        if full != self.full:
            self.full = full
            self.outbox.append(RoomChanged(full))

    def _arrivals(self) -> list[Row]:
        return self._rows(self.runner.take_arrivals())

    def _rows(self, arrivals: list[Arrival]) -> list[Row]:
        """Rows for ``arrivals``; one whose body is not a JSON object is answered at once."""
        live = []
        for request, context in arrivals:
            row = Row({}, context, request.stream, self._send)
            self.rows.append(row)
            try:
                row.request = _parse_body(request.body)
            except InvalidInput as exc:
                row.fail(exc)
            else:
                live.append(row)
        return live

    def flush(self) -> None:
        if self.outbox:
            messages, self.outbox = self.outbox, []
            self.pipe.send_pyobj(messages)

    def _send(self, row: Row, kind: str, value: Any, tokens: Sequence[int] = ()) -> None:
        if kind != "piece":
            self.rows_log.info("row_answered", request_id=row.request_id, answer=kind)
        self.outbox.append(_message(row, kind, value, tokens))


def _message(row: Row, kind: str, value: Any, tokens: Sequence[int] = ()) -> protocol.Message:
    """The protocol message that carries one row's piece, result or error; a piece
    or result that JSON cannot carry ends the row with an error instead."""
    if kind == "error":
        return _error(row.request_id, value)
    try:
        body = _to_json(value)
    except ResultNotJSON as exc:
        log.error("task_failed", request_id=row.request_id, error_type=type(exc).__name__, reason=str(exc))
        row.ended = True
        return _error(row.request_id, exc)
    if kind == "piece":
        return protocol.WorkerPartial(row.request_id, body, tuple(tokens))
    return (protocol.WorkerFinal if row.stream else protocol.WorkerReply)(row.request_id, body)


def _error(request_id: str, exc: Exception) -> protocol.WorkerError:
    if isinstance(exc, BusError):
        log.info("task_refused", request_id=request_id, code=exc.code, reason=exc.message)
        return protocol.WorkerError(request_id, exc.code, exc.message, type(exc).__name__)
    return protocol.WorkerError(request_id, "WORKER_ERROR", str(exc), type(exc).__name__)


def _parse_body(body: bytes) -> dict[str, Any]:
    try:
        payload = json.loads(body)
    except ValueError:
        raise InvalidInput("the request body is not JSON") from None
    if not isinstance(payload, dict):
        raise InvalidInput("the request body must be a JSON object")
    return payload


class ResultNotJSON(TypeError):
    """The algorithm returned something that JSON cannot carry."""


def _to_json(value: Any) -> bytes:
    try:
        return json.dumps(value, ensure_ascii=False, allow_nan=False).encode("utf-8")
    except (TypeError, ValueError) as exc:
        raise ResultNotJSON(f"the algorithm's result is not JSON-serialisable: {exc}") from None
