"""``window``: local attention / FIFO - keep the k most recent tokens."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from h2osim.policies.base import ScorePolicy, register


@register
@dataclass
class Window(ScorePolicy):
    """Evict the oldest cached token (first in, first out).

    Example: k=3 after step 4 -> keeps {2, 3, 4}. The paper's "local" baseline; it
    collapses once the attention sink (token 0) leaves (StreamingLLM, arXiv 2309.17453).
    """

    name = "window"
    summary = "keep the k most recent tokens (FIFO)"

    def score(self, t: int, kept: np.ndarray) -> np.ndarray:
        return np.broadcast_to(np.arange(t + 1, dtype=np.float64), kept.shape)
