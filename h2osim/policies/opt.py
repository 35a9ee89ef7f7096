"""``opt``: the exact offline optimum of retained attention mass under permanent eviction.

docs/theory.md, "The oracles". Knowing the unit's whole trace, ``opt`` plans the
eviction schedule that maximises the total retained mass of the replay it is in - the
same budget, the same prompt mode (several evictions at once after a fully attended
prompt), the same rule that the newest token stays - by the assignment formulation in
:mod:`h2osim.oracles`: OPT = total mass - min-cost assignment of eviction slots to
distinct older tokens, solved by :func:`h2osim.oracles.solve_fast` (cost-scaled shortest
augmenting paths, :mod:`h2osim.fastopt`; ``solve_assignment``, scipy's
``linear_sum_assignment``, is its cross-check in the tests). It returns
the schedule (which token leaves at which step), not only the value; the engine replays
it like any policy. Its weights are the engine's own metric weights, so for every
aggregation (sum, mean, max, per-head) no policy replayed at the same budget and prompt
mode retains more mass. Only retained mass is optimised, not hit rate or output error.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from h2osim.oracles import Schedule, ScheduledPolicy, solve_fast
from h2osim.policies.base import register


@register
@dataclass
class Opt(ScheduledPolicy):
    """Plan the optimal schedule in ``reset``, then evict from it.

    Example: rows [[1], [0.5, 0.5], [0.9, 0, 0.1]], k=2: at step 2 evicting token 1 loses
    nothing, token 0 would lose 0.9 -> evict 1 (Belady agrees here; see
    tests/test_oracles.py for a trace where they differ).
    """

    name = "opt"
    summary = "offline optimum of retained mass (exact, assignment)"

    def plan(self, weights: np.ndarray, counts: np.ndarray) -> Schedule:
        return solve_fast(weights, counts)
