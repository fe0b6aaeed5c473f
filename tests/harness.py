"""Starting the stack's real processes for tests, on ports chosen at run time."""

from __future__ import annotations

import os
import re
import resource
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, TypeVar

from config.settings import CONFIG_ENV, load_settings

ROOT = Path(__file__).resolve().parent.parent
T = TypeVar("T")


# The ports free_port handed out: one handed out but not yet bound is free to the kernel, which
# may offer it again (a broker's endpoint and a frontend's port, say, chosen one after the other).
_HANDED_OUT: set[int] = set()


def free_port() -> int:
    """A loopback port nothing listens on now, never one this process was handed before."""
    while True:
        with socket.socket() as probe:
            probe.bind(("127.0.0.1", 0))
            port: int = probe.getsockname()[1]
        if port not in _HANDED_OUT:
            _HANDED_OUT.add(port)
            return port


def wait_until(predicate: Callable[[], T], timeout: float = 10.0, interval: float = 0.02, what: str = "") -> T:
    """Poll ``predicate`` until it returns something truthy, or fail after ``timeout``."""
    deadline = time.monotonic() + timeout
    last_error: Exception | None = None
    while time.monotonic() < deadline:
        try:
            value = predicate()
        except Exception as exc:
            last_error = exc
        else:
            if value:
                return value
        time.sleep(interval)
    raise TimeoutError(f"gave up waiting for {what or predicate} after {timeout}s (last error: {last_error!r})")


class Process:
    """One ``llmapi`` subcommand run as a child process, its output kept in a log file.

    ``prefix`` is a command it runs under (``ip netns exec NS``, say).
    """

    def __init__(
        self,
        args: list[str],
        log_path: Path,
        env: dict[str, str] | None = None,
        open_files: int | None = None,
        prefix: Sequence[str] = (),
    ) -> None:
        self.args = args
        self.log_path = log_path
        self._log = open(log_path, "ab")  # noqa: SIM115 - the process writes to it until stop() closes it
        self.popen = subprocess.Popen(
            [*prefix, sys.executable, "-m", "commands.cli", *args],
            cwd=ROOT,
            stdout=self._log,
            stderr=subprocess.STDOUT,
            env={**os.environ, "PYTHONUNBUFFERED": "1", **(env or {})},
            preexec_fn=None if open_files is None else lambda: _limit_open_files(open_files),
        )

    @property
    def pid(self) -> int:
        return self.popen.pid

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def alive(self) -> bool:
        return self.popen.poll() is None

    def signal(self, signum: int) -> None:
        if self.alive():
            self.popen.send_signal(signum)

    def wait(self, timeout: float = 10.0) -> int:
        return self.popen.wait(timeout)

    def stop(self) -> None:
        self.signal(signal.SIGTERM)
        try:
            self.popen.wait(5)
        except subprocess.TimeoutExpired:
            self.popen.kill()
            self.popen.wait()
        self._log.close()


def _limit_open_files(count: int) -> None:
    resource.setrlimit(resource.RLIMIT_NOFILE, (count, count))


class Stack:
    """Brokers and workers of one test, all stopped at the end.

    ``tmp_path`` holds the logs and the configuration file written from
    ``config`` (a mapping of section -> {key: value}).
    """

    def __init__(self, tmp_path: Path, config: dict[str, dict[str, Any]]) -> None:
        self.tmp_path = tmp_path
        broker = {"endpoint": f"tcp://127.0.0.1:{free_port()}", **config.get("broker", {})}
        self.config_path = tmp_path / "llmapi.toml"
        self.config_path.write_text(to_toml({**config, "broker": broker}))
        # What the processes will read, defaults included.
        self.settings = load_settings(self.config_path)
        self.endpoint = self.settings.broker.endpoint
        self.processes: list[Process] = []

    @property
    def heartbeat_interval(self) -> float:
        return self.settings.broker.heartbeat_interval

    @property
    def liveness_period(self) -> float:
        return self.heartbeat_interval * self.settings.broker.heartbeat_liveness

    def start(
        self,
        name: str,
        *args: str,
        env: dict[str, str] | None = None,
        open_files: int | None = None,
        prefix: Sequence[str] = (),
    ) -> Process:
        """Start ``llmapi ARGS`` with this stack's configuration; ``open_files`` caps its descriptors,
        ``prefix`` is a command to run it under."""
        process = Process(
            [args[0], "--config", str(self.config_path), *args[1:]],
            self.tmp_path / f"{name}-{len(self.processes)}.log",
            env,
            open_files,
            prefix,
        )
        self.processes.append(process)
        return process

    def broker(self) -> Process:
        return self.start("broker", "broker")

    def worker(self, service: str = "default", algorithm: str = "echo", *extra: str) -> Process:
        return self.start(f"worker-{service}", "worker", "--service", service, "--algorithm", algorithm, *extra)

    def stop(self) -> None:
        for process in reversed(self.processes):
            process.stop()


def curve_keys(
    directory: Path, workers: Sequence[str] = ("gpu-a",), clients: Sequence[str] = ("analytics",)
) -> dict[str, str]:
    """Key pairs for a CURVE bus in ``directory``: the broker's, one per worker and client
    name, each pair in ``keys/`` and each public key in the ``workers/`` or ``clients/``
    allowlist. Returns the ``[curve]`` settings naming them: the first worker name is this
    host's worker key, the first client name its frontend key, the last its client key."""
    from broker.security import write_key_pair

    keys = directory / "keys"
    write_key_pair("broker", keys)
    for role, names in (("workers", workers), ("clients", clients)):
        (directory / role).mkdir(parents=True, exist_ok=True)
        for name in names:
            public, _ = write_key_pair(name, keys)
            shutil.copy(public, directory / role / public.name)
    return {
        "server_key": str(keys / "broker.key_secret"),
        "workers": str(directory / "workers"),
        "clients": str(directory / "clients"),
        "broker_key": str(keys / "broker.key"),
        "worker_key": str(keys / f"{workers[0]}.key_secret"),
        "frontend_key": str(keys / f"{clients[0]}.key_secret"),
        "client_key": str(keys / f"{clients[-1]}.key_secret"),
    }


def accounts_database(directory: Path) -> tuple[str, str]:
    """A migrated SQLite accounts database in ``directory`` with one key: (URL, secret)."""
    from accounts.store import AccountStore

    url = f"sqlite:///{directory / 'accounts.db'}"
    with AccountStore.from_url(url) as store:
        store.migrate()
        _, secret = store.create_key(email="tests@example.com")
    return url, secret


def to_toml(config: dict[str, dict[str, Any]]) -> str:
    lines = []
    for section, values in config.items():
        lines.append(f"[{section}]")
        for key, value in values.items():
            lines.append(f"{key} = {_toml_value(value)}")
    return "\n".join(lines) + "\n"


def _toml_value(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (int, float)):
        return repr(value)
    if isinstance(value, str):
        return '"' + value.replace("\\", "\\\\").replace('"', '\\"') + '"'
    if isinstance(value, list):
        return "[" + ", ".join(_toml_value(v) for v in value) + "]"
    if isinstance(value, dict):
        return "{" + ", ".join(f"{k} = {_toml_value(v)}" for k, v in value.items()) + "}"
    raise TypeError(f"cannot write {value!r} as TOML")


# The demo key in `llmapi up`'s banner.
DEMO_KEY = re.compile(r"demo key:\s+(llmapi_\w+)")


def fresh_environment(tmp_path: Path) -> dict[str, str]:
    """A first-time user's environment: an empty home and XDG directories under ``tmp_path``,
    no configuration file, and this checkout importable from any directory."""
    env = {name: value for name, value in os.environ.items() if name != CONFIG_ENV and not name.startswith("XDG_")}
    for name in ("home", "xdg-data", "xdg-config", "xdg-cache"):
        (tmp_path / name).mkdir()
    return env | {
        "HOME": str(tmp_path / "home"),
        "XDG_DATA_HOME": str(tmp_path / "xdg-data"),
        "XDG_CONFIG_HOME": str(tmp_path / "xdg-config"),
        "XDG_CACHE_HOME": str(tmp_path / "xdg-cache"),
        "PYTHONPATH": str(ROOT),
        "PYTHONUNBUFFERED": "1",
    }
