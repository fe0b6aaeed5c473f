"""The embedding algorithm in-process, on the tiny random encoder."""

from __future__ import annotations

import math
from typing import Any

import pytest

pytest.importorskip("transformers")

from broker.errors import Cancelled, InvalidInput
from gpuworker.algorithm import Batch, LoadedAlgorithm, Row
from tests.models.support import task


def test_each_text_becomes_one_unit_length_vector(embedder):
    answer = embedder.handle({"input": ["first text", "second, longer text here"]}, task())
    vectors = answer["embeddings"]
    assert len(vectors) == 2 and all(len(v) == embedder.describe()["dimensions"] == 32 for v in vectors)
    assert all(math.isclose(math.fsum(x * x for x in v), 1.0, rel_tol=1e-5) for v in vectors)
    assert vectors[0] != vectors[1]


def test_a_text_embeds_the_same_alone_and_padded_in_a_batch(embedder):
    alone = embedder.handle({"input": "short"}, task())["embeddings"][0]
    batched = embedder.handle({"input": ["short", "a much longer text that forces padding"]}, task())["embeddings"][0]
    assert max(abs(a - b) for a, b in zip(alone, batched)) < 1e-5


def test_usage_counts_every_real_token(embedder):
    texts = ["one", "two words", "and three words"]
    expected = sum(len(ids) for ids in embedder.tokenizer(texts)["input_ids"])
    assert embedder.handle({"text": texts}, task())["usage"]["prompt_tokens"] == expected


def test_a_shared_batch_charges_each_request_its_texts_share_of_the_device_time(embedder):
    outcomes: dict[int, Any] = {}
    requests = [{"input": ["one"]}, {"input": ["two", "three", "four"]}]
    rows = [Row(request, task(), False, lambda row, kind, value, i=i: outcomes.update({i: value}))
            for i, request in enumerate(requests)]
    busy = embedder.clock.busy_seconds
    embedder.serve_batch(Batch(rows))
    one, three = (outcomes[i]["usage"]["gpu_seconds"] for i in range(2))
    assert one > 0 and three == pytest.approx(3 * one, rel=1e-2)  # to the microsecond
    assert one + three == pytest.approx(embedder.clock.busy_seconds - busy, abs=2e-6)


@pytest.mark.parametrize(
    "request_body, complaint",
    [
        ({}, "exactly one of 'input' .*'text' .*'input_ids'"),
        ({"input": "a", "text": "b"}, r"exactly one of .*it has \['input', 'text'\]"),
        ({"input": []}, "'input': List should have at least 1 item"),
        ({"input": ["a", 3]}, r"'input\[1\]': Input should be a valid string"),
        ({"input_ids": [[1, -1]]}, r"'input_ids\[0\]\[1\]': Input should be greater than or equal to 0"),
        ({"input": ["a"] * 5}, "'input' may hold at most 4 inputs \\(got 5\\)"),
        ({"input": ["fine", "x" * 40]}, r"input\[1\] has 42 tokens; at most 16 are allowed"),
    ],
)
def test_bad_inputs_are_refused_with_clear_messages(tiny_encoder_dir, request_body, complaint):
    bounded = LoadedAlgorithm("embedding", None, [], {"model": str(tiny_encoder_dir), "max_inputs": 4, "max_input_tokens": 16})
    with pytest.raises(InvalidInput, match=complaint):
        bounded.serve(request_body, task())


def test_with_truncation_long_texts_are_cut_instead_of_refused(tiny_encoder_dir):
    cutting = LoadedAlgorithm("embedding", None, [], {"model": str(tiny_encoder_dir), "max_input_tokens": 16, "truncate": True})
    assert cutting.serve({"input": "x" * 40}, task())["usage"]["prompt_tokens"] == 16


def test_a_cancelled_request_stops_before_the_next_batch(embedder):
    context = task()
    context.cancelled.set()
    with pytest.raises(Cancelled):
        embedder.handle({"input": ["a", "b"]}, context)
