"""Rows that come and go: a row's prompt is computed into the cache, then each step decodes one
token for every row, and a row that ends leaves at once.

:class:`Decoder` runs a causal language model for the engine
(``gpuworker.models.engine``), which decides what runs when. Each row holds
a storage row of a :class:`~gpuworker.models.slots.SlotCache` from the moment
it is seated until it ends; :meth:`Decoder.prefill` computes the next tokens
of one or more prompts (left-padded together, so each one's last token is
last), and :meth:`Decoder.step` feeds every decoding row the token it chose
last and chooses its next. Each row gets its own positions and masks, so
its tokens are the ones it would get alone, whoever else runs beside it.

Two ways to run the decoding step:

* eager, over a store that grows as rows and columns are needed (the
  default on a CPU);
* compiled (``torch.compile``, CUDA graphs on a GPU) over a fixed store:
  the rows of a step are rounded up to a power of two (the padding rows
  write to the scratch column and are never read) and the columns attended
  to up to a power of two of at least :data:`MIN_ATTENDED`, so a few shapes
  serve every batch; the warm-up runs each row count once before the worker
  says READY. Prompts are always computed eagerly.

A row held to a grammar has its logits masked before its token is chosen;
one asking for log-probabilities gets them with its token.
"""

from __future__ import annotations

import inspect
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

import structlog
import torch

from gpuworker.models.constraints import Constraint
from gpuworker.models.device_time import DeviceClock
from gpuworker.models.params import GenerationParams
from gpuworker.models.sampling import Sampler, seeded_generator
from gpuworker.models.slots import LayerBlock, Masks, Placement, SlotCache

log = structlog.get_logger(__name__)

MIN_ATTENDED = 256
# Storage a growable store starts with; it doubles as needed.
FIRST_ROWS = 4
FIRST_COLUMNS = 128
WARM_UP_PROMPT_TOKENS = 8
WARM_UP_STEPS = 3


# A token's log-probability and the likeliest alternatives, as (token, log-probability) pairs.
Scores = tuple[float, list[tuple[int, float]]]


class DecodeRow(Protocol):
    """What the decoder needs of one row: its prompt, budget and sampling settings, and
    the grammar its tokens must follow (``constraint``, or None); ``gpu_seconds`` gathers its
    share of the device's time."""

    input_ids: list[int]
    max_new_tokens: int
    params: GenerationParams
    constraint: Constraint | None
    gpu_seconds: float

    def accept(self, token: int, scores: Scores | None) -> bool:
        """Take the row's next token (with its scores when it asked for log-probabilities);
        True when the row has ended."""


@dataclass(eq=False, slots=True)
class Seat:
    """A row in the decoder: where its tokens sit, its own random generator (a seeded
    sampled row), and the token it feeds next once its prompt is computed."""

    row: DecodeRow
    place: Placement
    generator: torch.Generator | None
    pending: int | None = None

    @property
    def prompt_left(self) -> int:
        """Prompt tokens not yet in the cache."""
        return len(self.row.input_ids) - self.place.length if self.pending is None else 0


def _power_of_two_at_least(value: int) -> int:
    return 1 << max(0, value - 1).bit_length()


class Decoder:
    """Rows of ``model`` decoded together on ``device``, joining and leaving at any step.

    ``pad_id`` fills the left of shorter prompts computed together;
    ``compiled`` selects the compiled path (see the module's docstring);
    ``max_batch`` is the most rows seated at once; ``context_length`` the
    longest row the model takes; ``max_cache_tokens`` sizes the compiled
    path's fixed store (rows times columns).
    """

    def __init__(
        self,
        model: Any,
        device: torch.device,
        pad_id: int,
        compiled: bool,
        max_batch: int,
        context_length: int,
        max_cache_tokens: int,
    ) -> None:
        self.model = model
        self.device = device
        self.pad_id = pad_id
        self.compiled = compiled
        self.max_batch = max_batch
        self.context_length = context_length
        rows = _power_of_two_at_least(max_batch)
        if compiled:
            columns = _power_of_two_at_least(max(max_cache_tokens // rows, MIN_ATTENDED))
            self.cache = SlotCache(device, rows, min(columns, context_length), growable=False)
        else:
            self.cache = SlotCache(device, min(FIRST_ROWS, rows), FIRST_COLUMNS, growable=True)
        self.masks = Masks(model.config, model.dtype)
        # Decoding rows by slot (slot i holds decoding[i]), and rows whose prompt is being computed.
        self.decoding: list[Seat] = []
        self.prefilling: dict[int, Seat] = {}
        # transformers renamed the cache argument (from 5.2x); use whichever this version takes.
        self._cache_argument = "cache" if "cache" in inspect.signature(model.forward).parameters else "past_key_values"
        self._step_logits = self._compile() if compiled else self._logits
        self.clock = DeviceClock(device)

    @property
    def seated(self) -> int:
        return len(self.decoding) + len(self.prefilling)

    @property
    def longest_row(self) -> int:
        """The most tokens (prompt and answer) one row may hold."""
        return self.context_length if self.cache.growable else min(self.cache.columns, self.context_length)

    # -- seats ---------------------------------------------------------------

    @torch.inference_mode()
    def seat(self, row: DecodeRow, prefix: list[LayerBlock] | None = None) -> Seat:
        """Give ``row`` a storage row; ``prefix``, the keys and values of its prompt's first
        tokens (from a cache of prefixes), is put there, so only the rest is computed."""
        taken = set(self.prefilling)
        cached = prefix[0][0].shape[1] if prefix else 0
        self.cache.ensure(self.seated + 1, max(self.cache.columns, cached))
        slot = next(slot for slot in range(len(self.decoding), self.cache.rows) if slot not in taken)
        seat = Seat(row, Placement(slot), seeded_generator(row.params, self.device))
        if prefix:
            self.cache.write(seat.place, prefix)
            seat.place.length = cached
        self.prefilling[slot] = seat
        return seat

    @torch.inference_mode()
    def release(self, seat: Seat) -> None:
        """Free ``seat``'s storage row: the last decoding row moves into a decoding row's slot."""
        slot = seat.place.slot
        if self.prefilling.get(slot) is seat:
            del self.prefilling[slot]
            return
        if slot < len(self.decoding) and self.decoding[slot] is seat:
            last = self.decoding.pop()
            if last is not seat:
                self.cache.move(last.place, slot)
                last.place.slot = slot
                self.decoding[slot] = last

    def _join(self, seat: Seat) -> None:
        """Move ``seat``, whose prompt is computed, into the next decoding slot."""
        target, source = len(self.decoding), seat.place.slot
        del self.prefilling[source]
        if source != target:
            occupant = self.prefilling.pop(target, None)
            saved = self.cache.read(occupant.place, occupant.place.length) if occupant is not None else []
            self.cache.move(seat.place, target)
            seat.place.slot = target
            if occupant is not None:
                occupant.place.slot = source
                self.cache.write(occupant.place, saved)
                self.prefilling[source] = occupant
        self.decoding.append(seat)

    # -- running -------------------------------------------------------------

    @torch.inference_mode()
    def prefill(self, parts: Sequence[tuple[Seat, int]], computed: Callable[[Seat], None] | None = None) -> None:
        """Compute the next ``count`` prompt tokens of each ``(seat, count)`` together.

        A seat whose prompt is then all in the cache is handed to ``computed``
        (which may keep its keys and values), gets its first token and decodes
        from the next step, or ends there.
        """
        started = self.clock.start()
        width = max(count for _, count in parts)
        ids = torch.full((len(parts), width), self.pad_id, dtype=torch.long)
        columns = torch.zeros((len(parts), width), dtype=torch.long)
        write = torch.full((len(parts), width), self.cache.scratch, dtype=torch.long)
        for index, (seat, count) in enumerate(parts):
            begin = seat.place.length
            ids[index, width - count:] = torch.tensor(seat.row.input_ids[begin:begin + count])
            columns[index, width - count:] = torch.arange(begin, begin + count)
            write[index, width - count:] = columns[index, width - count:]
        attended = max(seat.place.length + count for seat, count in parts)
        self.cache.ensure(self.cache.rows, attended)
        slots = torch.tensor([seat.place.slot for seat, _ in parts], device=self.device)
        self.cache.aim(slots, write.to(self.device), attended)
        logits = self._logits(ids.to(self.device), self._mask(columns, attended), columns.to(self.device))
        for seat, count in parts:
            seat.place.length += count
        done = [index for index, (seat, _) in enumerate(parts) if seat.prompt_left == 0]
        if not done:
            self._charge(started, parts)
            return
        seats = [parts[index][0] for index in done]
        for seat in seats:
            if computed is not None:
                computed(seat)
        self._take(seats, logits[torch.tensor(done, device=logits.device)], lambda: self._charge(started, parts))

    @torch.inference_mode()
    def step(self) -> None:
        """Decode one token for every decoding row; rows that end leave."""
        started = self.clock.start()
        seats = list(self.decoding)
        size = _power_of_two_at_least(len(seats)) if self.compiled else len(seats)
        lengths = [seat.place.length for seat in seats]
        attended = max(lengths) + 1
        if self.compiled:
            attended = min(max(_power_of_two_at_least(attended), MIN_ATTENDED), self.cache.columns)
        self.cache.ensure(self.cache.rows, attended)
        padding = size - len(seats)
        ids = torch.tensor([seat.pending for seat in seats] + [self.pad_id] * padding)[:, None]
        columns = torch.tensor(lengths + [0] * padding)[:, None]
        write = torch.tensor(lengths + [self.cache.scratch] * padding)[:, None]
        self.cache.aim(slice(0, size), write.to(self.device), attended)
        logits = self._step_logits(ids.to(self.device), self._mask(columns, attended), columns.to(self.device))
        for seat in seats:
            seat.place.length += 1
        self._take(seats, logits[: len(seats)], lambda: self._charge(started, [(seat, 1) for seat in seats]))

    @torch.inference_mode()
    def fit(self) -> None:
        """Let a growable store give back what it no longer needs: rows and columns past those of
        the rows seated now (a store grows to its longest row times its most rows, then stays)."""
        seats = [*self.decoding, *self.prefilling.values()]
        rows = max((seat.place.slot for seat in seats), default=-1) + 1
        columns = max((seat.place.length for seat in seats), default=0) + 1
        self.cache.shrink(_power_of_two_at_least(max(rows, FIRST_ROWS)),
                          _power_of_two_at_least(max(columns, FIRST_COLUMNS)))

    def _take(self, seats: list[Seat], logits: torch.Tensor, charge: Callable[[], None]) -> None:
        """Choose each seat's next token and hand it over; a seat whose row ends is released,
        one whose prompt was just computed starts decoding. ``charge`` shares out the pass's
        time once its tokens are chosen, before a row that ends is answered."""
        chooser = _Chooser(seats, self.device)
        tokens = chooser.choose(logits).tolist()
        scores = chooser.scores()
        charge()
        for index, (seat, token) in enumerate(zip(seats, tokens)):
            if seat.row.accept(token, scores.get(index)):
                self.release(seat)
                continue
            joining = seat.pending is None
            seat.pending = token
            if joining:
                self._join(seat)

    def _charge(self, started: float, parts: Sequence[tuple[Seat, int]]) -> None:
        """Share the pass begun at ``started`` among ``parts``' rows by their weights."""
        for (seat, _), seconds in zip(parts, self.clock.charge(started, [weight for _, weight in parts])):
            seat.row.gpu_seconds += seconds

    def _mask(self, columns: torch.Tensor, attended: int) -> torch.Tensor | dict[str, torch.Tensor]:
        return self.masks.build(columns.to(self.device), attended)

    def _logits(self, input_ids: torch.Tensor, mask: Any, positions: torch.Tensor) -> torch.Tensor:
        output = self.model(
            input_ids=input_ids,
            attention_mask=mask,
            position_ids=positions,
            use_cache=True,
            logits_to_keep=1,
            **{self._cache_argument: self.cache},
        )
        return output.logits[:, -1].float()

    def _compile(self) -> Callable[..., torch.Tensor]:
        mode = "reduce-overhead" if self.device.type == "cuda" else None
        compiled = torch.compile(self._logits, mode=mode, dynamic=True, fullgraph=False)
        if self.device.type != "cuda":
            return compiled

        def step(*args: Any) -> torch.Tensor:
            torch.compiler.cudagraph_mark_step_begin()
            return compiled(*args)

        return step

    @torch.inference_mode()
    def read_prompt(self, seat: Seat, length: int) -> list[LayerBlock]:
        """Copies of the keys and values of ``seat``'s first ``length`` prompt tokens."""
        return self.cache.read(seat.place, length)

    # -- warm-up -------------------------------------------------------------

    def warm_up(self, params: GenerationParams) -> None:
        """Run every compiled row count once (compiling and capturing each); eager: one short row."""
        sizes = [1]
        if self.compiled:
            while sizes[-1] < _power_of_two_at_least(self.max_batch):
                sizes.append(sizes[-1] * 2)
        for size in sizes:
            started = time.perf_counter()
            seats = [self.seat(_WarmUpRow(params)) for _ in range(size)]
            self.prefill([(seat, WARM_UP_PROMPT_TOKENS) for seat in seats])
            while self.decoding:
                self.step()
            seconds = round(time.perf_counter() - started, 3)
            log.info("decoder_warmed_up", rows=size, compiled=self.compiled, seconds=seconds)


class _Chooser:
    """One step's tokens for ``seats``: grammar masks, then each row's sampling, then the
    log-probabilities of the rows that asked for them."""

    def __init__(self, seats: Sequence[Seat], device: torch.device) -> None:
        self.rows = [seat.row for seat in seats]
        self.sampler = Sampler([row.params for row in self.rows], [seat.generator for seat in seats], device)
        self.constrained = [
            (index, row.constraint) for index, row in enumerate(self.rows) if row.constraint is not None
        ]
        self.scored = [index for index, row in enumerate(self.rows) if row.params.top_logprobs is not None]
        self.top = max((self.rows[index].params.top_logprobs or 0 for index in self.scored), default=0)
        self._scores: dict[int, Scores] = {}

    def choose(self, logits: torch.Tensor) -> torch.Tensor:
        for index, constraint in self.constrained:
            constraint.mask(logits[index:index + 1])
        tokens = self.sampler.choose(logits)
        if self.scored:
            self._scores = self._score(logits, tokens)
        return tokens

    def _score(self, logits: torch.Tensor, tokens: torch.Tensor) -> dict[int, Scores]:
        picked = torch.tensor(self.scored, device=logits.device)
        logprobs = torch.log_softmax(logits[picked].float(), dim=-1)
        chosen = logprobs.gather(1, tokens[picked][:, None])[:, 0].tolist()
        top_values, top_ids = logprobs.topk(self.top, dim=-1) if self.top else (logprobs[:, :0], logprobs[:, :0].long())
        values, ids = top_values.tolist(), top_ids.tolist()
        return {
            row: (chosen[k], list(zip(ids[k], values[k]))[: self.rows[row].params.top_logprobs])
            for k, row in enumerate(self.scored)
        }

    def scores(self) -> dict[int, Scores]:
        """The scores of this step, by row index (empty when no row asked)."""
        return self._scores


class _WarmUpRow:
    """A throw-away row for the warm-up."""

    constraint: Constraint | None = None

    def __init__(self, params: GenerationParams) -> None:
        self.input_ids = list(range(1, WARM_UP_PROMPT_TOKENS + 1))
        self.max_new_tokens = WARM_UP_STEPS
        self.params = params
        self.taken = 0
        self.gpu_seconds = 0.0

    def accept(self, token: int, scores: Scores | None = None) -> bool:
        self.taken += 1
        return self.taken >= self.max_new_tokens
