"""The demo model's conversion is never silent for long: each step logs as it starts, runs and ends."""

from __future__ import annotations

import time

import pytest
import structlog

pytest.importorskip("torch")

from gpuworker.models import demo
from tests.harness import wait_until


def test_a_long_conversion_step_logs_progress_lines_while_it_runs() -> None:
    def running(events: list[dict]) -> list[dict]:
        return [e for e in events if e.get("state") == "running"]

    with structlog.testing.capture_logs() as events:
        with demo._step("dequantising the weights", time.perf_counter(), interval=0.05):
            wait_until(lambda: len(running(events)) >= 2, timeout=10, what="two progress lines")
    states = [e["state"] for e in events if e["event"] == "gguf_conversion_progress"]
    assert states[0] == "started" and states[-1] == "done" and "running" in states
    assert {e["step"] for e in events} == {"dequantising the weights"}
