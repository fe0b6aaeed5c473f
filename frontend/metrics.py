"""Prometheus metrics: the registry of the frontend's requests and the broker's figures
(served at ``/metrics`` by :mod:`frontend.handlers.metrics`)."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from broker.contract.generation import GenerationResult
from frontend import errors
from frontend.token_figures import GENERATION_FIGURES, LATENCY_BUCKETS, PREFIX_CACHE_COUNTERS


class BrokerCollector(Collector):
    """The last broker status seen, as metrics."""

    def __init__(self) -> None:
        self.status: dict[str, Any] | None = None

    def collect(self) -> Iterator[Metric]:
        up = GaugeMetricFamily("llmapi_broker_up", "Whether the broker answered the last scrape")
        up.add_metric([], 0 if self.status is None else 1)
        yield up
        if self.status is None:
            return
        queued = GaugeMetricFamily("llmapi_broker_queue_depth", "Requests queued", labels=["service"])
        workers = GaugeMetricFamily("llmapi_broker_workers", "Workers by state", labels=["service", "state"])
        for name, service in self.status["services"].items():
            queued.add_metric([name], service["queued"])
            workers.add_metric([name, "idle"], service["idle"])
            workers.add_metric([name, "busy"], service["busy"])
        yield queued
        yield workers
        counters = self.status["counters"]
        shown = ("requests", "dispatched", "redispatched", "migrated", "answered", "timeouts", "overloaded")
        for name in (*shown, "workers_expired"):
            family = CounterMetricFamily(f"llmapi_broker_{name}", f"Broker total: {name.replace('_', ' ')}")
            family.add_metric([], counters[name])
            yield family
        dispatch = CounterMetricFamily(
            "llmapi_broker_dispatch_wait_seconds", "Total seconds requests waited in the queue before dispatch"
        )
        dispatch.add_metric([], counters["dispatch_seconds"])
        yield dispatch


class Metrics:
    """The frontend's own metrics in a registry of its own."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        self.requests = Counter(
            "llmapi_http_requests", "HTTP requests answered", ["service", "status"], registry=self.registry
        )
        self.latency = Histogram(
            "llmapi_http_request_seconds",
            "HTTP request latency",
            ["service"],
            buckets=LATENCY_BUCKETS,
            registry=self.registry,
        )
        # Every code of the one table, listed from the start (at 0) so that alerts can name any.
        self.errors = Counter(
            "llmapi_http_errors", "Error answers by code (frontend.errors.CODES)", ["code"], registry=self.registry
        )
        for code in errors.CODES:
            self.errors.labels(code)
        self.in_flight = Gauge("llmapi_http_in_flight", "Requests being served", registry=self.registry)
        self.broker = BrokerCollector()
        self.registry.register(self.broker)
        self.generation = {
            key: Histogram(figure.metric, figure.meaning, ["service"], buckets=figure.buckets, registry=self.registry)
            for key, figure in GENERATION_FIGURES.items()
        }
        self.prefix_cache = {
            key: Counter(metric, meaning, ["service"], registry=self.registry)
            for key, (metric, meaning) in PREFIX_CACHE_COUNTERS.items()
        }

    def observe(self, service: str | None, status: int, seconds: float, error_code: str | None = None) -> None:
        label = service or "-"
        self.requests.labels(label, str(status)).inc()
        self.latency.labels(label).observe(seconds)
        if error_code is not None:
            self.errors.labels(error_code).inc()

    def observe_generation(self, service: str, summary: GenerationResult, deadline: float) -> None:
        """One answer's token figures, from the timing its worker reports (see ``gpuworker.models.job``)."""
        timing, usage = summary.timing, summary.usage
        if timing is None:
            return
        waited, first = timing.queue_seconds(deadline), timing.first_token_seconds(deadline)
        tokens = usage.completion_tokens or 0
        self.generation["queue_wait"].labels(service).observe(waited)
        self.generation["time_to_first_token"].labels(service).observe(first)
        self.generation["output_tokens"].labels(service).observe(tokens)
        if tokens > 1:
            self.generation["time_per_output_token"].labels(service).observe(timing.decode_ms / 1000 / (tokens - 1))
        cached = usage.cached_tokens
        if cached is not None:
            self.prefix_cache["hits" if cached else "misses"].labels(service).inc()
            self.prefix_cache["cached_tokens"].labels(service).inc(cached)
