"""``sink``: StreamingLLM (Xiao et al., arXiv 2309.17453) - attention sinks + recent window."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from h2osim.policies.base import ScorePolicy, param, register


@register
@dataclass
class Sink(ScorePolicy):
    """Keep the first ``sinks`` tokens forever and the most recent ones in the rest.

    Example: k=4, sinks=1, after step 9 -> keeps {0, 7, 8, 9}.
    """

    name = "sink"
    summary = "StreamingLLM: first tokens (sinks) + recent window"
    sinks: int = param(4, "sink tokens kept forever by the 'sink' policy", low=0)

    def score(self, t: int, kept: np.ndarray) -> np.ndarray:
        positions = np.arange(t + 1, dtype=np.float64)
        positions[: self.sinks] = np.inf
        return np.broadcast_to(positions, kept.shape)
