"""bench.first_run sends the README's chat example as printed, and its table says each figure."""

from __future__ import annotations

from bench import first_run


def test_the_bench_sends_the_readmes_first_chat_example_not_its_streamed_one():
    body = first_run.readme_chat_request()
    assert body["model"] and body["messages"][0]["role"] == "user" and not body.get("stream")


def test_the_table_has_a_row_per_worker_count_with_its_median_and_p90():
    runs = [first_run.FirstRun(1, 2.84, 26.1, [0.5, 0.4, 0.6], "Paris.", 4, [1.2, 1.0, 1.4]),
            first_run.FirstRun(2, 3.0, 30.0, [0.3] * 8 + [1.0] * 2, "Paris.", 4, [2.0])]
    table = first_run.table(runs, 3)
    assert "| 1 | 2.8 s | 26.1 s | 0.50 s | 0.60 s | 4 in 1.20 s |" in table
    assert "| 2 | 3.0 s | 30.0 s | 0.30 s | 1.00 s | 4 in 2.00 s |" in table
