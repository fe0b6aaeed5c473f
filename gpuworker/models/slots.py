"""The KV cache of a continuous batch: a storage row per request, each with its own write position.

transformers' caches give every row of a batch one write position, so rows
must start together (left-padded) and a row cannot join a running batch.
:class:`SlotCache` keeps each layer's keys and values as one tensor of
``(rows, kv_heads, columns + 1, head_dim)``: a request holds a storage row
(its *slot*) from its admission to its end, the token at position ``i`` sits
in column ``i``, and every input token names the column it is written to
(padding tokens write to the last column, a scratch one). The model attends
through masks built here from each input token's column (:class:`Masks`),
passed to it ready-made: causal, and cut to the sliding window of the layers
that have one. So rows of any lengths, joining and leaving at any step, each
get exactly the attention they would get alone.

Rows being decoded hold the slots ``0 .. n-1``, in order, so a decoding
step reads the store's first ``n`` rows without copying them; a row that
ends hands its slot to the last one (one row's columns are copied), and a
row whose prompt is computed moves into slot ``n``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
from transformers.cache_utils import Cache

FULL = "full_attention"
SLIDING = "sliding_attention"


@dataclass(slots=True)
class Placement:
    """Where one request's tokens sit: storage row ``slot``, columns ``0 .. length - 1``
    (column ``i`` holds the token at position ``i``)."""

    slot: int
    length: int = 0


# One layer's keys and values for some columns of one row: what a cached prefix keeps.
LayerBlock = tuple[torch.Tensor, torch.Tensor]


class SlotCache(Cache):
    """Keys and values of every layer of a model, in ``rows`` storage rows of ``columns`` columns.

    Each layer's tensors are made on its first update (their heads and size
    come from the model). A ``growable`` store grows (doubling) when asked
    for more rows or columns; a fixed one (the compiled path) keeps its
    tensors, and their addresses, for good.

    Before each forward, :meth:`aim` says which storage rows the batch is
    (a ``slice`` of the first rows, read in place, or a tensor of slots),
    which column each input token is written to, and how many columns the
    model attends over.
    """

    def __init__(self, device: torch.device, rows: int, columns: int, growable: bool) -> None:
        super().__init__(layers=[])
        self.device = device
        self.rows = rows
        self.columns = columns
        self.growable = growable
        self.keys: dict[int, torch.Tensor] = {}
        self.values: dict[int, torch.Tensor] = {}
        self._rows: slice | torch.Tensor = slice(0, 0)
        self._write: torch.Tensor | None = None
        self._attended = 0

    @property
    def scratch(self) -> int:
        """The column padding tokens are written to; never attended to."""
        return self.columns

    def ensure(self, rows: int, columns: int) -> None:
        """Room for ``rows`` storage rows of ``columns`` columns (a fixed store must have it already)."""
        if rows <= self.rows and columns <= self.columns:
            return
        if not self.growable:
            raise RuntimeError(f"the fixed KV store holds {self.rows} rows of {self.columns} columns")
        new_rows, new_columns = self.rows, self.columns
        while new_rows < rows:
            new_rows *= 2
        while new_columns < columns:
            new_columns *= 2
        for layer in list(self.keys):
            self.keys[layer] = self._regrown(self.keys[layer], new_rows, new_columns)
            self.values[layer] = self._regrown(self.values[layer], new_rows, new_columns)
        self.rows, self.columns = new_rows, new_columns

    def _regrown(self, old: torch.Tensor, rows: int, columns: int) -> torch.Tensor:
        new = old.new_zeros((rows, old.shape[1], columns + 1, old.shape[3]))
        kept_rows, kept_columns = min(rows, old.shape[0]), min(columns, self.columns)
        new[:kept_rows, :, :kept_columns] = old[:kept_rows, :, :kept_columns]
        return new

    def shrink(self, rows: int, columns: int) -> None:
        """Give memory back (a growable store): keep only the first ``rows`` rows and ``columns``
        columns, where every row in use lies, when the store has grown to four times that or more."""
        if not self.growable or (self.rows < 4 * rows and self.columns < 4 * columns):
            return
        for layer in list(self.keys):
            self.keys[layer] = self._regrown(self.keys[layer], rows, columns)
            self.values[layer] = self._regrown(self.values[layer], rows, columns)
        self.rows, self.columns = rows, columns

    def aim(self, rows: slice | torch.Tensor, write: torch.Tensor, attended: int) -> None:
        """The next forward runs storage ``rows``; input token ``(i, t)`` is written to column
        ``write[i, t]``; the model attends over columns ``0 .. attended - 1``."""
        self._rows = rows
        self._write = write
        self._attended = attended

    def update(
        self, key_states: torch.Tensor, value_states: torch.Tensor, layer_idx: int, *args: Any, **kwargs: Any
    ) -> tuple[torch.Tensor, torch.Tensor]:
        keys, values = self._layer(layer_idx, key_states)
        if self._write is None:
            raise RuntimeError("the KV store was not aimed: call aim() before each forward")
        if isinstance(self._rows, slice):
            index = self._write[:, None, :, None].expand_as(key_states)
            keys, values = keys[self._rows], values[self._rows]
            keys.scatter_(2, index, key_states)
            values.scatter_(2, index, value_states)
            return keys[:, :, : self._attended], values[:, :, : self._attended]
        rows = self._rows[:, None]
        keys[rows, :, self._write] = key_states.transpose(1, 2)
        values[rows, :, self._write] = value_states.transpose(1, 2)
        return keys[self._rows, :, : self._attended], values[self._rows, :, : self._attended]

    def _layer(self, layer: int, like: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        if layer not in self.keys:
            shape = (self.rows, like.shape[1], self.columns + 1, like.shape[3])
            self.keys[layer] = torch.zeros(shape, dtype=like.dtype, device=self.device)
            self.values[layer] = torch.zeros(shape, dtype=like.dtype, device=self.device)
            if not self.growable and self.device.type == "cuda":
                torch._dynamo.mark_static_address(self.keys[layer])
                torch._dynamo.mark_static_address(self.values[layer])
        return self.keys[layer], self.values[layer]

    def get_seq_length(self, layer_idx: int | None = 0) -> int:
        return 0  # positions are always given; nothing asks the cache for them

    # -- moving rows and prefixes ------------------------------------------------

    def move(self, source: Placement, slot: int) -> None:
        """Copy the columns ``source`` holds to storage row ``slot``."""
        columns = slice(0, source.length)
        for layer in self.keys:
            self.keys[layer][slot, :, columns] = self.keys[layer][source.slot, :, columns]
            self.values[layer][slot, :, columns] = self.values[layer][source.slot, :, columns]

    def read(self, place: Placement, length: int) -> list[LayerBlock]:
        """Copies of the first ``length`` columns ``place`` holds, layer by layer."""
        columns = slice(0, length)
        return [
            (self.keys[layer][place.slot, :, columns].clone(), self.values[layer][place.slot, :, columns].clone())
            for layer in sorted(self.keys)
        ]

    def write(self, place: Placement, blocks: list[LayerBlock]) -> None:
        """Put ``blocks`` (from :meth:`read`) in the first columns of ``place``'s row."""
        for layer, (keys, values) in zip(sorted(self.keys), blocks):
            columns = slice(0, keys.shape[1])
            self.keys[layer][place.slot, :, columns] = keys
            self.values[layer][place.slot, :, columns] = values

    @property
    def ready(self) -> bool:
        """Whether every layer's tensors exist (a first forward has run)."""
        return bool(self.keys)


def layer_kinds(config: Any) -> set[str]:
    """The attention kinds a model's layers use: full, sliding-window, or both."""
    types = getattr(config, "layer_types", None)
    if types:
        return {kind if kind == SLIDING else FULL for kind in types}
    return {SLIDING} if getattr(config, "sliding_window", None) else {FULL}


class Masks:
    """Attention masks for a model of ``config``, as its attention implementation takes them.

    A query token attends to the columns of its own row up to its own column
    and, in sliding-window layers, to the last ``sliding_window`` of those. A model whose layers are of one kind gets
    one mask; one that mixes kinds gets ``{kind: mask}``, which the models
    that mix them accept in place of a mask to build.
    """

    def __init__(self, config: Any, dtype: torch.dtype) -> None:
        self.kinds = sorted(layer_kinds(config))
        self.window: int | None = getattr(config, "sliding_window", None)
        # Eager attention adds its mask to the scores; the others take booleans.
        self.additive = getattr(config, "_attn_implementation", "sdpa") == "eager"
        self.dtype = dtype

    def build(self, queries: torch.Tensor, attended: int) -> torch.Tensor | dict[str, torch.Tensor]:
        """Masks for input tokens at columns ``queries`` (b, q) over ``attended`` columns:
        shape (b, 1, q, attended)."""
        columns = torch.arange(attended, device=queries.device)
        last = queries[:, :, None]
        allowed = columns <= last
        masks = {kind: self._as_taken(self._cut(kind, allowed, columns, last)[:, None]) for kind in self.kinds}
        return masks if len(masks) > 1 else masks[self.kinds[0]]

    def _cut(self, kind: str, allowed: torch.Tensor, columns: torch.Tensor, last: torch.Tensor) -> torch.Tensor:
        """``allowed`` cut, in a sliding-window layer, to the last ``window`` columns (none without a window)."""
        if kind != SLIDING or self.window is None:
            return allowed
        return allowed & (columns > last - self.window)

    def _as_taken(self, mask: torch.Tensor) -> torch.Tensor:
        if not self.additive:
            return mask
        return torch.zeros(mask.shape, dtype=self.dtype, device=mask.device).masked_fill_(
            ~mask, torch.finfo(self.dtype).min
        )
