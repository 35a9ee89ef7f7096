"""``belady``: evict the cached token with the least future attention mass (clairvoyant).

The analogue of Belady's MIN for classic caches (evict what is needed furthest in the
future): here a token's future need is its remaining mass ``F[t, j] = sum_{s >= t} W[s, j]``
(docs/theory.md, "The oracles"). Unlike MIN for hit counts it is NOT optimal for
retained mass - it ignores *when* the mass comes, so it can keep a token whose mass
arrives late over one needed now. ``opt`` (:mod:`.opt`) is never worse; the tests show
a 5-token trace where it is strictly better. Ties go to the oldest token.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from h2osim.oracles import Schedule, ScheduledPolicy, belady_schedule
from h2osim.policies.base import register


@register
@dataclass
class Belady(ScheduledPolicy):
    """Score = future mass from the current step on. Example: F[t] = [2.0, 0.1, 0.7] -> evict 1."""

    name = "belady"
    summary = "evict the least future mass (clairvoyant, not optimal)"

    def plan(self, weights: np.ndarray, counts: np.ndarray) -> Schedule:
        return belady_schedule(weights, counts)
