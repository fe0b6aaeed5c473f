"""Finding, constructing and calling algorithms.

An algorithm is any class, from any installed package, that the worker
constructs once (the constructor loads the model) and calls per request.
Two calling conventions are understood:

* the Django LLM API server's: ``Algorithm(logger=..., model_names=[...])``
  and ``run(input_text)`` returning a JSON-able result such as
  ``{"status": ..., "output": ...}``;
* the richer one of the built-in algorithms: ``handle(request, context)``
  with the whole JSON request, and optionally ``stream(request, context)``,
  a generator of JSON-able pieces whose return value is the final summary.

An algorithm may also serve several requests at once: it declares
``max_batch`` (above 1) and ``serve_batch(batch)``, which answers each
:class:`Row` of a :class:`Batch` on its own (see ``docs/models.md``). While
it runs, more requests may arrive (the broker fills each free slot at
once): one that takes them in as it goes calls :meth:`Batch.arrivals`
between its steps; those it does not take make the next batch. Every other
algorithm is given one request at a time, exactly as before. An optional
``warm_up()`` runs on the thread that will serve requests, before the
worker says READY.
"""

from __future__ import annotations

import importlib
import inspect
import threading
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any

import structlog

from broker.errors import InvalidInput

log = structlog.get_logger(__name__)

BUILTIN_ALGORITHMS = {
    "echo": "gpuworker.builtin:EchoAlgorithm",
    "sleep": "gpuworker.builtin:SleepAlgorithm",
    "text-generation": "gpuworker.models.generation:TextGeneration",
    "embedding": "gpuworker.models.embedding:Embedding",
}


class AlgorithmLoadError(Exception):
    """The algorithm spec names nothing importable, or its constructor failed."""


@dataclass(slots=True)
class TaskContext:
    """What an algorithm may know about the task it serves.

    ``cancelled`` is set when the client no longer wants the answer (or its
    deadline passed); long computations should check it and stop early.
    """

    request_id: str
    deadline: float
    cancelled: threading.Event = field(default_factory=threading.Event)
    # Whom the request is for (the frontend names an API key's tenant); "" when unknown.
    tenant: str = ""
    # Tokens an earlier worker already streamed for it, which this one goes on from (a migrated stream).
    resume: tuple[int, ...] = ()


class Row:
    """One request of a batch, answered on its own.

    ``request`` is the request's JSON object, ``context`` its cancellation
    and deadline, ``stream`` whether its client takes pieces. An algorithm
    calls :meth:`emit` for each piece of a streamed answer, then exactly one
    of :meth:`finish` (the result, or a stream's summary) or :meth:`fail`.
    ``send`` receives ``(row, "piece" | "result" | "error", value)`` for each,
    and for a piece the token ids it was decoded from (from an algorithm that
    says so: a stream whose pieces name their tokens can go on elsewhere if
    its worker is lost).
    """

    def __init__(
        self,
        request: dict[str, Any],
        context: TaskContext,
        stream: bool,
        send: Callable[..., None],
    ) -> None:
        self.request = request
        self.context = context
        self.stream = stream
        self._send = send
        self.ended = False

    @property
    def request_id(self) -> str:
        return self.context.request_id

    def emit(self, piece: Any, tokens: Sequence[int] = ()) -> None:
        if not self.ended and self.stream:
            self._send(self, "piece", piece, tokens)

    def finish(self, result: Any) -> None:
        self._end("result", result)

    def fail(self, error: Exception) -> None:
        self._end("error", error)

    def _end(self, kind: str, value: Any) -> None:
        if self.ended:
            log.warning("row_answered_twice", request_id=self.request_id, answer=kind)
            return
        self.ended = True
        self._send(self, kind, value)


@dataclass(slots=True)
class Batch:
    """Rows to serve together. ``flush`` hands what the rows produced so far to
    the worker's socket loop (algorithms call it after each step); ``arrivals``
    returns the rows that arrived since the batch began or since its last call;
    ``full`` says whether rows wait for room."""

    rows: list[Row]
    flush: Callable[[], None] = lambda: None
    arrivals: Callable[[], list[Row]] = list
    # Called by an algorithm whose rows now wait for memory (True), or have room again (False),
    # so that the broker is told to stop sending rows that could not start.
    full: Callable[[bool], None] = lambda full: None


def resolve(spec: str) -> type:
    """The class named by ``spec``: a built-in name, ``module:Class``, or a package with ``Algorithm``."""
    target = BUILTIN_ALGORITHMS.get(spec, spec)
    module_name, _, attribute = target.partition(":")
    try:
        module = importlib.import_module(module_name)
    except ImportError as exc:
        raise AlgorithmLoadError(f"cannot import {module_name!r} for algorithm {spec!r}: {exc}") from exc
    cls = getattr(module, attribute or "Algorithm", None)
    if not isinstance(cls, type):
        raise AlgorithmLoadError(f"{module_name!r} has no class {attribute or 'Algorithm'!r}")
    return cls


class LoadedAlgorithm:
    """One constructed algorithm behind a single calling convention.

    ``spec`` names the class (see :func:`resolve`); ``logger`` and
    ``model_names`` are passed to constructors that accept them, as the
    Django LLM API server does; ``options`` are further keyword arguments
    for constructors that declare them.
    """

    def __init__(
        self,
        spec: str,
        logger: Any,
        model_names: list[str],
        options: dict[str, Any] | None = None,
    ) -> None:
        cls = resolve(spec)
        kwargs = _accepted_kwargs(cls, {"logger": logger, "model_names": model_names}, options or {})
        try:
            self.instance = cls(**kwargs)
        except Exception as exc:
            raise AlgorithmLoadError(f"constructing {spec!r} failed: {type(exc).__name__}: {exc}") from exc
        self.spec = spec
        self.can_stream = callable(getattr(self.instance, "stream", None))
        self.capacity = _capacity(self.instance)

    def warm_up(self) -> None:
        """The algorithm's own warm-up, if it has one, on the calling (serving) thread."""
        warm_up = getattr(self.instance, "warm_up", None)
        if callable(warm_up):
            warm_up()

    def describe(self) -> dict[str, Any]:
        """What the algorithm says about itself (model, device, memory, and what it serves:
        its ``capabilities``, plain ``text`` unless it says more), for status and the frontends."""
        describe = getattr(self.instance, "describe", None)
        info = describe() if callable(describe) else {}
        capabilities = list(getattr(self.instance, "capabilities", None) or ["text"])
        return {"algorithm": self.spec, "capabilities": capabilities, **info}

    def serve(self, request: dict[str, Any], context: TaskContext) -> Any:
        handle = getattr(self.instance, "handle", None)
        if callable(handle):
            return handle(request, context)
        text = request.get("text")
        if not isinstance(text, str):
            raise InvalidInput("the request needs a string field 'text'")
        return self.instance.run(text)

    def stream(self, request: dict[str, Any], context: TaskContext) -> Iterator[Any]:
        return self.instance.stream(request, context)

    def serve_batch(self, batch: Batch) -> None:
        """Answer every row of ``batch``: all at once when the algorithm batches, else one by one."""
        if self.capacity > 1:
            self.instance.serve_batch(batch)
            return
        for row in batch.rows:
            self._serve_row(row, batch.flush)

    def _serve_row(self, row: Row, flush: Callable[[], None]) -> None:
        if not (row.stream and self.can_stream):
            row.finish(self.serve(row.request, row.context))
            return
        pieces = self.stream(row.request, row.context)
        while True:
            try:
                piece = next(pieces)
            except StopIteration as end:
                row.finish(end.value or {})
                return
            row.emit(piece)
            flush()


def _capacity(instance: Any) -> int:
    """How many requests ``instance`` serves at once: its ``max_batch`` when it has ``serve_batch``."""
    declared = getattr(instance, "max_batch", 1)
    if not callable(getattr(instance, "serve_batch", None)) or not isinstance(declared, int) or declared < 1:
        return 1
    return declared


def _accepted_kwargs(cls: type, standard: dict[str, Any], options: dict[str, Any]) -> dict[str, Any]:
    parameters = inspect.signature(cls).parameters
    takes_any = any(p.kind is inspect.Parameter.VAR_KEYWORD for p in parameters.values())
    unknown = [name for name in options if name not in parameters and not takes_any]
    if unknown:
        raise AlgorithmLoadError(f"{cls.__name__} does not take options {unknown}")
    accepted = {k: v for k, v in standard.items() if k in parameters or takes_any}
    return accepted | options
