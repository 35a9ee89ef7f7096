"""``observed``: kvpress's ``ObservedAttentionPress`` (NVIDIA/kvpress,
``kvpress/presses/observed_attention_press.py``): a key's accumulated attention divided by
the number of queries that saw it.

kvpress scores key j of a prefilled prompt of n tokens by ``attentions.sum(2)`` (the
column sum of the causal attention) divided by n - j, the rows j..n-1 that could attend
it; under GQA the group's heads are averaged. Here the same at any step t: the observed
rows 0..t-1 summed, divided by t - j (the engine's aggregation combines a unit's heads;
sum and mean rank alike). Not H2O's score - H2O does not normalise, so old keys gain from
every row - but a popular one. In prompt mode ``prefill`` it is kvpress's press exactly.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from h2osim.policies.base import ReplayContext, ScorePolicy, register


@register
@dataclass
class Observed(ScorePolicy):
    """Score_j = sum of rows 0..t-1 at j / (t - j). Example: rows [1], [0.4, 0.6] at t=2 ->
    [1.4 / 2, 0.6 / 1] = [0.7, 0.6]: key 1 goes, though H2O (1.4 vs 0.6) agrees here."""

    name = "observed"
    summary = "kvpress ObservedAttention: accumulated attention / number of rows that saw it"

    def reset(self, context: ReplayContext) -> None:
        super().reset(context)
        self.accumulated = np.zeros((context.units, context.n))  # (units, n)

    def observe(self, t: int, observed: np.ndarray, kept: np.ndarray) -> None:
        self.accumulated[:, : t + 1] += observed

    def score(self, t: int, kept: np.ndarray) -> np.ndarray:
        seen_by = np.maximum(t - np.arange(t + 1), 1)  # rows j..t-1; the newest: protected anyway
        return self.accumulated[:, : t + 1] / seen_by
