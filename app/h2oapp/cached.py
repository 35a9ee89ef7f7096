"""Cached wrappers around h2osim: every computation the pages show goes through here.

A trace is named by its :data:`TraceKey` ``(path, mtime_ns, size)``, so a file that
changes on disk is reloaded. The loaded :class:`~h2osim.trace.Trace` (it holds an open
zip file) lives in ``st.cache_resource``, shared read-only by all sessions; everything
derived from it (replays, statistics, chart specs) is plain data in ``st.cache_data``,
keyed on the trace key, the policy name, its parameters and the replay options.

Shipped traces are the ``*.npz`` files in ``traces/`` (or in ``$H2OSIM_TRACE_DIR``),
found by globbing, so new ones appear without code changes.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import numpy as np
import streamlit as st

from h2oapp import analysis, figures, precompute, prepared
from h2osim.engine import ReplayResult, add_gap_to_opt, sweep
from h2osim.policies import make_policy
from h2osim.trace import Trace

REPO_ROOT = Path(__file__).resolve().parents[2]

TraceKey = tuple[str, int, int]  # (path, mtime in ns, size in bytes)
Params = tuple[tuple[str, Any], ...]  # a policy's parameters, sorted by name
Options = tuple[str, str, str]  # ReplayConfig's (aggregation, prompt_mode, observation)


def trace_folder() -> Path:
    """Where shipped traces live: ``$H2OSIM_TRACE_DIR`` or the repository's ``traces/``."""
    return Path(os.environ.get("H2OSIM_TRACE_DIR", REPO_ROOT / "traces"))


def shipped_traces() -> list[Path]:
    """The ``*.npz`` files of :func:`trace_folder`: real-model traces first, then by name.

    Example: [synthetic-demo.npz, smollm2-docs.npz] -> [smollm2-docs.npz, synthetic-demo.npz].
    """
    found = sorted(trace_folder().glob("*.npz"))
    return sorted(found, key=lambda path: (path.name.startswith("synthetic"), path.name))


def trace_key(path: str | os.PathLike[str]) -> TraceKey:
    """The cache key of a trace file; raises FileNotFoundError when it is gone."""
    stat = Path(path).stat()
    return str(path), stat.st_mtime_ns, stat.st_size


@st.cache_resource(max_entries=8, show_spinner="Loading and checking the trace ...")
def load_trace(key: TraceKey) -> Trace:
    """The validated trace (TraceError when the file breaks the format). A file whose
    bytes setup already loaded and validated with this code (its prepared views exist,
    :mod:`h2oapp.prepared`) is not checked again: the check is most of a cold load."""
    return Trace.load(key[0], validate=not _prepared(key))


@st.cache_resource(max_entries=16, show_spinner=False)
def _sha256(key: TraceKey) -> str:
    """The SHA-256 of the trace file's bytes, the setup store's name for it."""
    return precompute.file_sha256(key[0])


# ----------------------------------------------------------------- trace explorer
@st.cache_data(max_entries=16, show_spinner=False)
def showcase_head(key: TraceKey) -> tuple[int, int]:
    """The (layer, query head) whose heavy hitters stand out most: the largest share of
    accumulated attention held by its top 10% of tokens, token 0 (the sink) left out.
    The pages open on it."""
    stored = _stored(key).get("showcase")  # computed at setup for the shipped traces
    if stored is not None:
        return int(stored[0]), int(stored[1])
    return analysis.showcase_head(load_trace(key))


@st.cache_data(max_entries=64, show_spinner=False)
def head_summary(key: TraceKey, layer: int, head: int, per_row: bool) -> dict[str, Any]:
    """Section 3 statistics of one query head and its accumulated-attention scores."""
    trace = load_trace(key)
    matrix = trace.head_matrix(layer, head)  # (n, n)
    scores = analysis.accumulated_attention(matrix, per_row=per_row)  # (n,)
    alpha, scale, r2 = analysis.power_law(scores)
    weights = analysis.log_weights(scores, decades=3.0)
    return {
        "scores": scores,
        "weights": weights,  # log-scaled scores in [0, 1], for colouring the text
        "sparsity": analysis.sparsity(matrix),
        "sink_mass": analysis.sink_mass(matrix),
        "top10_share": analysis.top_share(scores, 0.1),
        "alpha": alpha,  # the estimator of python -m h2osim.observe
        "scale": scale,
        "r2": r2,
    }


@st.cache_data(max_entries=64, show_spinner=False)
def heatmap_spec(key: TraceKey, layer: int, head: int, log_scale: bool) -> figures.Spec:
    """The Vega-Lite spec of one head's attention heatmap (its PNG inside); the opening
    head's is read from setup's store (:mod:`h2oapp.prepared`) when it holds it."""
    stored = prepared.stored_heatmap(_prepared(key), layer, head, log_scale)
    if stored is not None:
        return stored
    return prepared.heatmap_of(load_trace(key), layer, head, log_scale)


@st.cache_data(max_entries=64, show_spinner=False)
def sink_column(key: TraceKey, layer: int, head: int) -> np.ndarray:
    """Attention of every row on token 0, ``(n,)``, as a dense matrix column."""
    return load_trace(key).head_matrix(layer, head)[:, 0]


@st.cache_data(max_entries=64, show_spinner=False)
def unit_accumulated(key: TraceKey, options: Options, unit: int) -> np.ndarray:
    """``(n, n)`` float32: row t holds every token's accumulated attention from the unit's
    full-cache rows 0..t (its query heads combined as the replay combines them), the
    score the tooltips show."""
    layout = replay_config(options).layout(load_trace(key))
    return np.cumsum(layout.matrix(unit), axis=0, dtype=np.float64).astype(np.float32)


# ----------------------------------------------------------------- replays
replay_config = prepared.replay_config  # the engine configuration of the pages' replays


@st.cache_data(max_entries=256, show_spinner=False)
def replay_result(
    key: TraceKey,
    policy: str,
    params: Params,
    budget: float,
    options: Options,
    output_error: bool = False,
) -> ReplayResult:
    """One replay of the whole trace (all units); ValueError for bad parameters.

    ``output_error`` also measures the attention-output error (when the trace stores
    value vectors); it makes a replay about 3x slower. The Eviction dynamics page's
    opening replays are read from setup's store (:mod:`h2oapp.prepared`) when it holds
    them.
    """
    stored = prepared.stored_replay(_prepared(key), policy, params, budget, options, output_error)
    if stored is not None:
        return stored
    return prepared.replay_of(load_trace(key), policy, params, budget, options, output_error)


@st.cache_resource(show_spinner=False)
def by_hand_example() -> dict[str, Any]:
    """What setup prepared for the by-hand page's opening example, read once."""
    return prepared.read_by_hand(precompute.store_folder())


@st.cache_resource(max_entries=16, show_spinner=False)
def _prepared(key: TraceKey) -> dict[str, Any]:
    """What setup prepared for this trace file's cold page runs, read once."""
    return prepared.read(precompute.store_folder(), _sha256(key))


@st.cache_resource(max_entries=16, show_spinner=False)
def _stored(key: TraceKey) -> dict[str, Any]:
    """What setup precomputed for this trace file (:mod:`h2oapp.precompute`), read once."""
    return precompute.read_payload(_sha256(key))


def precomputed_record(
    key: TraceKey, policy: str, params: Params, budget: float, options: Options,
    output_error: bool,
) -> dict[str, Any] | None:  # fmt: skip
    """The stored record of a race cell, when setup computed it (default parameters and
    options only; stored with the output error, so it serves both choices)."""
    if options != precompute.DEFAULT_OPTIONS or params != default_params(policy):
        return None
    fixed = fixed_budget(key, policy, params) is not None
    cell = precompute.cell_key(policy, None if fixed else budget)
    record = _stored(key).get("records", {}).get(cell)
    return None if record is None else dict(record, budget_requested=float(budget))


default_params = prepared.default_params  # a policy's parameters at their defaults


@st.cache_data(max_entries=1024, show_spinner=False)
def race_record(
    key: TraceKey,
    policy: str,
    params: Params,
    budget: float,
    options: Options,
    output_error: bool = False,
) -> dict[str, Any]:
    """The record of one (policy, budget) cell of a race: the engine's :func:`sweep` (the
    code path of ``python -m h2osim.replay --sweep``) over one policy and one budget, so
    the app's rows are the CLI's rows (``budget_requested`` included)."""
    precomputed = precomputed_record(key, policy, params, budget, options, output_error)
    if precomputed is not None:
        return precomputed
    policy_instance = make_policy(policy, **dict(params))
    config = replay_config(options, output_error)
    (record,) = sweep(load_trace(key), [policy_instance], [budget], config=config)
    return record


def fixed_budget(key: TraceKey, policy: str, params: Params) -> int | None:
    """The budget ``policy`` sets itself on this trace (``Policy.fixed_budget``), or None
    when it follows the race's budget; such a policy is replayed once, as ``sweep`` does."""
    trace = load_trace(key)
    return make_policy(policy, **dict(params)).fixed_budget(trace.n, trace.prompt_length)


def race_records(
    key: TraceKey,
    policies: dict[str, Params],
    budgets: list[float],
    options: Options,
    output_error: bool = False,
    on_cell: Any = None,
) -> list[dict[str, Any]]:
    """The records of a race, cell by cell through :func:`race_record` (cached), the
    cells chosen as :func:`h2osim.engine.sweep` chooses them, then
    :func:`h2osim.engine.add_gap_to_opt`: the same rows and gaps as
    ``python -m h2osim.replay TRACE --policy ... --sweep ... --json``.

    ``on_cell(done, total, policy, budget)`` is called before each cell (progress).
    ValueError names the policy that could not be replayed.
    """
    jobs = [(name, budget) for name, params in policies.items() for budget in budgets
            if budget == budgets[0] or fixed_budget(key, name, params) is None]  # fmt: skip
    records = []
    for done, (name, budget) in enumerate(jobs):
        if on_cell is not None:
            on_cell(done, len(jobs), name, budget)
        try:
            records.append(race_record(key, name, policies[name], budget, options, output_error))
        except ValueError as exc:
            raise ValueError(f"cannot replay {name}: {exc}") from exc
    records = [dict(record) for record in records]  # cached objects stay untouched
    add_gap_to_opt(records)
    return records
