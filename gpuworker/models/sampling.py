"""Choosing each row's next token, with the row's own sampling settings.

Rows of one batch may ask for different things: greedy decoding, a
temperature and nucleus mass, a seed. :class:`Sampler` picks the next token
of every row in one pass over the batch's logits: the argmax for greedy
rows, a draw from the tempered, nucleus-cut distribution for the others. A
seeded row draws from its own generator, so its answer does not depend on
which other requests share its batch.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from gpuworker.models.params import GenerationParams


def seeded_generator(params: GenerationParams, device: torch.device) -> torch.Generator | None:
    """The random generator of a seeded sampled row, kept by the row for its whole life; None otherwise."""
    if params.greedy or params.seed is None:
        return None
    return torch.Generator(device=device).manual_seed(params.seed)


class Sampler:
    """Next-token choice for a batch whose rows follow ``settings`` (temperature, top_p), on
    ``device``; a seeded row draws from its own ``generators`` entry (see :func:`seeded_generator`).

    Rows past ``len(settings)`` (padding a batch up to a compiled size) are
    decoded greedily and their tokens are never read.
    """

    def __init__(
        self,
        settings: Sequence[GenerationParams],
        generators: Sequence[torch.Generator | None],
        device: torch.device,
    ) -> None:
        sampled = [index for index, row in enumerate(settings) if not row.greedy]
        self.all_greedy = not sampled
        if self.all_greedy:
            return
        self.sampled = torch.tensor(sampled, device=device)
        self.temperature = torch.tensor([settings[i].temperature for i in sampled], device=device)[:, None]
        self.top_p = torch.tensor([settings[i].top_p for i in sampled], device=device)[:, None]
        self.any_top_p = any(settings[i].top_p < 1 for i in sampled)
        # Positions in the sampled block: one shared draw for unseeded rows, one generator per seeded row.
        self.unseeded = torch.tensor([k for k, i in enumerate(sampled) if generators[i] is None], device=device)
        self.seeded = [(k, generators[i]) for k, i in enumerate(sampled) if generators[i] is not None]

    def choose(self, logits: torch.Tensor) -> torch.Tensor:
        """The next token of each row, from float32 ``logits`` of shape (rows, vocabulary)."""
        tokens = logits.argmax(dim=-1)
        if self.all_greedy:
            return tokens
        probs = torch.softmax(logits[self.sampled] / self.temperature, dim=-1)
        if self.any_top_p:
            probs = _nucleus(probs, self.top_p)
        drawn = torch.empty(len(self.sampled), dtype=tokens.dtype, device=tokens.device)
        if len(self.unseeded):
            drawn[self.unseeded] = torch.multinomial(probs[self.unseeded], 1).squeeze(1)
        for position, generator in self.seeded:
            drawn[position] = torch.multinomial(probs[position], 1, generator=generator)[0]
        tokens[self.sampled] = drawn
        return tokens


def _nucleus(probs: torch.Tensor, top_p: torch.Tensor) -> torch.Tensor:
    """``probs`` with each row cut to its smallest set of likeliest tokens whose mass reaches ``top_p``."""
    ordered, order = probs.sort(dim=-1, descending=True)
    before = ordered.cumsum(dim=-1) - ordered  # mass of the likelier tokens
    ordered = ordered.masked_fill(before >= top_p, 0.0)
    kept = torch.zeros_like(probs).scatter_(-1, order, ordered)
    return kept / kept.sum(dim=-1, keepdim=True)
