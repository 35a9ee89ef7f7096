"""``h2o-global``: heavy hitters from global (non-causal) statistics - OFFLINE.

The official lm-eval-harness path for LLaMA (FMInference/H2O, ``h2o_hf/utils_lm_eval``,
after an April 2024 change) runs one forward pass over the whole sequence and ranks
tokens by the column sums of the full attention matrix: the attention each token
receives from *all* rows, including rows that come after it. A real cache cannot know
those rows, so this policy is declared offline: it reads the unit's whole attention
matrix up front. Otherwise it is ``h2o``: heavy = floor(heavy_ratio k) by global score,
recent = k - heavy.

With fixed scores, greedy permanent eviction keeps exactly what the official static
mask keeps (a token once out-ranked by h kept tokens stays out-ranked), so the
comparison with ``h2o`` isolates the value of seeing the future.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from h2osim.policies.base import ReplayContext, ScorePolicy, param, recent_mask, register


@register
@dataclass
class H2OGlobal(ScorePolicy):
    """Score = column sum of the unit's full attention matrix (all rows, future included).

    Example: rows [[1], [0.5, 0.5], [0.1, 0.8, 0.1]] -> scores [1.6, 1.3, 0.1].
    """

    name = "h2o-global"
    summary = "H2O with global column sums (lm-eval path; sees the future)"
    online = False
    heavy_ratio: float = param(
        0.5, "share of the budget for heavy hitters in h2o (rest: recent)", low=0.0, high=1.0
    )

    def reset(self, context: ReplayContext) -> None:
        super().reset(context)
        if context.unit_matrix is None:
            raise RuntimeError("h2o-global is offline and needs the unit matrices")
        self.global_score = np.stack(
            [context.unit_matrix(u).sum(axis=0) for u in range(context.units)]
        )
        self.recent = context.budget - int(self.heavy_ratio * context.budget)

    def score(self, t: int, kept: np.ndarray) -> np.ndarray:
        scores = self.global_score[:, : t + 1].copy()  # (units, t+1)
        scores[:, recent_mask(t, self.recent)] = np.inf
        return scores
