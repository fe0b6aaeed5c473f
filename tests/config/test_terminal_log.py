"""The terminal format `llmapi up` gives its processes: one short line per request and per
warning or error, the few events a person starting the stack waits for, nothing else."""

from __future__ import annotations

import io
import logging
import re
import warnings
from collections.abc import Iterator

import pytest
import structlog

from config.logs import QueuedLog, configure_logging
from config.settings import LoggingSettings

TIME = r"\d\d:\d\d:\d\d"
ANSWERED = {"method": "POST", "path": "/v1/chat/completions", "status": 200, "latency_ms": 1240.4,
            "request_id": "r1", "key_prefix": "llmapi_Ab12Cd34", "service": "default", "code": None, "tokens": 31}
REFUSED = {"method": "POST", "path": "/api/", "status": 401, "latency_ms": 4.2, "request_id": "r2",
           "key_prefix": None, "service": "default", "code": "invalid_key", "tokens": None}


@pytest.fixture
def terminal(capsys) -> Iterator[pytest.CaptureFixture[str]]:
    """Logging as a test configures it (the terminal format, with :func:`in_terminal_format`),
    restored afterwards."""
    saved, handlers = structlog.get_config(), logging.getLogger().handlers[:]
    yield capsys
    structlog.configure(**saved)
    logging.getLogger().handlers[:] = handlers
    logging.captureWarnings(False)
    structlog.contextvars.unbind_contextvars("process")


def in_terminal_format() -> None:
    """Configured in the test itself: stderr is the test's capture only once the test runs."""
    configure_logging(LoggingSettings(format="terminal"), "worker")


def lines(capsys: pytest.CaptureFixture[str]) -> list[str]:
    return capsys.readouterr().err.splitlines()


def test_a_request_is_one_line_with_its_status_key_prefix_tokens_and_latency(terminal):
    in_terminal_format()
    stream = io.StringIO()
    access = QueuedLog("frontend.access", stream)
    access.info("http_request", **ANSWERED)
    access.info("http_request", **REFUSED)
    access.info("admin_request", method="GET", path="/admin/keys", status=200, latency_ms=12.0,
                request_id="r3", admin_token_id=1, admin_token_prefix="llmadm_Zz99Yy88")
    access.close()
    answered, refused, console = stream.getvalue().splitlines()
    assert re.fullmatch(rf"{TIME} 200 POST /v1/chat/completions llmapi_Ab12Cd34 31 tok 1\.24 s", answered)
    assert re.fullmatch(rf"{TIME} 401 POST /api/ - invalid_key 4 ms", refused)
    assert re.fullmatch(rf"{TIME} 200 GET /admin/keys llmadm_Zz99Yy88 12 ms", console)


def test_info_events_are_left_out_but_the_announced_ones_with_their_few_fields(terminal):
    in_terminal_format()
    log = structlog.get_logger("gpuworker")
    log.info("row_answered", request_id="r1", answer="result")
    log.info("task_done", rows=1, seconds=0.0002)
    log.debug("heartbeat")
    log.info("model_loaded", model="smollm2-135m", seconds=1.4, parameters=134515008, weights_bytes=538060032)
    (line,) = lines(terminal)
    assert re.fullmatch(rf"{TIME} worker: model_loaded model=smollm2-135m seconds=1\.4", line)


def test_a_warning_is_one_line_with_every_field_and_an_exception_without_its_traceback(terminal):
    in_terminal_format()
    log = structlog.get_logger("gpuworker")
    log.warning("broker_lost", reason="no heartbeat\nfor 3 s", retry_in=0.5, request=None)
    try:
        raise ValueError("bad row")
    except ValueError:
        log.exception("task_failed", error_type="ValueError")
    lost, failed = lines(terminal)
    assert re.fullmatch(rf"{TIME} warning worker: broker_lost reason='no heartbeat\\nfor 3 s' retry_in=0\.5", lost)
    assert re.fullmatch(
        rf"{TIME} error worker: task_failed error_type=ValueError "
        r"exception='ValueError: bad row \(test_terminal_log\.py:\d+\)'",
        failed,
    )


def test_a_librarys_error_and_a_python_warning_are_one_line_each(terminal):
    in_terminal_format()
    try:
        raise RuntimeError("boom")
    except RuntimeError:
        logging.getLogger("tornado.application").exception("Uncaught exception\nin a handler")
    warnings.warn("a deprecated call", DeprecationWarning, stacklevel=1)
    error, warned = lines(terminal)
    assert re.match(rf"{TIME} error worker: Uncaught exception … ", error)
    assert "logger=tornado.application" in error and "exception='RuntimeError: boom (test_terminal_log.py:" in error
    assert re.match(rf"{TIME} warning worker: .*test_terminal_log\.py:\d+: DeprecationWarning: a deprecated call", warned)


def test_a_librarys_info_from_a_logger_given_its_own_level_is_left_out_without_raising(terminal):
    in_terminal_format()
    chatty = logging.getLogger("a.chatty.library")
    chatty.setLevel(logging.INFO)
    try:
        chatty.info("downloading nothing")
        chatty.warning("but this is worth a line")
    finally:
        chatty.setLevel(logging.NOTSET)
    (warned,) = lines(terminal)
    assert re.match(rf"{TIME} warning worker: but this is worth a line logger=a.chatty.library$", warned)


def test_the_json_and_console_formats_keep_every_event(capsys):
    saved, handlers = structlog.get_config(), logging.getLogger().handlers[:]
    try:
        for format in ("json", "console"):
            configure_logging(LoggingSettings(format=format), "worker")
            structlog.get_logger("gpuworker").info("task_done", rows=1)
            (line,) = capsys.readouterr().err.splitlines()
            assert "task_done" in line and "rows" in line
    finally:
        structlog.configure(**saved)
        logging.getLogger().handlers[:] = handlers
        structlog.contextvars.unbind_contextvars("process")
