"""``snapkv``: SnapKV (Li et al., arXiv 2404.14469) as kvpress's ``SnapKVPress`` runs it
(NVIDIA/kvpress, ``kvpress/presses/snapkv_press.py``).

Score of key j = the attention it gets from the last ``window`` queries (averaged over
them), smoothed along the keys by an average pool of width ``kernel`` (zero padding, so
edge keys are divided by the full width: ``avg_pool1d(..., padding=kernel // 2)``), over
the keys older than the window only; the window's own keys (and the newest) are always
kept (kvpress pads them with the maximum score). Under GQA kvpress averages the group's
heads; the engine's aggregation does it here (sum and mean rank alike; pooling and
averaging are linear, so their order does not matter).

At step t the window is the observed rows t-w..t-1 - in prompt mode ``prefill`` the last
w prompt queries, as in kvpress. While fewer than ``window`` + 1 rows have been seen,
every key is in the window and the policy keeps the newest (a recent window).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy.ndimage import uniform_filter1d

from h2osim.policies.base import ReplayContext, ScorePolicy, param, register


@register
@dataclass
class SnapKV(ScorePolicy):
    """Example (window 2, kernel 1): rows 3 and 4 give keys 0..2 [0.1, 0.6, 0.3] on average
    -> at t=5 keys 3, 4 (window) and 5 stay, key 0 goes first."""

    name = "snapkv"
    summary = "SnapKV (kvpress): last-window queries' attention, pooled; window kept"
    window: int = param(64, "snapkv: observation window (last queries scored)", low=1)
    kernel: int = param(5, "snapkv: width of the average pool along the keys (odd)", low=1)

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.kernel % 2 == 0:
            raise ValueError(
                f"kernel must be odd (kvpress pads kernel // 2 on each side), got {self.kernel}"
            )

    def reset(self, context: ReplayContext) -> None:
        super().reset(context)
        self.recent_rows = np.zeros((context.units, self.window, context.n))  # ring of rows

    def observe(self, t: int, observed: np.ndarray, kept: np.ndarray) -> None:
        slot = t % self.window  # row t replaces row t - window
        self.recent_rows[:, slot] = 0.0
        self.recent_rows[:, slot, : t + 1] = observed

    def score(self, t: int, kept: np.ndarray) -> np.ndarray:
        scores = np.full(kept.shape, np.inf)  # the window's keys and the newest: kept
        older = t - self.window  # keys 0..older-1 are scored
        if older > 0:
            mean = self.recent_rows[:, :, :older].sum(axis=1) / self.window  # (units, older)
            scores[:, :older] = uniform_filter1d(mean, self.kernel, axis=1, mode="constant")
        return scores
