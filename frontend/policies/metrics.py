"""Generation metrics: each generated answer's token figures, for ``/metrics``."""

from __future__ import annotations

from typing import TYPE_CHECKING

from broker.contract.generation import GenerationResult
from frontend.policies.base import Call, Ending, Policy

if TYPE_CHECKING:  # frontend.metrics serves /metrics, so it imports the handlers, which import this
    from frontend.metrics import Metrics


class GenerationMetrics(Policy):
    """Observes the timing each answer's worker reports, against the request ``deadline``
    (from which the worker's remaining time tells how long it queued)."""

    def __init__(self, metrics: Metrics, deadline: float) -> None:
        self.metrics = metrics
        self.deadline = deadline

    async def answered(self, call: Call, ending: Ending) -> None:
        if ending.replayed:
            return  # nothing was generated for it
        for summary in ending.result if isinstance(ending.result, list) else [ending.result]:
            self.metrics.observe_generation(call.service, GenerationResult.read(summary), self.deadline)
