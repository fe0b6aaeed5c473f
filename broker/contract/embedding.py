"""An embedding request as the wire carries it: texts, or token-id lists of the worker's own
model, one vector each. The worker checks its own bounds (how many inputs, how many tokens
each, which ids its vocabulary has)."""

from __future__ import annotations

from typing import Annotated, Any

from pydantic import Field, model_validator

from broker.contract.generation import Usage
from broker.contract.wire import Answer, WireRequest

Texts = Annotated[list[str], Field(min_length=1)]
TokenIds = Annotated[list[Annotated[int, Field(ge=0)]], Field(min_length=1)]


class EmbeddingRequest(WireRequest):
    """Exactly one of ``input`` (OpenAI's field), ``text`` (the Django server's) or ``input_ids``."""

    input: str | Texts | None = None
    text: str | Texts | None = None
    input_ids: Annotated[list[TokenIds], Field(min_length=1)] | None = None

    @model_validator(mode="after")
    def _one_input(self) -> EmbeddingRequest:
        self.check_one_of(
            {"input": "a string or a list of strings", "text": "the same", "input_ids": "lists of token ids"}
        )
        return self

    @property
    def texts(self) -> list[str] | None:
        """The texts to embed, or None when the request sends token ids."""
        value = self.input if self.input is not None else self.text
        return [value] if isinstance(value, str) else value

    @property
    def field(self) -> str:
        """The field that holds the inputs, to name in a refusal."""
        return next(name for name in ("input", "text", "input_ids") if getattr(self, name) is not None)

    @property
    def count(self) -> int:
        """How many vectors the request asks for."""
        return len(self.input_ids if self.input_ids is not None else self.texts or ())


def embedding_payload(inputs: list[str] | list[list[int]]) -> dict[str, Any]:
    """The wire request for ``inputs``: texts, or token-id lists."""
    request = EmbeddingRequest(input_ids=inputs) if isinstance(inputs[0], list) else EmbeddingRequest(input=inputs)
    return request.to_wire()


class EmbeddingResult(Answer):
    """One vector per input, in order, and the tokens they were made of."""

    embeddings: list[list[float]] = Field(default_factory=list)
    usage: Usage = Field(default_factory=Usage)
