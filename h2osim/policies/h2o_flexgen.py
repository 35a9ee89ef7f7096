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

from h2osim.policies.base import lowest_scored, register
from h2osim.policies.h2o import H2O


@register
@dataclass
class H2OFlexGen(H2O):
    """Like h2o, but a token leaving the recent window is promoted, not judged, that step.

    Example: k=4, heavy_ratio=0.5 -> 2 heavy + 2 recent. At t=5 the candidates exclude
    tokens 3, 4 (leaving/in the ring) and 5 (new), where h2o would protect only 4 and 5.
    """

    name = "h2o-flexgen"
    summary = "H2O FlexGen: heavy region + recent ring, oldest recent promoted"
    prompt_mode = "full"

    def evict(self, t: int, kept: np.ndarray, count: int) -> np.ndarray:
        # One eviction per generated token: the ring's oldest token is being promoted.
        protected = self.recent + 1 if count == 1 else self.recent
        return lowest_scored(self.protected_scores(t, protected), kept, count)
