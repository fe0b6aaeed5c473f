"""The bus's CurveZMQ fixtures: keys written by `llmapi bus keygen`, and stacks that use them."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from broker.security import CurveKeys
from tests.harness import ROOT, curve_keys


def llmapi(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "commands.cli", *args], cwd=ROOT, capture_output=True, text=True, timeout=60
    )


@pytest.fixture
def keys(tmp_path):
    """The [curve] settings of a bus with workers gpu-a and gpu-b and clients frontend and
    analytics allowed (the frontend and `llmapi status` use the keys of those names);
    an `intruder` pair is made too, in no allowlist."""
    curve = curve_keys(tmp_path, workers=("gpu-a", "gpu-b"), clients=("frontend", "analytics"))
    llmapi("bus", "keygen", "intruder", "--dir", str(tmp_path / "keys"))
    return curve


@pytest.fixture
def secure_stack(stack_factory, keys):
    def build(**sections):
        return stack_factory(curve=keys, **sections)

    return build


def key_file(stack, name: str) -> str:
    """The secret key file of the pair ``name``."""
    return str(Path(stack.settings.curve.server_key).parent / f"{name}.key_secret")


def keyed(stack, name: str) -> CurveKeys:
    return CurveKeys.load(key_file(stack, name), stack.settings.curve.broker_key)
