"""Commands that do their work and end are quiet: their output on stdout and nothing on stderr when
they succeed, a warning or one clear line there when there is something to say. (The servers'
log lines are theirs: `llmapi up`'s tests read the worker's.)"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from config.settings import CONFIG_ENV
from tests.harness import ROOT


def llmapi(tmp_path: Path, *argv: str) -> subprocess.CompletedProcess[str]:
    """``llmapi ARGV`` from ``tmp_path``, without a configuration file, its data directory in ``tmp_path``."""
    env = {name: value for name, value in os.environ.items() if name != CONFIG_ENV}
    env |= {"XDG_DATA_HOME": str(tmp_path / "data"), "PYTHONPATH": str(ROOT)}
    return subprocess.run(
        [sys.executable, "-m", "commands.cli", *argv],
        capture_output=True, text=True, cwd=tmp_path, env=env, timeout=60, check=False,
    )


def test_commands_that_succeed_print_their_output_and_nothing_on_stderr(tmp_path):
    for argv in (
        ("accounts", "migrate"),
        ("accounts", "create", "--email", "ana@example.org"),
        ("accounts", "revoke", "1"),
        ("bus", "keygen", "frontend"),
    ):
        result = llmapi(tmp_path, *argv)
        assert (result.returncode, result.stderr) == (0, ""), argv
        assert result.stdout, argv


def test_a_warning_or_a_failure_is_one_clear_line_on_stderr(tmp_path):
    llmapi(tmp_path, "accounts", "migrate")
    ended = llmapi(tmp_path, "accounts", "create", "--email", "ana@example.org", "--valid-until", "2020-01-31")
    assert ended.returncode == 0 and "Created key 1." in ended.stdout
    assert ended.stderr.count("\n") == 1 and "warning: key 1's validity window ended" in ended.stderr
    missing = llmapi(tmp_path, "accounts", "show", "99")
    assert (missing.returncode, missing.stdout, missing.stderr) == (1, "", "llmapi accounts: error: no key with id 99\n")
