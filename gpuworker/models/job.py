"""One request on its way through the model: the decoder's row.

A :class:`Job` takes its row's tokens one by one: it feeds its grammar (when
the answer is held to one), turns tokens into text pieces, notes each token's
log-probabilities when asked, holds tool calls out of the streamed text, and
ends the row (end of text, stop string, budget, grammar complete, cancel,
deadline) with its answer: ``{"output", "usage", "finish_reason"}``, plus
``tool_calls`` and ``logprobs`` when there are any.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from typing import Any

import structlog

from gpuworker.algorithm import Row
from gpuworker.models.constraints import Constraint
from gpuworker.models.decoding import Scores
from gpuworker.models.params import GenerationParams
from gpuworker.models.textstream import TextAssembler
from gpuworker.models.tools import CallSplitter, parse

log = structlog.get_logger(__name__)

# A token as the log-probabilities list it: its text, its exact bytes.
TokenNamer = Callable[[int], tuple[str, bytes]]


class Job:
    """One row: its prompt ids, budget and text so far.

    ``row`` receives the pieces (when streamed) and, once the row ends, its
    answer; ``eos_ids`` end the answer; ``constraint`` is the grammar its
    tokens must follow, if any; ``namer`` names tokens for log-probabilities.
    ``tenant`` is whom the request is for (its API key), which keeps its
    cached prefixes apart from other tenants'.
    """

    def __init__(
        self,
        row: Row,
        params: GenerationParams,
        prompt_ids: list[int],
        max_new_tokens: int,
        assembler: TextAssembler,
        eos_ids: list[int],
        constraint: Constraint | None = None,
        namer: TokenNamer | None = None,
        tenant: str = "",
    ) -> None:
        self.row = row
        self.params = params
        self.prompt_ids = prompt_ids
        # What the decoder computes before it chooses the next token: the prompt, and the
        # tokens an earlier worker already streamed when this row goes on from them.
        self.input_ids = prompt_ids
        self.max_new_tokens = max_new_tokens
        self.assembler = assembler
        self.eos_ids = eos_ids
        self.constraint = constraint
        self.namer = namer
        self.tenant = tenant
        # The names of its prompt's blocks in the prefix cache, and how many prompt tokens it found
        # there (None: the worker keeps no prefix cache).
        self.prefix_names: list[bytes] = []
        self.cached_tokens: int | None = None
        self.generated: list[int] = []
        self.gpu_seconds = 0.0  # its share of the device's time (gpuworker.models.device_time)
        self.resumed_tokens = 0  # tokens an earlier worker streamed, when it goes on from them
        self.logprobs: list[dict[str, Any]] = []
        self._unsent = 0  # log-probabilities not yet sent with a piece
        self._sent_tokens = 0  # tokens already named by a piece
        self._replaying = False
        self.interrupted: str | None = None
        self.ended = False
        self.started = time.perf_counter()
        self.first_token_at: float | None = None
        # What is left of the deadline now tells the frontend how long the request waited.
        self.deadline_left = max(0.0, row.context.deadline - time.monotonic())
        self.splitter = CallSplitter() if params.tools is not None else None
        if row.stream:
            assembler.on_text = self._emit

    @property
    def prompt_tokens(self) -> int:
        return len(self.prompt_ids)

    @property
    def reservation(self) -> int:
        """Cache tokens the row may come to hold: its prompt and its whole budget."""
        return len(self.prompt_ids) + self.max_new_tokens

    def resume(self, tokens: Sequence[int]) -> None:
        """Go on from ``tokens``, which an earlier worker streamed before it was lost: they
        become this row's own (its grammar, text and budget take them) without being sent
        again, and the decoder computes them with the prompt. A row they end is answered."""
        self.resumed_tokens = len(tokens)
        self._replaying = True
        for token in tokens:
            if self.accept(token):
                break
        self._replaying = False
        self._sent_tokens = len(self.generated)
        self.input_ids = self.prompt_ids + self.generated

    def interruption(self) -> str | None:
        """Why the row must stop now, if it must: its client cancelled or its deadline passed."""
        if self.row.context.cancelled.is_set():
            return "cancelled"
        if time.monotonic() >= self.row.context.deadline:
            return "deadline"
        return None

    def accept(self, token: int, scores: Scores | None = None) -> bool:
        if self.constraint is not None:
            self.constraint.accept(token)
        if scores is not None and self.namer is not None and token not in self.eos_ids:
            self.logprobs.append(_entry(self.namer, token, scores))
        if self.first_token_at is None:
            self.first_token_at = time.perf_counter()
        self.generated.append(token)
        self.assembler.push((token,))
        self.interrupted = self.interruption()
        if (
            token in self.eos_ids
            or self.assembler.stopped
            or len(self.generated) >= self.max_new_tokens
            or (self.constraint is not None and self.constraint.stopped)
            or self.interrupted is not None
        ):
            self.end()
        return self.ended

    def _emit(self, text: str) -> None:
        self._send(self.splitter.feed(text) if self.splitter is not None else text)

    def _send(self, text: str) -> None:
        if not text or self._replaying:
            return
        # Usage so far rides on every piece: a stream cut short (its client left, its worker or
        # broker was lost) is still billed for the tokens that reached the frontend.
        piece: dict[str, Any] = {"text": text, "usage": self._usage()}
        if self.params.top_logprobs is not None:
            piece["logprobs"], self._unsent = self.logprobs[self._unsent:], len(self.logprobs)
        tokens, self._sent_tokens = self.generated[self._sent_tokens:], len(self.generated)
        self.row.emit(piece, tokens)

    def end(self, interrupted: str | None = None) -> None:
        """Release the held-back text and answer the row."""
        self._replaying = False  # what was held back when an earlier worker was lost was never sent
        self.interrupted = self.interrupted or interrupted
        self.ended = True
        self.assembler.finish()
        held = self.splitter.flush() if self.splitter is not None and self.row.stream else ""
        if not (self._forced and held):  # held back under a forced call: the call, cut short
            self._send(held)
        summary = self._summary()
        self.row.finish(summary if self.row.stream else {"output": summary.pop("content"), **summary})

    def _summary(self) -> dict[str, Any]:
        content, calls = self._content_and_calls()
        finish_reason = "tool_calls" if calls else self._finish_reason()
        seconds = time.perf_counter() - self.started
        log.info(
            "generation_finished",
            request_id=self.row.request_id,
            prompt_tokens=self.prompt_tokens,
            completion_tokens=len(self.generated),
            finish_reason=finish_reason,
            interrupted=self.interrupted,
            seconds=round(seconds, 4),
            gpu_seconds=round(self.gpu_seconds, 6),
            tokens_per_second=round(len(self.generated) / seconds, 1) if seconds > 0 else None,
        )
        summary: dict[str, Any] = {
            "content": content,
            "usage": self._usage(),
            "finish_reason": finish_reason,
        }
        if self.cached_tokens is not None:
            summary["usage"]["prompt_tokens_details"] = {"cached_tokens": min(self.cached_tokens, self.prompt_tokens)}
        if calls:
            summary["tool_calls"] = [call.as_openai() for call in calls]
        if self.params.top_logprobs is not None:
            summary["logprobs"] = self.logprobs[self._unsent:] if self.row.stream else self.logprobs
        if self.interrupted is not None:
            summary["interrupted"] = self.interrupted
        summary["timing"] = self._timing()
        if self.row.stream:
            del summary["content"]
        return summary

    def _usage(self) -> dict[str, Any]:
        return {
            "prompt_tokens": self.prompt_tokens,
            "completion_tokens": len(self.generated),
            "gpu_seconds": round(self.gpu_seconds, 6),
            **({"resumed_tokens": self.resumed_tokens} if self.resumed_tokens else {}),
        }

    def _timing(self) -> dict[str, float]:
        """The worker's own timing of the row, in milliseconds, for the frontends' metrics."""
        ended = time.perf_counter()
        first = self.first_token_at or ended
        return {
            "deadline_left_ms": round(self.deadline_left * 1000, 3),
            "first_token_ms": round((first - self.started) * 1000, 3),
            "decode_ms": round((ended - first) * 1000, 3),
        }

    @property
    def _forced(self) -> bool:
        """Whether the answer must be a call: text in it is a call, or part of one."""
        return self.params.tools is not None and bool(self.params.tools.forced)

    def _content_and_calls(self) -> tuple[str, list[Any]]:
        text = self.assembler.text
        if self.params.tools is None:
            return text, []
        content, calls = parse(text, self.params.tools.names)
        # A forced call that the budget cut short is no call, and its text no answer.
        return ("" if self._forced and not calls else content), calls

    def _finish_reason(self) -> str:
        if self.interrupted is not None:
            return "cancelled"
        if (
            self.assembler.stopped
            or (self.generated and self.generated[-1] in self.eos_ids)
            or (self.constraint is not None and self.constraint.stopped)
        ):
            return "stop"
        return "length"


def _entry(namer: TokenNamer, token: int, scores: Scores) -> dict[str, Any]:
    """A chosen token's log-probability entry, its likeliest alternatives named by ``namer``."""
    logprob, alternatives = scores
    return {
        **_named(namer, token),
        "logprob": logprob,
        "top_logprobs": [{**_named(namer, other), "logprob": value} for other, value in alternatives],
    }


def _named(namer: TokenNamer, token: int) -> dict[str, Any]:
    text, raw = namer(token)
    return {"token": text, "bytes": list(raw)}
