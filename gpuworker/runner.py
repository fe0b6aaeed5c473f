"""Runs dispatches off the socket loop, so the worker heartbeats during long tasks.

One long-lived thread warms the algorithm up and then serves one dispatch
(a request, or a batch of them) at a time. Every request of a dispatch is
answered on its own: its PARTIAL pieces and its one REPLY, FINAL or ERROR
go back, a list at a time, over an in-process ZeroMQ pipe that the worker's
loop polls next to its broker socket.

Generation stays on this one thread on purpose: CUDA libraries keep
per-thread state (handles, plan caches, captured graphs), and a model run
from a freshly started thread was measured several times slower.
"""

from __future__ import annotations

import json
import queue
import threading
import time
from typing import Any

import structlog
import zmq

from broker import protocol
from broker.errors import BusError, InvalidInput
from gpuworker.algorithm import Batch, LoadedAlgorithm, Row, TaskContext

log = structlog.get_logger(__name__)

Dispatch = list[tuple[protocol.WorkerRequest, TaskContext]]


class TaskRunner:
    """A thread that serves dispatches with ``algorithm`` and reports on ``pipe_endpoint``.

    ``context`` is the ZeroMQ context shared with the worker loop, which
    binds a PAIR socket at ``pipe_endpoint`` before starting the runner.
    """

    def __init__(self, algorithm: LoadedAlgorithm, context: zmq.Context, pipe_endpoint: str) -> None:
        self.algorithm = algorithm
        self._context = context
        self._endpoint = pipe_endpoint
        self._dispatches: queue.Queue[Dispatch | None] = queue.Queue()
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

    def submit(self, requests: list[protocol.WorkerRequest]) -> dict[str, TaskContext]:
        """Queue one dispatch; the returned contexts' ``cancelled`` events stop its requests."""
        now = time.monotonic()
        dispatch = [(request, TaskContext(request.request_id, now + request.timeout_ms / 1000)) for request in requests]
        self._dispatches.put(dispatch)
        return {context.request_id: context for _, context in dispatch}

    def stop(self) -> None:
        self._dispatches.put(None)
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
        try:
            while (dispatch := self._dispatches.get()) is not None:
                _Dispatch(self.algorithm, dispatch, pipe).serve()
        finally:
            pipe.close(linger=0)


class _Dispatch:
    """One dispatch being served: its rows and the messages they produce."""

    def __init__(self, algorithm: LoadedAlgorithm, dispatch: Dispatch, pipe: zmq.Socket) -> None:
        self.algorithm = algorithm
        self.pipe = pipe
        self.outbox: list[protocol.Message] = []
        self.rows: list[Row] = []
        for request, context in dispatch:
            row = Row({}, context, request.stream, self._send)
            try:
                row.request = _parse_body(request.body)
            except InvalidInput as exc:
                row.fail(exc)
            self.rows.append(row)

    def serve(self) -> None:
        live = [row for row in self.rows if not row.ended]
        request_ids = [row.request_id for row in live]
        structlog.contextvars.bind_contextvars(request_id=request_ids[0] if len(request_ids) == 1 else request_ids)
        started = time.perf_counter()
        try:
            if live:
                self.algorithm.serve_batch(Batch(live, self.flush))
            log.info("task_done", rows=len(self.rows), seconds=round(time.perf_counter() - started, 4))
        except Exception as exc:  # an algorithm's failure must not kill the worker
            if not isinstance(exc, BusError):
                log.exception("task_failed", error_type=type(exc).__name__)
            for row in live:
                if not row.ended:
                    row.fail(exc)
        for row in live:
            if not row.ended:
                log.error("row_left_unanswered", request_id=row.request_id)
                row.fail(RuntimeError("the algorithm returned without answering this request"))
        self.flush()
        structlog.contextvars.unbind_contextvars("request_id")

    def flush(self) -> None:
        if self.outbox:
            messages, self.outbox = self.outbox, []
            self.pipe.send_pyobj(messages)

    def _send(self, row: Row, kind: str, value: Any) -> None:
        self.outbox.append(_message(row, kind, value))


def _message(row: Row, kind: str, value: Any) -> protocol.Message:
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
        return protocol.WorkerPartial(row.request_id, body)
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
