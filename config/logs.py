"""Structured logging, configured once by each process's entry point."""

from __future__ import annotations

import contextvars
import logging
import sys
import threading
import time
from collections import deque
from datetime import UTC, datetime
from typing import Any, TextIO

import structlog

from config.settings import LoggingSettings


def configure_logging(settings: LoggingSettings, process: str) -> None:
    """One event per line on stderr: JSON in production, readable in development.

    ``process`` (broker, worker, frontend...) is bound to every event so lines
    from several processes can be told apart once merged.
    """
    level = getattr(logging, settings.level.upper())
    renderer: structlog.types.Processor
    if settings.format == "json":
        renderer = structlog.processors.JSONRenderer()
    else:
        renderer = structlog.dev.ConsoleRenderer(colors=False)
    shared: list[structlog.types.Processor] = [
        structlog.contextvars.merge_contextvars,
        structlog.processors.add_log_level,
        _stamp_time,
    ]
    structlog.configure(
        processors=[*shared, structlog.processors.format_exc_info, renderer],
        wrapper_class=structlog.make_filtering_bound_logger(level),
        logger_factory=structlog.PrintLoggerFactory(file=sys.stderr),
        cache_logger_on_first_use=True,
    )
    structlog.contextvars.bind_contextvars(process=process)
    # Libraries log through the standard library (Tornado's errors with their
    # tracebacks, say): render those lines the same way, one event per line.
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(
        structlog.stdlib.ProcessorFormatter(
            foreign_pre_chain=[*shared, structlog.stdlib.add_logger_name],
            processors=[
                structlog.stdlib.ProcessorFormatter.remove_processors_meta,
                structlog.processors.format_exc_info,
                renderer,
            ],
        )
    )
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(max(level, logging.WARNING))


# Where an event queued to be written later carries the time it was logged (seconds since the epoch).
LOGGED_AT = "_logged_at"


def _stamp_time(_logger: Any, _method: str, event_dict: structlog.types.EventDict) -> structlog.types.EventDict:
    """The event's time in ISO 8601, UTC: now, or when it was logged if it was queued (:class:`QueuedLog`)."""
    logged_at = event_dict.pop(LOGGED_AT, None)
    moment = datetime.fromtimestamp(time.time() if logged_at is None else logged_at, UTC)
    event_dict["timestamp"] = moment.isoformat().replace("+00:00", "Z")
    return event_dict


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
            for processor in self._processors:
                event_dict = processor(None, "info", event_dict)
            lines.append(f"{event_dict}\n")
        self._stream.write("".join(lines))
        self._stream.flush()
