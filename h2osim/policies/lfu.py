"""``lfu``: least frequently used, with "use" defined for attention (see :mod:`.lru`).

Score = how many served rows used the token (attention >= ``threshold`` x row max).
Ties go to the oldest token (the engine's rule). New tokens start at zero uses, so LFU
evicts fresh tokens early: the classic frequency-cache pathology, kept on purpose.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from h2osim.policies.base import ReplayContext, ScorePolicy, register
from h2osim.policies.lru import use_threshold, used_tokens


@register
@dataclass
class LFU(ScorePolicy):
    """Score = number of uses. Example: uses [12, 0, 4] -> evict 1."""

    name = "lfu"
    summary = "least frequently used (use = attention >= threshold x row max)"
    threshold: float = use_threshold()

    def reset(self, context: ReplayContext) -> None:
        super().reset(context)
        self.uses = np.zeros((context.units, context.n))  # (units, n)

    def observe(self, t: int, observed: np.ndarray, kept: np.ndarray) -> None:
        self.uses[:, : t + 1] += used_tokens(observed, self.threshold)

    def score(self, t: int, kept: np.ndarray) -> np.ndarray:
        return self.uses[:, : t + 1]
