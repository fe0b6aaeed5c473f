"""Tiny models built once per test session, and the algorithms loaded from them in-process."""

from __future__ import annotations

import pytest

from tests.fixtures.tiny_model import build_tiny_encoder, build_tiny_llama

# Limits large enough for the long streams that cancellation tests interrupt.
GENERATION_OPTIONS = {"cpu_threads": 1, "max_new_tokens_limit": 4000}


@pytest.fixture(scope="session")
def tiny_llama_dir(tmp_path_factory):
    return build_tiny_llama(tmp_path_factory.mktemp("tiny-llama"))


@pytest.fixture(scope="session")
def ending_llama_dir(tmp_path_factory):
    return build_tiny_llama(tmp_path_factory.mktemp("ending-llama"), ends_answers=True)


@pytest.fixture(scope="session")
def tiny_encoder_dir(tmp_path_factory):
    return build_tiny_encoder(tmp_path_factory.mktemp("tiny-encoder"))


@pytest.fixture(scope="session")
def generator(tiny_llama_dir):
    from gpuworker.models.generation import TextGeneration

    return TextGeneration(model=str(tiny_llama_dir), **GENERATION_OPTIONS)


@pytest.fixture(scope="session")
def embedder(tiny_encoder_dir):
    from gpuworker.models.embedding import Embedding

    return Embedding(model=str(tiny_encoder_dir), cpu_threads=1)
