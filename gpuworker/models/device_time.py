"""The time a worker's device spends on its rows, shared out among them.

Each timed pass (a prompt chunk, a decoding step, an embedding batch) waits
for the device to finish, adds its time to the worker's busy total and
divides it among the rows it served by weight (a prompt's tokens in the
chunk, one share per decoding row, one per embedded text). So what the rows
are charged sums to what the device was busy: the GPU time a key used is
what its requests took of the hardware, whoever ran beside them.
"""

from __future__ import annotations

import time
from collections.abc import Sequence

import torch


class DeviceClock:
    """``busy_seconds``: the device's time over every timed pass on ``device``."""

    def __init__(self, device: torch.device) -> None:
        self.device = device
        self.busy_seconds = 0.0

    @staticmethod
    def start() -> float:
        return time.perf_counter()

    def charge(self, started: float, weights: Sequence[float]) -> list[float]:
        """End the pass begun at ``started`` (waiting for the device's queued work) and return
        its time divided in proportion to ``weights``, one share per weight."""
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
        elapsed = time.perf_counter() - started
        self.busy_seconds += elapsed
        total = sum(weights)
        return [elapsed * weight / total for weight in weights] if total > 0 else [0.0] * len(weights)
