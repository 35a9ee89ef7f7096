"""The model side of h2osim: everything that runs a real transformer (the only torch importers).

- :mod:`h2osim.model.loading`: load the bundled SmolLM2 (or any local model) with eager
  attention, through a fast safetensors cache;
- :mod:`h2osim.model.text`: the text inputs every model tool shares;
- :mod:`h2osim.model.recorder`: record a trace (attention rows, values) while the model runs;
- :mod:`h2osim.model.live`: live (closed-loop) eviction, the engine's step inside the model;
- :mod:`h2osim.model.live_cache`: the transformers ``Cache`` that applies those evictions.

The command lines over them are :mod:`h2osim.dump`, :mod:`h2osim.live` and
``python -m h2osim.model`` (prepare the cache). See docs/architecture.md.

Importing this package does not import torch: the names below are loaded on first use,
so the command lines can import their model-side modules cheaply and report a missing
model stack in one line.
"""

from __future__ import annotations

import importlib
from typing import Any

_HOMES = {
    "BUNDLED_GGUF": "h2osim.model.loading",
    "BUNDLED_NAME": "h2osim.model.loading",
    "BUNDLED_PACKAGE": "h2osim.model.loading",
    "CACHE_ENV": "h2osim.model.loading",
    "DEFAULT_CACHE": "h2osim.model.loading",
    "DEVICES": "h2osim.model.loading",
    "DTYPES": "h2osim.model.loading",
    "ModelSource": "h2osim.model.loading",
    "cache_root": "h2osim.model.loading",
    "file_sha256": "h2osim.model.loading",
    "AttentionUnavailableError": "h2osim.model.loading",
    "ModelInfo": "h2osim.model.loading",
    "ModelNotInstalledError": "h2osim.model.loading",
    "add_model_arguments": "h2osim.model.loading",
    "attention_shape": "h2osim.model.loading",
    "bundled_gguf_path": "h2osim.model.loading",
    "head_map_for": "h2osim.model.loading",
    "library_versions": "h2osim.model.loading",
    "load_model": "h2osim.model.loading",
    "load_model_from_args": "h2osim.model.loading",
    "prepare_cache": "h2osim.model.loading",
    "require_attention_weights": "h2osim.model.loading",
    "resolve_device": "h2osim.model.loading",
    "resolve_dtype": "h2osim.model.loading",
    "resolve_model_source": "h2osim.model.loading",
    "set_threads": "h2osim.model.loading",
    "DEFAULT_PYDOC_TOPIC": "h2osim.model.text",
    "TextSource": "h2osim.model.text",
    "add_text_arguments": "h2osim.model.text",
    "encode_text": "h2osim.model.text",
    "pydoc_text": "h2osim.model.text",
    "pydoc_topic_names": "h2osim.model.text",
    "read_text_file": "h2osim.model.text",
    "resolve_text": "h2osim.model.text",
    "text_source_from_args": "h2osim.model.text",
    "token_pieces": "h2osim.model.text",
}

__all__ = sorted(_HOMES)


def __getattr__(name: str) -> Any:
    """Load ``name`` from its home module on first use (``from h2osim.model import load_model``)."""
    if name not in _HOMES:
        raise AttributeError(f"module 'h2osim.model' has no attribute {name!r}")
    return getattr(importlib.import_module(_HOMES[name]), name)
