"""Set functions on ground sets {0..n-1}: what is optimised, apart from how (apricot's split).

Each family says whether it is monotone (f(S) <= f(T) for S <= T) and submodular
(diminishing returns: f(A+x) - f(A) >= f(B+x) - f(B) for A <= B, x not in B); the tests
check both claims with :mod:`theory.submodularity`. Everything evaluates boolean masks
``(m, n)`` at once, so brute force and the checker stay vectorised.

Families (H2O paper, App. D; docs/theory.md):

- :class:`AccumulatedScore` - the paper's score f(S) = h(sum of accumulated scores over S),
  h in {identity, sqrt(z+1), log(z+1)}: a non-decreasing concave function of a
  non-negative modular function, hence monotone submodular. Greedy = top-k = optimal.
- :class:`FacilityLocation`, :class:`WeightedCoverage` - classic monotone submodular
  functions for which greedy can lose up to 1/e (Nemhauser's bound is tight for coverage).
- :class:`LogSumExp` - sum over queries of log(1 + sum_{j in S} exp(q.k_j)): the log of
  the softmax normaliser over S plus a null key of logit 0 (so f(empty) = 0); concave of
  non-negative modular per query, hence monotone submodular.
- Not submodular, for teaching: :class:`RenormalisedValue` (attention-weighted value
  renormalised over S: a weighted average, neither monotone nor submodular) and
  :class:`OutputFidelity` (1 - relative error of the renormalised attention output).
  The paper assumes submodularity of attention; these show where it fails.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import ClassVar

import numpy as np

from h2osim.scores import CONCAVE, concave, concave_slope  # the one definition of h

__all__ = ["CONCAVE", "concave", "concave_slope"]  # re-exported for theory users


class SetFunction:
    """f: subsets of {0..size-1} -> R. Subclasses implement :meth:`evaluate` on masks."""

    name: ClassVar[str] = ""
    monotone: ClassVar[bool] = False
    submodular: ClassVar[bool] = False
    size: int

    def evaluate(self, masks: np.ndarray) -> np.ndarray:
        """``(m, size)`` bool -> ``(m,)`` float64 values."""
        raise NotImplementedError

    def __call__(self, subset: Iterable[int] | np.ndarray) -> float:
        """f of one subset, given as indices or a boolean mask. Example: f([0, 2])."""
        return float(self.evaluate(as_mask(subset, self.size)[None, :])[0])

    def gains(self, mask: np.ndarray) -> np.ndarray:
        """``(size,)``: f(S + x) - f(S) for every x (0 for x already in S)."""
        base = as_mask(mask, self.size)
        grown = base[None, :] | np.eye(self.size, dtype=bool)  # (size, size), row x = S + x
        return self.evaluate(grown) - self.evaluate(base[None, :])[0]

    def describe(self) -> str:
        kind = ("monotone " if self.monotone else "") + ("submodular" if self.submodular
                                                         else "not submodular")  # fmt: skip
        return f"{self.name} on {self.size} elements ({kind})"


def as_mask(subset: Iterable[int] | np.ndarray, size: int) -> np.ndarray:
    """Indices or a mask -> ``(size,)`` bool. Example: [0, 2], size 4 -> [T, F, T, F]."""
    array = np.asarray(subset)
    if array.dtype == bool:
        if array.shape != (size,):
            raise ValueError(f"mask must have shape ({size},), got {array.shape}")
        return array
    mask = np.zeros(size, dtype=bool)
    indices = array.astype(np.int64).ravel()
    if indices.size and (indices.min() < 0 or indices.max() >= size):
        raise ValueError(f"subset elements must be in 0..{size - 1}, got {indices.tolist()}")
    mask[indices] = True
    return mask


def _non_negative(array: np.ndarray, what: str) -> np.ndarray:
    array = np.asarray(array, dtype=np.float64)
    if not np.all(np.isfinite(array)) or array.min(initial=0.0) < 0:
        raise ValueError(f"{what} must be finite and non-negative")
    return array


class AccumulatedScore(SetFunction):
    """The paper's f(S) = h(sum_{j in S} score_j); scores are accumulated attention.

    Example: scores [3, 1, 0], h = sqrt(z+1): f({0}) = 2, f({0, 1}) = sqrt(5).
    """

    name = "accumulated-score"
    monotone = True
    submodular = True

    def __init__(self, scores: np.ndarray, concave_name: str = "identity"):
        self.scores = _non_negative(scores, "scores")
        concave(concave_name, np.zeros(1))  # validates the name
        self.concave_name = concave_name
        self.size = len(self.scores)

    def evaluate(self, masks: np.ndarray) -> np.ndarray:
        return concave(self.concave_name, np.asarray(masks, dtype=np.float64) @ self.scores)

    def describe(self) -> str:
        return f"{super().describe()}, h = {self.concave_name}"


class FacilityLocation(SetFunction):
    """f(S) = sum_i max_{j in S} similarity[i, j] (0 for the empty set).

    Example: similarity [[1, 0], [0.5, 1]]: f({0}) = 1.5, f({0, 1}) = 2.
    """

    name = "facility-location"
    monotone = True
    submodular = True

    def __init__(self, similarity: np.ndarray):
        self.similarity = _non_negative(similarity, "similarity")  # (clients, size)
        if self.similarity.ndim != 2:
            raise ValueError("similarity must be a (clients, elements) matrix")
        self.size = self.similarity.shape[1]

    def evaluate(self, masks: np.ndarray) -> np.ndarray:
        masks = np.asarray(masks, dtype=bool)
        covered = np.where(masks[:, None, :], self.similarity[None, :, :], 0.0)  # (m, clients, n)
        return covered.max(axis=2, initial=0.0).sum(axis=1)


class WeightedCoverage(SetFunction):
    """f(S) = total weight of the items covered by some element of S.

    Example: element 0 covers items {0, 1}, element 1 covers {1}, weights [2, 1]:
    f({1}) = 1, f({0, 1}) = 3.
    """

    name = "weighted-coverage"
    monotone = True
    submodular = True

    def __init__(self, covers: np.ndarray, weights: np.ndarray):
        self.covers = np.asarray(covers, dtype=bool)  # (size, items)
        self.weights = _non_negative(weights, "weights")  # (items,)
        if self.covers.ndim != 2 or self.covers.shape[1] != len(self.weights):
            raise ValueError("covers must be (elements, items) with one weight per item")
        self.size = self.covers.shape[0]

    def evaluate(self, masks: np.ndarray) -> np.ndarray:
        hit = (np.asarray(masks, dtype=np.int64) @ self.covers.astype(np.int64)) > 0  # (m, items)
        return hit.astype(np.float64) @ self.weights


class LogSumExp(SetFunction):
    """f(S) = sum_q log(1 + sum_{j in S} exp(q . k_j)): log-sum-exp over S plus a null key.

    Example: one query with logits [0, log 3] -> f({1}) = log 4, f({0, 1}) = log 5.
    """

    name = "log-sum-exp"
    monotone = True
    submodular = True

    def __init__(self, queries: np.ndarray, keys: np.ndarray):
        self.logits = np.asarray(queries, dtype=np.float64) @ np.asarray(keys, dtype=np.float64).T
        if not np.all(np.isfinite(self.logits)):
            raise ValueError("query . key logits must be finite")
        self.size = self.logits.shape[1]

    def evaluate(self, masks: np.ndarray) -> np.ndarray:
        masks = np.asarray(masks, dtype=bool)
        shift = np.maximum(self.logits.max(axis=1), 0.0)  # (queries,), for stability
        exp = np.exp(self.logits - shift[:, None])  # (queries, size)
        inner = masks.astype(np.float64) @ exp.T + np.exp(-shift)[None, :]  # (m, queries)
        return (np.log(inner) + shift[None, :]).sum(axis=1)


class RenormalisedValue(SetFunction):
    """f(S) = sum_{j in S} w_j v_j / sum_{j in S} w_j (0 for the empty set): attention
    renormalised over S, weighting scalar values. A weighted average - NOT monotone and
    NOT submodular. Example: w = [1, 1], v = [-1, 2]: f({1}) = 2 but f({0, 1}) = 0.5, and
    adding 1 gains 2 alone but 1.5 next to 0 - yet with v_0 = -3 it gains 2.5 next to 0,
    more than alone: diminishing returns fail.
    """

    name = "renormalised-value"
    monotone = False
    submodular = False

    def __init__(self, weights: np.ndarray, values: np.ndarray):
        self.weights = _non_negative(weights, "weights")
        self.values = np.asarray(values, dtype=np.float64)
        if self.values.shape != self.weights.shape:
            raise ValueError("one value per weight")
        if np.any(self.weights <= 0):
            raise ValueError("weights must be positive (softmax probabilities)")
        self.size = len(self.weights)

    def evaluate(self, masks: np.ndarray) -> np.ndarray:
        masks = np.asarray(masks, dtype=np.float64)
        total = masks @ self.weights
        weighted = masks @ (self.weights * self.values)
        return np.divide(weighted, total, out=np.zeros_like(total), where=total > 0)


class OutputFidelity(SetFunction):
    """f(S) = 1 - |o - o_S| / |o|: how close the attention output over S (renormalised,
    as the model computes it over a cache) is to the full output o; f(empty) = 0 (o_S = 0).
    NOT monotone and NOT submodular in general: two tokens whose values cancel are each
    harmful alone and harmless together.
    """

    name = "output-fidelity"
    monotone = False
    submodular = False

    def __init__(self, weights: np.ndarray, values: np.ndarray):
        self.weights = _non_negative(weights, "weights")  # (size,)
        self.values = np.asarray(values, dtype=np.float64)  # (size, d)
        if self.values.ndim != 2 or len(self.values) != len(self.weights):
            raise ValueError("values must be (elements, d)")
        if np.any(self.weights <= 0):
            raise ValueError("weights must be positive (softmax probabilities)")
        self.full = self.weights @ self.values / self.weights.sum()  # (d,)
        self.scale = float(np.linalg.norm(self.full))
        if self.scale == 0:
            raise ValueError("the full output is zero; relative fidelity is undefined")
        self.size = len(self.weights)

    def evaluate(self, masks: np.ndarray) -> np.ndarray:
        masks = np.asarray(masks, dtype=np.float64)
        total = masks @ self.weights  # (m,)
        output = masks @ (self.weights[:, None] * self.values)  # (m, d)
        output = np.divide(output, total[:, None], out=np.zeros_like(output),
                           where=total[:, None] > 0)  # fmt: skip
        return 1.0 - np.linalg.norm(output - self.full[None, :], axis=1) / self.scale


MONOTONE_SUBMODULAR = (AccumulatedScore, FacilityLocation, WeightedCoverage, LogSumExp)
NOT_SUBMODULAR = (RenormalisedValue, OutputFidelity)
