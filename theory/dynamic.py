"""Dynamic submodular selection with permanent eviction (H2O paper, Sec. 4.2, App. D).

At step i the ground set is {0..i} and the objective is f_i (e.g. the accumulated
attention score through row i). The paper's greedy eviction (its Algorithm 2): add the
new element, and if more than k are held, drop the element whose removal hurts the
*perceived* objective least - f~_i, what the algorithm can compute (renormalised
attention over the cache, not the full model's row). The paper's Thm D.32 has the shape
f_i(S_i) >= (1 - 1/e)(1 - alpha) opt_i - beta with opt_i = max_{|S| <= k, S <= {0..i}} f_i(S),
conditional on its drift hypotheses (computed literally in :mod:`theory.paper`).

:func:`dynamic_report` checks OUR a-posteriori certificate of that shape instead, valid for
any held set: alpha and beta measured for the set actually held
(:func:`theory.bounds.greedy_certificate`; beta charges 2 eps0 per gain, eps0 = the
largest |f~_i - f_i| over the sets the algorithm compared), and the drift diagnostics
theta_i = 1 - f_i(S_{i-1}) / f_{i-1}(S_{i-1}) (how the objective moved on the kept set)
and gamma_i = opt_i / opt_{i-1} - 1 (how the optimum moved). opt_i is exact (brute
force, or the top-k for accumulated scores). Ground sets are small here; traces go
through :mod:`theory.report`.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from theory.bounds import certificate_bound, greedy_certificate
from theory.exact import accumulated_score_max, all_masks, brute_force_max
from theory.functions import AccumulatedScore, FacilityLocation, SetFunction, as_mask


class PerturbedFunction(SetFunction):
    """f~ = f + a fixed perturbation in [-eps, eps] per subset (small ground sets).

    Models approximate scores: the perturbation of subset number b is ``eps * table[b]``
    with ``table`` uniform in [-1, 1] from ``seed``, so f~ is a deterministic function.
    """

    name = "perturbed"

    def __init__(self, f: SetFunction, eps: float, seed: int = 0):
        if eps < 0:
            raise ValueError(f"eps must be >= 0, got {eps}")
        self.inner, self.eps, self.size = f, float(eps), f.size
        self.table = np.random.default_rng(seed).uniform(-1.0, 1.0, 2**f.size)

    def evaluate(self, masks: np.ndarray) -> np.ndarray:
        masks = np.asarray(masks, dtype=bool)
        numbers = masks.astype(np.int64) @ (1 << np.arange(self.size))
        return self.inner.evaluate(masks) + self.eps * self.table[numbers]


def attention_objectives(attention: np.ndarray, family: str = "accumulated",
                         concave_name: str = "identity") -> list[SetFunction]:  # fmt: skip
    """f_0..f_{n-1} from an ``(n, n)`` lower-triangular attention matrix.

    "accumulated": f_i(S) = h(sum_{j in S} sum_{s <= i} a[s, j]) - the paper's score.
    "facility": f_i(S) = sum_{s <= i} max_{j in S} a[s, j] - each row served so far is a
    client served by its best held token (monotone submodular too).
    """
    attention = np.asarray(attention, dtype=np.float64)
    n = attention.shape[0]
    if family == "accumulated":
        running = np.cumsum(attention, axis=0)
        return [AccumulatedScore(running[i], concave_name) for i in range(n)]
    if family == "facility":
        return [FacilityLocation(attention[: i + 1]) for i in range(n)]
    raise ValueError(f"family must be 'accumulated' or 'facility', got {family!r}")


@dataclass(frozen=True)
class Trajectory:
    """Held sets of a greedy eviction run and the sets it compared at each step."""

    held: list[np.ndarray]  # S_i as (n,) bool masks
    compared: list[np.ndarray]  # (candidates, n) bool: G_i - v for each v tried at step i


def greedy_eviction(perceived: Sequence[SetFunction], k: int,
                    protect_newest: bool = False) -> Trajectory:  # fmt: skip
    """The paper's Algorithm 2 on the perceived objectives f~_0..f~_{n-1}.

    G_i = S_{i-1} + i; if |G_i| > k, drop argmax_v f~_i(G_i - v) (ties: lowest index, the
    engine's oldest-first rule). ``protect_newest`` forbids dropping i (the engine's rule;
    the paper allows it). Example: accumulated scores, k=1, row 1 = [0.9, 0.1]: G_1 =
    {0, 1}, dropping 1 keeps 0.9 -> S_1 = {0} (with protect_newest, S_1 = {1}).
    """
    if k < 1:
        raise ValueError(f"k must be >= 1, got {k}")
    n = len(perceived)
    held = np.zeros(n, dtype=bool)
    trajectory, compared = [], []
    for i in range(n):
        held = held.copy()
        held[i] = True
        if held.sum() > k:
            droppable = np.flatnonzero(held[:i] if protect_newest else held[: i + 1])
            options = np.repeat(held[None, :], len(droppable), axis=0)
            options[np.arange(len(droppable)), droppable] = False
            values = perceived[i].evaluate(options)
            held = options[int(np.argmax(values))]
            compared.append(options)
        else:
            compared.append(held[None, :].copy())
        trajectory.append(held)
    return Trajectory(trajectory, compared)


@dataclass(frozen=True)
class DynamicReport:
    """Per-step arrays ``(steps,)`` of a trajectory checked against our certificate."""

    value: np.ndarray  # f_i(S_i)
    opt: np.ndarray  # opt_i over |S| <= |S_i| within {0..i}
    alpha: np.ndarray
    beta: np.ndarray
    eps0: np.ndarray  # largest |f~_i - f_i| over the sets compared at step i
    bound: np.ndarray  # (1 - 1/e)(1 - alpha) opt - beta
    theta: np.ndarray  # 1 - f_i(S_{i-1}) / f_{i-1}(S_{i-1}); nan at i = 0
    gamma: np.ndarray  # opt_i / opt_{i-1} - 1; nan at i = 0

    @property
    def slack(self) -> np.ndarray:
        return self.value - self.bound

    def holds(self, tolerance: float = 1e-9) -> bool:
        return bool(np.all(self.slack >= -tolerance))


def dynamic_report(objectives: Sequence[SetFunction], trajectory: Trajectory,
                   perceived: Sequence[SetFunction] | None = None) -> DynamicReport:  # fmt: skip
    """Measure alpha, beta, eps0, theta, gamma and the bound along ``trajectory``."""
    n = len(objectives)
    rows = {name: np.full(n, np.nan) for name in
            ("value", "opt", "alpha", "beta", "eps0", "bound", "theta", "gamma")}  # fmt: skip
    for i, f in enumerate(objectives):
        held = trajectory.held[i]
        allowed = np.arange(f.size) <= i
        size = int(held.sum())
        if isinstance(f, AccumulatedScore):
            optimum = accumulated_score_max(f, size, allowed).value
        else:
            optimum = brute_force_max(f, size, allowed).value
        eps0 = 0.0
        if perceived is not None:
            options = trajectory.compared[i]
            eps0 = float(np.abs(perceived[i].evaluate(options) - f.evaluate(options)).max())
        certificate = greedy_certificate(f, held, allowed, delta=2.0 * eps0)
        rows["value"][i], rows["opt"][i], rows["eps0"][i] = f(held), optimum, eps0
        rows["alpha"][i], rows["beta"][i] = certificate.alpha, certificate.beta
        rows["bound"][i] = certificate_bound(optimum, certificate.alpha, certificate.beta)
        if i:
            before = objectives[i - 1](trajectory.held[i - 1])
            if before > 0:
                rows["theta"][i] = 1.0 - f(trajectory.held[i - 1]) / before
            if rows["opt"][i - 1] > 0:
                rows["gamma"][i] = optimum / rows["opt"][i - 1] - 1.0
    return DynamicReport(**rows)


def subsets_within(size: int, allowed: np.ndarray, k: int) -> np.ndarray:
    """All masks of at most k elements inside ``allowed`` (for tests and small checks)."""
    masks = all_masks(size)
    inside = ~(masks & ~as_mask(allowed, size)[None, :]).any(axis=1)
    return masks[inside & (masks.sum(axis=1) <= k)]
