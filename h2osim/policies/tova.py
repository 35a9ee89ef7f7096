"""``tova``: Token Omission Via Attention (Oren et al., arXiv 2401.06104).

TOVA evicts the token with the lowest attention from the current query. Under the
engine's contract a decision at step t may use rows < t only, so the "current" row is
the latest one served, row t-1 (observed, i.e. renormalised over the kept tokens by
default). With a GQA unit the rows of its query heads are aggregated by the engine
(TOVA itself averages heads).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from h2osim.policies.base import ReplayContext, ScorePolicy, register


@register
@dataclass
class Tova(ScorePolicy):
    """Score = attention in the latest served row. Example: last row [0.6, 0.1, 0.3] -> evict 1."""

    name = "tova"
    summary = "evict the lowest attention in the latest row"

    def reset(self, context: ReplayContext) -> None:
        super().reset(context)
        self.latest_row = np.zeros((context.units, context.n))  # (units, n)

    def observe(self, t: int, observed: np.ndarray, kept: np.ndarray) -> None:
        self.latest_row[:, : t + 1] = observed

    def score(self, t: int, kept: np.ndarray) -> np.ndarray:
        return self.latest_row[:, : t + 1]
