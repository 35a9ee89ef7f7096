"""``scissorhands``: persistence of importance (Liu et al., NeurIPS 2023, arXiv 2305.17118).

Scissorhands observes that tokens important in the past stay important, and drops the
tokens that were *unimportant* most often within a history window: a token counts as
unimportant in a row when its observed attention is below the row's average over the
kept tokens (1 / number kept). The newest ``recent_ratio`` of the budget is protected,
as in the paper's Algorithm 2. Simplification: the paper compresses in batches of m
tokens when the cache fills; here, like every policy in the engine, one eviction per step.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from h2osim.policies.base import ReplayContext, ScorePolicy, param, recent_mask, register


@register
@dataclass
class Scissorhands(ScorePolicy):
    """Score = minus the count of "unimportant" rows in the last ``history`` rows.

    Example: history 4, a token below average in 3 of the last 4 rows scores -3 and
    goes before one below average once (-1).
    """

    name = "scissorhands"
    summary = "drop tokens unimportant most often in a history window"
    history: int = param(32, "scissorhands: history window (rows) for counting unimportance", low=1)
    recent_ratio: float = param(
        0.25, "scissorhands: share of the budget kept as a recent window", low=0.0, high=1.0
    )

    def reset(self, context: ReplayContext) -> None:
        super().reset(context)
        self.window_rows = np.zeros((self.history, context.units, context.n), dtype=bool)
        self.unimportant_count = np.zeros((context.units, context.n))  # (units, n)
        self.recent = int(round(self.recent_ratio * context.budget))

    def observe(self, t: int, observed: np.ndarray, kept: np.ndarray) -> None:
        kept_count = np.count_nonzero(kept, axis=1, keepdims=True)  # (units, 1)
        unimportant = kept & (observed < 1.0 / kept_count)  # (units, t+1)
        slot = self.window_rows[t % self.history]
        self.unimportant_count -= slot  # forget the row that leaves the window
        slot[:] = False
        slot[:, : t + 1] = unimportant
        self.unimportant_count += slot

    def score(self, t: int, kept: np.ndarray) -> np.ndarray:
        scores = -self.unimportant_count[:, : t + 1]  # (units, t+1)
        scores[:, recent_mask(t, self.recent)] = np.inf
        return scores
