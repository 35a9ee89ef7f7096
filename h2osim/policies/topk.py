"""``topk``: the per-step upper bound - keep the best tokens of every row, re-admission allowed.

DESIGN.md, "Oracles and theory": at each step, the most retained mass any cache of the
engine's size could hold is the top of the current row (the newest token included,
since the engine always keeps it; during a fully attended prompt, everything). Summed
over steps this bounds ``opt`` and so every policy.

How it fits the engine: it does not. A cache that may re-admit evicted tokens is not a
cache the engine can replay (evicted tokens never return there), so ``topk`` is NOT a
registered policy - no replay, no evict calls, no entry in ``--policy all`` or in the
conformance matrix. It is a bound function, :func:`topk_bound`, computed from the same
metric weights and cache sizes the engine uses, returning a :class:`BoundResult` that the
replay table and plots show as one more row (``python -m h2osim.replay ... --policy opt``
adds it). Its ``retained_mass`` is the bound per step and unit; it has no hit rate, no
output error and no schedule.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from h2osim.oracles import cache_sizes, eviction_counts, topk_per_step

NAME = "topk"


@dataclass
class BoundResult:
    """The per-step bound, shaped like the parts of a ReplayResult that tables and plots read."""

    budget: int
    n: int
    prompt_length: int
    config: Any  # the ReplayConfig it was computed for
    unit_labels: tuple[tuple[int, int], ...]
    retained_mass: np.ndarray  # (n, units) float64: the bound per step and unit
    seconds: float = 0.0
    summary: dict[str, float | None] = field(default_factory=dict)
    policy: str = NAME
    description: str = "topk (bound: per-step best, re-admission allowed)"
    online: bool = False

    def record(self) -> dict[str, Any]:
        return {"policy": self.policy, "description": self.description, "online": self.online,
                "bound": True, "budget": self.budget, "budget_fraction": self.budget / self.n,
                "prompt_mode": self.config.prompt_mode, **self.summary,
                "seconds": round(self.seconds, 4)}  # fmt: skip


def topk_bound(trace, budget: float | int | str = 0.2, *, budget_of: str = "sequence",
               config=None) -> BoundResult:  # fmt: skip
    """The ``topk`` bound of ``trace`` at ``budget`` under ``config`` (a ReplayConfig).

    Example: one unit, rows [[1], [0.5, 0.5], [0.9, 0.05, 0.05]], k=2 -> per step
    [1, 1, 0.95] (row 2 keeps token 0 and the newest).
    """
    from h2osim.metrics import summarize
    from h2osim.replay import ReplayConfig, UnitLayout, resolve_budget

    config = config or ReplayConfig()
    started = time.perf_counter()
    layout = UnitLayout(trace, config)
    n, prompt = trace.n, trace.prompt_length
    budget_tokens = resolve_budget(budget, n, prompt, budget_of)
    sizes = cache_sizes(eviction_counts(n, budget_tokens, prompt, config.prompt_mode))
    bound = np.stack([topk_per_step(layout.weights(u), sizes) for u in range(layout.units)], 1)
    summary = summarize(bound, np.zeros_like(bound), None, prompt)
    summary["hit_rate"] = None  # a bound has no cache, so no hit rate
    return BoundResult(budget=budget_tokens, n=n, prompt_length=prompt, config=config,
                       unit_labels=layout.labels, retained_mass=bound,
                       seconds=time.perf_counter() - started, summary=summary)  # fmt: skip
