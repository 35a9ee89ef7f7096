"""``h2o-drop``: H2O as the official real-drop code runs it (FMInference/H2O,
``h2o_hf/utils_real_drop``, ``H2OKVCache_LayerWise``).

That code really deletes K/V entries. After every forward pass - the prefill included -
it adds the pass's attention rows to each token's score and, when the cache is longer
than ``hh_size + recent_size``, keeps the ``recent_size`` newest tokens plus the
``hh_size`` best-scored older ones. So:

- the prompt is attended in full and compressed right after prefill (prompt mode
  forced to ``full``);
- sizes are absolute token counts (``heavy_size``, ``recent_size``), whatever the prompt
  or sequence length; the replay's ``--budget`` is ignored;
- a new token's row is served over ``heavy_size + recent_size`` kept tokens plus itself,
  so in the engine's terms the budget is ``heavy_size + recent_size + 1`` with the newest
  ``recent_size + 1`` protected.

The official class defaults are 4 heavy + 512 recent; the defaults here (64 + 64) suit
traces of a few hundred tokens. The official code scores per query head and has no GQA
support; the engine's aggregation makes that choice explicit.
"""

from __future__ import annotations

from dataclasses import dataclass

from h2osim.policies.base import param, register
from h2osim.policies.h2o import AccumulatedAttention


@register
@dataclass
class H2ODrop(AccumulatedAttention):
    """Budget heavy_size + recent_size + 1 (the newest); the newest recent_size + 1 protected.

    Example: heavy_size=2, recent_size=3 -> rows are served over 6 tokens: the newest,
    the 3 before it, and the 2 older tokens with the highest accumulated attention.
    """

    name = "h2o-drop"
    summary = "H2O real-drop code: absolute heavy/recent sizes, prompt compressed after prefill"
    prompt_mode = "full"
    heavy_size: int = param(64, "h2o-drop: heavy-hitter slots (absolute count)", low=0)
    recent_size: int = param(
        64, "h2o-drop: recent-window slots (absolute count, besides the newest)", low=0
    )

    def fixed_budget(self, n: int, prompt_length: int) -> int | None:
        return self.heavy_size + self.recent_size + 1

    def recent_budget(self, budget: int) -> int:
        return self.recent_size + 1
