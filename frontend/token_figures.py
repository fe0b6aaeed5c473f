"""The token figures of a frontend's ``/metrics``, per service, for ``llmapi status``.

Each frontend keeps histograms of queue wait, time to first token, time per
output token and output tokens per answer, from the timing its workers report;
:data:`GENERATION_FIGURES` defines them (``frontend.metrics`` keeps them, and
this module imports nothing of the frontend, so ``llmapi status`` stays light).
This reads one frontend's and summarises each:
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

LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60)
TOKEN_SECONDS_BUCKETS = (0.0005, 0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.25, 1)
TOKEN_COUNT_BUCKETS = (1, 8, 32, 64, 128, 256, 512, 1024, 2048, 4096)


@dataclass(frozen=True)
class GenerationFigure:
    """One histogram of every answer's figures: its metric, what it measures, its buckets, and
    how ``llmapi status`` shows it (label, unit, and the scale from the metric's unit)."""

    metric: str
    meaning: str
    buckets: tuple[float, ...]
    label: str
    unit: str = "ms"
    scale: float = 1000


GENERATION_FIGURES = {
    "queue_wait": GenerationFigure(
        "llmapi_queue_wait_seconds",
        "Seconds an answer waited for its worker (queue, batch)",
        LATENCY_BUCKETS,
        "queue wait",
    ),
    "time_to_first_token": GenerationFigure(
        "llmapi_time_to_first_token_seconds",
        "Seconds from a request's arrival to its first token",
        LATENCY_BUCKETS,
        "first token",
    ),
    "time_per_output_token": GenerationFigure(
        "llmapi_time_per_output_token_seconds",
        "Seconds per output token after the first",
        TOKEN_SECONDS_BUCKETS,
        "per token",
    ),
    "output_tokens": GenerationFigure(
        "llmapi_output_tokens", "Output tokens per answer", TOKEN_COUNT_BUCKETS, "tokens/answer", unit="", scale=1
    ),
}


# The prefix cache's counts, per service, from the usage each answer reports: an answer whose
# prompt began with a kept prefix is a hit, and its cached prompt tokens are counted.
PREFIX_CACHE_COUNTERS = {
    "hits": ("llmapi_prefix_cache_hits", "Answers whose prompt reused a cached prefix"),
    "misses": ("llmapi_prefix_cache_misses", "Answers whose prompt found no cached prefix"),
    "cached_tokens": ("llmapi_prefix_cache_tokens", "Prompt tokens taken from the prefix cache"),
}


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


def summarise(text: str) -> dict[str, dict[str, Any]]:
    """service -> figure name (as in GENERATION_FIGURES) -> its :class:`Figure`, for services that
    answered, and ``prefix_cache`` -> its counts (as in PREFIX_CACHE_COUNTERS) where it was used."""
    names = {figure.metric: key for key, figure in GENERATION_FIGURES.items()}
    counters = {metric: key for key, (metric, _) in PREFIX_CACHE_COUNTERS.items()}
    samples: dict[tuple[str, str], dict[str, Any]] = {}
    cache: dict[str, dict[str, int]] = {}
    for family in text_string_to_metric_families(text):
        if family.name in counters:
            for sample in family.samples:
                if sample.name.endswith("_total"):
                    cache.setdefault(sample.labels.get("service", "-"), {})[counters[family.name]] = int(sample.value)
            continue
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
    figures: dict[str, dict[str, Any]] = {}
    for (service, key), found in samples.items():
        count = int(found.get("count", 0))
        if count:
            figures.setdefault(service, {})[key] = Figure(count, found["sum"] / count, _median(found["buckets"], count))
    for service, counts in cache.items():
        if counts.get("hits") or counts.get("misses"):
            figures.setdefault(service, {})["prefix_cache"] = counts
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
        for key, shown in GENERATION_FIGURES.items():
            if key in figure:
                mean, median = figure[key]["mean"] * shown.scale, figure[key]["median_at_most"] * shown.scale
                unit = shown.unit
                parts.append(f"{shown.label} mean {mean:.1f}{unit} (median <= {median:g}{unit})")
        cache = figure.get("prefix_cache")
        if cache is not None:
            hits, misses, tokens = cache["hits"], cache["misses"], cache["cached_tokens"]
            parts.append(f"prefix cache {hits} hits, {misses} misses, {tokens} tokens")
        answers = max((int(one["count"]) for key, one in figure.items() if key in GENERATION_FIGURES), default=0)
        lines.append(f"{service}: {answers} answers; " + ", ".join(parts))
    return lines
