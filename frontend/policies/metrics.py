"""Generation metrics: each generated answer's token figures, for ``/metrics``."""

from __future__ import annotations

from frontend.metrics import Metrics
from frontend.policies.base import Call, Ending, Policy


class GenerationMetrics(Policy):
    """Observes the timing each answer's worker reports, against the request ``deadline``
    (from which the worker's remaining time tells how long it queued)."""

    def __init__(self, metrics: Metrics, deadline: float) -> None:
        self.metrics = metrics
        self.deadline = deadline

    async def answered(self, call: Call, ending: Ending) -> None:
        if ending.replayed:
            return  # nothing was generated for it
        for answer in ending.answers:
            self.metrics.observe_generation(call.service, answer, self.deadline)
