"""Structured logging, configured once by each process's entry point."""

from __future__ import annotations

import contextvars
import logging
import sys
import threading
import time
import traceback
from collections import deque
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, TextIO

import structlog

from config.settings import LoggingSettings


def configure_logging(settings: LoggingSettings, process: str) -> None:
    """One event per line on stderr: JSON in production, readable in development, and on the
    terminal ``llmapi up`` runs in, a short line per request and per warning (see
    :func:`render_terminal_line`).

    ``process`` (broker, worker, frontend...) is bound to every event so lines
    from several processes can be told apart once merged.
    """
    level = getattr(logging, settings.level.upper())
    rendering: list[structlog.types.Processor]
    if settings.format == "json":
        rendering = [structlog.processors.format_exc_info, structlog.processors.JSONRenderer()]
    elif settings.format == "terminal":
        rendering = [_keep_for_terminal, render_terminal_line]
    else:
        rendering = [structlog.processors.format_exc_info, structlog.dev.ConsoleRenderer(colors=False)]
    shared: list[structlog.types.Processor] = [
        structlog.contextvars.merge_contextvars,
        structlog.processors.add_log_level,
        _stamp_time,
    ]
    structlog.configure(
        processors=[*shared, *rendering],
        wrapper_class=structlog.make_filtering_bound_logger(level),
        logger_factory=structlog.PrintLoggerFactory(file=sys.stderr),
        cache_logger_on_first_use=True,
    )
    structlog.contextvars.bind_contextvars(process=process)
    # Libraries log through the standard library (Tornado's errors with their
    # tracebacks, say): render those lines the same way, one event per line.
    handler = logging.StreamHandler(sys.stderr)
    if settings.format == "terminal":
        # A library's info (a logger given its own level) is left out here, by level: the
        # structlog chain's DropEvent would escape the handler into the library's call.
        handler.setLevel(logging.WARNING)
        rendering = [render_terminal_line]
    handler.setFormatter(
        structlog.stdlib.ProcessorFormatter(
            foreign_pre_chain=[*shared, structlog.stdlib.add_logger_name],
            processors=[structlog.stdlib.ProcessorFormatter.remove_processors_meta, *rendering],
        )
    )
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(max(level, logging.WARNING))
    # On a terminal, a library's warning (warnings.warn) is one line too, not a message and its source line.
    logging.captureWarnings(settings.format == "terminal")


# Where an event queued to be written later carries the time it was logged (seconds since the epoch).
LOGGED_AT = "_logged_at"


def _stamp_time(_logger: Any, _method: str, event_dict: structlog.types.EventDict) -> structlog.types.EventDict:
    """The event's time in ISO 8601, UTC: now, or when it was logged if it was queued (:class:`QueuedLog`)."""
    logged_at = event_dict.pop(LOGGED_AT, None)
    moment = datetime.fromtimestamp(time.time() if logged_at is None else logged_at, UTC)
    event_dict["timestamp"] = moment.isoformat().replace("+00:00", "Z")
    return event_dict


# The terminal format (``logging.format = "terminal"``, what ``llmapi up`` gives its processes).
# The access log's events (frontend.app): each is one HTTP request, and the one line a request gets.
REQUEST_EVENTS = frozenset({"http_request", "admin_request"})
# The info events a person starting the stack waits for, each with the fields its line shows:
# a model's conversion (a line every few seconds, README), its loading, a worker ready (the broker's).
ANNOUNCED_EVENTS: dict[str, tuple[str, ...]] = {
    "gguf_conversion_started": ("size_mb",),
    "gguf_conversion_progress": ("step", "state", "seconds"),
    "gguf_conversion_done": ("seconds",),
    "demo_model_waiting": ("reason",),
    "model_loaded": ("model", "seconds"),
    "worker_ready": ("service", "capacity"),
}
_SHOWN_LEVELS = frozenset({"warning", "error", "critical"})
# What every event carries that a terminal line says otherwise (its time, level and process) or not at all.
_UNSHOWN = ("timestamp", "level", "process", "event")


def _keep_for_terminal(
    _logger: Any, _method: str, event_dict: structlog.types.EventDict
) -> structlog.types.EventDict:
    """Drop what the terminal format leaves out: info and debug events that are neither a
    request nor announced."""
    event = event_dict.get("event")
    if event_dict.get("level") in _SHOWN_LEVELS or event in REQUEST_EVENTS or event in ANNOUNCED_EVENTS:
        return event_dict
    raise structlog.DropEvent


def render_terminal_line(_logger: Any, _method: str, event_dict: structlog.types.EventDict) -> str:
    """One short line, its time first (local, to the second):
    ``20:41:07 200 POST /v1/chat/completions llmapi_Ab12Cd34 31 tok 1.24 s`` for a request
    (its key's public prefix, never more; its error code when refused; its tokens when answered),
    ``20:41:09 worker: model_loaded model=smollm2-135m seconds=1.4`` for an announcement, and
    ``20:41:12 warning broker: worker_expired service=default busy=True`` for a warning or an
    error, an exception as its type, message and place, not its traceback."""
    moment = _local_time(event_dict.get("timestamp"))
    event = event_dict.get("event")
    if event in REQUEST_EVENTS and event_dict.get("level") not in _SHOWN_LEVELS:
        return f"{moment} {_request_line(event_dict)}"
    level = event_dict.get("level", "info")
    head = f"{'' if level == 'info' else level + ' '}{event_dict.get('process', '?')}: {_one_line(str(event))}"
    shown = ANNOUNCED_EVENTS.get(str(event), ()) if level not in _SHOWN_LEVELS else None
    fields = {
        name: value
        for name, value in event_dict.items()
        if name not in _UNSHOWN and (shown is None or name in shown) and value is not None
    }
    exc_info = fields.pop("exc_info", None)
    if exc_info:
        fields["exception"] = _exception_summary(exc_info)
    return " ".join([moment, head, *(f"{name}={_field(value)}" for name, value in fields.items())])


def _request_line(fields: structlog.types.EventDict) -> str:
    who = fields.get("key_prefix") or fields.get("admin_token_prefix") or "-"
    parts = [str(fields.get("status")), str(fields.get("method")), str(fields.get("path")), str(who)]
    if fields.get("code"):
        parts.append(str(fields["code"]))
    if fields.get("tokens") is not None:
        parts.append(f"{fields['tokens']} tok")
    latency_ms = fields.get("latency_ms")
    if isinstance(latency_ms, int | float):
        parts.append(f"{latency_ms:.0f} ms" if latency_ms < 1000 else f"{latency_ms / 1000:.2f} s")
    return " ".join(parts)


def _local_time(timestamp: object) -> str:
    try:
        moment = datetime.fromisoformat(str(timestamp)).astimezone()
    except ValueError:
        moment = datetime.now().astimezone()
    return moment.strftime("%H:%M:%S")


def _one_line(text: str) -> str:
    lines = text.strip().splitlines() or [""]
    return lines[0] + (" …" if len(lines) > 1 else "")


def _field(value: object) -> str:
    text = value if isinstance(value, str) else repr(value)
    return repr(text) if not text or any(c.isspace() for c in text) else text


def _exception_summary(exc_info: object) -> str:
    """``ValueError: bad (gateway.py:206)``: the exception and the line it was raised at."""
    if isinstance(exc_info, BaseException):
        error: BaseException | None = exc_info
    elif isinstance(exc_info, tuple):
        error = exc_info[1]
    else:
        error = sys.exc_info()[1]
    if error is None:
        return "unknown"
    summary = f"{type(error).__name__}: {_one_line(str(error))}" if str(error) else type(error).__name__
    frames = traceback.extract_tb(error.__traceback__)
    if frames:
        summary += f" ({Path(frames[-1].filename).name}:{frames[-1].lineno})"
    return summary


def configure_command_logging(settings: LoggingSettings, command: str) -> None:
    """Logging for a command that does its work and ends (``accounts``, ``status``, ``up``),
    not a server: what it has to say is its output, so stderr carries only its warnings and
    errors, whatever ``logging.level`` asks of the servers."""
    quiet = "error" if settings.level == "error" else "warning"
    configure_logging(settings.model_copy(update={"level": quiet}), command)


class Sampled:
    """Warnings that can come by the thousand (a message per dropped answer, per malformed
    frame), logged at most once per event and peer each ``interval`` seconds: the first at
    once, the others counted and logged as one line with ``repeated`` when the interval ends.
    At most ``max_peers`` are followed at a time; the rest are summed under ``peer="others"``.
    :meth:`flush` is called from the caller's loop, with its clock."""

    def __init__(self, logger: Any, interval: float = 5.0, max_peers: int = 1000) -> None:
        self.logger = logger
        self.interval = interval
        self.max_peers = max_peers
        self._suppressed: dict[tuple[str, str], int] = {}
        self._ends: float | None = None

    def warning(self, event: str, peer: str, now: float, **fields: Any) -> None:
        key = (event, peer if len(self._suppressed) < self.max_peers else "others")
        if key in self._suppressed:
            self._suppressed[key] += 1
            return
        self._suppressed[key] = 0
        if self._ends is None:
            self._ends = now + self.interval
        self.logger.warning(event, peer=key[1], **fields)

    def flush(self, now: float) -> None:
        if self._ends is None or now < self._ends:
            return
        for (event, peer), count in self._suppressed.items():
            if count:
                self.logger.warning(event, peer=peer, repeated=count, seconds=self.interval)
        self._suppressed.clear()
        self._ends = None


class QueuedLog:
    """Info events rendered and written by a thread of their own, for a thread whose time is
    better spent elsewhere (the frontend's event loop, for its access log): :meth:`info` only
    appends the event's name, fields and time to a buffer. Every ``interval`` seconds the writer
    renders what is there as the configuration does (the same line, stamped with that time,
    carrying what the process bound to its context when this log was made) and writes it.
    Waking the writer per event would cost more than rendering on the spot; a buffer that
    nobody drains grows, where a blocked synchronous write would have stopped the caller.

    ``name`` is the logger whose level decides whether info events are kept; lines go to
    ``stream`` (stderr by default, as every other event's). :meth:`close` writes what is
    buffered and ends the writer; it is called from the thread that logs, whose later events
    are then written at once.
    """

    # Lines rendered between two writes at most: a write lets the logging thread have the GIL.
    BATCH = 32

    def __init__(self, name: str, stream: TextIO | None = None, interval: float = 0.1) -> None:
        self.enabled = structlog.get_logger(name).is_enabled_for(logging.INFO)
        self.interval = interval
        self._processors = structlog.get_config()["processors"]
        self._stream = stream if stream is not None else sys.stderr
        self._pending: deque[tuple[float, str, dict[str, Any]]] = deque()
        self._closed = False
        self._stop = threading.Event()
        self._writer = threading.Thread(
            target=contextvars.copy_context().run, args=(self._write_periodically,), name=f"log {name}", daemon=True
        )
        self._writer.start()

    def info(self, event: str, **fields: Any) -> None:
        if not self.enabled:
            return
        record = (time.time(), event, fields)
        if self._closed:
            self._write([record])
        else:
            self._pending.append(record)

    def close(self) -> None:
        """Write every buffered event, then stop the writer."""
        if not self._closed:
            self._closed = True
            self._stop.set()
            self._writer.join()

    def _write_periodically(self) -> None:
        while not self._stop.wait(self.interval):
            self._write_pending()
        self._write_pending()

    def _write_pending(self) -> None:
        # Only this thread takes from the buffer: what it counts is there to take.
        while pending := len(self._pending):
            self._write([self._pending.popleft() for _ in range(min(pending, self.BATCH))])

    def _write(self, records: list[tuple[float, str, dict[str, Any]]]) -> None:
        lines = []
        for logged_at, event, fields in records:
            event_dict: Any = {**fields, "event": event, LOGGED_AT: logged_at}
            try:
                for processor in self._processors:
                    event_dict = processor(None, "info", event_dict)
            except structlog.DropEvent:  # left out by the configured format, as the logger would
                continue
            lines.append(f"{event_dict}\n")
        self._stream.write("".join(lines))
        self._stream.flush()
