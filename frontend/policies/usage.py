"""Usage records: every admitted request leaves exactly one, however it ended.

The record says how the request ended and whether it was charged; writing
it closes the request's entry in the ledger (see ``accounts.ledger``), which
refunds an uncharged request that nothing refunded before, and counts the
answer's tokens against the key's token limits. Records are queued for the
store's background writer: writing one never waits for the database.
"""

from __future__ import annotations

import math
import time
from collections.abc import Sequence
from typing import Any

import structlog

from accounts import errors as accounts_errors
from accounts.records import UsageRecord
from accounts.store import AccountStore
from broker.contract.generation import GenerationPiece, GenerationResult, Usage, count_or_unknown
from frontend.policies.base import Call, Ending, Policy

log = structlog.get_logger(__name__)


class UsageRecords(Policy):
    """Writes each request's record; ``timeout`` is the deadline requests are sent with, from
    which a worker's timing tells when the first token came."""

    def __init__(self, store: AccountStore, timeout: float) -> None:
        self.store = store
        self.timeout = timeout

    async def answered(self, call: Call, ending: Ending) -> None:
        self._record(call, ending)

    async def failed(self, call: Call, ending: Ending) -> None:
        self._record(call, ending)

    def _record(self, call: Call, ending: Ending) -> None:
        admission = call.admission
        if admission is None:
            return
        usage = summed_usage(ending.answers)
        try:
            self.store.record_usage(
                UsageRecord.from_texts(
                    admission=admission,
                    outcome=ending.outcome,
                    latency_seconds=0.0 if call.sent_at is None else time.monotonic() - call.sent_at,
                    request_text=input_text(call.payload),
                    output_text="".join(map(output_text, ending.results, ending.answers)),
                    prompt_tokens=count_or_unknown(usage.get("prompt_tokens")),
                    completion_tokens=count_or_unknown(usage.get("completion_tokens")),
                    gpu_seconds=usage.get("gpu_seconds"),
                    first_token_seconds=self._first_token(ending),
                    endpoint=call.endpoint or None,
                    charged=ending.charged,
                )
            )
        except accounts_errors.AccountsError as error:
            log.error("usage_not_recorded", reason=error.message, key_prefix=admission.key_prefix)


    def _first_token(self, ending: Ending) -> float | None:
        """When the first token of any choice came, if its worker said (a time no record could
        hold, from an algorithm's own timing, is unknown rather than a record lost)."""
        times = [answer.timing.first_token_seconds(self.timeout) for answer in ending.answers if answer.timing]
        known = [seconds for seconds in times if 0 <= seconds < math.inf]
        return round(min(known), 6) if known else None


def summed_usage(answers: list[GenerationResult]) -> dict[str, Any]:
    """Token counts and device time of one or more answers (choices share one prompt, each
    took its own device time)."""
    # A choice that carries no usage (one cut short before its first piece) adds no tokens.
    usages = [answer.usage for answer in answers if "usage" in answer.model_fields_set]
    if not usages:
        return {}
    completions = [count_or_unknown(usage.completion_tokens) for usage in usages]
    known = [tokens for tokens in completions if tokens is not None]
    timed = [usage.gpu_seconds for usage in usages if usage.gpu_seconds is not None]
    return {
        "prompt_tokens": usages[0].prompt_tokens,
        "completion_tokens": sum(known) if len(known) == len(completions) else None,
        "gpu_seconds": sum(timed) if timed else None,
    }


def answered_tokens(ending: Ending) -> int | None:
    """The tokens an answer read and generated (its usage record's prompt and completion tokens),
    None for a failure or an answer that counts none."""
    if not ending.answered:
        return None
    usage = summed_usage(ending.answers)
    counted = [tokens for tokens in (usage.get("prompt_tokens"), usage.get("completion_tokens")) if tokens is not None]
    return sum(counted) if counted else None


def with_every_workers_time(usage: Usage, answers: Sequence[GenerationPiece | GenerationResult]) -> dict[str, Any]:
    """``usage`` as the wire carries it, its device time that of every worker a stream went
    through (a migrated stream's). Each worker's answers carry its own time so far; the next
    worker's begin where the count of tokens it went on from (``usage.resumed_tokens``)
    changes, or where the time goes down (from a worker that does not say)."""
    earlier = 0.0
    last: float | None = None
    resumed: int | None = None
    for answer in answers:
        if answer.usage is None or answer.usage.gpu_seconds is None:
            continue
        seconds, this_resumed = answer.usage.gpu_seconds, answer.usage.resumed_tokens or 0
        if last is not None and (this_resumed != resumed or seconds < last):
            earlier += last
        last, resumed = seconds, this_resumed
    counted = usage.to_answer()
    if earlier and last is not None:
        counted["gpu_seconds"] = earlier + last
    return counted



def input_text(payload: dict[str, Any]) -> str:
    text = payload.get("text")
    if isinstance(text, str):
        return text
    messages = payload.get("messages")
    if isinstance(messages, list):
        return "\n".join(
            m.get("content", "") for m in messages if isinstance(m, dict) and isinstance(m.get("content"), str)
        )
    prompt = payload.get("prompt") or payload.get("input")
    if isinstance(prompt, list):
        return "\n".join(p for p in prompt if isinstance(p, str))
    return prompt if isinstance(prompt, str) else ""


def output_text(result: Any, answer: GenerationResult) -> str:
    """The text a result (read as ``answer``) carries, for the usage record's character and
    word counts; answers that are not text (embeddings, say) count none, rather than being
    serialised again on the event loop just to be measured."""
    return result if isinstance(result, str) else answer.output
