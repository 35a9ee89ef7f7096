"""``heavy``: heavy hitters only - H2O without its recent window (the paper's Table 9 ablation)."""

from __future__ import annotations

from dataclasses import dataclass

from h2osim.policies.base import register
from h2osim.policies.h2o import AccumulatedAttention


@register
@dataclass
class Heavy(AccumulatedAttention):
    """Keep the top-k tokens by accumulated observed attention (only the newest is protected).

    New tokens start with a score of zero, so they are evicted early unless they earn
    attention quickly: the known weakness the recent window of ``h2o`` fixes.
    """

    name = "heavy"
    summary = "heavy hitters only (no recent window)"

    def recent_budget(self, budget: int) -> int:
        return 0
