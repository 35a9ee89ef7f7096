"""``h2o-mask``: H2O as the official masking simulation runs it (FMInference/H2O,
``h2o_hf/utils_hh``, the path behind the paper's accuracy tables).

What that code does, and this policy reproduces:

- the prompt is attended in full (one forward pass); eviction starts with the first
  generated token (the engine's prompt mode is forced to ``full``);
- budgets come from the prompt length P, not the sequence: heavy = floor(0.1 P),
  recent = floor(0.1 P) by default (``heavy_prompt_ratio``, ``recent_prompt_ratio``); the
  recent window includes the newest token; the replay's ``--budget`` is ignored;
- scores are accumulated softmax rows over the unmasked tokens (renormalised), per head
  in the official code (use ``--aggregation per-head`` to match it exactly).

Difference from ``h2o``: the budget is fixed by the prompt, so it does not grow with
generated text, and nothing is evicted while the prompt is read.
"""

from __future__ import annotations

from dataclasses import dataclass

from h2osim.policies.base import param, register
from h2osim.policies.h2o import AccumulatedAttention


@register
@dataclass
class H2OMask(AccumulatedAttention):
    """Budget = floor(h P) + floor(r P) tokens (at least 1); the newest floor(r P) are protected.

    Example: P=20, ratios 0.1/0.1 -> 2 heavy + 2 recent = 4 tokens per unit after prefill.
    """

    name = "h2o-mask"
    summary = "H2O masking simulation: budgets from the prompt, prompt in full"
    prompt_mode = "full"
    heavy_prompt_ratio: float = param(
        0.1, "h2o-mask: heavy budget as a fraction of the prompt length", low=0.0, high=1.0
    )
    recent_prompt_ratio: float = param(
        0.1, "h2o-mask: recent budget as a fraction of the prompt length", low=0.0, high=1.0
    )

    def fixed_budget(self, n: int, prompt_length: int) -> int | None:
        heavy = int(self.heavy_prompt_ratio * prompt_length)
        recent = int(self.recent_prompt_ratio * prompt_length)
        return max(1, heavy + recent)

    def recent_budget(self, budget: int) -> int:
        return max(1, int(self.recent_prompt_ratio * self.context.prompt_length))
