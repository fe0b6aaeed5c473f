"""The token figures `llmapi status` shows, summarised from a frontend's Prometheus text."""

from __future__ import annotations

from prometheus_client import generate_latest

from broker.contract.generation import GenerationResult
from frontend import token_figures
from frontend.metrics import Metrics


def answer(first_ms: float, decode_ms: float, tokens: int, cached: int | None = None) -> GenerationResult:
    usage: dict = {"completion_tokens": tokens}
    if cached is not None:
        usage["prompt_tokens_details"] = {"cached_tokens": cached}
    return GenerationResult.read({
        "timing": {"deadline_left_ms": 29_990, "first_token_ms": first_ms, "decode_ms": decode_ms}, "usage": usage
    })


def test_each_service_gets_its_count_mean_and_median_bucket():
    metrics = Metrics()
    for first_ms in (10, 20, 300):
        metrics.observe_generation("tiny", answer(first_ms, 99, 100), deadline=30.0)
    metrics.observe_generation("demo", answer(5, 10, 11), deadline=30.0)
    figures = token_figures.summarise(generate_latest(metrics.registry).decode())
    assert set(figures) == {"tiny", "demo"}
    tiny = figures["tiny"]
    assert {key: one.count for key, one in tiny.items()} == {
        "queue_wait": 3, "time_to_first_token": 3, "time_per_output_token": 3, "output_tokens": 3
    }
    assert tiny["output_tokens"].mean == 100 and tiny["output_tokens"].median_at_most == 128
    assert abs(tiny["time_to_first_token"].mean - (0.02 + 0.03 + 0.31) / 3) < 1e-9
    assert tiny["time_to_first_token"].median_at_most == 0.05  # 10 ms waited + 20 ms: the 25-50 ms bucket
    assert abs(tiny["time_per_output_token"].mean - 0.001) < 1e-9
    (line,) = token_figures.render({"demo": {key: one.to_dict() for key, one in figures["demo"].items()}})
    assert line.startswith("demo: 1 answers; queue wait mean 10.0ms") and "tokens/answer mean 11.0" in line


def test_no_answers_and_other_metrics_give_no_figures():
    assert token_figures.summarise(generate_latest(Metrics().registry).decode()) == {}
    assert token_figures.summarise("# HELP other x\n# TYPE other counter\nother_total 3\n") == {}


def test_prefix_cache_hits_misses_and_reused_tokens_are_counted_per_service():
    metrics = Metrics()
    for cached in (0, 192, 64):
        metrics.observe_generation("tiny", answer(10, 99, 100, cached), deadline=30.0)
    metrics.observe_generation("echo", answer(5, 10, 11), deadline=30.0)  # no prefix cache there
    figures = token_figures.summarise(generate_latest(metrics.registry).decode())
    assert figures["tiny"]["prefix_cache"] == {"hits": 2, "misses": 1, "cached_tokens": 256}
    assert "prefix_cache" not in figures["echo"]
    shown = {key: one if isinstance(one, dict) else one.to_dict() for key, one in figures["tiny"].items()}
    (line,) = token_figures.render({"tiny": shown})
    assert line.startswith("tiny: 3 answers;") and line.endswith("prefix cache 2 hits, 1 misses, 256 tokens")
