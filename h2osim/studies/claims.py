"""The claims table, measured (the library under ``python -m h2osim.claims``).

Checks the H2O paper's claims (Zhang et al., NeurIPS 2023, arXiv 2306.14048), A2SF's
(arXiv 2407.20485) and this project's own findings on the real SmolLM2-135M: Section 3
statistics and open-loop replays on the shipped traces (``traces/smollm2-*.npz``), and
closed-loop (live) eviction inside the model, teacher-forced on the same tokens. One row
per claim; which numbers each row needs and the rule that judges them live in
:mod:`h2osim.studies.claims_table`.

What it writes (atomically, :mod:`h2osim.files`), in ``--out-dir`` (default ``docs/``):

* ``claims.json`` - every number, the settings, the verdicts, the commands;
* ``claims.md`` - the table built from that file, the rules, the figures;
* ``claims-*.png`` and ``early-token-bias.png``;
* the block between ``<!-- claims:begin -->`` and ``<!-- claims:end -->`` in README.md
  (nothing else; skipped with a note when the markers are absent).

``--quick`` is the smoke setting: prefixes of two traces (n = 160, 3 layers), two budgets
and a 64-token live run, written to ``claims-quick/`` - under a minute on 2 cores.
The full setting (whole traces, 5 budgets, live runs of 384 tokens at 3 budgets on two
texts) took 7 minutes on 2 busy cores.

Simplifications: retained attention mass is the replay metric (``output_error`` is off for
speed); live quality is teacher-forced perplexity against the full cache; means over
traces weigh each trace the same; ratios over texts are geometric means.
"""

from __future__ import annotations

import dataclasses
import datetime
import json
import math
import sys
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from h2osim.engine import ReplayConfig, ReplayResult, add_gap_to_opt, replay, resolve_budget
from h2osim.studies.claims_table import (
    CLAIMS,
    judge,
    markdown,
    readme_block,
    rejudge,
    replace_block,
)
from h2osim.trace import Trace, pack_lower

FORMAT_VERSION = 1
TRACE_FILES = {
    "pydoc": "traces/smollm2-pydoc.npz",
    "code": "traces/smollm2-code.npz",
    "chat": "traces/smollm2-chat.npz",
}
# How the live CLI encodes the same tokens as each trace's first n (checked in the tests).
LIVE_TEXT_ARGS = {
    "pydoc": "--pydoc-topic naming",
    "code": "--text-file \"$(python -c 'import bisect; print(bisect.__file__)')\"",
}
SWEEP_POLICIES = ("opt", "belady", "h2o", "h2o-sqrt", "h2o-log", "a2sf", "tova", "sink",
                  "heavy", "window")  # fmt: skip
LIVE_POLICIES = ("h2o", "window", "heavy", "sink", "a2sf")
CONCAVE = ("h2o-sqrt", "h2o-log")
BIAS_FORGETTING = (1.0, 0.99, 0.95)  # curves on the early-token-bias plot
EARLY_SHARE = 0.10  # "early" = positions 1..ceil(10% of n), as in h2osim.observe
MIN_DECODE_ROWS = 16  # the code-path comparison needs decode rows to compare


@dataclass(frozen=True)
class Settings:
    """What a run measures. ``FULL`` and ``QUICK`` are the two presets."""

    mode: str
    traces: tuple[str, ...]  # names in TRACE_FILES
    n: int | None  # replay a prefix of each trace (None: the whole trace)
    layers: tuple[int, ...] | None  # stored layers to use (None: all)
    budgets: tuple[float, ...]  # fractions of the sequence
    live_texts: tuple[str, ...]  # traces whose first live_n tokens are run live
    live_n: int
    live_budgets: tuple[float, ...]
    main_budget: float = 0.2  # the paper's 20% (10% heavy + 10% recent)
    forgetting: float = 0.95  # a2sf's default
    forgetting_grid: tuple[float, ...] = (0.9, 0.95, 0.99, 0.999)

    def __post_init__(self) -> None:
        unknown = [name for name in self.traces + self.live_texts if name not in TRACE_FILES]
        if unknown:
            raise ValueError(f"unknown trace {unknown[0]!r}; choose from {', '.join(TRACE_FILES)}")
        missing = [name for name in self.live_texts if name not in LIVE_TEXT_ARGS]
        if missing:
            raise ValueError(
                f"no live text for {missing[0]!r}; live texts: {', '.join(LIVE_TEXT_ARGS)}"
            )
        if self.main_budget not in self.budgets:
            raise ValueError(f"the budgets {self.budgets} must include {self.main_budget}")
        if self.live_texts and self.main_budget not in self.live_budgets:
            raise ValueError(
                f"the live budgets {self.live_budgets} must include {self.main_budget}"
            )
        if self.n is not None and self.n < 32:
            raise ValueError(f"--n must be >= 32 tokens, got {self.n}")
        if self.live_texts and self.live_n < 16:
            raise ValueError(f"--live-n must be >= 16 tokens, got {self.live_n}")


FULL = Settings(mode="full", traces=("pydoc", "code", "chat"), n=None, layers=None,
                budgets=(0.05, 0.1, 0.2, 0.3, 0.5), live_texts=("pydoc", "code"), live_n=384,
                live_budgets=(0.1, 0.2, 0.3))  # fmt: skip
QUICK = Settings(mode="quick", traces=("pydoc", "chat"), n=160, layers=(3, 16, 29),
                 budgets=(0.1, 0.2), live_texts=("pydoc",), live_n=64, live_budgets=(0.2,))  # fmt: skip


# --------------------------------------------------------------------------- traces
def trace_prefix(trace: Trace, n: int | None = None, layers: Sequence[int] | None = None) -> Trace:
    """The trace of the first ``n`` tokens (and only ``layers``), in memory, float32.

    Exact for a causal model: rows 0..n-1 attend only to tokens 0..n-1, so the first n
    rows of a trace are the trace of the first n tokens. The prompt is cut to n if longer.
    Example: the chat trace (n=435, prompt 48) with n=160 -> 160 rows, prompt 48, decode 112.
    """
    chosen = [int(layer) for layer in (trace.layers if layers is None else layers)]
    if (n is None or n >= trace.n) and chosen == trace.layers.tolist():
        return trace
    n = trace.n if n is None else min(n, trace.n)
    attention = {
        layer: np.stack([trace.head_matrix(layer, head)[:n, :n] for head in range(trace.num_heads)])
        for layer in chosen
    }  # layer -> (H, n, n)
    values = {layer: trace.values(layer)[:, :n] for layer in chosen} if trace.has_values else None
    return Trace.from_arrays(
        {layer: pack_lower(dense) for layer, dense in attention.items()},
        head_map=trace.head_map, token_ids=trace.token_ids[:n], tokens=trace.tokens[:n],
        prompt_length=min(trace.prompt_length, n), layers=chosen, values=values,
        metadata={**trace.metadata, "prefix_of": str(trace.path), "prefix_n": n},
        validate=False,  # already validated as part of the whole trace
    )  # fmt: skip


# --------------------------------------------------------------------------- measurements
@dataclass
class Measurements:
    """Everything measured; :func:`build_claims` turns it into the table's numbers."""

    settings: Settings
    traces: dict[str, dict[str, Any]] = field(default_factory=dict)  # name -> n, prompt, layers
    observe: dict[str, list[dict[str, Any]]] = field(default_factory=dict)  # name -> layer records
    sweep: list[dict[str, Any]] = field(
        default_factory=list
    )  # one record per (trace, policy, budget)
    concave: dict[str, int] = field(default_factory=lambda: {"identical": 0, "compared": 0})
    paths: list[dict[str, Any]] = field(default_factory=list)
    path_defaults: list[dict[str, Any]] = field(default_factory=list)
    mask_drop_identical: bool | None = None
    bias: dict[str, dict[str, Any]] = field(default_factory=dict)  # name -> curves and shares
    kept: dict[str, dict[str, list[float]]] = field(default_factory=dict)  # name -> policy -> share
    live: list[dict[str, Any]] = field(default_factory=list)
    live_tokens: dict[str, list[int]] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)


class Progress:
    """A tqdm bar over weighted tasks (a replay ~1, opt ~5, a live step ~1/4 of a replay)."""

    def __init__(self, total: float, enabled: bool):
        from tqdm import tqdm

        self.bar = tqdm(total=total, unit="work", desc="claims", disable=not enabled,
                        file=sys.stderr, dynamic_ncols=True,
                        bar_format="{desc}: {percentage:3.0f}%|{bar}| {elapsed}<{remaining} {postfix}")  # fmt: skip

    def step(self, weight: float, label: str = "") -> None:
        if label:
            self.bar.set_postfix_str(label, refresh=False)
        self.bar.update(weight)

    def close(self) -> None:
        self.bar.close()


def _work(settings: Settings) -> float:
    """Total weight of the tasks :func:`measure` reports (same weights as its steps)."""
    per_budget = len(SWEEP_POLICIES) + 2 * 4 + 2  # opt and belady weigh 5, topk 2
    per_trace = 3 + 2 + len(settings.budgets) * per_budget + len(settings.forgetting_grid) - 1 + 9
    live = sum(settings.live_n * (1 - 0.9 * b) * 0.2 + 1 for b in settings.live_budgets)
    return len(settings.traces) * per_trace + len(settings.live_texts) * live


def measure_observe(name: str, trace: Trace, measured: Measurements) -> None:
    """Section 3 statistics per stored layer (h2osim.observe)."""
    from h2osim.studies.observe import observe

    result = observe(trace)
    measured.observe[name] = [layer.record() for layer in result.layers]


def measure_sweep(name: str, trace: Trace, measured: Measurements, config: ReplayConfig,
                  progress: Progress) -> None:  # fmt: skip
    """Every sweep policy at every budget, the topk bound, concave vs h2o evictions, the
    a2sf forgetting grid, and what each cache holds at the end (for the bias plot)."""
    from h2osim.oracles import topk_bound
    from h2osim.policies import make_policy

    settings = measured.settings
    records: list[dict[str, Any]] = []
    for budget in settings.budgets:
        evictions: dict[str, np.ndarray] = {}
        for policy_name in SWEEP_POLICIES:
            policy = make_policy(policy_name, forgetting=settings.forgetting)
            result = replay(trace, policy, budget, config=config)
            evictions[policy_name] = result.evicted_at
            records.append(_sweep_record(name, result, budget, policy))
            if budget == settings.main_budget and policy_name in ("h2o", "a2sf", "opt"):
                measured.kept.setdefault(name, {})[policy_name] = kept_share(result)
            progress.step(
                5 if policy_name in ("opt", "belady") else 1, f"{name} {policy_name} {budget:g}"
            )
        for variant in CONCAVE:
            measured.concave["compared"] += 1
            measured.concave["identical"] += bool(
                np.array_equal(evictions[variant], evictions["h2o"])
            )
        bound = topk_bound(trace, budget, config=config)
        records.append({"trace": name, **bound.record(), "budget_requested": budget})
        progress.step(2, f"{name} topk {budget:g}")
    for forgetting in settings.forgetting_grid:
        if forgetting == settings.forgetting:
            continue
        policy = make_policy("a2sf", forgetting=forgetting)
        result = replay(trace, policy, settings.main_budget, config=config)
        records.append({**_sweep_record(name, result, settings.main_budget, policy), "grid": True})
        progress.step(1, f"{name} a2sf f={forgetting:g}")
    add_gap_to_opt([r for r in records if not r.get("grid")])
    measured.sweep += records


def _sweep_record(name: str, result: ReplayResult, budget: float, policy: Any) -> dict[str, Any]:
    """One sweep row: the replay's record, the trace, the budget asked for (and a2sf's factor)."""
    record = {"trace": name, **result.record(), "budget_requested": budget}
    if hasattr(policy, "forgetting"):
        record["forgetting"] = float(policy.forgetting)
    return record


def kept_share(result: ReplayResult) -> list[float]:
    """Share of cache units holding each position when the last row is served, ``(n,)``."""
    return result.kept_at(result.n - 1).mean(axis=0).round(4).tolist()


def path_parameters(n: int, prompt_length: int, budget: float) -> dict[str, Any] | None:
    """Parameters that make every official code path hold the same k tokens as h2o at
    ``budget`` with the same heavy/recent split (heavy = floor(k/2), recent = k - heavy);
    None when the prompt is too short for h2o-mask's prompt-relative budgets.

    Example: n=435, P=48, budget 0.2 -> k=87: heavy 43, recent 44; h2o-mask ratios
    43.5/48 and 44.5/48 (floors give 43 and 44); h2o-drop heavy_size 43, recent_size 43
    (its newest recent_size + 1 are protected).
    """
    k = resolve_budget(budget, n, prompt_length)
    heavy = k // 2
    recent = k - heavy
    if recent + 0.5 > prompt_length or recent < 1:
        return None
    return {"k": k, "heavy": heavy, "recent": recent,
            "heavy_prompt_ratio": round((heavy + 0.5) / prompt_length, 6),
            "recent_prompt_ratio": round((recent + 0.5) / prompt_length, 6),
            "heavy_size": heavy, "recent_size": recent - 1}  # fmt: skip


PATH_LABELS = ("h2o", "h2o-mask", "h2o-drop", "h2o-flexgen", "h2o-global", "h2o (prompt in full)")
ONLINE_PATHS = ("h2o", "h2o-mask", "h2o-drop", "h2o-flexgen")


def measure_paths(name: str, trace: Trace, measured: Measurements, config: ReplayConfig,
                  progress: Progress) -> None:  # fmt: skip
    """The official code paths at one budget and one heavy/recent split (decode rows), and
    h2o-mask / h2o-drop at their shipped defaults."""
    from h2osim.policies import make_policy

    budget = measured.settings.main_budget
    params = path_parameters(trace.n, trace.prompt_length, budget)
    if trace.decode_steps < MIN_DECODE_ROWS or params is None:
        measured.notes.append(f"official paths: {name} skipped ({trace.decode_steps} decode rows, "
                              f"prompt {trace.prompt_length})")  # fmt: skip
        progress.step(9)
        return
    full = dataclasses.replace(config, prompt_mode="full")
    runs = {
        "h2o": (make_policy("h2o"), config),
        "h2o (prompt in full)": (make_policy("h2o"), full),
        "h2o-mask": (make_policy("h2o-mask", **params), full),
        "h2o-drop": (make_policy("h2o-drop", **params), full),
        "h2o-flexgen": (make_policy("h2o-flexgen"), full),
        "h2o-global": (make_policy("h2o-global"), full),
    }
    evictions = {}
    for label, (policy, run_config) in runs.items():
        result = replay(trace, policy, budget, config=run_config)
        evictions[label] = result.evicted_at
        measured.paths.append({"trace": name, "label": label, **result.record(),
                               "parameters": params if label in ("h2o-mask", "h2o-drop") else None})  # fmt: skip
        progress.step(2 if label == "h2o-global" else 1, f"{name} {label}")
    same = all(np.array_equal(evictions[label], evictions["h2o (prompt in full)"])
               for label in ("h2o-mask", "h2o-drop"))  # fmt: skip
    measured.mask_drop_identical = same and measured.mask_drop_identical is not False
    for policy_name in ("h2o-mask", "h2o-drop"):  # the official defaults: their own budgets
        result = replay(trace, make_policy(policy_name), budget, config=config)
        measured.path_defaults.append(
            {"trace": name, "label": f"{policy_name} (defaults)", **result.record()}
        )
        progress.step(1, f"{name} {policy_name} defaults")


def score_by_position(matrix: np.ndarray, forgetting: float) -> np.ndarray:
    """Accumulated score of every token after the last row: ``sum_t f^(n-1-t) a[t, j]``.

    ``matrix`` is ``(n, n)`` lower-triangular attention (rows t, keys j). ``forgetting``
    1 is h2o's plain sum (column sums); < 1 is a2sf's decayed sum.
    Example: rows [[1], [0.5, 0.5]], f=0.5 -> [0.5 * 1 + 0.5, 0.5] = [1.0, 0.5].
    """
    n = matrix.shape[0]
    weights = forgetting ** np.arange(n - 1, -1, -1, dtype=np.float64)  # (n,) row weights
    return weights @ matrix.astype(np.float64)


def uniform_score(n: int, forgetting: float) -> np.ndarray:
    """:func:`score_by_position` under uniform attention (row t gives 1/(t+1) to each key)."""
    uniform = np.tril(np.ones((n, n))) / np.arange(1, n + 1)[:, None]
    return score_by_position(uniform, forgetting)


def early_positions(n: int, share: float = EARLY_SHARE) -> slice:
    """Positions 1..ceil(share n) (token 0, the sink, has its own column). Example: n=50 -> 1..5."""
    return slice(1, 1 + max(1, math.ceil(share * n)))


def measure_bias(name: str, trace: Trace, measured: Measurements, progress: Progress) -> None:
    """Score share by position (mean over query heads) with and without forgetting; the
    early tokens' and the sink's shares; the same under uniform attention."""
    n = trace.n
    forgettings = sorted(set(BIAS_FORGETTING) | {measured.settings.forgetting}, reverse=True)
    early = early_positions(n)
    heads = [(layer, head) for layer in trace.layers for head in range(trace.num_heads)]
    curves = {f: np.zeros(n) for f in forgettings}
    early_share = dict.fromkeys(forgettings, 0.0)
    sink_share = dict.fromkeys(forgettings, 0.0)
    for layer, head in heads:
        matrix = trace.head_matrix(int(layer), head)
        for f in forgettings:
            score = score_by_position(matrix, f)  # (n,)
            total = score.sum()
            curves[f] += score / total / len(heads)
            sink_share[f] += score[0] / total / len(heads)
            after_sink = score[1:].sum()
            early_share[f] += (score[early].sum() / after_sink if after_sink > 0 else 0.0) / len(
                heads
            )
    uniform = {}
    for f in forgettings:
        score = uniform_score(n, f)
        uniform[f] = {
            "curve": (score / score.sum()).tolist(),
            "early_share": float(score[early].sum() / score[1:].sum()),
        }
    measured.bias[name] = {
        "n": n, "position_share": (early.stop - early.start) / (n - 1),
        "curves": {f"{f:g}": curves[f].tolist() for f in forgettings},
        "uniform": {f"{f:g}": uniform[f]["curve"] for f in forgettings},
        "early_share": {f"{f:g}": float(early_share[f]) for f in forgettings},
        "uniform_early_share": {f"{f:g}": uniform[f]["early_share"] for f in forgettings},
        "sink_share": {f"{f:g}": float(sink_share[f]) for f in forgettings},
    }  # fmt: skip
    progress.step(2, f"{name} bias")


def measure_live(measured: Measurements, traces: dict[str, Trace], progress: Progress,
                 model: Any = None) -> None:  # fmt: skip
    """Teacher-forced live runs of LIVE_POLICIES on each live text, at each live budget."""
    from h2osim.model.live import teacher_forced

    settings = measured.settings
    if model is None:
        from h2osim.model import load_model, set_threads

        set_threads(1)  # 2 threads on a busy 2-core box were 15x slower (docs/architecture.md)
        progress.step(0, "loading SmolLM2")
        model, _, _ = load_model(device="cpu", dtype="float32")
    for name in settings.live_texts:
        ids = [int(token) for token in traces[name].token_ids[: settings.live_n]]
        measured.live_tokens[name] = ids
        for budget in settings.live_budgets:
            report = teacher_forced(model, ids, list(LIVE_POLICIES), budget)
            full = report.reference.summary
            for result in [report.reference, *report.results]:
                summary = result.summary
                measured.live.append({
                    "text": name, "n": len(ids), "budget_requested": budget, "policy": result.policy,
                    "budget": result.budget, "perplexity": summary["perplexity"],
                    "perplexity_ratio": summary["perplexity"] / full["perplexity"],
                    "kl": summary["kl"], "top1": summary["top1"], "kv_bytes": summary["kv_bytes"],
                    "kv_fraction": summary["kv_fraction"],
                    "decode_ms_per_step": result.timing.get("decode_ms_per_step"),
                })  # fmt: skip
            progress.step(len(ids) * (1 - 0.9 * budget) * 0.2 + 1, f"live {name} {budget:g}")


def measure(settings: Settings, *, live: bool = True, model: Any = None, progress: bool = False,
            root: Path = Path(".")) -> Measurements:  # fmt: skip
    """Run every measurement of ``settings`` (``live=False`` skips the model)."""
    measured = Measurements(settings=settings)
    bar = Progress(_work(settings) if live else _work(dataclasses.replace(settings, live_texts=())),
                   progress)  # fmt: skip
    config = ReplayConfig(output_error=False)
    try:
        loaded: dict[str, Trace] = {}
        for name in dict.fromkeys(settings.traces + (settings.live_texts if live else ())):
            loaded[name] = Trace.load(root / TRACE_FILES[name])
        for name in settings.traces:
            trace = trace_prefix(loaded[name], settings.n, settings.layers)
            measured.traces[name] = {"file": TRACE_FILES[name], "n": trace.n,
                                     "prompt_length": trace.prompt_length,
                                     "layers": trace.layers.tolist()}  # fmt: skip
            measure_observe(name, trace, measured)
            bar.step(3, f"{name} observe")
            measure_bias(name, trace, measured, bar)
            measure_sweep(name, trace, measured, config, bar)
            measure_paths(name, trace, measured, config, bar)
        if live and settings.live_texts:
            measure_live(measured, loaded, bar, model)
    finally:
        bar.close()
    return measured


# --------------------------------------------------------------------------- numbers
def _mean(values: Sequence[float | None]) -> float | None:
    present = [float(v) for v in values if v is not None]
    return float(np.mean(present)) if present else None


def _geomean(values: Sequence[float | None]) -> float | None:
    present = [float(v) for v in values if v is not None and v > 0]
    return float(np.exp(np.mean(np.log(present)))) if present else None


def _sweep_value(measured: Measurements, policy: str, budget: float, key: str = "retained_mass",
                 trace: str | None = None) -> dict[str, float]:  # fmt: skip
    """trace -> value of ``key`` for ``policy`` at ``budget`` (grid runs left out)."""
    return {r["trace"]: r[key] for r in measured.sweep
            if r["policy"] == policy and r["budget_requested"] == budget and not r.get("grid")
            and (trace is None or r["trace"] == trace)}  # fmt: skip


def _live_value(measured: Measurements, policy: str, budget: float,
                key: str = "perplexity_ratio") -> dict[str, float]:  # fmt: skip
    return {r["text"]: r[key] for r in measured.live
            if r["policy"] == policy and r["budget_requested"] == budget}  # fmt: skip


def claim_numbers(measured: Measurements) -> dict[str, dict[str, Any]]:
    """claim id -> the numbers its rule reads (see :mod:`h2osim.studies.claims_table`)."""
    settings = measured.settings
    main = settings.main_budget
    layers = [layer for records in measured.observe.values() for layer in records]
    per_trace_sparsity = {name: _mean([r["sparsity"] for r in records])
                          for name, records in measured.observe.items()}  # fmt: skip
    numbers: dict[str, dict[str, Any]] = {}
    numbers["sparsity"] = {
        "sparsity": _mean(list(per_trace_sparsity.values())),
        "sparsity_decode": _mean([_mean([r["sparsity_decode"] for r in records])
                                  for records in measured.observe.values()]),
        "per_trace": per_trace_sparsity,
        "layers_above": sum(r["sparsity"] > 0.95 for r in layers), "layers": len(layers),
    }  # fmt: skip
    numbers["power-law"] = {
        "power_better_share": (sum(r["power_law_r2"] > r["exponential_r2"] for r in layers) / len(layers)
                               if layers else None),
        "r2_power": _mean([r["power_law_r2"] for r in layers]),
        "r2_exponential": _mean([r["exponential_r2"] for r in layers]),
        "alpha": _mean([r["power_law_exponent"] for r in layers]),
        "top10_share": _mean([r["heavy_hitter_share"] for r in layers]),
    }  # fmt: skip
    mass = {policy: _sweep_value(measured, policy, main) for policy in SWEEP_POLICIES}
    numbers["budget-replay"] = {
        "budget": main, "h2o_mass": _mean(list(mass["h2o"].values())),
        "window_mass": _mean(list(mass["window"].values())),
        "sink_mass": _mean(list(mass["sink"].values())), "h2o_per_trace": mass["h2o"],
        "window_per_trace": mass["window"],
    }  # fmt: skip
    ratio = {policy: _live_value(measured, policy, main) for policy in ("full", *LIVE_POLICIES)}
    perplexity_full = _live_value(measured, "full", main, "perplexity")
    numbers["budget-live"] = {
        "budget": main, "n": settings.live_n if measured.live else None,
        "texts": len(perplexity_full) or None, "ppl_full": _geomean(list(perplexity_full.values())),
        **{f"ratio_{policy}": _geomean(list(ratio[policy].values())) for policy in LIVE_POLICIES},
        "ratio_per_text": {policy: ratio[policy] for policy in LIVE_POLICIES},
    }  # fmt: skip
    numbers["ablation"] = {
        "budget": main, **{f"ratio_{p}": numbers["budget-live"][f"ratio_{p}"] for p in ("h2o", "heavy", "window")},
        **{f"mass_{p}": _mean(list(mass[p].values())) for p in ("h2o", "heavy", "window")},
    }  # fmt: skip
    kv_full = _live_value(measured, "full", main, "kv_bytes")
    kv_h2o = _live_value(measured, "h2o", main, "kv_bytes")
    first = next(iter(kv_h2o), None)
    numbers["kv-memory"] = {
        "budget": main, "kv_bytes_full": kv_full.get(first), "kv_bytes_h2o": kv_h2o.get(first),
        "reduction": kv_full[first] / kv_h2o[first] if first is not None else None,
        "ratio_h2o": numbers["budget-live"]["ratio_h2o"],
    }  # fmt: skip
    numbers["early-bias"] = _bias_numbers(measured)
    grid = [r for r in measured.sweep if r["policy"] == "a2sf" and r["budget_requested"] == main]
    by_forgetting: dict[float, list[float]] = {}
    for record in grid:
        by_forgetting.setdefault(record["forgetting"], []).append(record["retained_mass"])
    best = max(by_forgetting, key=lambda f: np.mean(by_forgetting[f])) if by_forgetting else None
    numbers["a2sf"] = {
        "budget": main, "forgetting": settings.forgetting, "mass_h2o": numbers["ablation"]["mass_h2o"],
        "mass_a2sf": _mean(list(mass["a2sf"].values())),
        "grid": ", ".join(f"{f:g}" for f in sorted(by_forgetting)) or None,
        "best_forgetting": best, "best_mass": None if best is None else float(np.mean(by_forgetting[best])),
        "ratio_h2o": numbers["budget-live"]["ratio_h2o"], "ratio_a2sf": numbers["budget-live"]["ratio_a2sf"],
    }  # fmt: skip
    numbers["opt-gap"] = _gap_numbers(measured, "h2o")
    belady = _gap_numbers(measured, "belady")
    gaps = [
        g for g in (belady.get("mean_gap"), numbers["opt-gap"].get("mean_gap")) if g is not None
    ]
    numbers["belady"] = {
        "max_gap": belady["max_gap"], "mean_gap": belady["mean_gap"],
        "strictly_worse": belady["strictly_worse"], "cases": belady["cases"],
        "h2o_over_belady": gaps[1] / gaps[0] if len(gaps) == 2 and gaps[0] > 0 else None,
    }  # fmt: skip
    numbers["official-paths"] = _path_numbers(measured)
    numbers["concave"] = dict(measured.concave)
    return numbers


def _bias_numbers(measured: Measurements) -> dict[str, Any]:
    f = f"{measured.settings.forgetting:g}"
    bias = measured.bias.values()
    return {
        "forgetting": measured.settings.forgetting,
        "position_share": _mean([b["position_share"] for b in bias]),
        "early_share_h2o": _mean([b["early_share"]["1"] for b in bias]),
        "early_share_a2sf": _mean([b["early_share"][f] for b in bias]),
        "uniform_share": _mean([b["uniform_early_share"]["1"] for b in bias]),
        "sink_share_h2o": _mean([b["sink_share"]["1"] for b in bias]),
        "sink_share_a2sf": _mean([b["sink_share"][f] for b in bias]),
        "per_trace": {name: b["early_share"]["1"] for name, b in measured.bias.items()},
        **{f"kept_early_{policy}": _mean([_early_kept(kept.get(policy)) for kept in measured.kept.values()])
           for policy in ("h2o", "a2sf", "opt")},
    }  # fmt: skip


def _early_kept(share: list[float] | None) -> float | None:
    """Mean share of cache units holding positions 1..ceil(10% n) at the last row."""
    if not share:
        return None
    return float(np.mean(share[early_positions(len(share))]))


def _gap_numbers(measured: Measurements, policy: str) -> dict[str, Any]:
    """opt minus ``policy`` over every (trace, budget) of the sweep."""
    rows = [r for r in measured.sweep if r["policy"] == policy and not r.get("grid")]
    optimum = {(r["trace"], r["budget_requested"]): r["retained_mass"] for r in measured.sweep
               if r["policy"] == "opt"}  # fmt: skip
    window = {(r["trace"], r["budget_requested"]): r["retained_mass"] for r in measured.sweep
              if r["policy"] == "window"}  # fmt: skip
    cases = [(r, optimum[(r["trace"], r["budget_requested"])]) for r in rows
             if (r["trace"], r["budget_requested"]) in optimum]  # fmt: skip
    if not cases:
        return {"max_gap": None, "mean_gap": None, "strictly_worse": None, "cases": 0}
    gaps = [best - r["retained_mass"] for r, best in cases]
    worst = int(np.argmax(gaps))
    main = measured.settings.main_budget
    at_main = [(r, best) for r, best in cases if r["budget_requested"] == main]
    captured = [(r["retained_mass"] - window[(r["trace"], main)]) / (best - window[(r["trace"], main)])
                for r, best in at_main if best > window[(r["trace"], main)]]  # fmt: skip
    return {
        "max_gap": float(max(gaps)), "mean_gap": float(np.mean(gaps)),
        "budget_of_max": cases[worst][0]["budget_requested"], "trace_of_max": cases[worst][0]["trace"],
        "gap_at_20": _mean([best - r["retained_mass"] for r, best in at_main]),
        "min_ratio": float(min(r["retained_mass"] / best for r, best in cases)),
        "headroom_captured": _mean(captured),
        "strictly_worse": int(sum(g > 1e-4 for g in gaps)), "cases": len(gaps),
        "budgets": list(measured.settings.budgets),
        "per_case": {f"{r['trace']}@{r['budget_requested']:g}": round(g, 5)
                     for (r, _), g in zip(cases, gaps, strict=True)},
    }  # fmt: skip


def _path_numbers(measured: Measurements) -> dict[str, Any]:
    decode = {label: _mean([r["retained_mass_decode"] for r in measured.paths if r["label"] == label])
              for label in PATH_LABELS}  # fmt: skip
    decode = {label: value for label, value in decode.items() if value is not None}
    online = [decode[label] for label in ONLINE_PATHS if label in decode]
    ranking = sorted((label for label in decode if label != "h2o (prompt in full)"),
                     key=lambda label: -decode[label])  # fmt: skip
    return {
        "budget": measured.settings.main_budget, "decode_mass": decode, "ranking": ranking,
        "spread_online": float(max(online) - min(online)) if len(online) > 1 else None,
        "mask_drop_identical": measured.mask_drop_identical,
        "global_advantage": (decode["h2o-global"] - max(online)) if online and "h2o-global" in decode else None,
        "traces": sorted({r["trace"] for r in measured.paths}),
    }  # fmt: skip


# --------------------------------------------------------------------------- commands
def claim_commands(measured: Measurements, command: str) -> dict[str, list[str]]:
    """claim id -> the commands that reproduce its numbers. The claims command itself comes
    first; tool commands follow only where they reproduce the same numbers exactly (the
    full setting: whole traces, all stored layers)."""
    settings = measured.settings
    commands = {spec.id: [command] for spec in CLAIMS}
    if settings.n is not None or settings.layers is not None:
        return commands
    traces = " ".join(settings.traces)
    loop = f"for t in {traces}; do python -m h2osim.{{tool}} traces/smollm2-$t.npz {{args}}; done"
    budgets = ",".join(f"{b:g}" for b in settings.budgets)
    main = f"{settings.main_budget:g}"
    commands["sparsity"].append(loop.format(tool="observe", args="--no-plots"))
    commands["power-law"].append(loop.format(tool="observe", args="--no-plots"))
    commands["early-bias"].append(loop.format(tool="observe", args="--no-plots") + "  # early10%")
    commands["budget-replay"].append(
        loop.format(tool="replay", args=f"--policy h2o,window,sink --budget {main}")
    )
    commands["ablation"].append(
        loop.format(tool="replay", args=f"--policy h2o,heavy,window --budget {main}")
    )
    commands["a2sf"].append(
        loop.format(
            tool="replay",
            args=f"--policy h2o,a2sf --forgetting {settings.forgetting:g} --budget {main}",
        )
    )
    commands["opt-gap"].append(
        loop.format(tool="replay", args=f"--policy opt,h2o,window --sweep {budgets}")
    )
    commands["belady"].append(
        loop.format(tool="replay", args=f"--policy opt,belady --sweep {budgets}")
    )
    commands["concave"].append(
        loop.format(tool="replay", args=f"--policy h2o,h2o-sqrt,h2o-log --sweep {budgets}")
    )
    live_policies = ",".join(LIVE_POLICIES)
    for name in settings.live_texts if measured.live else ():
        for budget in settings.live_budgets:
            live = (f"python -m h2osim.live {LIVE_TEXT_ARGS[name]} --truncate {settings.live_n} "
                    f"--policy {live_policies} --budget {budget:g}")  # fmt: skip
            if budget == settings.main_budget:
                for claim_id in ("budget-live", "ablation", "kv-memory", "a2sf"):
                    commands[claim_id].append(live)
    for name in sorted({r["trace"] for r in measured.paths}):
        params = next(
            r["parameters"] for r in measured.paths if r["trace"] == name and r["parameters"]
        )
        file = TRACE_FILES[name]
        commands["official-paths"].append(
            f"python -m h2osim.replay {file} --prompt-mode full --policy h2o,h2o-mask,h2o-drop,h2o-flexgen,"
            f"h2o-global --budget {main} --heavy-prompt-ratio {params['heavy_prompt_ratio']:g} "
            f"--recent-prompt-ratio {params['recent_prompt_ratio']:g} --heavy-size {params['heavy_size']} "
            f"--recent-size {params['recent_size']}"
        )  # fmt: skip
        commands["official-paths"].append(
            f"python -m h2osim.replay {file} --policy h2o --budget {main}"
        )
    return commands


# --------------------------------------------------------------------------- the payload
def build_payload(measured: Measurements, command: str, seconds: float) -> dict[str, Any]:
    """The machine-readable claims file (``claims.json``)."""
    numbers = claim_numbers(measured)
    commands = claim_commands(measured, command)
    rows = []
    for spec in CLAIMS:
        verdict, ours = judge(spec.id, numbers[spec.id])
        rows.append({"id": spec.id, "claim": spec.claim, "source": spec.source, "paper": spec.paper,
                     "numbers": numbers[spec.id], "ours": ours, "verdict": verdict,
                     "rule": spec.rule_text, "commands": commands[spec.id], "figure": spec.figure})  # fmt: skip
    settings = measured.settings
    notes = list(measured.notes)
    if measured.path_defaults:
        notes.append("official defaults (their own budgets, not comparable): " + "; ".join(
            f"{r['trace']} {r['label']} k={r['budget']} decode mass {r['retained_mass_decode']:.3f}"
            for r in measured.path_defaults))  # fmt: skip
    if not measured.live:
        notes.append("live runs skipped (--no-live): live rows are 'not measured'")
    return {
        "format_version": FORMAT_VERSION, "mode": settings.mode, "command": command,
        "generated": datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
        "seconds": round(seconds, 1), "versions": _versions(bool(measured.live)),
        "settings": {
            "traces": measured.traces, "budgets": list(settings.budgets),
            "main_budget": settings.main_budget, "forgetting": settings.forgetting,
            "replay": "aggregation sum, prompt mode stream, observation renormalized, output error off",
            "live": ({"texts": list(settings.live_texts), "n": settings.live_n,
                      "budgets": list(settings.live_budgets), "policies": list(LIVE_POLICIES),
                      "config": "teacher forcing, stream prompt mode, sum aggregation, float32 CPU"}
                     if measured.live else None),
        },
        "claims": rows, "notes": notes,
        "details": {"sweep": measured.sweep, "paths": measured.paths + measured.path_defaults,
                    "live": measured.live, "observe": measured.observe,
                    "early_share": {name: {k: b[k] for k in ("early_share", "uniform_early_share", "sink_share")}
                                    for name, b in measured.bias.items()}},
    }  # fmt: skip


def _versions(with_model: bool) -> dict[str, str]:
    import platform

    import scipy

    versions = {
        "python": platform.python_version(),
        "numpy": np.__version__,
        "scipy": scipy.__version__,
    }
    if with_model:
        from h2osim.model import library_versions

        versions.update(library_versions())
    return versions


# --------------------------------------------------------------------------- writing
def write_outputs(payload: dict[str, Any], out_dir: Path, readme: Path | None) -> list[str]:
    """Write claims.json and claims.md to ``out_dir`` and the README block; returns notes."""
    from h2osim.files import json_default, write_text

    out_dir.mkdir(parents=True, exist_ok=True)
    write_text(out_dir / "claims.json", json.dumps(payload, indent=1, default=json_default) + "\n")
    write_text(out_dir / "claims.md", markdown(payload))
    said = [f"wrote {out_dir / 'claims.json'} and {out_dir / 'claims.md'}"]
    if readme is not None:
        said.append(update_readme(readme, payload, _relative_link(out_dir / "claims.md", readme)))
    return said


def update_readme(readme: Path, payload: dict[str, Any], link: str) -> str:
    """Rewrite the README's claims block (only between the markers); says what happened."""
    from h2osim.files import write_text
    from h2osim.studies.claims_table import README_BEGIN, README_END

    if not readme.is_file():
        raise FileNotFoundError(f"no README at {readme}")
    text = readme.read_text(encoding="utf-8")
    updated = replace_block(text, readme_block(payload, link))
    if updated is None:
        return f"{readme}: no {README_BEGIN} / {README_END} markers, left untouched"
    if updated == text:
        return f"{readme}: claims block already up to date"
    write_text(readme, updated)
    return f"{readme}: claims block rewritten"


def _relative_link(target: Path, readme: Path) -> str:
    import os

    return Path(os.path.relpath(target.resolve(), readme.resolve().parent)).as_posix()


def load_payload(path: str | Path) -> dict[str, Any]:
    """Read a claims file and recompute its verdicts and "ours" cells from its numbers."""
    try:
        payload = json.loads(Path(path).read_text(encoding="utf-8"))
    except json.JSONDecodeError as exc:
        raise ValueError(f"{path}: not valid JSON ({exc})") from None
    if not isinstance(payload, dict) or payload.get("format_version") != FORMAT_VERSION:
        raise ValueError(f"{path}: not a claims file of format version {FORMAT_VERSION}")
    return rejudge(payload)
