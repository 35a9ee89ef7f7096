"""Greedy optimisers that record their marginal gains: naive, lazy (Minoux), noisy.

Nemhauser, Wolsey & Fisher (1978): for monotone submodular f, k greedy picks reach
(1 - 1/e) of the best k-set. Lazy greedy (Minoux 1978) keeps stale gains as upper bounds
(valid by submodularity) and re-evaluates only the top one: same picks, fewer
evaluations. Noisy greedy picks by gains off by at most eps - the setting of the H2O
paper's Cor. D.18 (after Qin, Song & Wang), where accumulated scores are approximate.

Every run records, per pick, the true gain of the chosen element and the best true gain
available, so bounds can be checked step by step. Ties go to the lowest index.
"""

from __future__ import annotations

import heapq
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from theory.functions import SetFunction


@dataclass(frozen=True)
class GreedyRun:
    """What a greedy run did, pick by pick."""

    chosen: tuple[int, ...]  # elements in the order picked
    gains: np.ndarray  # (picks,) true gain f(S_t + x_t) - f(S_t) of each pick
    best_gains: np.ndarray  # (picks,) best true gain available at that pick
    values: np.ndarray  # (picks + 1,) f(S_0 = empty), f(S_1), ...
    evaluations: int  # set-function evaluations spent

    @property
    def value(self) -> float:
        return float(self.values[-1])

    def mask(self, size: int) -> np.ndarray:
        mask = np.zeros(size, dtype=bool)
        mask[list(self.chosen)] = True
        return mask


def _allowed(f: SetFunction, allowed: np.ndarray | None) -> np.ndarray:
    return np.ones(f.size, dtype=bool) if allowed is None else np.asarray(allowed, dtype=bool)


def greedy(f: SetFunction, k: int, allowed: np.ndarray | None = None) -> GreedyRun:
    """Naive greedy: k times, add the element with the largest gain (all gains evaluated).

    Example: coverage where element 0 covers {a, b}, element 1 covers {b, c}, element 2
    covers {c}, unit weights, k=2 -> picks 0 (gain 2) then 1 (gain 1): value 3.
    """
    return noisy_greedy(f, k, lambda step, mask: np.zeros(f.size), allowed)


def noisy_greedy(
    f: SetFunction,
    k: int,
    noise: Callable[[int, np.ndarray], np.ndarray],
    allowed: np.ndarray | None = None,
) -> GreedyRun:
    """Greedy by noisy gains: pick argmax of gain + noise(step, S) (``(size,)`` floats).

    With |noise| <= eps, each pick's true gain is within 2 eps of the best, and
    f(S) >= (1 - 1/e) OPT - k (2 - 1/e) eps (:func:`theory.bounds.noisy_gain_bound`).
    """
    candidates = _allowed(f, allowed)
    mask = np.zeros(f.size, dtype=bool)
    chosen, gains, best_gains, values = [], [], [], [f(mask)]
    evaluations = 1
    for step in range(min(k, int(candidates.sum()))):
        true_gain = f.gains(mask)  # (size,)
        evaluations += f.size
        open_ = candidates & ~mask
        perceived = np.where(open_, true_gain + np.asarray(noise(step, mask.copy())), -np.inf)
        pick = int(np.argmax(perceived))  # first maximum: lowest index
        chosen.append(pick)
        gains.append(true_gain[pick])
        best_gains.append(true_gain[open_].max())
        mask[pick] = True
        values.append(values[-1] + true_gain[pick])
    return GreedyRun(tuple(chosen), np.array(gains), np.array(best_gains), np.array(values),
                     evaluations)  # fmt: skip


def lazy_greedy(f: SetFunction, k: int, allowed: np.ndarray | None = None) -> GreedyRun:
    """Minoux's lazy greedy: stale gains are upper bounds; re-evaluate only the top one.

    For submodular f it picks exactly what :func:`greedy` picks (same tie rule) with
    fewer evaluations; for other f stale gains are not bounds and picks may differ.
    ``best_gains`` records the chosen gain (the best one, by submodularity), since
    lazy greedy never evaluates the rest.
    """
    candidates = np.flatnonzero(_allowed(f, allowed))
    mask = np.zeros(f.size, dtype=bool)
    current = f(mask)
    singles = f.gains(mask)
    evaluations = 1 + f.size
    # (-upper bound, element, pick round the bound was computed in): fresh when it is now.
    heap = [(-float(singles[x]), int(x), 0) for x in candidates]
    heapq.heapify(heap)
    chosen, gains, values = [], [], [current]
    while heap and len(chosen) < k:
        bound, element, computed = heapq.heappop(heap)
        if computed == len(chosen):  # exact for the current set, and no other can beat it
            chosen.append(element)
            gains.append(-bound)
            mask[element] = True
            current -= bound
            values.append(current)
            continue
        grown = mask.copy()
        grown[element] = True
        heapq.heappush(heap, (-(f(grown) - current), element, len(chosen)))
        evaluations += 1
    return GreedyRun(tuple(chosen), np.array(gains), np.array(gains), np.array(values),
                     evaluations)  # fmt: skip
