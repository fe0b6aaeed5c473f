"""Decoding held to a grammar: JSON that must parse and validate, tool calls that must parse.

A request's ``response_format`` (``json_object``, or ``json_schema`` with a
schema) and a forced tool call (``tool_choice`` ``required`` or a named
function) become an llguidance grammar; at every step the decoder masks the
tokens the grammar forbids before it samples, and the row's matcher takes
the token chosen. So the answer parses (and validates) whatever the model's
weights are, and no answer is retried.

llguidance was chosen over xgrammar and outlines-core: it needs no other
package (xgrammar pulls in triton), it covers the most of JSON Schema and
names what it does not cover (an unsupported keyword is refused before the
request is admitted: the frontends build the same grammars, see
``broker.contract.grammar``), and it computes a mask in tens of
microseconds (``bench.model_bench`` measures its cost per token).
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch

from broker.contract.grammar import grammar_problem
from broker.errors import InvalidInput


class Constraint:
    """One row's grammar, matched token by token over a vocabulary of ``words`` tokens.
    ``stopped`` once nothing more may follow."""

    def __init__(self, matcher: Any, words: int) -> None:
        self.matcher = matcher
        self.words = words

    @property
    def stopped(self) -> bool:
        return bool(self.matcher.is_stopped())

    def mask(self, logits: torch.Tensor) -> None:
        """Forbid, in place, in a (1, vocabulary) row of logits, what the grammar does not allow next.

        The matcher's bitmask (bit ``t`` set: token ``t`` allowed) is unpacked here:
        a quarter of the time of llguidance's own torch helper, per token."""
        packed = np.frombuffer(self.matcher.compute_bitmask(), dtype=np.uint8)
        blocked = torch.from_numpy(np.unpackbits(packed, bitorder="little")[: self.words] == 0)
        logits[0, : self.words].masked_fill_(blocked.to(logits.device, non_blocking=True), float("-inf"))
        if logits.shape[1] > self.words:  # the model's logits may pad beyond its tokenizer
            logits[0, self.words:] = float("-inf")

    def accept(self, token: int) -> None:
        if not self.matcher.consume_token(token):
            raise RuntimeError(f"the grammar refused token {token}: {self.matcher.get_error()}")


class Grammars:
    """Each row's :class:`Constraint`, for one model's ``tokenizer`` (a transformers tokenizer)."""

    def __init__(self, tokenizer: Any) -> None:
        import llguidance.hf

        self.tokenizer = llguidance.hf.from_tokenizer(tokenizer)

    def constraint(self, grammar: str) -> Constraint:
        from llguidance import LLMatcher

        problem = grammar_problem(grammar)
        if problem is not None:
            raise InvalidInput(f"the response format cannot be enforced: {problem}")
        return Constraint(LLMatcher(self.tokenizer, grammar), self.tokenizer.vocab_size)

    def token_bytes(self, token: int) -> bytes:
        """The exact bytes a token stands for (a piece of a character, for some)."""
        return bytes(self.tokenizer.decode_bytes([token]))
