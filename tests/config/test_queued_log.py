"""Events queued to a writer thread come out as the same lines a synchronous logger writes,
stamped with the time they were logged, in order, and none is lost when the log closes."""

from __future__ import annotations

import io
import json
import logging
import time
from collections.abc import Iterator
from datetime import datetime

import pytest
import structlog

from config.logs import QueuedLog, configure_logging
from config.settings import LoggingSettings

FIELDS = {"method": "POST", "path": "/api/", "status": 200, "latency_ms": 1.5, "request_id": "r1", "code": None}


@pytest.fixture
def configured() -> Iterator[None]:
    """Logging configured as a server's entry point does, restored afterwards."""
    saved, handlers = structlog.get_config(), logging.getLogger().handlers[:]
    yield
    structlog.configure(**saved)
    logging.getLogger().handlers[:] = handlers
    structlog.contextvars.unbind_contextvars("process")


@pytest.mark.parametrize("format", ["console", "json"])
def test_a_queued_line_is_the_line_the_logger_writes_itself(configured, capsys, format):
    configure_logging(LoggingSettings(format=format), "frontend")
    stream = io.StringIO()
    queued = QueuedLog("frontend.access", stream)
    queued.info("http_request", **FIELDS)
    structlog.get_logger("frontend.access").info("http_request", **FIELDS)
    queued.close()
    (direct,) = capsys.readouterr().err.splitlines()
    (line,) = stream.getvalue().splitlines()
    time_length = len("2026-01-01T00:00:00.000000Z")
    if format == "json":
        assert list(json.loads(line)) == list(json.loads(direct))
        line, direct = json.loads(line), json.loads(direct)
        line.pop("timestamp"), direct.pop("timestamp")
    else:
        line, direct = line[time_length:], direct[time_length:]
    assert line == direct


def test_a_queued_line_carries_the_time_it_was_logged_not_written(configured):
    configure_logging(LoggingSettings(format="json"), "frontend")
    stream = io.StringIO()
    queued = QueuedLog("frontend.access", stream)
    before = time.time()
    queued.info("http_request", **FIELDS)
    after = time.time()
    queued.close()
    stamped = datetime.fromisoformat(json.loads(stream.getvalue())["timestamp"]).timestamp()
    assert before <= stamped <= after


def test_closing_writes_every_queued_line_in_order_and_later_ones_at_once(configured):
    configure_logging(LoggingSettings(format="json"), "frontend")
    stream = io.StringIO()
    queued = QueuedLog("frontend.access", stream)
    for n in range(5000):
        queued.info("http_request", n=n)
    queued.close()
    queued.info("http_request", n=5000)
    assert [json.loads(line)["n"] for line in stream.getvalue().splitlines()] == list(range(5001))


def test_nothing_is_queued_below_the_configured_level(configured):
    configure_logging(LoggingSettings(level="warning"), "frontend")
    stream = io.StringIO()
    queued = QueuedLog("frontend.access", stream)
    queued.info("http_request", **FIELDS)
    queued.close()
    assert stream.getvalue() == ""
