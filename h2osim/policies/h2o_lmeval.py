"""``h2o-lmeval``: the lm-eval-harness path of the paper's OPT / GPT-NeoX results (and of
LLaMA before April 2024): ``local_heavy_hitter_mask`` in FMInference/H2O
``h2o_hf/utils_lm_eval/modify_opt.py`` (same function in ``modify_gptneox.py`` and the
old ``modify_llama.py``). OFFLINE (one forward pass over the whole sequence), a mask.

What that code does, per head, and this policy reproduces:

- budgets from the sequence length n: heavy h = int(``heavy_ratio`` n), recent
  r = int(``recent_ratio`` n); the replay's ``--budget`` is ignored;
- rows 0..h-1 are attended in full; a tracker starts with the column sums of those rows;
- row i >= h attends the tracker's top h-1 keys plus key i; then the tracker adds row i
  and zeroes every key it did not attend, so it follows h keys at a time;
- the rows it adds are the full softmax rows over all keys - **not** renormalised over
  the attended ones (what a real cache could not see: hence offline);
- a recent band of keys i-r..i is ORed on top (the band does not feed the tracker).
  With h = 0 only the band is attended (the LLaMA version's guard; OPT's code raises).

Ties: the oldest key loses (``torch.topk`` leaves the order open), zero-scored keys
included.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from h2osim.policies.base import register, top_scored
from h2osim.policies.h2o_global import WholeSequenceMask


@register
@dataclass
class H2OLmEval(WholeSequenceMask):
    """Example: n=20, ratios 0.2/0.1 -> h=4, r=2: rows 0..3 in full; row 10 attends the
    tracker's best 3 keys, keys 8, 9 (band) and 10."""

    name = "h2o-lmeval"
    summary = "H2O lm-eval OPT/NeoX path: local_heavy_hitter_mask (tracker of h keys) + band"

    def heavy_mask(self, rows: np.ndarray, heavy: int) -> np.ndarray:
        units, n, _ = rows.shape
        mask = np.zeros((units, n, n), dtype=bool)
        if heavy <= 0:
            return mask
        mask[:, :heavy, :heavy] = True
        tracker = rows[:, :heavy].sum(axis=1)  # (units, n): keys < h only
        everywhere = np.ones((units, n), dtype=bool)
        for i in range(heavy, n):
            chosen = top_scored(tracker, everywhere, heavy - 1)  # over all n keys
            chosen[:, i] = True
            mask[:, i] = chosen
            tracker = (tracker + rows[:, i]) * chosen
        return np.tril(mask)
