"""``h2o-global``: heavy hitters from global (non-causal) statistics - OFFLINE, a mask.

The official lm-eval-harness path for LLaMA since April 2024 (FMInference/H2O,
``h2o_hf/utils_lm_eval/modify_llama.py``) runs one forward pass over the whole sequence
of n tokens and builds one static mask per head from it:

- budgets from n: heavy h = int(``heavy_ratio`` n), recent r = int(``recent_ratio`` n);
  the replay's ``--budget`` is ignored;
- heavy = the top-h keys by column sum of the full attention matrix - the attention each
  key receives from *all* rows, rows after it included (a real cache cannot know them,
  hence offline); one set for the whole sequence;
- row i attends that set (keys <= i) plus the band of keys i-r..i, so rows 0..r are
  attended in full and masking starts at row r+1; the per-row size varies.

Rows are the full softmax rows (the unit's rows divided by their totals); ties: the
oldest key loses. Under GQA the unit's aggregated rows are used (the official code has
no GQA; ``--aggregation per-head`` is the official per-head rule).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from h2osim.policies.base import MaskPolicy, ReplayContext, param, register, top_scored


def normalised_rows(matrix: np.ndarray) -> np.ndarray:
    """``(n, n)`` float64 rows divided by their totals (what a softmax over all keys gives)."""
    rows = np.asarray(matrix, dtype=np.float64)
    total = rows.sum(axis=1, keepdims=True)
    return rows / np.where(total > 0, total, 1.0)


@dataclass
class WholeSequenceMask(MaskPolicy):
    """An offline mask computed at reset from every unit's whole matrix (lm-eval paths);
    both paths size it from the sequence length n with the same two ratios."""

    online = False
    heavy_ratio: float = param(
        0.1, "h2o-global/h2o-lmeval: heavy budget as a fraction of n", low=0.0, high=1.0
    )
    recent_ratio: float = param(
        0.1, "h2o-global/h2o-lmeval: recent band as a fraction of n", low=0.0, high=1.0
    )

    def sizes(self, n: int) -> tuple[int, int]:
        """``(h, r)`` from the sequence length. Example: n=435, 0.1/0.1 -> (43, 43)."""
        return int(self.heavy_ratio * n), int(self.recent_ratio * n)

    def fixed_budget(self, n: int, prompt_length: int) -> int | None:
        heavy, recent = self.sizes(n)
        return max(1, heavy + recent + 1)

    def reset(self, context: ReplayContext) -> None:
        super().reset(context)
        if context.unit_matrix is None:
            raise RuntimeError(f"{self.name} is offline and needs the unit matrices")
        n = context.n
        heavy, recent = self.sizes(n)
        rows = np.stack([normalised_rows(context.unit_matrix(u)) for u in range(context.units)])
        band = np.tril(np.triu(np.ones((n, n), dtype=bool), k=-recent))  # keys i-r..i
        self.masks = self.heavy_mask(rows, heavy) | band[None]  # (units, n, n)

    def heavy_mask(self, rows: np.ndarray, heavy: int) -> np.ndarray:
        raise NotImplementedError

    def attend(self, t: int) -> np.ndarray:
        return self.masks[:, t, : t + 1]


@register
@dataclass
class H2OGlobal(WholeSequenceMask):
    """Example: n=10, ratios 0.2/0.1 -> the 2 keys with the largest column sums, plus keys
    i-1 and i at row i."""

    name = "h2o-global"
    summary = "H2O lm-eval LLaMA path: static top column sums (sees the future) + recent band"

    def heavy_mask(self, rows: np.ndarray, heavy: int) -> np.ndarray:
        units, n, _ = rows.shape
        column_sums = rows.sum(axis=1)  # (units, n): all rows, future included
        chosen = top_scored(column_sums, np.ones((units, n), dtype=bool), heavy)  # (units, n)
        return np.tril(np.broadcast_to(chosen[:, None, :], (units, n, n)))
