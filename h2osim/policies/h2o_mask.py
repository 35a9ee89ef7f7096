"""``h2o-mask``: H2O as the official masking simulation runs it today (FMInference/H2O,
``h2o_hf/utils_hh/modify_llama.py`` at HEAD, class ``LlamaAttention_heavy_hitter``; the
path behind the paper's accuracy tables). A **mask**, not a cache: see docs/fidelity.md.

What that code does, and this policy reproduces row by row (per query head with
``--aggregation per-head``; tests/test_golden.py compares it with the official code's
own output):

- budgets once, from the prompt length P: heavy h = int(``heavy_prompt_ratio`` P),
  recent r = int(``recent_prompt_ratio`` P); the replay's ``--budget`` is ignored;
- the prompt is attended in full (one forward pass); the first masked row is P;
- row L is masked once L > h + r: it attends the r newest keys L-r+1..L (the new token
  included) and the top-h accumulated scores among keys 0..L-r-1. Key L-r is in neither
  set for that one row and competes again at the next: a key can come back
  (re-admission). With r = 0 the row attends its top-h older keys only, not itself
  (h = r = 0: nothing - the row is served over an empty set, retained mass 0);
- scores accumulate the attended rows (softmax over the attended keys, i.e. the engine's
  renormalised observation); after each row, every key that is neither a chosen heavy
  hitter nor among the r newest loses its score (set to 0) - the official ``score_mask``;
- ties: the oldest key loses (the official code leaves the order to ``torch.topk``).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from h2osim.policies.base import MaskPolicy, ReplayContext, param, register, top_scored


@dataclass
class MaskingSimulation(MaskPolicy):
    """The masking simulation of ``utils_hh``; ``gap`` chooses HEAD (True) or paper-era.
    Both versions take the same two parameters, declared here once."""

    gap = True  # HEAD: key L-r is masked for one row; paper-era (no clone()): attended
    heavy_prompt_ratio: float = param(
        0.1, "h2o-mask/-2023/-flexgen: heavy budget as a fraction of the prompt length",
        low=0.0, high=1.0,
    )  # fmt: skip
    recent_prompt_ratio: float = param(
        0.1, "h2o-mask/-2023: recent budget as a fraction of the prompt length", low=0.0, high=1.0
    )

    def fixed_budget(self, n: int, prompt_length: int) -> int | None:
        heavy, recent = self.sizes(prompt_length)
        return max(1, heavy + recent + (0 if self.gap else 1))

    def sizes(self, prompt_length: int) -> tuple[int, int]:
        """``(h, r)``. Example: P=48, ratios 0.1/0.1 -> (4, 4)."""
        return (int(self.heavy_prompt_ratio * prompt_length),
                int(self.recent_prompt_ratio * prompt_length))  # fmt: skip

    def reset(self, context: ReplayContext) -> None:
        super().reset(context)
        self.heavy, self.recent = self.sizes(context.prompt_length)
        self.score = np.zeros((context.units, context.n))  # (units, n) accumulated
        self.next_mask: np.ndarray | None = None  # (units, t+2) row mask for the next row

    def attend(self, t: int) -> np.ndarray:
        if self.next_mask is None or self.next_mask.shape[1] != t + 1:
            return np.ones((self.context.units, t + 1), dtype=bool)  # prompt rows: in full
        return self.next_mask

    def observe(self, t: int, observed: np.ndarray, kept: np.ndarray) -> None:
        self.score[:, : t + 1] += observed
        if t < self.context.prompt_length - 1 or t + 1 >= self.context.n:
            return  # the prompt is one forward pass: masks are computed after its last row
        self.next_mask = self.mask_for(t + 1)

    def mask_for(self, row: int) -> np.ndarray:
        """The official mask of ``row`` (keys 0..row) from the scores so far; zeroes the
        scores of the keys it drops, as ``previous_scores * score_mask`` does."""
        units, h, r = self.context.units, self.heavy, self.recent
        mask = np.ones((units, row + 1), dtype=bool)
        if row <= h + r:
            return mask  # the cache is not full yet: nothing masked
        mask[:] = False
        pool = row - r if r else row  # heavy candidates: keys 0..pool-1
        allowed = np.zeros((units, row + 1), dtype=bool)
        allowed[:, :pool] = True
        heavy = top_scored(self.score[:, : row + 1], allowed, h)
        mask |= heavy
        if r:
            mask[:, row - r + 1 :] = True
            keep_score = heavy.copy()
            keep_score[:, row - r :] = True  # the r newest keys of 0..row-1 keep their score
            self.score[:, : row + 1] *= keep_score
            if not self.gap:
                mask[:, row - r] = True  # paper-era: the score mask is the attention mask
        elif not self.gap:
            mask[:] = True  # paper-era, r = 0: that code never zeroed the mask: the full row
        return mask  # HEAD, h = r = 0: an empty row (the official mask attends nothing)


@register
@dataclass
class H2OMask(MaskingSimulation):
    """HEAD semantics. Example: P=20, ratios 0.2/0.1 -> h=4, r=2; row 30 attends keys 29,
    30 and the best 4 of keys 0..27; key 28 is masked for that row only."""

    name = "h2o-mask"
    summary = "H2O masking simulation (utils_hh, HEAD): mask from the prompt's budgets, gap key"
    prompt_mode = "full"
