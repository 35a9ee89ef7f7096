"""``full``: the uncompressed cache, the reference every other policy is measured against."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from h2osim.policies.base import Policy, register


@register
@dataclass
class Full(Policy):
    """Keep every token; the budget is ignored. Retained mass is 1 at every step."""

    name = "full"
    summary = "no eviction (reference)"

    def fixed_budget(self, n: int, prompt_length: int) -> int | None:
        return n

    def evict(self, t: int, kept: np.ndarray, count: int) -> np.ndarray:
        raise RuntimeError("the full cache never evicts; the engine must not ask it to")
