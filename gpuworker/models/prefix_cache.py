"""The keys and values of prompts' leading blocks, kept after their requests end for later
prompts that start the same way (a long system prompt, an agent's tool list, a chat's
earlier turns), so those compute only what is new.

A prompt is cut into blocks of :data:`BLOCK_TOKENS` tokens; a block is named by
a hash of its tokens, the block before it and the tenant, so a name stands
for the whole prefix up to that block (as vLLM's prefix caching names its
blocks). An entry keeps the keys and values of one prompt's whole blocks
(never its last token, whose logits the next request needs computed); each
of its blocks' names points to it. A lookup follows the new prompt's names
as far as they are known and takes that many leading columns of the entry.

Entries are keyed per tenant (an API key) unless ``shared``: a cache shared
between tenants lets one time another's prompts (vLLM's ``cache_salt``
exists for the same reason). Memory is bounded by ``max_tokens``, cached
columns of all entries together; the least recently used entry goes first.
"""

from __future__ import annotations

import hashlib
from collections import OrderedDict
from dataclasses import dataclass, field

from gpuworker.models.slots import LayerBlock

BLOCK_TOKENS = 16


@dataclass(eq=False, slots=True)
class Entry:
    """One kept prefix: its layers' keys and values and the names of its blocks."""

    blocks: list[LayerBlock]
    names: list[bytes] = field(default_factory=list)

    @property
    def tokens(self) -> int:
        return self.blocks[0][0].shape[1] if self.blocks else 0


@dataclass(frozen=True, slots=True)
class Hit:
    """A lookup's answer: the first ``tokens`` columns of ``entry`` hold this prompt's prefix."""

    entry: Entry
    tokens: int

    def blocks(self) -> list[LayerBlock]:
        return [(keys[:, : self.tokens], values[:, : self.tokens]) for keys, values in self.entry.blocks]


@dataclass(slots=True)
class Counters:
    hits: int = 0
    misses: int = 0
    cached_tokens: int = 0


class PrefixCache:
    """Kept prefixes of at most ``max_tokens`` columns in all; ``shared`` lets tenants share them."""

    def __init__(self, max_tokens: int, shared: bool = False) -> None:
        self.max_tokens = max_tokens
        self.shared = shared
        self._entries: OrderedDict[int, Entry] = OrderedDict()  # by id(entry), least recently used first
        self._by_name: dict[bytes, Entry] = {}
        self._held = 0
        self.counters = Counters()

    def names(self, tenant: str, tokens: list[int]) -> list[bytes]:
        """The names of the whole blocks of ``tokens`` that may be kept: all but the last token."""
        salt = b"" if self.shared else tenant.encode()
        names, previous = [], hashlib.blake2b(salt, digest_size=16).digest()
        for end in range(BLOCK_TOKENS, len(tokens), BLOCK_TOKENS):
            block = b"".join(token.to_bytes(4, "little") for token in tokens[end - BLOCK_TOKENS:end])
            previous = hashlib.blake2b(previous + block, digest_size=16).digest()
            names.append(previous)
        return names

    def lookup(self, names: list[bytes]) -> Hit | None:
        """The longest kept prefix of a prompt whose block names are ``names``; counted as a hit or a miss."""
        found: Entry | None = None
        matched = 0
        for depth, name in enumerate(names, start=1):
            entry = self._by_name.get(name)
            if entry is None:
                break
            found, matched = entry, depth
        if found is None:
            self.counters.misses += 1
            return None
        self._entries.move_to_end(id(found))
        self.counters.hits += 1
        self.counters.cached_tokens += matched * BLOCK_TOKENS
        return Hit(found, matched * BLOCK_TOKENS)

    def wants(self, names: list[bytes]) -> bool:
        """Whether keeping a prompt whose block names are ``names`` would add anything."""
        return bool(names) and names[-1] not in self._by_name and len(names) * BLOCK_TOKENS <= self.max_tokens

    def keep(self, names: list[bytes], blocks: list[LayerBlock]) -> None:
        """Keep ``blocks``, the keys and values of the prompt's first ``len(names)`` blocks."""
        entry = Entry(blocks, names)
        self._held += entry.tokens
        self._entries[id(entry)] = entry
        for name in names:
            self._by_name[name] = entry
        while self._held > self.max_tokens:
            self._evict(next(iter(self._entries.values())))

    def _evict(self, entry: Entry) -> None:
        del self._entries[id(entry)]
        self._held -= entry.tokens
        for name in entry.names:
            if self._by_name.get(name) is entry:
                del self._by_name[name]

    @property
    def held_tokens(self) -> int:
        return self._held
