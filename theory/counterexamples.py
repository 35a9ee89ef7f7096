"""Small exact instances where the H2O paper's App. D argument breaks (arXiv 2306.14048).

Each function builds its instance, runs it, and returns plain numbers a student can
recompute by hand; tests/test_theory_paper.py pins them. Numbering as in the paper:

- :func:`algorithm1_literal_freezes`: Algorithm 1 / Algorithm 2 lines 7-9 read literally
  (row i's attention over K_{S_{i-1}}, key i left out) give the newest token score 0, so it
  is always the one evicted: the cache freezes on the first k tokens.
- :func:`d28_directions`: Def. D.28 states opt_i >= (1 - gamma) opt_{i-1}; Lemmas D.29 / D.30
  use opt_i >= (1 - gamma) opt_{i+1}. Accumulated scores make opt grow, so the stated
  direction holds with gamma <= 0 while the used one needs gamma ~ 1/(i+2) >> alpha/(10 n).
  And read as stated, Thm D.32 is false: the paper's own Algorithm 2 (exact scores, newest
  evictable) meets every stated hypothesis and ends below (1 - 1/e) opt_i.
- :func:`protected_newest_breaks_step2`: step 2 of D.30's proof, f~(S_{i+1}) >= f~(S_i),
  holds because S_i itself is a candidate (v = i evicted); with the newest token protected
  (this project's engine) it fails, and so does D.32's conclusion, with all its numerical
  hypotheses holding (a static objective: theta = gamma = eps0 = 0).
- :func:`per_step_gamma_collapses`: measuring gamma at every step and chaining the factors
  (1 - gamma_s) telescopes to opt_0 / opt_{i+1}: with nothing evicted at all the chain
  bound falls to (1 - 1/e) / (i + 2) of opt.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from theory.bounds import ONE_MINUS_INV_E
from theory.paper import PaperChain, algorithm2_trajectory, chain_from_scores


@dataclass(frozen=True)
class Counterexample:
    """One instance: what it shows, its numbers and whether the break was observed."""

    name: str
    claim: str  # the step of the paper it breaks
    numbers: dict
    broken: bool


def _lower_triangular(rows: list[list[float]]) -> np.ndarray:
    """Rows of different lengths -> ``(1, n, n)`` zero-padded attention (one unit)."""
    n = len(rows)
    matrix = np.zeros((n, n))
    for t, row in enumerate(rows):
        matrix[t, : len(row)] = row
    return matrix[None]


def _chain(weights: np.ndarray, held: np.ndarray) -> PaperChain:
    rows = np.moveaxis(weights, 1, 0)  # (n, units, n)
    arrays = chain_from_scores(rows, rows, held)
    return PaperChain(n=weights.shape[1], concave_name="identity", unit_labels=((0, 0),),
                      arrays=arrays)  # fmt: skip


def sets(held: np.ndarray) -> list[list[int]]:
    """``(n, 1, n)`` masks -> the held sets as index lists, step by step."""
    return [np.flatnonzero(mask[0]).tolist() for mask in held]


def algorithm1_literal_freezes(n: int = 8, k: int = 3) -> Counterexample:
    """Row t gives the newest token m_t (0.9 at even t, 0.2 at odd t) and spreads 1 - m_t
    over the older ones (all entries > 0). With full rows Algorithm 2 keeps the heavy even
    tokens ({0, 2, 4} from step 4); read literally (key t left out, row renormalised over
    C_{t-1}) the newest token scores 0 and is evicted on arrival: C_t = {0, 1, 2} forever."""
    weights = np.zeros((n, n))
    weights[0, 0] = 1.0
    for t in range(1, n):
        newest = 0.9 if t % 2 == 0 else 0.2
        weights[t, :t] = (1.0 - newest) / t
        weights[t, t] = newest
    literal = algorithm2_trajectory(weights[None], k, literal_rows=True)
    full = algorithm2_trajectory(weights[None], k)
    frozen = all(s == list(range(k)) for s in sets(literal)[k - 1 :])
    return Counterexample(
        "Algorithm 1 read literally freezes the cache",
        "Alg. 1 / Alg. 2 lines 7-9: o_i over K_{S_{i-1}} (key i left out of row i)",
        {"n": n, "k": k, "literal_held": sets(literal), "full_rows_held": sets(full)},
        frozen and sets(full)[-1] != list(range(k)),
    )


def d28_directions() -> Counterexample:
    """Two exact instances. (a) n = 6 uniform rows, k = n: opt_i = i + 1, so D.28 as stated
    holds with gamma = -1/i and the used direction needs gamma = 1/(i+2) > 1/(10 n).
    (b) k = 1, rows: token 0 gets 0.9 of row 1, then every later row attends to token 2
    only. Algorithm 2 with exact scores (newest evictable) evicts token 2 on arrival (score 1
    < 1.9) and keeps {0}; at step 5 opt = A(2) = 4 and held = 1.9: 0.475 < 1 - 1/e, with
    theta <= 0, gamma (as stated) <= 0 and eps0 = 0, i.e. D.32's stated hypotheses hold for
    every alpha in (0, 1), beta > 0."""
    n = 6
    uniform = _lower_triangular([[1.0 / (t + 1)] * (t + 1) for t in range(n)])
    chain = _chain(uniform, np.tril(np.ones((n, n), dtype=bool))[:, None, :])
    trap_rows = [[1.0], [0.9, 0.1], [0.0, 0.0, 1.0]] + [[0.0, 0.0, 1.0] + [0.0] * (t - 2)
                                                         for t in range(3, 6)]  # fmt: skip
    trap = _lower_triangular(trap_rows)
    held = algorithm2_trajectory(trap, 1)
    trap_chain = _chain(trap, held)
    c = trap_chain.constants()
    ratio = float(trap_chain.value[-1, 0] / trap_chain.opt[-1, 0])
    return Counterexample(
        "D.28's stated direction vs the direction D.29/D.30 use",
        "Def. D.28 (opt_i >= (1-gamma) opt_{i-1}) vs Lemma D.30 (opt_i >= (1-gamma) opt_{i+1})",
        {
            "opt": chain.opt[:, 0].tolist(),
            "gamma_as_stated": chain.gamma[1:, 0].tolist(),
            "gamma_as_used": chain.gamma_lemma[:-1, 0].tolist(),
            "limit": 1.0 / (10 * n),
            "trap_held": sets(held),
            "trap_ratio_last": ratio,
            "trap_alpha_as_stated": float(c["alpha_min_as_stated"][0]),
            "trap_alpha_as_used": float(c["alpha_min"][0]),
            "trap_eps0": float(c["eps0"][0]),
            "trap_violations_as_stated": int(len(trap_chain.theorem_violations(as_stated=True))),
        },  # fmt: skip
        bool(
            np.all(chain.gamma[1:, 0] <= 0)
            and np.all(chain.gamma_lemma[:-1, 0] > 1 / (10 * n))
            and ratio < ONE_MINUS_INV_E
            and c["alpha_min_as_stated"][0] == 0.0
        ),  # fmt: skip
    )


def protected_newest_breaks_step2(n: int = 5) -> Counterexample:
    """A static objective f_t(X) = sum_{s in X, s <= t} w_s, w = [1, 0.01, ...] (each token's
    weight arrives with it, nothing accumulates later), k = 1. Newest evictable (Def. D.12):
    C_t = {0} = the optimum. Newest protected: C_t = {t}, f~(S_{i+1}) = 0.01 < f~(S_i) and
    f = 0.01 opt while theta = gamma = eps0 = 0 (D.32's hypotheses hold for every alpha)."""
    weights = np.zeros((1, n, n))
    weights[0, 0, 0] = 1.0
    for t in range(1, n):
        weights[0, t, t] = 0.01
    paper = algorithm2_trajectory(weights, 1)
    engine = algorithm2_trajectory(weights, 1, newest_evictable=False)
    chain = _chain(weights, engine)
    c = chain.constants()
    scores = np.cumsum(weights[0], axis=0)  # (n, n): A_t, static here
    # Step 2 at step t compares f~_t(S_{i+1}) = f~_t(C_t) with f~_t(S_i) = f~_t(C_{t-1}).
    step2 = [(float(scores[t][engine[t, 0]].sum()), float(scores[t][engine[t - 1, 0]].sum()))
             for t in range(1, n)]  # fmt: skip
    return Counterexample(
        "D.30 step 2 fails when the newest token is protected",
        "Lemma D.30 proof, step 2: f~(S_{i+1}) >= f~(S_i) needs v = i evictable (Def. D.12)",
        {
            "paper_held": sets(paper),
            "engine_held": sets(engine),
            "step2_new_vs_old": step2,
            "alpha_min": float(c["alpha_min"][0]),
            "beta_min": float(c["beta_min"][0]),
            "held_over_opt_last": float(chain.value[-1, 0] / chain.opt[-1, 0]),
            "theorem_violations": int(len(chain.theorem_violations())),
        },  # fmt: skip
        bool(any(new < old for new, old in step2) and len(chain.theorem_violations()) > 0),
    )


def per_step_gamma_collapses(n: int = 8) -> Counterexample:
    """Uniform rows, k = n (nothing is ever evicted, f = opt): the chain with gamma measured
    per step is (1 - 1/e) opt_0 = (1 - 1/e) of opt_{i+1} = i + 2, i.e. (1 - 1/e)/(i + 2)."""
    uniform = _lower_triangular([[1.0 / (t + 1)] * (t + 1) for t in range(n)])
    chain = _chain(uniform, np.tril(np.ones((n, n), dtype=bool))[:, None, :])
    per_step = (chain.per_step_chain()[:-1, 0] / chain.next_opt()[:-1, 0]).tolist()
    expected = [ONE_MINUS_INV_E / (t + 2) for t in range(n - 1)]
    return Counterexample(
        "the chain collapses when gamma is measured per step",
        "Lemma D.30's induction, with the tightest gamma_i at every step",
        {
            "per_step_chain_over_opt": per_step,
            "expected": expected,
            "held_over_opt": float(np.min(chain.value[:, 0] / chain.opt[:, 0])),
        },  # fmt: skip
        bool(np.allclose(per_step, expected) and per_step[-1] < 0.1),
    )


def all_counterexamples() -> list[Counterexample]:
    return [algorithm1_literal_freezes(), d28_directions(), protected_newest_breaks_step2(),
            per_step_gamma_collapses()]  # fmt: skip
