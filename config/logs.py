"""Structured logging, configured once by each process's entry point."""

from __future__ import annotations

import logging
import sys
from typing import Any

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
        structlog.processors.TimeStamper(fmt="iso", utc=True),
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
