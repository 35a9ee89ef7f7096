"""``lru``: least recently used, with "use" defined for attention.

A cached token is *used* by row t when its observed attention is at least
``threshold`` times the row's maximum (default 1%, the paper's sparsity cut-off).
Admission counts as a use. The classic cache policy, translated to KV caches.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from h2osim.metrics import SIGNIFICANCE
from h2osim.policies.base import ReplayContext, ScorePolicy, param, register


def use_threshold() -> float:
    """The ``threshold`` hyperparameter shared by lru and lfu (a dataclass field)."""
    return param(SIGNIFICANCE, "lru/lfu: a token is used when attention >= threshold x row max",
                 low=0.0, high=1.0)  # fmt: skip


def used_tokens(observed: np.ndarray, threshold: float) -> np.ndarray:
    """``(units, t+1)`` bool: observed attention >= threshold x the row max (and > 0).

    Example: row [0.5, 0.004, 0.2], threshold 0.01 -> [True, False, True].
    """
    cutoff = threshold * observed.max(axis=1, keepdims=True)
    return (observed >= cutoff) & (observed > 0)


@register
@dataclass
class LRU(ScorePolicy):
    """Score = the last step a token was used. Example: last use [9, 3, 7] -> evict 1."""

    name = "lru"
    summary = "least recently used (use = attention >= threshold x row max)"
    threshold: float = use_threshold()

    def reset(self, context: ReplayContext) -> None:
        super().reset(context)
        self.last_used = np.zeros((context.units, context.n))  # (units, n)

    def observe(self, t: int, observed: np.ndarray, kept: np.ndarray) -> None:
        recent = self.last_used[:, : t + 1]
        recent[:, t] = t  # admission is a use
        recent[used_tokens(observed, self.threshold)] = t

    def score(self, t: int, kept: np.ndarray) -> np.ndarray:
        return self.last_used[:, : t + 1]
