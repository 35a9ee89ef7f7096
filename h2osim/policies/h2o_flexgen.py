"""``h2o-flexgen``: H2O as the official FlexGen integration runs it (FMInference/H2O,
``h2o_flexgen/flexgen/pytorch_backend.py``).

FlexGen keeps a heavy region and a recent ring in fixed slots. After prefill it prunes
the prompt to the best-scored heavy tokens plus the newest ones (prompt mode forced to
``full``). At each generated token it evicts the lightest token *of the heavy region*,
then the oldest token of the recent ring moves into the freed heavy slot and the new
token enters the ring. So the token leaving the recent window is promoted without
competing: when evicting one token, the newest ``recent + 1`` tokens are safe, where
plain ``h2o`` protects only ``recent`` and lets the leaving token compete at once.

Budget k from the replay; heavy = floor(heavy_ratio k), recent = k - heavy. Scores are
accumulated attention rows over the cache (FlexGen zeroes the new slot, then adds rows).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from h2osim.policies.base import lowest_scored, param, recent_mask, register
from h2osim.policies.h2o import AccumulatedAttention


@register
@dataclass
class H2OFlexGen(AccumulatedAttention):
    """Like h2o, but a token leaving the recent window is promoted, not judged, that step.

    Example: k=4, heavy_ratio=0.5 -> 2 heavy + 2 recent. At t=5 the candidates exclude
    tokens 3, 4 (leaving/in the ring) and 5 (new), where h2o would protect only 4 and 5.
    """

    name = "h2o-flexgen"
    summary = "H2O FlexGen: heavy region + recent ring, oldest recent promoted"
    prompt_mode = "full"
    heavy_ratio: float = param(0.5, "share of the budget for heavy hitters in h2o (rest: recent)")

    def __post_init__(self) -> None:
        if not 0.0 <= self.heavy_ratio <= 1.0:
            raise ValueError(f"heavy_ratio must be in [0, 1], got {self.heavy_ratio}")

    def recent_budget(self, budget: int) -> int:
        return budget - int(self.heavy_ratio * budget)

    def evict(self, t: int, kept: np.ndarray, count: int) -> np.ndarray:
        # One eviction per generated token: the ring's oldest token is being promoted.
        protected = self.recent + 1 if count == 1 else self.recent
        scores = self.accumulated_score[:, : t + 1].copy()  # (units, t+1)
        scores[:, recent_mask(t, protected)] = np.inf
        return lowest_scored(scores, kept, count)
