"""The engine loop of a text-generation worker: what runs at each step.

Requests join a running batch at the next step rather than waiting for it to
end (continuous batching, as vLLM and TGI schedule). Each call of
:meth:`Engine.step`:

1. ends the rows whose client cancelled or whose deadline passed, wherever
   they are (waiting, computing their prompt, or decoding);
2. seats waiting rows, oldest first, while the batch has room: at most
   ``max_batch`` rows, and at most ``max_batch_tokens`` tokens reserved in
   all (each row reserves its prompt and its whole token budget, so a
   seated row always has the memory to finish). A seated row's prompt
   starts from the longest prefix the prefix cache holds for it;
3. computes at most ``prefill_chunk`` prompt tokens: the oldest prompt's next
   chunk, or several short prompts together, so a long prompt delays the
   rows already decoding by one chunk's time per step, not by its whole
   length;
4. decodes one token for every row whose prompt is computed; rows that end
   leave at once, freeing their storage row and reservation.

Rows never wait for each other: each is answered when it ends.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable
from dataclasses import dataclass

import structlog

from gpuworker.models.decoding import Decoder, Seat
from gpuworker.models.job import Job
from gpuworker.models.prefix_cache import BLOCK_TOKENS, PrefixCache
from gpuworker.models.slots import LayerBlock

log = structlog.get_logger(__name__)


@dataclass(slots=True)
class EngineCounters:
    """Running totals, for the worker's status."""

    steps: int = 0
    prefills: int = 0
    prompt_tokens_computed: int = 0


class Engine:
    """Schedules :class:`~gpuworker.models.job.Job` rows onto ``decoder``, one step at a time.

    ``max_batch`` and ``max_batch_tokens`` bound the rows seated at once and
    the tokens they reserve; ``prefill_chunk`` the prompt tokens computed per
    step; ``prefixes`` is the prefix cache (None: no reuse). With
    ``continuous`` off, waiting rows are seated only once every seated row
    has ended (batching per dispatch, kept to compare).
    """

    def __init__(
        self,
        decoder: Decoder,
        max_batch: int,
        max_batch_tokens: int,
        prefill_chunk: int,
        prefixes: PrefixCache | None = None,
        continuous: bool = True,
    ) -> None:
        self.decoder = decoder
        self.continuous = continuous
        self.max_batch = max_batch
        self.max_batch_tokens = max_batch_tokens
        self.prefill_chunk = prefill_chunk
        self.prefixes = prefixes
        self.waiting: deque[Job] = deque()
        self.seats: dict[Job, Seat] = {}
        self.reserved = 0
        self.counters = EngineCounters()

    @property
    def busy(self) -> bool:
        return bool(self.waiting or self.seats)

    @property
    def blocked(self) -> bool:
        """Whether rows wait for room (memory or rows) rather than for their turn."""
        return bool(self.waiting)

    def add(self, job: Job) -> None:
        """Queue ``job``; one that asks for no new tokens is answered at once (its prompt's usage),
        as is one that its resumed tokens already ended."""
        if job.max_new_tokens == 0 and not job.ended:
            job.end()
        if job.ended:
            return
        self.waiting.append(job)

    def step(self) -> None:
        """One step: end interrupted rows, seat waiting ones, compute a prompt chunk, decode."""
        self._end_interrupted()
        self._seat_waiting()
        if self.decoder.prefilling:
            self._prefill()
        if self.decoder.decoding:
            self.decoder.step()
            self.counters.steps += 1
        self._forget_ended()
        self.decoder.fit()

    def _end_interrupted(self) -> None:
        for job in [job for job in self.waiting if job.interruption() is not None]:
            self.waiting.remove(job)
            job.end(job.interruption())
        for job, seat in list(self.seats.items()):
            reason = job.interruption()
            if reason is not None and not job.ended:
                job.end(reason)
                self.decoder.release(seat)
        self._forget_ended()

    def _seat_waiting(self) -> None:
        if not self.continuous and self.seats:
            return
        while self.waiting and self.decoder.seated < self.max_batch:
            job = self.waiting[0]
            if self.seats and self.reserved + job.reservation > self.max_batch_tokens:
                return
            self.waiting.popleft()
            self.reserved += job.reservation
            self.seats[job] = self.decoder.seat(job, self._cached_prefix(job))

    def _cached_prefix(self, job: Job) -> list[LayerBlock] | None:
        if self.prefixes is None:
            return None
        job.prefix_names = self.prefixes.names(job.tenant, job.input_ids)
        hit = self.prefixes.lookup(job.prefix_names)
        job.cached_tokens = hit.tokens if hit is not None else 0
        if hit is None:
            return None
        return hit.blocks()

    def _prefill(self) -> None:
        """Compute the oldest prompt's next chunk, with the next prompts that fit beside it."""
        pending = sorted(self.decoder.prefilling.values(), key=lambda seat: _job(seat).started)
        first = pending[0]
        parts = [(first, min(first.prompt_left, self.prefill_chunk))]
        for seat in pending[1:]:
            width = max(parts[0][1], seat.prompt_left)
            if width * (len(parts) + 1) > self.prefill_chunk:
                break
            parts.append((seat, seat.prompt_left))
        self.decoder.prefill(parts, computed=self._keep_prefix)
        self.counters.prefills += 1
        self.counters.prompt_tokens_computed += sum(count for _, count in parts)

    def _keep_prefix(self, seat: Seat) -> None:
        job = _job(seat)
        if self.prefixes is not None and self.prefixes.wants(job.prefix_names):
            length = len(job.prefix_names) * BLOCK_TOKENS
            self.prefixes.keep(job.prefix_names, self.decoder.read_prompt(seat, length))

    def _forget_ended(self) -> None:
        for job in [job for job in self.seats if job.ended]:
            seat = self.seats.pop(job)
            self.reserved -= job.reservation
            self.decoder.release(seat)  # a no-op when the decoder released it as the row ended

    def run_until_idle(self, between: Callable[[], None] = lambda: None) -> None:
        """Step until every row has ended, calling ``between`` after each step."""
        while self.busy:
            self.step()
            between()


def _job(seat: Seat) -> Job:
    """The job seated at ``seat``: the engine seats nothing else."""
    if not isinstance(seat.row, Job):
        raise TypeError(f"the engine seats jobs, not {type(seat.row).__name__}")
    return seat.row
