"""``h2o-flexgen``: H2O as the official FlexGen integration runs it (FMInference/H2O,
``h2o_flexgen/flexgen/pytorch_backend.py``).

FlexGen keeps a heavy region and a recent ring in fixed slots. After prefill it prunes
the prompt to the best-scored heavy tokens plus the newest ones (prompt mode forced to
``full``). At each generated token it evicts the lightest token *of the heavy region*,
then the oldest token of the recent ring moves into the freed heavy slot and the new
token enters the ring. So the token leaving the recent window is promoted without
competing: when evicting one token, the newest ``recent + 1`` tokens are safe, where
plain ``h2o`` protects only ``recent`` and lets the leaving token compete at once.

Budget as the official integration sets it: hh_k = int(``heavy_prompt_ratio`` P) heavy
slots and as many recent ones, k = 2 hh_k (the replay's ``--budget`` is ignored). Scores
are accumulated attention rows over the cache (FlexGen zeroes the new slot, then adds
rows). The official code raises on some tiny budgets (hh_k = 0, or a ring larger than
what is left); here hh_k is at least 1.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from h2osim.policies.base import lowest_scored, param, register
from h2osim.policies.h2o import AccumulatedAttention


@register
@dataclass
class H2OFlexGen(AccumulatedAttention):
    """Like h2o, but a token leaving the recent window is promoted, not judged, that step.

    Example: P=20, heavy_prompt_ratio=0.1 -> hh_k=2, k=4: 2 heavy + 2 recent. At t=25 the
    candidates exclude tokens 23, 24 (leaving/in the ring) and 25 (new), where h2o would
    protect only 24 and 25.
    """

    name = "h2o-flexgen"
    summary = "H2O FlexGen: heavy region + recent ring of int(r P) slots each, oldest promoted"
    prompt_mode = "full"
    heavy_prompt_ratio: float = param(
        0.1, "h2o-mask/-2023/-flexgen: heavy budget as a fraction of the prompt length",
        low=0.0, high=1.0,
    )  # fmt: skip

    def fixed_budget(self, n: int, prompt_length: int) -> int | None:
        return 2 * max(1, int(self.heavy_prompt_ratio * prompt_length))

    def recent_budget(self, budget: int) -> int:
        return budget - budget // 2

    def evict(self, t: int, kept: np.ndarray, count: int) -> np.ndarray:
        # One eviction per generated token: the ring's oldest token is being promoted.
        protected = self.recent + 1 if count == 1 else self.recent
        return lowest_scored(self.protected_scores(t, protected), kept, count)
