"""Runs tasks off the socket loop, so the worker heartbeats during long tasks.

One thread executes one task at a time and sends each resulting protocol
message (PARTIAL, REPLY, FINAL or ERROR) back over an in-process ZeroMQ pipe
that the worker's loop polls next to its broker socket.
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
from gpuworker.algorithm import LoadedAlgorithm, TaskContext

log = structlog.get_logger(__name__)


class TaskRunner:
    """A thread that serves tasks with ``algorithm`` and reports on ``pipe_endpoint``.

    ``context`` is the ZeroMQ context shared with the worker loop, which
    binds a PAIR socket at ``pipe_endpoint`` before starting the runner.
    """

    def __init__(self, algorithm: LoadedAlgorithm, context: zmq.Context, pipe_endpoint: str) -> None:
        self.algorithm = algorithm
        self._context = context
        self._endpoint = pipe_endpoint
        self._tasks: queue.Queue[tuple[protocol.WorkerRequest, TaskContext] | None] = queue.Queue()
        self._thread = threading.Thread(target=self._loop, name="task-runner", daemon=True)
        # contextvars do not cross into new threads: carry the process's log context over.
        self._log_context = structlog.contextvars.get_contextvars()

    def start(self) -> None:
        self._thread.start()

    def submit(self, request: protocol.WorkerRequest) -> TaskContext:
        """Queue ``request``; the returned context's ``cancelled`` event stops it."""
        context = TaskContext(request.request_id, time.monotonic() + request.timeout_ms / 1000)
        self._tasks.put((request, context))
        return context

    def stop(self) -> None:
        self._tasks.put(None)
        self._thread.join()

    def _loop(self) -> None:
        structlog.contextvars.bind_contextvars(**self._log_context)
        pipe = self._context.socket(zmq.PAIR)
        pipe.connect(self._endpoint)
        try:
            while (item := self._tasks.get()) is not None:
                request, context = item
                structlog.contextvars.bind_contextvars(request_id=request.request_id)
                for message in self._serve(request, context):
                    pipe.send_pyobj(message)
                structlog.contextvars.unbind_contextvars("request_id")
        finally:
            pipe.close(linger=0)

    def _serve(self, request: protocol.WorkerRequest, context: TaskContext):
        request_id = request.request_id
        started = time.perf_counter()
        try:
            payload = _parse_body(request.body)
            if request.stream and self.algorithm.can_stream:
                stream = self.algorithm.stream(payload, context)
                while True:
                    try:
                        piece = next(stream)
                    except StopIteration as end:
                        yield protocol.WorkerFinal(request_id, _to_json(end.value or {}))
                        break
                    yield protocol.WorkerPartial(request_id, _to_json(piece))
            else:
                result = _to_json(self.algorithm.serve(payload, context))
                answer = protocol.WorkerFinal if request.stream else protocol.WorkerReply
                yield answer(request_id, result)
            log.info("task_done", seconds=round(time.perf_counter() - started, 4))
        except BusError as exc:
            log.info("task_refused", code=exc.code, reason=exc.message)
            yield protocol.WorkerError(request_id, exc.code, exc.message, type(exc).__name__)
        except Exception as exc:  # an algorithm's failure must not kill the worker
            log.exception("task_failed", error_type=type(exc).__name__)
            yield protocol.WorkerError(request_id, "WORKER_ERROR", str(exc), type(exc).__name__)


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
