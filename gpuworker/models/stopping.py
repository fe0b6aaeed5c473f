"""The stopping criterion that watches a generation token by token.

transformers calls a ``StoppingCriteria`` after every new token, with all
ids so far. :class:`GenerationWatch` uses that moment to hand the new ids to
a :class:`~gpuworker.models.textstream.TextAssembler` (which releases text
pieces and spots stop strings) and to end the generation at that token when
the client cancelled, the deadline passed, the consumer went away or a stop
string appeared. A GPU is then held for at most one more token.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable

import torch
from transformers import StoppingCriteria

from gpuworker.models.textstream import TextAssembler


class GenerationWatch(StoppingCriteria):
    """Feeds ``assembler`` and stops generation early.

    ``prompt_length`` is the number of prompt ids at the start of each
    sequence; ``cancelled`` is the task's cancellation event and
    ``deadline`` its deadline on ``clock``. :attr:`abort` is set by the
    code that consumes the pieces when it stops listening.
    """

    def __init__(
        self,
        prompt_length: int,
        assembler: TextAssembler,
        cancelled: threading.Event,
        deadline: float,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.seen = prompt_length
        self.assembler = assembler
        self.cancelled = cancelled
        self.deadline = deadline
        self.clock = clock
        self.abort = threading.Event()
        self.interrupted: str | None = None

    def __call__(self, input_ids: torch.LongTensor, scores: torch.FloatTensor | None = None, **kwargs: object) -> torch.BoolTensor:
        self.catch_up(input_ids)
        if self.interrupted is None:
            self.interrupted = self._interruption()
        stop = self.interrupted is not None or self.assembler.stopped
        return torch.full((input_ids.shape[0],), stop, dtype=torch.bool, device=input_ids.device)

    def catch_up(self, input_ids: torch.Tensor) -> None:
        """Hand the ids not yet seen (of the first sequence) to the assembler."""
        if input_ids.shape[1] > self.seen:
            self.assembler.push(input_ids[0, self.seen:].tolist())
            self.seen = input_ids.shape[1]

    def _interruption(self) -> str | None:
        if self.cancelled.is_set():
            return "cancelled"
        if self.abort.is_set():
            return "abandoned"
        if self.clock() >= self.deadline:
            return "deadline"
        return None
