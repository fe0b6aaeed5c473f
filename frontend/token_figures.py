"""The token figures of a frontend's ``/metrics``, per service, for ``llmapi status``.

Each frontend keeps histograms of queue wait, time to first token, time per
output token and output tokens per answer, from the timing its workers report
(see :mod:`frontend.metrics`). This reads one frontend's and summarises each:
how many answers, the mean, and the median as the upper edge of the bucket
that holds it. Frontends count their own answers: with several behind one
port, a read reaches one of them (Prometheus, scraping each, sees them all).
"""

from __future__ import annotations

import math
import urllib.request
from dataclasses import dataclass
from typing import Any

from prometheus_client.parser import text_string_to_metric_families

from frontend.metrics import GENERATION_METRICS


@dataclass(frozen=True)
class Figure:
    """One histogram of one service: answers counted, mean, and median bucket's upper edge."""

    count: int
    mean: float
    median_at_most: float

    def to_dict(self) -> dict[str, float]:
        return {"count": self.count, "mean": self.mean, "median_at_most": self.median_at_most}


def read(url: str, token: str | None, timeout: float) -> str:
    """The text of ``url``/metrics (with the metrics token when one is set)."""
    request = urllib.request.Request(url.rstrip("/") + "/metrics")
    if token is not None:
        request.add_header("Authorization", f"Bearer {token}")
    with urllib.request.urlopen(request, timeout=timeout) as answer:
        return answer.read().decode()


def summarise(text: str) -> dict[str, dict[str, Figure]]:
    """service -> figure name (as in GENERATION_METRICS) -> its :class:`Figure`, for services that answered."""
    names = {name: key for key, (name, _, _) in GENERATION_METRICS.items()}
    samples: dict[tuple[str, str], dict[str, Any]] = {}
    for family in text_string_to_metric_families(text):
        key = names.get(family.name)
        if key is None:
            continue
        for sample in family.samples:
            service = sample.labels.get("service", "-")
            found = samples.setdefault((service, key), {"buckets": []})
            if sample.name.endswith("_bucket"):
                found["buckets"].append((float(sample.labels["le"]), sample.value))
            elif sample.name.endswith("_count"):
                found["count"] = sample.value
            elif sample.name.endswith("_sum"):
                found["sum"] = sample.value
    figures: dict[str, dict[str, Figure]] = {}
    for (service, key), found in samples.items():
        count = int(found.get("count", 0))
        if count:
            figures.setdefault(service, {})[key] = Figure(count, found["sum"] / count, _median(found["buckets"], count))
    return figures


def _median(buckets: list[tuple[float, float]], count: int) -> float:
    for edge, cumulative in sorted(buckets):
        if cumulative >= count / 2:
            return edge
    return math.inf


def render(figures: dict[str, dict[str, dict[str, float]]]) -> list[str]:
    """A line per service, for people, from the figures as :meth:`Figure.to_dict` gives them."""
    lines = []
    for service, figure in sorted(figures.items()):
        parts = []
        for key, label, unit, scale in (
            ("queue_wait", "queue wait", "ms", 1000),
            ("time_to_first_token", "first token", "ms", 1000),
            ("time_per_output_token", "per token", "ms", 1000),
            ("output_tokens", "tokens/answer", "", 1),
        ):
            if key in figure:
                mean, median = figure[key]["mean"] * scale, figure[key]["median_at_most"] * scale
                parts.append(f"{label} mean {mean:.1f}{unit} (median <= {median:g}{unit})")
        answers = max(int(one["count"]) for one in figure.values())
        lines.append(f"{service}: {answers} answers; " + ", ".join(parts))
    return lines
