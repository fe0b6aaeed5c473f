"""Built-in algorithms that hold a real model resident: torch + transformers.

* :mod:`gpuworker.models.generation` - text generation and chat (``text-generation``);
* :mod:`gpuworker.models.embedding` - sentence embeddings (``embedding``);
* :mod:`gpuworker.models.demo` - the offline demo model, converted once from a GGUF file;
* :mod:`gpuworker.models.demo_embedding` - where the offline demo embedding model's files are;
* the small parts they share: typed options, loading, request parameters,
  prompt rendering, incremental detokenisation and stop strings.

Request and response shapes are documented in ``docs/models.md``. Only the
worker imports this package, but for ``demo_embedding``, which imports no
torch: ``llmapi up`` asks it whether the demo embedding model is installed.
"""
