"""A throwaway PostgreSQL cluster of a test's own, to freeze and thaw without touching the shared one."""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import subprocess
import tempfile
from pathlib import Path

from tests.harness import free_port

USER = "postgres"  # initdb refuses to run as root


def _as_user(*command: str) -> list[str]:
    return ["runuser", "-u", USER, "--", *command] if os.geteuid() == 0 else list(command)


class ThrowawayPostgres:
    """A cluster in a temporary directory of its own (under /tmp, where its user can reach
    it) on a free loopback port, started by :meth:`start`; :meth:`stop` always thaws it,
    stops it and removes it."""

    def __init__(self) -> None:
        self.directory = Path(tempfile.mkdtemp(prefix="llmapi-pg-"))
        self.data = self.directory / "data"
        self.port = free_port()
        self.frozen: list[int] = []

    @property
    def url(self) -> str:
        return f"postgresql+psycopg2://{USER}@127.0.0.1:{self.port}/postgres"

    def start(self) -> None:
        if os.geteuid() == 0:
            shutil.chown(self.directory, USER)
        subprocess.run(_as_user("initdb", "-D", str(self.data), "-U", USER, "--auth=trust", "-N"), check=True, capture_output=True)
        options = f"-p {self.port} -k {self.directory} -c listen_addresses=127.0.0.1 -c fsync=off"
        subprocess.run(
            _as_user("pg_ctl", "-D", str(self.data), "-o", options, "-l", str(self.directory / "log"), "-w", "start"),
            check=True,
            capture_output=True,
        )

    def processes(self) -> list[int]:
        """The postmaster and every process it started."""
        postmaster = int((self.data / "postmaster.pid").read_text().split()[0])
        found = [postmaster]
        for entry in Path("/proc").iterdir():
            if entry.name.isdigit():
                try:
                    parent = int((entry / "stat").read_text().rsplit(")", 1)[1].split()[1])
                except (OSError, IndexError, ValueError):
                    continue
                if parent == postmaster:
                    found.append(int(entry.name))
        return found

    def freeze(self) -> None:
        """Stop every process of the cluster (SIGSTOP): connections hang, nothing fails."""
        self.frozen = self.processes()
        for pid in self.frozen:
            os.kill(pid, signal.SIGSTOP)

    def thaw(self) -> None:
        for pid in self.frozen:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGCONT)
        self.frozen = []

    def stop(self) -> None:
        self.thaw()
        if (self.data / "postmaster.pid").exists():
            subprocess.run(_as_user("pg_ctl", "-D", str(self.data), "-m", "immediate", "-w", "stop"), capture_output=True)
        shutil.rmtree(self.directory, ignore_errors=True)
