"""Approximation bounds for greedy selection, static and dynamic.

- :func:`nemhauser_bound`: greedy on a monotone submodular f with f(empty) >= 0 gets
  f(S_k) >= (1 - 1/e) OPT_k (Nemhauser, Wolsey & Fisher 1978).
- :func:`noisy_gain_bound`: picking by gains that are off by at most eps gets
  f(S_k) >= (1 - 1/e) OPT_k - k (2 - 1/e) eps (the H2O paper's Cor. D.18, after Qin,
  Song & Wang). Proof sketch: each pick's true gain is within 2 eps of the best, so
  OPT - f(S_k) <= (1 - 1/k)^k OPT + 2 eps k (1 - (1 - 1/k)^k), which is below
  OPT / e + k (2 - 1/e) eps because (1 - 1/k)^k >= 1/(2e) for k >= 2 (k = 1 holds
  since f >= 0).
- :func:`certificate_bound`, :func:`certificate_bound_exp` and :func:`greedy_certificate`:
  OUR a-posteriori certificate f(S) >= (1 - e^-(1 - alpha)) OPT - beta >= (1 - 1/e)(1 -
  alpha) OPT - beta, with alpha and beta MEASURED on the set S (see below). It has the
  shape of the paper's Thm D.32 but is not that theorem: it holds for ANY set S (a random
  cache too), so it certifies, it does not predict. The paper's conditional statement,
  with its theta, gamma, eps0 and alpha/(10 n), is computed in :mod:`theory.paper`.

The certificate (our lemma). Order S by greedy-within-S; at pick t let g_t be the chosen gain and g*_t
the best gain over every allowed element outside the prefix P_t, and let alpha_t in
[0, 1] be the smallest number with g_t >= (1 - alpha_t) g*_t - delta. For monotone
submodular f >= 0 and every O with |O| <= k = |S|, OPT <= f(P_t) + k g*_t, hence

    OPT - f(P_t+1) <= (1 - c_t) (OPT - f(P_t)) + delta,    c_t = (1 - alpha_t) / k,

and unrolling, with prod (1 - c_t) <= exp(-sum c_t) = exp(-(1 - alpha)),

    f(S) >= (1 - e^-(1 - alpha)) OPT - beta >= (1 - 1/e)(1 - alpha) OPT - beta,
    alpha = mean_t alpha_t,   beta = delta sum_t prod_{s > t} (1 - c_s)  (<= k delta).

alpha measures how far the held set is from what greedy would pick now - the drift of
the objective since the eviction decisions were made; delta is the share of each gain
charged to approximate scores (2 eps0 when the scores the policy used are within eps0
of the truth) and beta is its total. Any delta >= 0 gives a valid bound; delta = 0
charges everything to alpha.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from theory.functions import SetFunction, as_mask, concave

ONE_MINUS_INV_E = 1.0 - 1.0 / math.e  # 0.632...


def nemhauser_bound(opt: float) -> float:
    """(1 - 1/e) OPT. Example: OPT 10 -> 6.32."""
    return ONE_MINUS_INV_E * opt


def noisy_gain_bound(opt: float, k: int, eps: float) -> float:
    """(1 - 1/e) OPT - k (2 - 1/e) eps. Example: OPT 10, k 2, eps 0.1 -> 6.32 - 0.33 = 5.99."""
    return ONE_MINUS_INV_E * opt - k * (2.0 - 1.0 / math.e) * eps


def certificate_bound(opt: float | np.ndarray, alpha: float | np.ndarray,
                      beta: float | np.ndarray) -> float | np.ndarray:  # fmt: skip
    """(1 - 1/e)(1 - alpha) opt - beta. Example: opt 1, alpha 0.5, beta 0 -> 0.316."""
    return ONE_MINUS_INV_E * (1.0 - alpha) * opt - beta


def certificate_bound_exp(opt: float | np.ndarray, alpha: float | np.ndarray,
                          beta: float | np.ndarray) -> float | np.ndarray:  # fmt: skip
    """(1 - e^-(1 - alpha)) opt - beta, the tighter form (1 - e^-x >= (1 - 1/e) x on [0, 1]).
    Example: opt 1, alpha 0.5, beta 0 -> 1 - e^-0.5 = 0.393."""
    return (1.0 - np.exp(-(1.0 - np.asarray(alpha, dtype=np.float64)))) * opt - beta


@dataclass(frozen=True)
class Certificate:
    """Measured alpha and beta for one held set (see the module docstring)."""

    alpha: float
    beta: float
    delta: float  # additive slack per gain charged to approximate scores
    order: tuple[int, ...]  # the set in greedy-within-set order
    gains: np.ndarray  # (k,) g_t
    best_gains: np.ndarray  # (k,) g*_t

    def bound(self, opt: float) -> float:
        return float(certificate_bound(opt, self.alpha, self.beta))

    def bound_exp(self, opt: float) -> float:
        return float(certificate_bound_exp(opt, self.alpha, self.beta))


def alpha_beta(gains: np.ndarray, best_gains: np.ndarray, delta: float) -> tuple[float, float]:
    """alpha = mean over picks of the smallest alpha_t in [0, 1] with gains_t >= (1 -
    alpha_t) best_t - delta, and beta = delta sum_t prod_{s > t} (1 - (1 - alpha_s)/k).

    Example: gains [1, 0.5], best [1, 1], delta 0 -> alpha_t [0, 0.5] -> alpha 0.25, beta 0.
    """
    alpha, beta = _alpha_beta_rows(np.asarray(gains, float)[None, :],
                                   np.asarray(best_gains, float)[None, :],
                                   np.ones((1, len(gains)), dtype=bool), np.asarray([delta], float))  # fmt: skip
    return float(alpha[0]), float(beta[0])


def _alpha_beta_rows(gains: np.ndarray, best_gains: np.ndarray, valid: np.ndarray,
                     delta: np.ndarray) -> tuple[np.ndarray, np.ndarray]:  # fmt: skip
    """Row-wise alpha, beta: ``(rows, picks)`` gains, best gains and validity, ``(rows,)`` delta."""
    k = valid.sum(axis=1)  # (rows,)
    safe_best = np.where(best_gains > 0, best_gains, 1.0)
    with np.errstate(over="ignore"):  # a tiny best gain: the ratio overflows to inf, clipped to 1
        per_pick = np.where(valid & (best_gains > 0),
                            np.clip(1.0 - (gains + delta[:, None]) / safe_best, 0.0, 1.0), 0.0)  # fmt: skip
    alpha = per_pick.sum(axis=1) / np.maximum(k, 1)
    shrink = np.where(valid, 1.0 - (1.0 - per_pick) / np.maximum(k, 1)[:, None], 1.0)
    # sum_t prod_{s > t} shrink_s, over valid picks: reverse cumulative products.
    after = np.cumprod(shrink[:, ::-1], axis=1)[:, ::-1]  # prod_{s >= t}
    after = np.concatenate([after[:, 1:], np.ones((len(after), 1))], axis=1)  # prod_{s > t}
    beta = delta * np.where(valid, after, 0.0).sum(axis=1)
    return alpha, beta


def greedy_certificate(f: SetFunction, subset, allowed: np.ndarray | None = None,
                       delta: float = 0.0) -> Certificate:  # fmt: skip
    """alpha and beta of a held set S against every set of |S| elements within ``allowed``.

    Example: coverage where 0 covers {a, b}, 1 covers {c}, 2 covers {a}; S = {1, 2}:
    greedy-within-S picks 1 (gain 1, best 2 from element 0: alpha_1 = 0.5), then 2 (gain
    1, best 2 from element 0 again: alpha_2 = 0.5) -> alpha = 0.5.
    """
    held = as_mask(subset, f.size)
    allowed = np.ones(f.size, bool) if allowed is None else np.asarray(allowed, dtype=bool)
    if np.any(held & ~allowed):
        raise ValueError("the held set must lie within the allowed elements")
    prefix = np.zeros(f.size, dtype=bool)
    order, gains, best_gains = [], [], []
    for _ in range(int(held.sum())):
        gain = f.gains(prefix)  # (size,)
        inside = held & ~prefix
        pick = int(np.flatnonzero(inside)[np.argmax(gain[inside])])
        order.append(pick)
        gains.append(gain[pick])
        best_gains.append(gain[allowed & ~prefix].max())
        prefix[pick] = True
    alpha, beta = alpha_beta(np.array(gains), np.array(best_gains), delta)
    return Certificate(alpha, beta, delta, tuple(order), np.array(gains), np.array(best_gains))


def accumulated_certificate(scores: np.ndarray, held: np.ndarray, allowed: np.ndarray,
                            concave_name: str = "identity",
                            delta: np.ndarray | float = 0.0) -> tuple[np.ndarray, np.ndarray]:  # fmt: skip
    """Vectorised alpha, beta for :class:`AccumulatedScore`, one row per cache unit.

    ``scores``, ``held``, ``allowed``: ``(units, m)``; ``delta``: scalar or ``(units,)``.
    Greedy-within-S takes S's scores in decreasing order; the best element outside a
    prefix is the larger of the next held score and the best score not held.
    Example: scores [[5, 1, 3]], held [[T, T, F]], allowed all -> the second pick gains 1
    where 3 was available: alpha_t = [0, 2/3] -> alpha = 1/3 (identity h).
    """
    scores = np.asarray(scores, dtype=np.float64)
    held = np.asarray(held, dtype=bool)
    units, _ = scores.shape
    k = held.sum(axis=1)  # (units,)
    width = int(k.max()) if units else 0
    kept_scores = -np.sort(-np.where(held, scores, -np.inf), axis=1)[:, :width]  # (units, width)
    valid = np.arange(width)[None, :] < k[:, None]
    kept_scores = np.where(valid, kept_scores, 0.0)
    outside = np.where(allowed & ~held, scores, -np.inf).max(axis=1, initial=-np.inf)  # (units,)
    before = np.cumsum(kept_scores, axis=1) - kept_scores  # prefix sums sigma_{t-1}
    best_next = np.maximum(kept_scores, outside[:, None])
    gains = concave(concave_name, before + kept_scores) - concave(concave_name, before)
    best_gains = concave(concave_name, before + best_next) - concave(concave_name, before)
    delta = np.broadcast_to(np.asarray(delta, dtype=np.float64), (units,))
    return _alpha_beta_rows(gains, best_gains, valid, delta)
