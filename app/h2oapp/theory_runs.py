"""Cached wrappers around the ``theory`` package for the Theory lab (H2O paper, App. D).

The set functions, solvers, bounds and checkers are theory's; this module only builds
small seeded instances to try them on and returns plain data for the page. Instances:

- accumulated score: Pareto(1.2) scores, the paper's heavy-tailed accumulated attention;
- facility location: similarities U(0,1)^3 (each client likes a few elements);
- weighted coverage: each element covers each of 2n items with probability 1/4;
- log-sum-exp: 4 queries and n keys, Gaussian in 4 dimensions;
- renormalised value, output fidelity: Dirichlet attention weights, Gaussian values.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import streamlit as st

from h2oapp import cached
from theory.bounds import nemhauser_bound
from theory.counterexamples import all_counterexamples
from theory.exact import accumulated_score_max, brute_force_max
from theory.functions import (
    AccumulatedScore,
    FacilityLocation,
    LogSumExp,
    OutputFidelity,
    RenormalisedValue,
    SetFunction,
    WeightedCoverage,
)
from theory.greedy import greedy
from theory.paper import paper_chain
from theory.report import trace_bound_report
from theory.submodularity import find_counterexample, find_monotonicity_violation

FAMILIES = {
    "accumulated-score": "accumulated score h(sum of scores): the paper's objective",
    "facility-location": "facility location: each client served by its best element",
    "weighted-coverage": "weighted coverage: total weight of the items covered",
    "log-sum-exp": "log-sum-exp: log of the softmax normaliser over the set",
    "renormalised-value": "renormalised value: attention-weighted average of values",
    "output-fidelity": "output fidelity: 1 - relative error of the attention output",
}
NOT_SUBMODULAR = ("renormalised-value", "output-fidelity")


def small_instance(
    family: str, size: int, seed: int, concave_name: str = "identity"
) -> SetFunction:
    """A seeded instance of ``family`` on ``size`` elements (see the module docstring)."""
    rng = np.random.default_rng(seed)
    if family == "accumulated-score":
        return AccumulatedScore(rng.pareto(1.2, size), concave_name)
    if family == "facility-location":
        return FacilityLocation(rng.random((size, size)) ** 3)
    if family == "weighted-coverage":
        return WeightedCoverage(rng.random((size, 2 * size)) < 0.25, rng.random(2 * size))
    if family == "log-sum-exp":
        return LogSumExp(rng.normal(size=(4, 4)), rng.normal(size=(size, 4)))
    weights = rng.dirichlet(np.ones(size))
    if family == "renormalised-value":
        return RenormalisedValue(weights, rng.normal(size=size))
    if family == "output-fidelity":
        return OutputFidelity(weights, rng.normal(size=(size, 4)))
    raise ValueError(f"family must be one of {list(FAMILIES)}, got {family!r}")


def _optimum(f: SetFunction, k: int):
    return accumulated_score_max(f, k) if isinstance(f, AccumulatedScore) else brute_force_max(f, k)


@st.cache_data(max_entries=64, show_spinner=False)
def greedy_vs_optimum(
    family: str, size: int, k: int, seed: int, concave_name: str
) -> dict[str, Any]:
    """Greedy's picks and values against the exact optimum for every budget 0..k."""
    f = small_instance(family, size, seed, concave_name)
    run = greedy(f, k)
    optima = [_optimum(f, budget) for budget in range(k + 1)]
    counterexample = find_counterexample(f)
    violation = find_monotonicity_violation(f)
    return {
        "describe": f.describe(),
        "chosen": list(run.chosen),
        "gains": run.gains.tolist(),
        "best_gains": run.best_gains.tolist(),
        "greedy_values": run.values.tolist(),  # f(S_0), ..., f(S_k)
        "optimal_values": [optimum.value for optimum in optima],
        "optimal_subset": list(optima[-1].subset),
        "nemhauser": nemhauser_bound(optima[-1].value),
        "counterexample": None if counterexample is None else str(counterexample),
        "monotonicity": None if violation is None else
        f"S={set(violation.S) or '{}'}, x={violation.x}: f drops by {violation.drop:.4g}",
    }  # fmt: skip


@st.cache_data(max_entries=16, show_spinner=False)
def trace_bound(
    key: cached.TraceKey, policy: str, params: cached.Params, budget: float,
    options: cached.Options, concave_name: str, charge_eps0: bool,
) -> dict[str, Any]:  # fmt: skip
    """One replay, two analyses, summarised per step: our a-posteriori certificate
    (:mod:`theory.report`, valid for any set) and the paper's App. D chain
    (:mod:`theory.paper`: theta, gamma, eps0, Lemma D.30, Thm D.32's hypotheses)."""
    from h2osim.engine import replay
    from h2osim.policies import make_policy

    trace = cached.load_trace(key)
    config = cached.replay_config(options)
    result = replay(trace, make_policy(policy, **dict(params)), budget, config=config)
    n = trace.n
    held = np.zeros((n, len(result.unit_labels), n), dtype=bool)
    for t in range(n):
        held[t, :, : t + 1] = result.kept_at(t)
    layout = result.config.layout(trace)
    weights = [layout.weights(u) for u in range(layout.units)]  # shared by both analyses
    report = trace_bound_report(trace, policy, budget, config=result.config, concave_name=concave_name,
                                charge_eps0=charge_eps0, held=held, weights=weights)  # fmt: skip
    chain = paper_chain(trace, policy, budget, concave_name=concave_name, result=result,
                        weights=weights)  # fmt: skip
    ratio, bound = report.ratio, report.bound_ratio  # (n, units)
    beta_ratio = np.divide(
        report.beta, report.opt, out=np.zeros_like(report.beta), where=report.opt > 0
    )
    paper = chain.summary()
    return {
        "summary": report.summary(),
        "prompt_length": report.prompt_length,
        "ratio_mean": ratio.mean(axis=1), "ratio_min": ratio.min(axis=1), "ratio_max": ratio.max(axis=1),
        "bound_mean": bound.mean(axis=1), "bound_exp_mean": report.bound_exp_ratio.mean(axis=1),
        "alpha_mean": report.alpha.mean(axis=1), "beta_mean": beta_ratio.mean(axis=1),
        "paper": paper, "paper_steps": chain.per_step_mean(),
    }  # fmt: skip


@st.cache_data(max_entries=4, show_spinner=False)
def paper_counterexamples() -> list[dict[str, Any]]:
    """The four exact instances of :mod:`theory.counterexamples`, as table rows."""
    return [{"counterexample": c.name, "breaks": c.claim, "observed": c.broken,
             "numbers": ", ".join(f"{k} = {_short(v)}" for k, v in c.numbers.items())}
            for c in all_counterexamples()]  # fmt: skip


def _short(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:.4g}"
    if isinstance(value, list) and len(value) > 6:
        return "[" + ", ".join(_short(v) for v in value[:3]) + ", ..., " + _short(value[-1]) + "]"
    if isinstance(value, list):
        return "[" + ", ".join(_short(v) for v in value) + "]"
    return str(value)


@st.cache_data(max_entries=16, show_spinner=False)
def counterexample_gallery(size: int, seeds: int = 40) -> list[dict[str, Any]]:
    """For each family, the first seeded instance (seeds 0..seeds-1) that breaks
    submodularity, with its witness; families that never break say so."""
    gallery = []
    for family in FAMILIES:
        entry: dict[str, Any] = {"family": family, "about": FAMILIES[family], "seed": None}
        for seed in range(seeds):
            f = small_instance(family, size, seed)
            witness = find_counterexample(f)
            if witness is not None:
                entry.update(seed=seed, describe=f.describe(), witness=str(witness),
                             A=list(witness.A), B=list(witness.B), x=witness.x,
                             gain_A=witness.gain_A, gain_B=witness.gain_B)  # fmt: skip
                break
        gallery.append(entry)
    return gallery


@st.cache_data(max_entries=16, show_spinner=False)
def trace_fidelity_counterexample(
    key: cached.TraceKey, layer: int, kv_head: int, size: int
) -> dict[str, Any] | None:
    """OutputFidelity on real attention: the last row of a cache unit (its heads' mean),
    restricted to its ``size`` most attended tokens (renormalised), with their stored
    value vectors. None when the trace has no values."""
    trace = cached.load_trace(key)
    values = trace.values(layer)
    if values is None:
        return None
    row = trace.unit_matrix(layer, kv_head, "mean")[-1]  # (n,)
    top = np.sort(np.argsort(-row, kind="stable")[:size])
    weights = row[top] / row[top].sum()
    f = OutputFidelity(np.maximum(weights, 1e-12), values[kv_head][top].astype(np.float64))
    witness = find_counterexample(f)
    return {
        "tokens": top.tolist(),
        "weights": weights.tolist(),
        "witness": None if witness is None else str(witness),
        "A": None if witness is None else [int(top[i]) for i in witness.A],
        "B": None if witness is None else [int(top[i]) for i in witness.B],
        "x": None if witness is None else int(top[witness.x]),
        "gain_A": None if witness is None else witness.gain_A,
        "gain_B": None if witness is None else witness.gain_B,
    }
