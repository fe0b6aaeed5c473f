"""`llmapi up`, what `make run` starts: the printed curl line gets a real answer."""

from __future__ import annotations

import json
import re
import signal
import subprocess
import sys
import time

import requests

from tests.fixtures.tiny_model import build_tiny_llama
from tests.harness import ROOT, free_port, to_toml, wait_until


def test_up_prints_a_key_and_a_curl_line_that_works_and_stops_cleanly_with_no_progress_bar_in_the_log(tmp_path):
    model = build_tiny_llama(tmp_path / "model")
    port = free_port()
    config = tmp_path / "llmapi.toml"
    config.write_text(
        to_toml(
            {
                "broker": {"endpoint": f"tcp://127.0.0.1:{free_port()}", "heartbeat_interval": 0.2},
                "frontend": {"port": port},
                "accounts": {"database_url": f"sqlite:///{tmp_path / 'data' / 'accounts.db'}"},
                "worker": {"options": {"model": str(model), "cpu_threads": 1}},
            }
        )
    )
    log = tmp_path / "up.log"
    up = subprocess.Popen(
        [sys.executable, "-m", "config.cli", "up", "--config", str(config), "--workers", "1"],
        cwd=ROOT,
        stdout=subprocess.PIPE,
        stderr=log.open("w"),
        text=True,
    )
    try:
        banner = ""
        while "stop: Ctrl-C" not in banner:
            line = up.stdout.readline()
            assert line, f"up ended early: {banner}"
            banner += line
        curl = re.search(r"(curl .*?--data '.*?')", banner, re.S).group(1)
        wait_until(lambda: _ready(port), timeout=60, what="the stack to be ready")
        answer = subprocess.run(["bash", "-c", curl + " --silent"], capture_output=True, text=True, timeout=60)
        assert isinstance(json.loads(answer.stdout)["message"], str)
        started = time.monotonic()
        up.send_signal(signal.SIGINT)
        assert up.wait(30) == 0
        assert time.monotonic() - started < 20
        # transformers draws a "Loading weights" bar on every load unless the worker turns it off.
        assert "model_loaded" in log.read_text() and "%|" not in log.read_text()
    finally:
        if up.poll() is None:
            up.kill()


def _ready(port: int) -> bool:
    try:
        return requests.get(f"http://127.0.0.1:{port}/readyz", timeout=1).ok
    except requests.ConnectionError:
        return False
