"""From generated token ids to text pieces, as they are produced.

Tokens do not map one-to-one onto characters: a byte-level tokenizer may
split one character's UTF-8 bytes over several tokens, and some tokenizers
only know whether a token starts with a space from its neighbour. The
:class:`IncrementalDecoder` therefore releases text only once it is stable,
and :class:`StopMatcher` holds back what could still become a stop string.
The pieces a :class:`TextAssembler` releases join to exactly the text it
reports at the end, so a streamed answer equals the one returned whole.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import Any

REPLACEMENT = "\ufffd"


class IncrementalDecoder:
    """Decodes a growing list of token ids into text deltas.

    ``tokenizer`` is a transformers tokenizer; special tokens (end of turn,
    padding) decode to nothing. Text ending in an incomplete character is
    held back until a later token completes it, or until :meth:`flush`.
    """

    def __init__(self, tokenizer: Any) -> None:
        self.tokenizer = tokenizer
        self.ids: list[int] = []
        self._prefix = 0  # start of the window decoded for context
        self._read = 0  # end of the text already released

    def push(self, ids: Iterable[int]) -> str:
        """Add ``ids`` and return the text they make stable (may be empty)."""
        self.ids.extend(ids)
        released, full = self._window()
        if len(full) > len(released) and not full.endswith(REPLACEMENT):
            self._prefix, self._read = self._read, len(self.ids)
            return full[len(released):]
        return ""

    def flush(self) -> str:
        """The text still held back, incomplete characters included."""
        released, full = self._window()
        self._prefix = self._read = len(self.ids)
        return full[len(released):]

    def _window(self) -> tuple[str, str]:
        return self._decode(self.ids[self._prefix:self._read]), self._decode(self.ids[self._prefix:])

    def _decode(self, ids: list[int]) -> str:
        return self.tokenizer.decode(ids, skip_special_tokens=True, clean_up_tokenization_spaces=False)


class StopMatcher:
    """Cuts text at the first of ``stops``, never releasing any part of a stop string.

    Text that ends with the beginning of a stop string is held until it is
    clear whether the stop string follows.
    """

    def __init__(self, stops: Iterable[str]) -> None:
        self.stops = tuple(stop for stop in stops if stop)
        self.stopped = False
        self._pending = ""

    def feed(self, text: str) -> str:
        """Add ``text``; return what may be released. After a stop, nothing more is."""
        if self.stopped:
            return ""
        pending = self._pending + text
        hits = [index for index in (pending.find(stop) for stop in self.stops) if index >= 0]
        if hits:
            self.stopped = True
            self._pending = ""
            return pending[: min(hits)]
        keep = self._held_suffix(pending)
        self._pending = pending[len(pending) - keep:]
        return pending[: len(pending) - keep]

    def flush(self) -> str:
        """What was held back, once no more text will come."""
        released, self._pending = ("" if self.stopped else self._pending), ""
        return released

    def _held_suffix(self, text: str) -> int:
        """Length of the longest end of ``text`` that begins some stop string."""
        longest = 0
        for stop in self.stops:
            for size in range(min(len(stop) - 1, len(text)), longest, -1):
                if text.endswith(stop[:size]):
                    longest = size
                    break
        return longest


class TextAssembler:
    """Token ids in, released text out: an :class:`IncrementalDecoder` then a :class:`StopMatcher`.

    ``on_text`` is called with each non-empty released piece (from whatever
    thread pushes the ids); :attr:`text` is all of them joined.
    """

    def __init__(self, tokenizer: Any, stops: Iterable[str] = (), on_text: Callable[[str], None] | None = None) -> None:
        self.decoder = IncrementalDecoder(tokenizer)
        self.matcher = StopMatcher(stops)
        self.on_text = on_text
        self.pieces: list[str] = []

    @property
    def stopped(self) -> bool:
        """Whether a stop string has been seen."""
        return self.matcher.stopped

    @property
    def text(self) -> str:
        return "".join(self.pieces)

    @property
    def token_count(self) -> int:
        return len(self.decoder.ids)

    def push(self, ids: Iterable[int]) -> None:
        self._release(self.matcher.feed(self.decoder.push(ids)))

    def finish(self) -> None:
        """Release everything still held back (no more ids will come)."""
        self._release(self.matcher.feed(self.decoder.flush()))
        self._release(self.matcher.flush())

    def _release(self, text: str) -> None:
        if text:
            self.pieces.append(text)
            if self.on_text is not None:
                self.on_text(text)
