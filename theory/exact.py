"""Exact maximisers of set functions under a cardinality budget (small ground sets).

The reference every approximation bound is checked against. Brute force evaluates all
subsets at once (vectorised masks), so ground sets up to ~16 elements are instant; the
paper's own score (:class:`theory.functions.AccumulatedScore`) has a closed form, the
top-k, for any size. The exact optimum of the *eviction* problem (a whole schedule,
not one set) lives in :mod:`h2osim.oracles`.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from theory.functions import AccumulatedScore, SetFunction, concave

MAX_BRUTE_FORCE = 20


def all_masks(size: int) -> np.ndarray:
    """``(2**size, size)`` bool: every subset, subset number b has element i iff bit i of b.

    Example: size 2 -> [[F, F], [T, F], [F, T], [T, T]].
    """
    if size > MAX_BRUTE_FORCE:
        raise ValueError(f"brute force over 2**{size} subsets is too large (max {MAX_BRUTE_FORCE})")
    numbers = np.arange(2**size)[:, None]
    return (numbers >> np.arange(size)[None, :]) & 1 == 1


@dataclass(frozen=True)
class Optimum:
    """The best subset found and its value."""

    subset: tuple[int, ...]
    value: float


def brute_force_max(f: SetFunction, k: int, allowed: np.ndarray | None = None) -> Optimum:
    """max f(S) over |S| <= k (S within ``allowed``, a bool mask, if given).

    Ties: the subset with the smallest subset number. Example: coverage where element 0
    covers everything -> {0} is optimal for every k >= 1.
    """
    if k < 0:
        raise ValueError(f"k must be >= 0, got {k}")
    masks = all_masks(f.size)
    feasible = masks.sum(axis=1) <= k
    if allowed is not None:
        feasible &= ~(masks & ~np.asarray(allowed, dtype=bool)[None, :]).any(axis=1)
    candidates = masks[feasible]
    values = f.evaluate(candidates)
    best = int(np.argmax(values))
    return Optimum(tuple(int(i) for i in np.flatnonzero(candidates[best])), float(values[best]))


def accumulated_score_max(
    f: AccumulatedScore, k: int, allowed: np.ndarray | None = None
) -> Optimum:
    """The exact optimum of h(sum of scores) under |S| <= k: the k highest scores (h is
    non-decreasing). Ties: lower index first. Example: scores [1, 5, 3], k=2 -> {1, 2}."""
    scores = np.where(allowed, f.scores, -np.inf) if allowed is not None else f.scores
    order = np.lexsort((np.arange(f.size), -scores))[:k]
    order = order[np.isfinite(scores[order])]
    chosen = tuple(sorted(int(i) for i in order))
    return Optimum(chosen, float(concave(f.concave_name, f.scores[list(chosen)].sum())))
