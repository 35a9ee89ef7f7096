"""Check diminishing returns (and monotonicity) exhaustively; return a concrete witness.

f is submodular iff f(A + x) - f(A) >= f(B + x) - f(B) for all A <= B, x not in B, which
holds iff it holds for B = A + y (one extra element): the local form checked here over
all 2^n sets A and pairs x != y outside A. A violation is returned as a
:class:`Counterexample` (A, B, x) with both gains, so a student can recompute it by hand.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from theory.exact import all_masks
from theory.functions import SetFunction

TOLERANCE = 1e-9


@dataclass(frozen=True)
class Counterexample:
    """A <= B, x not in B, and f(A + x) - f(A) < f(B + x) - f(B)."""

    A: tuple[int, ...]
    B: tuple[int, ...]
    x: int
    gain_A: float  # f(A + x) - f(A)
    gain_B: float  # f(B + x) - f(B), larger: returns increased

    def __str__(self) -> str:
        return (f"A={set(self.A) or '{}'}, B={set(self.B)}, x={self.x}: "
                f"gain at A {self.gain_A:.6g} < gain at B {self.gain_B:.6g}")  # fmt: skip


@dataclass(frozen=True)
class MonotonicityViolation:
    """f(S + x) < f(S)."""

    S: tuple[int, ...]
    x: int
    drop: float  # f(S) - f(S + x) > 0


def _values(f: SetFunction) -> tuple[np.ndarray, np.ndarray]:
    masks = all_masks(f.size)  # subset number b <-> mask
    return masks, f.evaluate(masks)


def _members(number: int, size: int) -> tuple[int, ...]:
    return tuple(i for i in range(size) if number >> i & 1)


def find_counterexample(f: SetFunction, tolerance: float = TOLERANCE) -> Counterexample | None:
    """The first (A, B = A + y, x) violating diminishing returns, or None if f is submodular.

    Example: RenormalisedValue(weights [1, 1], values [-3, 2]) -> A = {}, B = {0}, x = 1:
    gain 2 at A, 2.5 at B.
    """
    masks, values = _values(f)
    numbers = np.arange(2**f.size)
    for y in range(f.size):
        for x in range(f.size):
            if x == y:
                continue
            free = numbers[~masks[:, x] & ~masks[:, y]]  # sets A containing neither x nor y
            gain_a = values[free | (1 << x)] - values[free]
            with_y = free | (1 << y)
            gain_b = values[with_y | (1 << x)] - values[with_y]
            bad = np.flatnonzero(gain_a < gain_b - tolerance)
            if bad.size:
                a = int(free[bad[0]])
                return Counterexample(_members(a, f.size), _members(a | (1 << y), f.size), x,
                                      float(gain_a[bad[0]]), float(gain_b[bad[0]]))  # fmt: skip
    return None


def find_monotonicity_violation(
    f: SetFunction, tolerance: float = TOLERANCE
) -> MonotonicityViolation | None:
    """The first (S, x) with f(S + x) < f(S), or None if f is monotone.

    Example: RenormalisedValue(weights [1, 1], values [-1, 2]) -> S = {}, x = 0 (0 -> -1).
    """
    masks, values = _values(f)
    numbers = np.arange(2**f.size)
    for x in range(f.size):
        free = numbers[~masks[:, x]]
        drop = values[free] - values[free | (1 << x)]
        bad = np.flatnonzero(drop > tolerance)
        if bad.size:
            return MonotonicityViolation(
                _members(int(free[bad[0]]), f.size), x, float(drop[bad[0]])
            )
    return None


def is_submodular(f: SetFunction, tolerance: float = TOLERANCE) -> bool:
    return find_counterexample(f, tolerance) is None
