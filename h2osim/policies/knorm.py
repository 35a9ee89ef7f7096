"""``knorm``: kvpress's ``KnormPress`` (NVIDIA/kvpress, ``kvpress/presses/knorm_press.py``;
Devoto et al., arXiv 2406.11430): keep the keys with the *smallest* L2 norm (score =
minus the norm). Reads no attention at all - the norms come from the trace's optional
``key_norms`` member (replay) or the live cache's keys (live eviction). Keys are cached
after RoPE; a rotation keeps the norm, so pre- and post-RoPE norms rank alike.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

import numpy as np

from h2osim.policies.base import ScorePolicy, register


@register
@dataclass
class Knorm(ScorePolicy):
    """Example: key norms [3.0, 9.0, 4.0, 5.0] at t=3 -> key 1 (largest norm) goes first."""

    name = "knorm"
    summary = "kvpress Knorm: evict the keys with the largest L2 norm"
    needs_key_norms: ClassVar[bool] = True

    def score(self, t: int, kept: np.ndarray) -> np.ndarray:
        if self.context.key_norms is None:
            raise ValueError("knorm needs key norms: replay a trace dumped with them, or run live")
        return -np.asarray(self.context.key_norms(t), dtype=np.float64)
