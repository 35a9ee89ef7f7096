"""Def. D.4 as the H2O paper states it (arXiv 2306.14048, App. D), checked on real trace units.

Def. D.4 (dynamic submodular framework): for every i and every Z <= [i-1], f_{Z,i} =
F(Z, i, .) is submodular "w.r.t. Z": f_{Z,i}(X + x) - f_{Z,i}(X) >= f_{Z,i}(Y + x) -
f_{Z,i}(Y) only for Z <= X <= Y and x outside Y - diminishing returns on the interval
[Z, ground], not on every pair of sets. On that interval g(W) = f(Z + W), W <= ground \\ Z,
and f is D.4-submodular iff g is submodular, which :func:`theory.submodularity.find_counterexample`
checks exhaustively (the local form: B = A + y).

Cache-conditioned objectives checked on a trace unit at step t (Z = the cache the model
actually had entering step t, C_{t-1}, restricted to the ground set):

- ``output``: f_{Z,t}(X) = 1 - |o_X - o| / |o|, o_X = the attention output of row t computed
  over X (renormalised over X, as the model computes over a cache), o = the full row's
  output over every key <= t; the unit's row is the mean of its heads' rows (the engine's
  metric weights) and the values are the unit's KV head's. Not submodular in general
  (:class:`theory.functions.OutputFidelity` is the same with o over the ground set).
- ``score``: the paper's own F_score, h(sum of accumulated attention over X) with the
  accumulation the policy saw - concave of non-negative modular, hence submodular for
  every Z: the checker must find nothing (tests also check that a convex h is caught).

The ground set of an instance is the row's ``ground`` most attended tokens (exhaustive over
its 2^m subsets). Instances whose interval has fewer than two free elements cannot fail and
are not counted. Every witness carries (layer, kv_head, step, ground, Z, A, B, x) so that
:func:`d4_instance` rebuilds the function and the gains can be recomputed.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np

from h2osim.engine import ReplayConfig, replay
from h2osim.trace import Trace
from theory.functions import AccumulatedScore, SetFunction
from theory.submodularity import find_counterexample


class RenormalisedOutput(SetFunction):
    """f(X) = 1 - |o_X - o| / |o| with o_X = sum_{X} w v / sum_{X} w and a given full output o
    (f(empty) = 0). Example: w = [1, 1], v = [[1], [3]], o = [2]: f({0, 1}) = 1, f({1}) = 0.5."""

    name = "renormalised-output"

    def __init__(self, weights: np.ndarray, values: np.ndarray, full: np.ndarray):
        self.weights = np.asarray(weights, dtype=np.float64)  # (size,)
        self.values = np.asarray(values, dtype=np.float64)  # (size, d)
        self.full = np.asarray(full, dtype=np.float64)  # (d,)
        self.scale = float(np.linalg.norm(self.full))
        if self.scale == 0 or np.any(self.weights <= 0):
            raise ValueError("need positive weights and a non-zero full output")
        self.size = len(self.weights)

    def evaluate(self, masks: np.ndarray) -> np.ndarray:
        masks = np.asarray(masks, dtype=np.float64)
        total = masks @ self.weights
        output = masks @ (self.weights[:, None] * self.values)
        output = np.divide(output, total[:, None], out=np.zeros_like(output),
                           where=total[:, None] > 0)  # fmt: skip
        return np.where(total > 0,
                        1.0 - np.linalg.norm(output - self.full[None, :], axis=1) / self.scale, 0.0)  # fmt: skip


class Conditioned(SetFunction):
    """g(W) = f(Z + W) on the elements outside Z (``free``, in f's numbering)."""

    name = "conditioned"

    def __init__(self, f: SetFunction, z: np.ndarray):
        self.inner = f
        self.z = np.asarray(z, dtype=bool)
        self.free = np.flatnonzero(~self.z)
        self.size = len(self.free)

    def evaluate(self, masks: np.ndarray) -> np.ndarray:
        masks = np.asarray(masks, dtype=bool)
        full = np.repeat(self.z[None, :], len(masks), axis=0)
        full[:, self.free] = masks
        return self.inner.evaluate(full)


@dataclass(frozen=True)
class D4Witness:
    """Z <= A <= B = A + y, x outside B, and f(A + x) - f(A) < f(B + x) - f(B); token ids."""

    layer: int
    kv_head: int
    step: int
    objective: str
    ground: tuple[int, ...]
    Z: tuple[int, ...]
    A: tuple[int, ...]
    B: tuple[int, ...]
    x: int
    gain_A: float
    gain_B: float


def find_d4_counterexample(
    f: SetFunction, z: np.ndarray
) -> tuple[tuple, tuple, int, float, float] | None:
    """(A, B, x, gain_A, gain_B) in f's numbering with Z <= A, or None (D.4 holds at Z).

    Example: RenormalisedValue(weights [1, 1, 1], values [-3, 2, 0]), Z = {2}: A = {2},
    B = {0, 2}, x = 1 breaks it (the gain of 1 grows next to 0)."""
    g = Conditioned(f, z)
    if g.size < 2:
        return None
    witness = find_counterexample(g)
    if witness is None:
        return None
    z_ids = tuple(int(i) for i in np.flatnonzero(z))
    lift = lambda ids: tuple(sorted(z_ids + tuple(int(g.free[i]) for i in ids)))  # noqa: E731
    return lift(witness.A), lift(witness.B), int(g.free[witness.x]), witness.gain_A, witness.gain_B


def d4_instance(trace: Trace, layer: int, kv_head: int, step: int, ground: tuple[int, ...],
                objective: str = "output", scores: np.ndarray | None = None,
                aggregation: str = "sum") -> SetFunction:  # fmt: skip
    """The objective of one witness on its ground set (numbering: positions in ``ground``).

    ``scores``: the accumulated scores the policy saw (``score`` objective only)."""
    ground = np.asarray(ground, dtype=np.int64)
    if objective == "score":
        if scores is None:
            raise ValueError("the score objective needs the accumulated scores")
        return AccumulatedScore(np.asarray(scores, dtype=np.float64)[ground])
    values = trace.values(layer)
    if values is None:
        raise ValueError("this trace stores no value vectors; the output objective needs them")
    layout = ReplayConfig(aggregation=aggregation, layers=(layer,)).layout(trace)
    unit = layout.labels.index((layer, kv_head))
    row = layout.weights(unit)[step, : step + 1]  # (t+1,)
    v = values[kv_head][: step + 1].astype(np.float64)  # (t+1, d)
    full = row @ v / row.sum()
    return RenormalisedOutput(np.maximum(row[ground], 1e-12), v[ground], full)


@dataclass
class D4Report:
    """Counts per objective and layer, and the first witnesses."""

    checked: dict[str, int] = field(default_factory=dict)
    failed: dict[str, int] = field(default_factory=dict)
    per_layer: dict[str, dict[str, list[int]]] = field(default_factory=dict)
    witnesses: list[D4Witness] = field(default_factory=list)

    def rate(self, objective: str) -> float:
        return self.failed.get(objective, 0) / max(self.checked.get(objective, 0), 1)

    def summary(self) -> dict[str, Any]:
        return {"checked": self.checked, "failed": self.failed,
                "failure_rate": {name: self.rate(name) for name in self.checked},
                "per_layer": self.per_layer,
                "witnesses": [vars(w) for w in self.witnesses[:10]]}  # fmt: skip


def d4_on_trace(trace: Trace, policy: str = "heavy", budget: float | int | str = 0.2, *,
                config: ReplayConfig | None = None, ground: int = 8, stride: int = 16,
                max_witnesses: int = 50) -> D4Report:  # fmt: skip
    """Check D.4 at every ``stride``-th step of every unit along ``policy``'s trajectory."""
    if not 2 <= ground <= 14:
        raise ValueError(f"ground must be in 2..14 (exhaustive over 2^ground sets), got {ground}")
    config = config or ReplayConfig(observation="full")
    result = replay(trace, policy, budget, config=config)
    layout = result.config.layout(trace)
    report = D4Report(checked={"output": 0, "score": 0}, failed={"output": 0, "score": 0})
    objectives = ("output", "score") if trace.has_values else ("score",)
    for unit, (layer, kv_head) in enumerate(layout.labels):
        weights = layout.weights(unit)  # (n, n)
        seen = np.zeros(trace.n)
        counts = report.per_layer.setdefault(str(layer), {name: [0, 0] for name in objectives})
        for t in range(trace.n):
            kept = result.kept_at(t)[unit]  # (t+1,)
            row = weights[t, : t + 1]
            previous = result.kept_at(t - 1)[unit] if t else np.zeros(0, dtype=bool)
            observed = np.where(kept, row, 0.0) if result.config.observation != "full" else row
            if result.config.observation != "full" and observed.sum() > 0:
                observed = observed / observed.sum()
            seen[: t + 1] += observed
            if t % stride or t < 2:
                continue
            top = np.sort(np.argsort(-row, kind="stable")[: min(ground, t + 1)])
            z = np.zeros(len(top), dtype=bool)
            z[: len(top)] = np.isin(top, np.flatnonzero(previous)) if t else False
            if (~z).sum() < 2:
                continue
            for objective in objectives:
                f = d4_instance(trace, layer, kv_head, t, tuple(top.tolist()), objective,
                                seen[: t + 1], result.config.aggregation) if objective == "score" \
                    else _output_instance(row, trace, layer, kv_head, t, top)  # fmt: skip
                report.checked[objective] += 1
                counts[objective][0] += 1
                found = find_d4_counterexample(f, z)
                if found is None:
                    continue
                report.failed[objective] += 1
                counts[objective][1] += 1
                if len(report.witnesses) < max_witnesses:
                    a, b, x, gain_a, gain_b = found
                    report.witnesses.append(D4Witness(layer, kv_head, t, objective,
                                                      tuple(top.tolist()), _tokens(top, np.flatnonzero(z)),
                                                      _tokens(top, a), _tokens(top, b), int(top[x]), gain_a, gain_b))  # fmt: skip
    return report


def _output_instance(row: np.ndarray, trace: Trace, layer: int, kv_head: int, t: int,
                     top: np.ndarray) -> RenormalisedOutput:  # fmt: skip
    """:func:`d4_instance`'s output objective from an already computed row (no re-layout)."""
    v = trace.values(layer)[kv_head][: t + 1].astype(np.float64)
    return RenormalisedOutput(np.maximum(row[top], 1e-12), v[top], row @ v / row.sum())


def _tokens(top: np.ndarray, positions) -> tuple[int, ...]:
    """Positions in the ground set -> token ids. Example: top [4, 9], [1] -> (9,)."""
    return tuple(int(top[i]) for i in positions)
