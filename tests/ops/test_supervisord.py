"""The production supervisord.conf starts a working stack, its bus on CurveZMQ."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import requests

from tests.harness import ROOT, accounts_database, curve_keys, free_port, to_toml, wait_until


def test_supervisord_runs_the_stack_with_several_frontends_and_a_worker_per_gpu_all_keyed(tmp_path):
    port = free_port()
    database, secret = accounts_database(tmp_path)
    config = tmp_path / "llmapi.toml"
    config.write_text(
        to_toml(
            {
                "broker": {"endpoint": f"tcp://127.0.0.1:{free_port()}", "heartbeat_interval": 0.2},
                "frontend": {"port": port, "reuse_port": True},
                "accounts": {"database_url": database},
                "worker": {"algorithm": "echo"},
                "curve": curve_keys(tmp_path / "bus", workers=["gpu-host"], clients=["frontends", "admin"]),
            }
        )
    )
    (tmp_path / "log").mkdir()
    env = {
        **os.environ,
        "LLMAPI_CONFIG": str(config),
        "LLMAPI_BIN": str(Path(sys.executable).parent),
        "LLMAPI_LOG_DIR": str(tmp_path / "log"),
        "LLMAPI_RUN_DIR": str(tmp_path),
        "LLMAPI_FRONTENDS": "2",
        "LLMAPI_GPUS": "2",
    }
    supervisord = shutil.which("supervisord", path=str(Path(sys.executable).parent))
    process = subprocess.Popen([supervisord, "-n", "-c", str(ROOT / "supervisord.conf")], env=env, cwd=tmp_path)
    try:
        url = f"http://127.0.0.1:{port}"
        wait_until(lambda: requests.get(url + "/readyz", timeout=1).ok, timeout=60, what="the stack to be ready")
        response = requests.post(
            url + "/api/", headers={"Authorization": f"Bearer {secret}"}, json={"text": "supervised"}, timeout=10
        )
        assert response.status_code == 200 and response.json()["message"] == "supervised"
        llmapi = str(Path(sys.executable).parent / "llmapi")
        shown = subprocess.run([llmapi, "status", "--json"], env=env, capture_output=True, text=True, timeout=30)
        status = json.loads(shown.stdout)
        workers = status["services"]["default"]["workers"]
        assert [worker["key"] for worker in workers] == ["gpu-host", "gpu-host"]
        assert status["client_keys"]["frontends"]["connections"] == 2
        logs = sorted(p.name for p in (tmp_path / "log").iterdir())
        assert {"broker.log", "frontend-0.log", "frontend-1.log", "worker-gpu0.log", "worker-gpu1.log"} <= set(logs)
    finally:
        process.send_signal(signal.SIGTERM)
        assert process.wait(60) == 0
