"""``h2o-sqrt`` and ``h2o-log``: the paper's Algorithm 2 with a concave score function.

Appendix D of the paper generalises the eviction score to f(S) = h(sum of accumulated
scores over S) with h non-decreasing and concave (identity in the released code), which
makes f submodular. Greedy eviction removes the token whose loss leaves the largest
f(S minus {j}) = h(total - acc_j); since h is increasing, that is always the token with
the smallest accumulated score - exactly ``h2o``'s choice. So these variants make the
same evictions as ``h2o`` (tests check it on every trace they draw): h changes the
value of f, and with it the theory's bounds, not the cache. They exist to make that
point checkable, and report h(acc) as their scores.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

import numpy as np

from h2osim.policies.base import register
from h2osim.policies.h2o import H2O
from h2osim.scores import concave


class ConcaveH2O(H2O):
    """h2o ranking by h(accumulated score); h is increasing, so the ranking is h2o's."""

    concave_name: ClassVar[str] = "identity"  # which h of h2osim.scores.CONCAVE

    def score(self, t: int, kept: np.ndarray) -> np.ndarray:
        return concave(self.concave_name, super().score(t, kept))


@register
@dataclass
class H2OSqrt(ConcaveH2O):
    """h(z) = sqrt(z + 1). Example: accumulated [3, 0] -> scores [2, 1]."""

    name = "h2o-sqrt"
    summary = "paper's Algorithm 2 with h(z) = sqrt(z+1) (same evictions as h2o)"
    concave_name = "sqrt"


@register
@dataclass
class H2OLog(ConcaveH2O):
    """h(z) = log(z + 1). Example: accumulated [e - 1, 0] -> scores [1, 0]."""

    name = "h2o-log"
    summary = "paper's Algorithm 2 with h(z) = log(z+1) (same evictions as h2o)"
    concave_name = "log"
