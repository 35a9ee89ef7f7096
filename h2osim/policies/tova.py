"""``tova``: Token Omission Via Attention (Oren et al., "Transformers are Multi-State
RNNs", arXiv 2401.06104, Sec. 3.3; official code: schwartz-lab-NLP/TOVA), and
``tova-kv``, the same score kept per KV head.

TOVA evicts the token with the lowest attention from the current query. As published,
the score is that row **averaged over all query heads of the layer**, and one kept set
is shared by the whole layer (kvpress's ``TOVAPress`` does the same: ``attentions.mean(1)``,
repeated for every KV head). ``tova`` averages the latest rows of all cache units of a layer
(their heads combined by the replay's aggregation: with sum or mean that is the layer's
head average, and per-head units are the heads themselves), so every unit of a layer gets
the same score and keeps the same set - in any unit layout, replay or live (the ``layer``
aggregation gives the same sets with one unit per layer). ``tova-kv`` is the variant this
project shipped first: one set per cache unit (per KV head, the group's heads combined).

Under the engine's contract a decision at step t may use rows < t only, so the "current"
row is the latest one served, row t-1 (observed, i.e. renormalised over the kept tokens
by default). In prompt mode ``prefill`` that is the last prompt row, as in kvpress.
Difference from kvpress's press: kvpress gives the last prompt token the maximum score
(always kept); here it keeps its own attention (TOVA's rule; see docs/fidelity.md for
whether it mattered on the golden texts).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from h2osim.policies.base import ReplayContext, ScorePolicy, register


class LatestRow(ScorePolicy):
    """Score = attention in the latest served row. Example: last row [0.6, 0.1, 0.3] -> evict 1."""

    def reset(self, context: ReplayContext) -> None:
        super().reset(context)
        self.latest_row = np.zeros((context.units, context.n))  # (units, n)

    def observe(self, t: int, observed: np.ndarray, kept: np.ndarray) -> None:
        self.latest_row[:, : t + 1] = observed

    def score(self, t: int, kept: np.ndarray) -> np.ndarray:
        return self.latest_row[:, : t + 1]


@register
@dataclass
class Tova(LatestRow):
    """TOVA as published: one kept set per layer, the latest row averaged over its heads.

    Example: a layer's two KV units saw [0.5, 0.3, 0.2] and [0.001, 0.299, 0.7] (two heads
    each, summed) -> both score [0.2505, 0.2995, 0.45] / 2 and evict key 0."""

    name = "tova"
    summary = "TOVA: evict the lowest attention in the latest row, heads of a layer averaged"

    def reset(self, context: ReplayContext) -> None:
        super().reset(context)
        layers = np.array([layer for layer, _ in context.unit_labels])
        _, self.layer_of = np.unique(layers, return_inverse=True)  # (units,) layer index
        self.units_in_layer = np.bincount(self.layer_of).astype(np.float64)  # (layers,)

    def score(self, t: int, kept: np.ndarray) -> np.ndarray:
        rows = self.latest_row[:, : t + 1]  # (units, t+1)
        per_layer = np.zeros((len(self.units_in_layer), t + 1))
        np.add.at(per_layer, self.layer_of, rows)
        return (per_layer / self.units_in_layer[:, None])[self.layer_of]


@register
@dataclass
class TovaKV(LatestRow):
    """TOVA's score per cache unit of the replay's aggregation (per KV head by default)."""

    name = "tova-kv"
    summary = "TOVA per KV head (the replay's aggregation), not per layer"
