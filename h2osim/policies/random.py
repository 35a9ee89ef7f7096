"""``random``: evict a uniformly random cached token (never the newest); the floor of policies."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from h2osim.policies.base import ReplayContext, ScorePolicy, param, register


@register
@dataclass
class Random(ScorePolicy):
    """Fresh uniform scores every step; the same ``seed`` gives the same evictions."""

    name = "random"
    summary = "evict a random token (seeded)"
    seed: int = param(0, "random seed of the 'random' policy")

    def reset(self, context: ReplayContext) -> None:
        super().reset(context)
        self.rng = np.random.default_rng(self.seed)

    def score(self, t: int, kept: np.ndarray) -> np.ndarray:
        return self.rng.random(kept.shape)
