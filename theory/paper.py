"""The H2O paper's Appendix D chain, computed literally on a trajectory (arXiv 2306.14048).

What the paper states (numbering of arXiv 2306.14048, App. D; docs/theory.md writes it out):

- Def. D.25 / D.26 (universal dynamic condition 1, exact / approximate function):
  f_{S_i,i}(S_i) >= (1 - theta) f_{S_{i-1},i-1}(S_i);
- Def. D.27: opt_i = max { f_{X,i}(Y) : X <= [i-1], Y <= [i], |X|, |Y| <= k, |Y \\ X| <= 1 };
- Def. D.28 (universal dynamic condition 2), as stated: opt_i >= (1 - gamma) opt_{i-1};
  Lemmas D.29 / D.30 use it the other way round: opt_i >= (1 - gamma) opt_{i+1};
- D.30's "universal approximate condition": f_{S_i,i}(X) >= f~_{S_i,i}(X) - eps0 for all X;
- Lemma D.30: f_{S_i,i}(S_{i+1}) >= (1 - 1/e)(1 - theta)^{i+1}(1 - gamma)^{i+1} opt_{i+1}
  - (i + 1) eps0;
- Thm D.32: f(S~_i) >= (1 - 1/e)(1 - alpha) opt_i - beta, alpha in (0, 1), beta > 0, by
  D.17, D.18 and D.30 "with choosing eps0 = beta/(10 n) and theta = gamma = alpha/(10 n)".

So the theorem is conditional: it says nothing unless theta, gamma <= alpha/(10 n) and
eps0 <= beta/(10 n) at every step. This module measures, per step and cache unit, the
tightest theta_i, gamma_i (both directions) and eps0_i, evaluates D.30's bound with them, and
says whether D.32's hypotheses hold for some alpha in (0, 1) (smallest alpha, beta).

Indexing (the paper's D.20 indexing, 1-based i = engine step t + 1): the paper's S_i <= [i-1]
is the cache *entering* step i, i.e. the engine's C_{t-1} (what is kept after step t-1), and
S_{i+1} is C_t. The instance of the framework (our modelling choice, documented in
docs/theory.md): f_{Z,t}(X) = h(sum_{s in X} A_t(s)) with A_t the full model's accumulated
attention through row t (the truth; it does not depend on Z), and f~_{Z,t}(X) = h(sum_{s in X}
A~_t(s)) with A~_t the attention the engine showed the policy (renormalised over its cache,
or the full row with ``observation="full"``), accumulated along the trajectory. Per step:

- theta_t (D.26, on f~, as D.30 uses it) = 1 - f~_t(C_{t-1}) / f~_{t-1}(C_{t-1}); theta_exact_t
  the same on f (D.25). Accumulation only adds, so both are <= 0 on every trajectory.
- gamma_t (D.28 as stated) = 1 - opt_t / opt_{t-1}; gamma_lemma_t (as D.29/D.30 use it)
  = 1 - opt_t / opt_{t+1}. opt_t = h(sum of the |C_t| largest A_t(s), s <= t) (D.27; f does
  not depend on X, so |Y \\ X| <= 1 does not bind).
- eps0_t = max over |X| <= |C_t| of f~_t(X) - f_t(X) (one-sided, as D.30 states it): exact for
  h = identity (the |C_t| largest positive parts of A~_t - A_t); for sqrt / log it is the
  Lipschitz upper bound sup h' times that sum.
- D.30's bound at step t, with the lemma's uniform constants theta = max(0, max theta_t),
  gamma = max(0, max gamma_lemma_t), eps0 = max eps0_t of the unit:
  L_t = (1 - 1/e)(1 - theta)^{t+2}(1 - gamma)^{t+2} opt_{t+1} - (t + 2) eps0, against the
  held f_t(C_t); undefined at the last step (no opt_{t+1}).
- The per-step chain (gamma measured at every step and multiplied, as the induction would):
  prod_{s <= t} (1 - gamma_lemma_s) opt_{t+1} telescopes to opt_0, so the chain collapses
  to (1 - 1/e) prod(1 - theta_s^+) opt_0 - sum eps0_s.
- Thm D.32's hypotheses hold iff alpha_min = 10 n max(0, theta_max, gamma_lemma_max) < 1;
  then beta_min = 10 n eps0_max and the guarantee is (1 - 1/e)(1 - alpha_min) opt_t - beta_min
  (the supremum over admissible alpha, beta), checked against f_t(C_t) (our reading of the
  theorem's f(S~_i): the set held after step t, against opt_t of the same step).

What is simplified: the trajectory is the engine's (the newest token is never evicted,
unlike Def. D.12 / D.22), so D.30's construction hypothesis does not hold for it; the
numerical hypotheses are reported on their own. theory.counterexamples shows what breaks.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from h2osim.engine import ReplayConfig, ReplayResult
from h2osim.policies import Policy
from h2osim.trace import Trace
from theory.bounds import ONE_MINUS_INV_E
from theory.functions import concave, concave_slope
from theory.report import replay_setup, seen_row

PER_STEP = (
    "value",
    "perceived",
    "opt",
    "theta",
    "theta_exact",
    "gamma",
    "gamma_lemma",
    "eps0",
    "size",
)
TOLERANCE = 1e-9


def _ratio(top: np.ndarray, bottom: np.ndarray) -> np.ndarray:
    """top / bottom where bottom > 0, nan elsewhere."""
    safe = np.where(bottom > 0, bottom, 1.0)
    return np.where(bottom > 0, top / safe, np.nan)


def _nanmax(values: np.ndarray, axis=None) -> np.ndarray | float:
    """nanmax that returns -inf (not a warning) where everything is nan."""
    filled = np.where(np.isfinite(values), values, -np.inf)
    return filled.max(axis=axis, initial=-np.inf)


@dataclass
class PaperChain:
    """Per step and unit, ``(n, units)`` arrays of the module docstring's quantities."""

    n: int  # the n of alpha / (10 n): the sequence length
    concave_name: str
    unit_labels: tuple[tuple[int, int], ...]
    arrays: dict[str, np.ndarray] = field(default_factory=dict)
    policy: str = ""
    budget: int = 0

    def __getattr__(self, name: str) -> np.ndarray:
        arrays = self.__dict__.get("arrays", {})
        if name in arrays:
            return arrays[name]
        raise AttributeError(name)

    # ------------------------------------------------------------ per unit constants
    def constants(self) -> dict[str, np.ndarray]:
        """``(units,)`` per-unit maxima and D.32's smallest alpha, beta (see the docstring)."""
        theta = _nanmax(self.theta, axis=0)
        gamma_lemma = _nanmax(self.gamma_lemma, axis=0)
        gamma = _nanmax(self.gamma, axis=0)
        eps0 = _nanmax(self.eps0, axis=0)
        scale = 10.0 * self.n
        alpha = scale * np.maximum(0.0, np.maximum(theta, gamma_lemma))
        alpha_stated = scale * np.maximum(0.0, np.maximum(theta, gamma))
        return {"theta": theta, "gamma": gamma, "gamma_lemma": gamma_lemma, "eps0": eps0,
                "alpha_min": alpha, "alpha_min_as_stated": alpha_stated,
                "beta_min": scale * np.maximum(eps0, 0.0)}  # fmt: skip

    def admits(self, alpha: float, beta: float, as_stated: bool = False) -> np.ndarray:
        """``(units,)`` bool: theta_i, gamma_i <= alpha / (10 n) and eps0_i <= beta / (10 n) at
        every step (Thm D.32's hypotheses for these alpha, beta; gamma as D.30 uses it unless
        ``as_stated``). Example: alpha below :meth:`constants`' alpha_min -> False."""
        c = self.constants()
        limit = alpha / (10.0 * self.n)
        gamma = c["gamma"] if as_stated else c["gamma_lemma"]
        return ((c["theta"] <= limit) & (gamma <= limit) & (c["eps0"] <= beta / (10.0 * self.n))
                & (0.0 < alpha < 1.0) & (beta > 0.0))  # fmt: skip

    def hypotheses_hold(self) -> np.ndarray:
        """``(units,)`` bool: some alpha in (0, 1) meets theta, gamma <= alpha / (10 n)."""
        return self.constants()["alpha_min"] < 1.0

    # ------------------------------------------------------------ Lemma D.30
    def lemma_bound(self) -> np.ndarray:
        """``(n, units)`` D.30's bound at step t (against opt_{t+1}); nan at the last step."""
        c = self.constants()
        theta, gamma = np.maximum(c["theta"], 0.0), np.maximum(c["gamma_lemma"], 0.0)
        power = np.arange(2, self.n + 2, dtype=np.float64)[:, None]  # (n, 1): i + 1 = t + 2
        next_opt = np.vstack([self.opt[1:], np.full((1, self.opt.shape[1]), np.nan)])
        return (ONE_MINUS_INV_E * (1.0 - theta) ** power * (1.0 - gamma) ** power * next_opt
                - power * np.maximum(c["eps0"], 0.0))  # fmt: skip

    def next_opt(self) -> np.ndarray:
        return np.vstack([self.opt[1:], np.full((1, self.opt.shape[1]), np.nan)])

    def per_step_chain(self) -> np.ndarray:
        """``(n, units)`` the chain with theta, gamma, eps0 measured at each step and multiplied."""
        theta = np.where(np.isfinite(self.theta), np.maximum(self.theta, 0.0), 0.0)
        gamma = np.where(np.isfinite(self.gamma_lemma), self.gamma_lemma, 0.0)
        shrink = np.cumprod((1.0 - theta) * (1.0 - gamma), axis=0)
        chain = ONE_MINUS_INV_E * shrink * self.next_opt() - np.cumsum(self.eps0, axis=0)
        return chain

    # ------------------------------------------------------------ Thm D.32
    def theorem_guarantee(self, alpha: np.ndarray | float | None = None,
                          beta: np.ndarray | float | None = None) -> np.ndarray:  # fmt: skip
        """``(n, units)`` (1 - 1/e)(1 - alpha) opt_t - beta (default: the smallest alpha, beta)."""
        c = self.constants()
        alpha = c["alpha_min"] if alpha is None else alpha
        beta = c["beta_min"] if beta is None else beta
        return ONE_MINUS_INV_E * (1.0 - np.asarray(alpha)) * self.opt - np.asarray(beta)

    def theorem_violations(self, as_stated: bool = False) -> np.ndarray:
        """``(k, 2)`` (step, unit) where D.32's hypotheses hold and its inequality fails.

        ``as_stated``: gamma read in D.28's stated direction (opt_i >= (1 - gamma) opt_{i-1});
        the default reads it as D.30's proof uses it. Only the default is what the proof
        covers; the stated reading is reported because it is what the paper writes."""
        c = self.constants()
        alpha = c["alpha_min_as_stated"] if as_stated else c["alpha_min"]
        guarantee = self.theorem_guarantee(alpha, c["beta_min"])
        fails = self.value < guarantee - TOLERANCE * np.maximum(1.0, self.opt)
        return np.argwhere(fails & (alpha < 1.0)[None, :])

    # ------------------------------------------------------------ summary
    def summary(self, columns: np.ndarray | None = None) -> dict[str, Any]:
        """The JSON ``paper`` section (over ``columns``, default every unit)."""
        columns = np.arange(len(self.unit_labels)) if columns is None else np.asarray(columns)
        c = {name: value[columns] for name, value in self.constants().items()}
        hold = bool(np.all(c["alpha_min"] < 1.0))
        alpha_min = float(c["alpha_min"].max())
        lemma = self.lemma_bound()[:-1, columns]
        next_opt = self.next_opt()[:-1, columns]
        value = self.value[:-1, columns]
        lemma_ratio = _ratio(lemma, next_opt)
        chain_ratio = _ratio(self.per_step_chain()[:-1, columns], next_opt)
        limit = 1.0 / (10.0 * self.n)
        guarantee = None
        if hold:
            g = self.theorem_guarantee()[:, columns]
            guarantee = float(np.nanmean(_ratio(g, self.opt[:, columns])))
        violations = self.theorem_violations()
        violations = int(np.isin(violations[:, 1], columns).sum())
        stated = self.theorem_violations(as_stated=True)
        stated = stated[np.isin(stated[:, 1], columns)]
        witness = None
        if len(stated):
            t, u = (int(x) for x in stated[0])
            witness = {"step": t, "unit": list(self.unit_labels[u]), "held": float(self.value[t, u]),
                       "opt": float(self.opt[t, u]),
                       "guarantee": float(self.theorem_guarantee(
                           self.constants()["alpha_min_as_stated"][u],
                           self.constants()["beta_min"][u])[t, u])}  # fmt: skip
        lemma_over = _ratio(lemma, next_opt)
        return {
            "n": self.n,
            "alpha_over_10n_limit": limit,  # theta, gamma must stay below this for any alpha < 1
            "theta_max": float(c["theta"].max()),
            "theta_exact_max": float(_nanmax(self.theta_exact[:, columns])),
            "gamma_max": float(c["gamma"].max()),
            "gamma_lemma_max": float(c["gamma_lemma"].max()),
            "gamma_lemma_steps_over_limit": int(np.sum(self.gamma_lemma[:, columns] > limit)),
            "steps": int(np.sum(np.isfinite(self.gamma_lemma[:, columns]))),
            "gamma_lemma_max_after_first_eviction": float(_nanmax(np.where(
                self.size[:, columns] < np.arange(1, self.n + 1)[:, None],
                self.gamma_lemma[:, columns], np.nan))),
            "gamma_lemma_last": float(np.nanmean(self.gamma_lemma[-2, columns])) if self.n > 1 else None,
            "eps0_max": float(c["eps0"].max()),
            "hypotheses_hold": hold,
            "hypotheses_hold_as_stated": bool(np.all(c["alpha_min_as_stated"] < 1.0)),
            "alpha_needed": alpha_min,  # 10 n max(0, theta, gamma_lemma): alpha must exceed it
            "alpha_min": alpha_min if hold else None,
            "beta_min": float(c["beta_min"].max()) if hold else None,
            "alpha_min_as_stated": float(c["alpha_min_as_stated"].max()),
            "lemma_d30_bound_over_opt": float(np.nanmean(lemma_ratio)),
            "lemma_d30_bound_over_opt_last": float(np.nanmean(lemma_ratio[-1])),
            "lemma_d30_vacuous_share": float(np.mean(lemma <= 0)),  # bound <= 0: says nothing
            "lemma_d30_below_1pct_share": float(np.nanmean(lemma_over < 0.01)),
            "lemma_d30_conclusion_fails": int(np.sum(value < lemma - TOLERANCE * np.maximum(1.0, next_opt))),
            "held_over_next_opt": float(np.nanmean(_ratio(value, next_opt))),
            "per_step_chain_over_opt": float(np.nanmean(chain_ratio)),
            "per_step_chain_over_opt_last": float(np.nanmean(chain_ratio[-1])),
            "theorem_guarantee_over_opt": guarantee,
            "theorem_violations": violations,
            "theorem_as_stated_violations": int(len(stated)),
            "theorem_as_stated_witness": witness,
            "held_over_opt": float(np.nanmean(_ratio(self.value[:, columns], self.opt[:, columns]))),
        }  # fmt: skip

    def per_layer(self) -> dict[str, dict[str, Any]]:
        layers = sorted({layer for layer, _ in self.unit_labels})
        return {
            str(layer): self.summary(
                np.array([u for u, (lay, _) in enumerate(self.unit_labels) if lay == layer])
            )  # fmt: skip
            for layer in layers
        }

    def per_step_mean(self) -> dict[str, list]:
        """Per-step means over units, for plots and the app (nan -> None in JSON)."""
        next_opt = self.next_opt()
        limit = 1.0 / (10.0 * self.n)
        with warnings.catch_warnings():  # all-nan rows (step 0, the last step) give nan
            warnings.simplefilter("ignore", RuntimeWarning)
            return self._per_step_mean(next_opt, limit)

    def _per_step_mean(self, next_opt: np.ndarray, limit: float) -> dict[str, list]:
        out = {name: np.nanmean(getattr(self, name), axis=1) for name in
               ("theta", "gamma", "gamma_lemma", "eps0")}  # fmt: skip
        out["eps0_over_opt"] = np.nanmean(_ratio(self.eps0, self.opt), axis=1)
        out["lemma_d30_bound_over_opt"] = np.nanmean(_ratio(self.lemma_bound(), next_opt), axis=1)
        out["held_over_next_opt"] = np.nanmean(_ratio(self.value, next_opt), axis=1)
        out["per_step_chain_over_opt"] = np.nanmean(_ratio(self.per_step_chain(), next_opt), axis=1)
        out["limit"] = np.full(self.n, limit)
        return {k: [None if not np.isfinite(x) else float(x) for x in v] for k, v in out.items()}


def _top_sum(values: np.ndarray, count: np.ndarray) -> np.ndarray:
    """Per row, the sum of the ``count`` largest entries. ``(units, m)``, ``(units,)``.

    Example: [[3, 1, 2]], count [2] -> [5]."""
    ordered = -np.sort(-values, axis=1)
    running = np.concatenate([np.zeros((len(values), 1)), np.cumsum(ordered, axis=1)], axis=1)
    return running[np.arange(len(values)), np.minimum(count, values.shape[1])]


def chain_from_scores(true_rows: np.ndarray, seen_rows: np.ndarray, held: np.ndarray,
                      concave_name: str = "identity") -> dict[str, np.ndarray]:  # fmt: skip
    """The per-step arrays from rows and held sets, for any trajectory.

    ``true_rows``, ``seen_rows``: ``(n, units, n)`` what row t adds to A_t and to A~_t (zero
    beyond column t); ``held``: ``(n, units, n)`` bool, C_t. Returns ``(n, units)`` arrays.
    Example: one unit, rows [[1, 0], [0.5, 0.5]], held all: opt = [1, 2], gamma_lemma_0 = 0.5.
    """
    n = true_rows.shape[0]
    return chain_from_steps(lambda t: (true_rows[t, :, : t + 1], seen_rows[t, :, : t + 1],
                                       held[t, :, : t + 1]), n, true_rows.shape[1], concave_name)  # fmt: skip


def chain_from_steps(
    step, n: int, units: int, concave_name: str = "identity"
) -> dict[str, np.ndarray]:
    """:func:`chain_from_scores` with ``step(t) -> (true_row, seen_row, held)``, each ``(units, t+1)``."""
    out = {name: np.full((n, units), np.nan) for name in PER_STEP}
    slope = concave_slope(concave_name)
    true_score = np.zeros((units, n))
    seen_score = np.zeros((units, n))
    previous = np.zeros((units, n), dtype=bool)
    for t in range(n):
        true_row, seen_row, kept = step(t)
        current = np.zeros((units, n), dtype=bool)
        current[:, : t + 1] = kept
        before_seen = h_sum(concave_name, seen_score, previous)  # f~_{t-1}(C_{t-1})
        before_true = h_sum(concave_name, true_score, previous)
        true_score[:, : t + 1] += true_row
        seen_score[:, : t + 1] += seen_row
        size = current.sum(axis=1)
        out["size"][t] = size
        out["value"][t] = h_sum(concave_name, true_score, current)
        out["perceived"][t] = h_sum(concave_name, seen_score, current)
        out["opt"][t] = concave(concave_name, _top_sum(true_score[:, : t + 1], size))
        error = np.maximum(seen_score[:, : t + 1] - true_score[:, : t + 1], 0.0)
        out["eps0"][t] = slope * _top_sum(error, size)
        if t:
            out["theta"][t] = 1.0 - _ratio(h_sum(concave_name, seen_score, previous), before_seen)
            out["theta_exact"][t] = 1.0 - _ratio(h_sum(concave_name, true_score, previous),
                                                 before_true)  # fmt: skip
            out["gamma"][t] = 1.0 - _ratio(out["opt"][t], out["opt"][t - 1])
        previous = current
    out["gamma_lemma"][:-1] = 1.0 - _ratio(out["opt"][:-1], out["opt"][1:])
    return out


def h_sum(concave_name: str, scores: np.ndarray, mask: np.ndarray) -> np.ndarray:
    """h(sum of ``scores`` over ``mask``) per row. Example: identity, [[1, 2]], [[T, F]] -> [1]."""
    return concave(concave_name, np.where(mask, scores, 0.0).sum(axis=1))


def paper_chain(
    trace: Trace,
    policy: Policy | str = "heavy",
    budget: float | int | str = 0.2,
    *,
    budget_of: str = "sequence",
    config: ReplayConfig | None = None,
    concave_name: str = "identity",
    result: ReplayResult | None = None,
    kept_at=None,
    kept_labels: tuple[tuple[int, int], ...] | None = None,
    weights: list[np.ndarray] | None = None,
) -> PaperChain:
    """Replay ``policy`` (or take ``result``) and compute the paper's chain on every unit.

    ``kept_at``: any trajectory instead, ``t -> (units, t+1)`` bool held sets on ``config``'s
    units - e.g. a live run's ``LiveResult.kept_at`` (h2osim.model.live) on the full-cache
    trace of the same text: then f is the trace's full attention along the cache the model
    really had, and f~ the trace's rows renormalised over it (``observation``), which
    approximates what the live policy saw (the live rows themselves are not recorded).
    ``kept_labels``: the (layer, kv_head) of each row of ``kept_at(t)`` when they are not
    ``config``'s units (a live run holds every layer; a trace stores some).
    ``weights``: the units' ``(n, n)`` metric weights if already computed (``layout.weights``)."""
    given = None  # a trajectory's k: its largest final held set (at least 1)
    if kept_at is not None:
        given = (kept_at, max(int(np.asarray(kept_at(trace.n - 1)).sum(axis=1).max()), 1))
    setup = replay_setup(trace, policy, budget, budget_of=budget_of, config=config,
                         about="the chain is about online eviction", given=given, result=result,
                         weights=weights)  # fmt: skip
    config, kept_at, weights, layout = setup.config, setup.kept_at, setup.weights, setup.layout
    n, units = trace.n, layout.units
    pick = slice(None)
    if kept_labels is not None:
        where = {tuple(int(x) for x in label): i for i, label in enumerate(kept_labels)}
        missing = [label for label in layout.labels if label not in where]
        if missing:
            raise ValueError(
                f"the trajectory has no units {missing[:3]}; it covers {list(where)[:3]}..."
            )
        pick = np.array([where[label] for label in layout.labels])

    def step(t: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        row = np.stack([w[t, : t + 1] for w in weights])  # (units, t+1)
        kept = kept_at(t)[pick]  # (units, t+1)
        return row, seen_row(row, kept, config.observation), kept

    arrays = chain_from_steps(step, n, units, concave_name)
    return PaperChain(n=n, concave_name=concave_name, unit_labels=layout.labels, arrays=arrays,
                      policy=setup.policy, budget=setup.budget)  # fmt: skip


def algorithm2_trajectory(weights: np.ndarray, k: int, *, newest_evictable: bool = True,
                          literal_rows: bool = False) -> np.ndarray:  # fmt: skip
    """The paper's Algorithm 2 (Def. D.12) on ``(units, n, n)`` attention rows: ``(n, units, n)``
    held sets C_t. The score is h(sum of accumulated attention) with h non-decreasing, so
    argmax_v F(G - v) evicts the lowest accumulated score (ties: lowest index, as
    :func:`theory.dynamic.greedy_eviction`); the choice is the same for every such h.

    ``newest_evictable`` (the paper: v = i is a candidate; the engine forbids it).
    ``literal_rows``: Algorithm 1 / 2 lines 7-9 read literally - row t is renormalised over
    C_{t-1} with key t left out - instead of the full row. Example: k = 1, rows [[1, 0],
    [0.9, 0.1]] -> C_1 = {0} (token 1 evicted on arrival); with the newest protected, {1}.
    """
    if k < 1:
        raise ValueError(f"k must be >= 1, got {k}")
    units, n, _ = weights.shape
    held = np.zeros((n, units, n), dtype=bool)
    scores = np.zeros((units, n))
    current = np.zeros((units, n), dtype=bool)
    for t in range(n):
        row = weights[:, t, :].copy()
        row[:, t + 1 :] = 0.0
        if literal_rows:
            seen = np.where(current, row, 0.0)  # key t is not in C_{t-1}
            total = seen.sum(axis=1, keepdims=True)
            row = np.divide(seen, total, out=np.zeros_like(seen), where=total > 0)
        scores += row
        current = current.copy()
        current[:, t] = True
        over = current.sum(axis=1) > k
        if over.any():
            droppable = current.copy()
            if not newest_evictable:
                droppable[:, t] = False
            masked = np.where(droppable, scores, np.inf)
            victim = np.argmin(masked, axis=1)  # first minimum: lowest index
            rows = np.flatnonzero(over)
            current[rows, victim[rows]] = False
        held[t] = current
    return held


def algorithm2_chain(trace: Trace, budget: float | int | str = 0.2, *,
                     config: ReplayConfig | None = None, concave_name: str = "identity",
                     newest_evictable: bool = True, budget_of: str = "sequence") -> PaperChain:  # fmt: skip
    """The chain on the paper's own trajectory: Algorithm 2 with exact scores (full rows,
    so f~ = f and eps0 = 0), newest token evictable as Def. D.12 allows."""
    from h2osim.engine import resolve_budget

    config = config or ReplayConfig(observation="full")
    layout = config.layout(trace)
    k = resolve_budget(budget, trace.n, trace.prompt_length, budget_of)
    weights = np.stack([layout.weights(u) for u in range(layout.units)])  # (units, n, n)
    held = algorithm2_trajectory(weights, k, newest_evictable=newest_evictable)
    rows = np.moveaxis(np.tril(weights), 1, 0)  # (n, units, n)
    arrays = chain_from_scores(rows, rows, held, concave_name)
    name = "algorithm2" if newest_evictable else "algorithm2-protected"
    return PaperChain(n=trace.n, concave_name=concave_name, unit_labels=layout.labels,
                      arrays=arrays, policy=name, budget=int(k))  # fmt: skip


def live_trajectory(trace: Trace, policy: str, budget: float | int | str = 0.2, *,
                    budget_of: str = "sequence", config: ReplayConfig | None = None):  # fmt: skip
    """Run ``policy`` live in the bundled SmolLM2 on the trace's own tokens (teacher forcing,
    :func:`h2osim.model.live.teacher_forced`) and return ``(kept_at, unit_labels, budget)``:
    the caches the model really had, for :func:`paper_chain` (``kept_at``, ``kept_labels``).
    Needs the model stack (``pip install .[model]``); minutes on a CPU."""
    from h2osim.model import load_model, set_threads
    from h2osim.model.live import LiveConfig, teacher_forced
    from h2osim.schedule import kept_at as kept_from

    config = config or ReplayConfig()
    set_threads(1)
    model, _, _ = load_model()
    live_config = LiveConfig(aggregation=config.aggregation, prompt_mode=config.prompt_mode)
    report = teacher_forced(model, trace.token_ids.tolist(), [policy], budget, budget_of=budget_of,
                            prompt_length=trace.prompt_length, config=live_config)  # fmt: skip
    result = report.results[0]
    evicted = result.evicted_at
    return (lambda t: kept_from(evicted, t)), tuple(result.unit_labels), int(result.budget)
