"""`make bench` compares each figure of bench.path_bench with the one docs/benchmarks.md kept:
the figures read back are the ones written, and rewriting the section leaves the rest as it was."""

from __future__ import annotations

from bench import path_bench


def test_a_written_section_is_read_back_and_replaced_in_place():
    figures = {"full path / bare Tornado, 64 connections": 0.184, "broker CPU µs/request, 64 connections": 173.4}
    first = path_bench.report(figures, {}, "wrk")
    document = f"# Benchmarks\n\nintro\n\n{first}\n## Models\n\nkept as it is\n"
    assert path_bench.previous_figures(document) == {
        "full path / bare Tornado, 64 connections": "0.18",
        "broker CPU µs/request, 64 connections": "173",
    }

    second = path_bench.report({**figures, "broker CPU µs/request, 64 connections": 90.0},
                               path_bench.previous_figures(document), "wrk")
    rewritten = path_bench.replace_section(document, second)
    assert rewritten == f"# Benchmarks\n\nintro\n\n{second}\n## Models\n\nkept as it is\n"
    assert "| broker CPU µs/request, 64 connections | 90 | 173 |" in rewritten
    assert path_bench.previous_figures(rewritten)["broker CPU µs/request, 64 connections"] == "90"


def test_a_document_without_the_section_gets_it_at_the_end():
    section = path_bench.report({"full path p50 ms, 1 connection": 2.014}, {}, "bench.loadgen")
    assert path_bench.previous_figures("# Benchmarks\n") == {}
    assert path_bench.replace_section("# Benchmarks\n", section) == f"# Benchmarks\n\n{section}"
    assert "| full path p50 ms, 1 connection | 2.01 | - |" in section


def test_against_a_commit_each_figure_stands_beside_the_commits_with_their_ratio():
    figures = {
        "bare Tornado requests/s, 64 connections": 6000.0,
        "full path requests/s, 64 connections": 1250.0,
        "full path requests/s, 64 connections (HEAD~1)": 1000.0,
        "worker CPU µs/request, 64 connections": 260.0,
        "worker CPU µs/request, 64 connections (HEAD~1)": 300.0,
        "load average (1 min) before": 0.3,
    }
    table = path_bench.side_by_side_report(figures, "HEAD~1", "wrk", 3).splitlines()
    assert table[2:] == [
        "| figure | this tree | HEAD~1 | ratio |",
        "| --- | ---: | ---: | ---: |",
        "| full path requests/s, 64 connections | 1250 | 1000 | 1.25 |",
        "| worker CPU µs/request, 64 connections | 260 | 300 | 0.87 |",
    ]
