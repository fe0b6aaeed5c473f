"""Decoding a batch of prompts together, one token per row per step.

:class:`Decoder` runs a causal language model over a batch of rows, each
with its own prompt, token budget and sampling settings. Prompts are padded
on the left, so every row's newest token sits in the same cache slot; each
row gets its own positions and attention mask, so its tokens are the ones it
would get alone. A row ends when it says so (end of text, stop string,
budget, cancel, deadline); the batch runs until its last row ends.

Two ways to run the model:

* eager, with a growing cache (the default on a CPU);
* compiled (``torch.compile``, CUDA graphs on a GPU) over a static cache.
  Shapes are rounded up to a few sizes (batch to a power of two, cache to
  a power of two of at least :data:`MIN_CACHE_LENGTH`), padding rows are
  added and ignored, and one dynamic-shape compilation serves them all; the
  warm-up compiles and captures the common sizes before the worker says
  READY, so no request pays for it.

On a GPU the host never waits for a step it could overlap: the next step is
queued before the tokens of the current one are read back and handed to the
rows (whose text assembly then runs while the GPU computes). A batch with a
row held to a grammar, or asking for log-probabilities, runs step by step
instead: the grammar must see each token before it masks the next.
"""

from __future__ import annotations

import inspect
import time
from collections import OrderedDict
from collections.abc import Iterator, Sequence
from typing import Any, Protocol

import structlog
import torch

from gpuworker.models.constraints import Constraint
from gpuworker.models.params import GenerationParams
from gpuworker.models.sampling import Sampler

log = structlog.get_logger(__name__)

MIN_CACHE_LENGTH = 256
WARM_UP_PROMPT_TOKENS = 8
WARM_UP_STEPS = 3


# A token's log-probability and the likeliest alternatives, as (token, log-probability) pairs.
Scores = tuple[float, list[tuple[int, float]]]


class DecodeRow(Protocol):
    """What the decoder needs of one row: its prompt, budget and sampling settings, and
    the grammar its tokens must follow (``constraint``, or None)."""

    input_ids: list[int]
    max_new_tokens: int
    params: GenerationParams
    constraint: Constraint | None

    def accept(self, token: int, scores: Scores | None) -> bool:
        """Take the row's next token (with its scores when it asked for log-probabilities);
        True when the row has ended."""


def _power_of_two_at_least(value: int) -> int:
    return 1 << max(0, value - 1).bit_length()


class Decoder:
    """Batched decoding with ``model`` on ``device``.

    ``pad_id`` fills the left of short prompts; ``compiled`` selects the
    compiled path (see the module's docstring); ``max_batch`` and
    ``context_length`` bound the shapes it is warmed up for;
    ``max_cache_tokens`` bounds the static caches kept for reuse (rows times
    cache length, all caches together).
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
        self.max_cache_tokens = max_cache_tokens
        self._caches: OrderedDict[tuple[int, int], Any] = OrderedDict()
        # transformers renamed the cache argument (from 5.2x); use whichever this version takes.
        self._cache_argument = "cache" if "cache" in inspect.signature(model.forward).parameters else "past_key_values"
        self._forward = self._compile() if compiled else self._logits
        self._host = _HostCopies(device, _power_of_two_at_least(max_batch))

    # -- shapes --------------------------------------------------------------

    def batch_rows(self, rows: int) -> int:
        """Rows actually run for a batch of ``rows`` (compiled sizes are powers of two)."""
        return _power_of_two_at_least(rows) if self.compiled else rows

    def cache_length(self, prompt: int, new_tokens: int) -> int:
        """Cache slots for prompts of up to ``prompt`` tokens and ``new_tokens`` more."""
        needed = prompt + new_tokens
        if not self.compiled:
            return needed
        return max(needed, min(_power_of_two_at_least(max(needed, MIN_CACHE_LENGTH)), self.context_length))

    def cost(self, rows: int, prompt: int, new_tokens: int) -> int:
        """Cache tokens (rows times slots) a batch of this shape holds: its memory bound."""
        return self.batch_rows(rows) * self.cache_length(prompt, new_tokens)

    # -- running -------------------------------------------------------------

    def run(self, rows: Sequence[DecodeRow]) -> Iterator[None]:
        """Decode ``rows`` together, handing each its tokens; yields after every step.

        Closing the generator stops decoding at once.
        """
        batch = _PaddedBatch(self, rows)
        chooser = _Chooser(rows, self.device)
        active = set(range(len(rows)))
        with torch.inference_mode():
            cache = self._cache(batch.size, batch.cache_length)
            logits = self._logits(batch.input_ids, batch.mask_until(batch.prompt), batch.prompt_positions, cache)
            tokens = chooser.choose(logits)
            overlap = self._host.cuda and not chooser.stepwise
            for step in range(batch.new_tokens):
                copied = self._host.copy(tokens, step)
                scores = chooser.scores_read()
                more = step + 1 < batch.new_tokens
                if more and overlap:  # queue the next step before reading this one back
                    upcoming = self._next(chooser, batch, tokens, step, cache)
                chosen = copied.read(len(rows))
                for index in sorted(active):
                    if rows[index].accept(chosen[index], scores.get(index)):
                        active.discard(index)
                yield
                if not active or not more:
                    return
                tokens = upcoming if overlap else self._next(chooser, batch, tokens, step, cache)

    def _next(
        self, chooser: _Chooser, batch: _PaddedBatch, tokens: torch.Tensor, step: int, cache: Any
    ) -> torch.Tensor:
        """The tokens that follow ``tokens``, fed at decoding step ``step``."""
        batch.mask[:, batch.prompt + step] = 1
        positions = (batch.lengths + step)[:, None]
        logits = self._forward(tokens[:, None], batch.mask_until(batch.prompt + step + 1), positions, cache)
        return chooser.choose(logits)

    def _logits(self, input_ids: torch.Tensor, mask: torch.Tensor, positions: torch.Tensor, cache: Any) -> torch.Tensor:
        output = self.model(
            input_ids=input_ids,
            attention_mask=mask,
            position_ids=positions,
            use_cache=True,
            logits_to_keep=1,
            **{self._cache_argument: cache},
        )
        return output.logits[:, -1].float()

    def _compile(self):
        mode = "reduce-overhead" if self.device.type == "cuda" else None
        compiled = torch.compile(self._logits, mode=mode, dynamic=True, fullgraph=False)
        if self.device.type != "cuda":
            return compiled

        def step(*args: Any) -> torch.Tensor:
            torch.compiler.cudagraph_mark_step_begin()
            return compiled(*args)

        return step

    def _cache(self, rows: int, length: int) -> Any:
        from transformers import DynamicCache, StaticCache

        if not self.compiled:
            return DynamicCache(config=self.model.config)
        key = (rows, length)
        cache = self._caches.pop(key, None)
        if cache is None:
            cache = StaticCache(config=self.model.config, max_cache_len=length)
            while self._caches and sum(r * n for r, n in [*self._caches, key]) > self.max_cache_tokens:
                self._caches.popitem(last=False)
        else:
            cache.reset()
        self._caches[key] = cache  # most recently used last
        return cache

    # -- warm-up -------------------------------------------------------------

    def warm_up(self, params: GenerationParams) -> None:
        """Run every compiled batch size once (compiling and capturing them); eager: one short batch."""
        sizes = [1]
        if self.compiled:
            while sizes[-1] < self.batch_rows(self.max_batch):
                sizes.append(sizes[-1] * 2)
        for size in sizes:
            started = time.perf_counter()
            rows = [_WarmUpRow(params) for _ in range(size)]
            for _ in self.run(rows):
                pass
            seconds = round(time.perf_counter() - started, 3)
            log.info("decoder_warmed_up", rows=size, compiled=self.compiled, seconds=seconds)


class _Chooser:
    """Each step's tokens for ``rows``: grammar masks, then each row's sampling, then the
    log-probabilities of the rows that asked for them."""

    def __init__(self, rows: Sequence[DecodeRow], device: torch.device) -> None:
        self.rows = rows
        self.sampler = Sampler([row.params for row in rows], device)
        self.constrained = [index for index, row in enumerate(rows) if row.constraint is not None]
        self.scored = [index for index, row in enumerate(rows) if row.params.top_logprobs is not None]
        self.top = max((rows[index].params.top_logprobs or 0 for index in self.scored), default=0)
        self.stepwise = bool(self.constrained or self.scored)
        self._scores: dict[int, Scores] = {}

    def choose(self, logits: torch.Tensor) -> torch.Tensor:
        for index in self.constrained:
            self.rows[index].constraint.mask(logits[index:index + 1])
        tokens = self.sampler.choose(logits)
        if self.scored:
            self._scores = self._score(logits, tokens)
        return tokens

    def _score(self, logits: torch.Tensor, tokens: torch.Tensor) -> dict[int, Scores]:
        picked = torch.tensor(self.scored, device=logits.device)
        logprobs = torch.log_softmax(logits[picked].float(), dim=-1)
        chosen = logprobs.gather(1, tokens[picked][:, None])[:, 0].tolist()
        values, ids = logprobs.topk(self.top, dim=-1) if self.top else (logprobs[:, :0], logprobs[:, :0].long())
        values, ids = values.tolist(), ids.tolist()
        return {
            row: (chosen[k], list(zip(ids[k], values[k]))[: self.rows[row].params.top_logprobs])
            for k, row in enumerate(self.scored)
        }

    def scores_read(self) -> dict[int, Scores]:
        """The last step's scores, by row (empty when no row asked)."""
        return self._scores


class _PaddedBatch:
    """The tensors of one batch: left-padded prompts, attention mask, positions."""

    def __init__(self, decoder: Decoder, rows: Sequence[DecodeRow]) -> None:
        device = decoder.device
        self.size = decoder.batch_rows(len(rows))
        self.prompt = max(len(row.input_ids) for row in rows)
        self.new_tokens = max(row.max_new_tokens for row in rows)
        self.cache_length = decoder.cache_length(self.prompt, self.new_tokens)
        self.compiled = decoder.compiled
        input_ids = torch.full((self.size, self.prompt), decoder.pad_id, dtype=torch.long)
        mask = torch.zeros((self.size, self.cache_length), dtype=torch.long)
        lengths = torch.ones(self.size, dtype=torch.long)  # padding rows attend to one pad token
        mask[:, self.prompt - 1] = 1
        for index, row in enumerate(rows):
            start = self.prompt - len(row.input_ids)
            input_ids[index, start:] = torch.tensor(row.input_ids)
            mask[index, start:self.prompt] = 1
            lengths[index] = len(row.input_ids)
        self.input_ids = input_ids.to(device)
        self.mask = mask.to(device)
        self.lengths = lengths.to(device)
        self.prompt_positions = (self.mask[:, : self.prompt].cumsum(-1) - 1).clamp(min=0)

    def mask_until(self, length: int) -> torch.Tensor:
        """The attention mask for a model that has seen ``length`` slots: all of it for a static cache."""
        return self.mask if self.compiled else self.mask[:, :length]


class _HostCopies:
    """Reads chosen tokens back to the host; on CUDA through two pinned buffers, so
    that the copy of one step can be waited for while the next step runs."""

    def __init__(self, device: torch.device, rows: int) -> None:
        self.cuda = device.type == "cuda"
        if self.cuda:
            self.buffers = [torch.empty(rows, dtype=torch.long, pin_memory=True) for _ in range(2)]
            self.events = [torch.cuda.Event() for _ in range(2)]

    def copy(self, tokens: torch.Tensor, step: int) -> _Copied:
        if not self.cuda:
            return _Copied(tokens, None)
        buffer, event = self.buffers[step % 2], self.events[step % 2]
        if len(tokens) > len(buffer):
            return _Copied(tokens.cpu(), None)
        buffer[: len(tokens)].copy_(tokens, non_blocking=True)
        event.record()
        return _Copied(buffer, event)


class _Copied:
    def __init__(self, tokens: torch.Tensor, event: Any) -> None:
        self.tokens = tokens
        self.event = event

    def read(self, rows: int) -> list[int]:
        if self.event is not None:
            self.event.synchronize()
        return self.tokens[:rows].tolist()


class _WarmUpRow:
    """A throw-away row for the warm-up."""

    constraint = None

    def __init__(self, params: GenerationParams) -> None:
        self.input_ids = list(range(1, WARM_UP_PROMPT_TOKENS + 1))
        self.max_new_tokens = WARM_UP_STEPS
        self.params = params
        self.taken = 0

    def accept(self, token: int, scores: Scores | None = None) -> bool:
        self.taken += 1
        return self.taken >= self.max_new_tokens
