"""Run the whole stack in the foreground: broker, frontend and one worker per GPU
(two CPU workers where there is no GPU), on the embedded SQLite database.

It migrates the database, makes sure a demo key exists (giving it a fresh
secret, since only hashes are stored), prints that key and a curl line that
works, and stops everything cleanly on Ctrl-C or SIGTERM.
"""

from __future__ import annotations

import argparse
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import structlog

from config.logs import configure_logging
from config.settings import CONFIG_ENV, Settings

log = structlog.get_logger(__name__)

DEMO_EMAIL = "demo@localhost"
DEMO_ALGORITHM = "text-generation"


def configure(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--algorithm", metavar="SPEC", help=f"algorithm for the workers (default: {DEMO_ALGORITHM} with the offline demo model)")
    parser.add_argument("--workers", type=int, metavar="N", help="workers to start (default: one per GPU, else 2)")
    parser.add_argument("--port", type=int, help="HTTP port (frontend.port)")
    parser.add_argument("--endpoint", help="broker endpoint (broker.endpoint)")


def run(args: argparse.Namespace, settings: Settings) -> int:
    configure_logging(settings.logging, "up")
    config_path = args.config or os.environ.get(CONFIG_ENV)
    common = ["--config", config_path] if config_path else []
    secret = demo_key(settings)
    port = args.port or settings.frontend.port
    endpoint = args.endpoint or settings.broker.endpoint
    gpus = gpu_count()
    count = args.workers or gpus or 2
    algorithm = args.algorithm or DEMO_ALGORITHM
    commands = [
        ["broker", *common, "--endpoint", endpoint, "--service", settings.frontend.default_service],
        ["frontend", *common, "--endpoint", endpoint, "--port", str(port)],
        *(
            ["worker", *common, "--endpoint", endpoint, "--service", settings.frontend.default_service,
             "--algorithm", algorithm, *(["--gpu", str(n)] if n < gpus else [])]
            for n in range(count)
        ),
    ]
    processes = [subprocess.Popen([sys.executable, "-m", "config.cli", *command]) for command in commands]
    stopping = False

    def stop(*_: object) -> None:
        nonlocal stopping
        stopping = True

    signal.signal(signal.SIGINT, stop)
    signal.signal(signal.SIGTERM, stop)
    print(banner(secret, port, count, algorithm), flush=True)
    failed = _watch(processes, lambda: stopping)
    for process in processes:
        if process.poll() is None:
            process.send_signal(signal.SIGTERM)
    for process in processes:
        try:
            process.wait(15)
        except subprocess.TimeoutExpired:
            process.kill()
    return 1 if failed else 0


def _watch(processes: list[subprocess.Popen[bytes]], stopping) -> bool:
    """Wait until asked to stop (False) or until a process dies on its own (True)."""
    while not stopping():
        for process in processes:
            if process.poll() is not None:
                log.error("process_exited", args=process.args[3:5], returncode=process.returncode)
                return True
        time.sleep(0.2)
    return False


def demo_key(settings: Settings) -> str:
    """Migrate the database and return a working secret of the demo key."""
    from accounts.store import AccountStore

    database = settings.accounts.database_url
    if database.startswith("sqlite:///"):
        Path(database.removeprefix("sqlite:///")).expanduser().parent.mkdir(parents=True, exist_ok=True)
    store = AccountStore(settings.accounts)
    try:
        store.migrate()
        existing = store.list_keys(email=DEMO_EMAIL, include_revoked=False)
        if existing:
            _, secret = store.rotate_key(existing[0].id)
        else:
            _, secret = store.create_key(email=DEMO_EMAIL, name="demo", note="created by llmapi up")
    finally:
        store.close()
    return secret


def gpu_count() -> int:
    try:
        import torch
    except ImportError:
        return 0
    return torch.cuda.device_count()


def banner(secret: str, port: int, workers: int, algorithm: str) -> str:
    return f"""
llmapi is starting: {workers} worker(s) of '{algorithm}' (the first start converts the model; see the log)

  demo key:  {secret}

  curl --request POST --url http://127.0.0.1:{port}/api/ \\
       --header "Authorization: Bearer {secret}" \\
       --header 'Content-Type: application/json' \\
       --data '{{"text": "What is the capital of France?"}}'

  status:    llmapi status        stop: Ctrl-C
"""
