"""``h2o``: the Heavy-Hitter Oracle (Zhang et al., NeurIPS 2023, arXiv 2306.14048, Alg. 1).

A token's score is its accumulated attention: the sum over every row served so far of
the attention it received (as observed: renormalised over the kept tokens by default).
The cache is split into a heavy budget (top accumulated scores) and a recent budget (the
newest tokens, always kept). The paper's default is 10% heavy + 10% recent, i.e. a
``heavy_ratio`` of 0.5 of the total budget. Greedy: one eviction decision per step,
never revisited. The official code sums unnormalised softmax rows per head; here the
GQA aggregation of a unit's query heads is the engine's explicit choice.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from h2osim.policies.base import ReplayContext, ScorePolicy, param, recent_mask, register


class AccumulatedAttention(ScorePolicy):
    """Score = accumulated observed attention; the newest ``recent_budget`` tokens protected.

    The shared base of ``h2o``, ``heavy`` and the variants that follow other code paths.
    ``decay`` < 1 multiplies old scores at every step (a forgetting factor, as in A2SF).
    """

    def recent_budget(self, budget: int) -> int:
        raise NotImplementedError

    def decay(self) -> float:
        return 1.0

    def reset(self, context: ReplayContext) -> None:
        super().reset(context)
        self.accumulated_score = np.zeros((context.units, context.n))  # (units, n)
        self.recent = self.recent_budget(context.budget)

    def observe(self, t: int, observed: np.ndarray, kept: np.ndarray) -> None:
        if self.decay() != 1.0:
            self.accumulated_score[:, :t] *= self.decay()
        self.accumulated_score[:, : t + 1] += observed

    def score(self, t: int, kept: np.ndarray) -> np.ndarray:
        return self.protected_scores(t, self.recent)

    def protected_scores(self, t: int, recent: int) -> np.ndarray:
        """Accumulated scores ``(units, t+1)`` with the newest ``recent`` tokens set to +inf."""
        scores = self.accumulated_score[:, : t + 1].copy()
        scores[:, recent_mask(t, recent)] = np.inf
        return scores


@register
@dataclass
class H2O(AccumulatedAttention):
    """Heavy hitters by accumulated attention + a recent window.

    With budget k: heavy = floor(heavy_ratio * k), recent = k - heavy.
    Example: k=4, heavy_ratio=0.5 -> 2 heavy + 2 recent. At t=4 with tokens 0..4 cached
    and accumulated scores [3.0, 0.2, 1.5, 0.1, 0.4], tokens 3 and 4 are recent and safe;
    of {0, 1, 2} the lowest, token 1, is evicted -> keeps {0, 2, 3, 4}.
    """

    name = "h2o"
    summary = "heavy hitters (accumulated attention) + recent window"
    heavy_ratio: float = param(
        0.5,
        "h2o and variants: share of the budget for heavy hitters (rest: recent); "
        "h2o-global/h2o-lmeval: heavy budget as a fraction of n",
        low=0.0,
        high=1.0,
    )

    def recent_budget(self, budget: int) -> int:
        return budget - int(self.heavy_ratio * budget)
