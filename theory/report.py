"""Our a-posteriori certificate on a real trace: any trajectory vs the per-step optimum.

NOT the paper's Thm D.32 (that one is :mod:`theory.paper`): the certificate
f(S_i) >= (1 - e^-(1 - alpha_i)) opt_i - beta_i >= (1 - 1/e)(1 - alpha_i) opt_i - beta_i
holds for ANY held set S_i of a monotone submodular f, because alpha_i is measured on S_i
after the fact (:mod:`theory.bounds`). A random cache satisfies it too; what differs between
policies is how tight it is (greedy's alpha is smaller).

The trajectory is the one the engine replays (default: the registered ``heavy`` policy,
H2O's greedy eviction by accumulated attention - the paper's Algorithm 2, except that
the engine never evicts the newest token), or given held sets (``held``, e.g. the
paper's own Algorithm 2 from :func:`theory.paper.algorithm2_trajectory`). At every step i
and cache unit:

- f_i(S) = h(sum_{j in S} A_i(j)), A_i(j) = sum_{s <= i} W[s, j] with W the unit's metric
  weights (each head's row as a share of its total, averaged over the unit's heads):
  the paper's score on the full model's attention. S_i = what the unit held at row i.
- opt_i = h(sum of the |S_i| largest A_i(j), j <= i): exact, since h is non-decreasing.
- eps0_i: how far the scores the policy could see are from A_i - with renormalised
  observation each served row is renormalised over the kept tokens (what the model
  computes over its cache), giving A~_i; eps0_i = L_h max_{|X| = |S_i|} |sum_X (A~_i -
  A_i)| bounds |f~_i - f_i| on every set of that size (L_h = sup h'). With full
  observation A~ = A and eps0 = 0.
- alpha_i, beta_i from :func:`theory.bounds.accumulated_certificate` - delta = 0 by
  default (beta = 0; the certificate already uses the true gains), or delta = 2 eps0_i
  with ``charge_eps0`` (beta pays for approximate scores, as the paper splits them) - and
  the certificate (1 - 1/e)(1 - alpha_i) opt_i - beta_i (``bound``) and its tighter form
  (1 - e^-(1 - alpha_i)) opt_i - beta_i (``bound_exp``); drift diagnostics theta_i and
  gamma_i as in :mod:`theory.dynamic` (the paper's own theta, gamma: :mod:`theory.paper`).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from h2osim.engine import ReplayConfig, ReplayResult, replay
from h2osim.policies import Policy, make_policy
from h2osim.trace import Trace
from h2osim.units import UnitLayout
from theory.bounds import (
    ONE_MINUS_INV_E,
    accumulated_certificate,
    certificate_bound,
    certificate_bound_exp,
)
from theory.functions import concave, concave_slope

FIELDS = ("value", "opt", "alpha", "beta", "eps0", "bound", "bound_exp", "theta", "gamma")


@dataclass
class TraceBoundReport:
    """Per step and unit, ``(n, units)`` arrays of the quantities in the module docstring."""

    policy: str
    budget: int
    concave_name: str
    charge_eps0: bool
    config: ReplayConfig
    unit_labels: tuple[tuple[int, int], ...]
    prompt_length: int
    sizes: np.ndarray  # (n, units) |S_i|
    arrays: dict[str, np.ndarray] = field(default_factory=dict)

    def __getattr__(self, name: str) -> np.ndarray:
        arrays = self.__dict__.get("arrays", {})
        if name in arrays:
            return arrays[name]
        raise AttributeError(name)

    @property
    def ratio(self) -> np.ndarray:
        return np.divide(self.value, self.opt, out=np.ones_like(self.value), where=self.opt > 0)

    @property
    def bound_ratio(self) -> np.ndarray:
        return np.divide(self.bound, self.opt, out=np.zeros_like(self.bound), where=self.opt > 0)

    @property
    def bound_exp_ratio(self) -> np.ndarray:
        return np.divide(self.bound_exp, self.opt, out=np.zeros_like(self.bound_exp),
                         where=self.opt > 0)  # fmt: skip

    def undrifted_violations(self, tolerance: float = 1e-9) -> np.ndarray:
        """``(k, 2)`` (step, unit) where f(S_i) < (1 - 1/e) opt_i: the bound WITHOUT drift is
        false there (a wrong version of the certificate, alpha = beta = 0)."""
        return np.argwhere(self.value < ONE_MINUS_INV_E * self.opt
                           - tolerance * np.maximum(1.0, np.abs(self.opt)))  # fmt: skip

    @property
    def slack(self) -> np.ndarray:
        """f_i(S_i) - bound_i: never negative when the bound holds."""
        return self.value - self.bound

    def violations(self, tolerance: float = 1e-9) -> np.ndarray:
        """``(k, 2)`` (step, unit) pairs where the bound fails (relative tolerance)."""
        return np.argwhere(self.slack < -tolerance * np.maximum(1.0, np.abs(self.opt)))

    def summary(self) -> dict[str, Any]:
        evicting = (
            self.sizes < np.arange(1, len(self.sizes) + 1)[:, None]
        )  # after the first eviction
        span = evicting if evicting.any() else np.ones_like(evicting)
        return {
            "policy": self.policy, "budget": self.budget, "h": self.concave_name,
            "steps_checked": int(self.value.size), "violations": int(len(self.violations())),
            "mean_ratio": float(self.ratio[span].mean()), "min_ratio": float(self.ratio.min()),
            "mean_bound_ratio": float(self.bound_ratio[span].mean()),
            "mean_bound_exp_ratio": float(self.bound_exp_ratio[span].mean()),
            "undrifted_violations": int(len(self.undrifted_violations())),
            "min_slack_ratio": float((self.ratio - self.bound_ratio).min()),
            "mean_alpha": float(self.alpha[span].mean()), "max_alpha": float(self.alpha.max()),
            "max_eps0": float(self.eps0.max()), "max_beta_ratio": float(
                np.divide(self.beta, self.opt, out=np.zeros_like(self.beta), where=self.opt > 0).max()),
            "nemhauser_ratio": ONE_MINUS_INV_E,
        }  # fmt: skip


def _top_sum(values: np.ndarray, count: np.ndarray) -> np.ndarray:
    """Per row, the sum of the ``count`` largest entries. ``(units, m)``, ``(units,)``."""
    ordered = -np.sort(-values, axis=1)
    running = np.concatenate([np.zeros((len(values), 1)), np.cumsum(ordered, axis=1)], axis=1)
    return running[np.arange(len(values)), np.minimum(count, values.shape[1])]


@dataclass
class ReplaySetup:
    """What a check walks along a trace: the held sets, on which units, with which weights."""

    config: ReplayConfig
    kept_at: Callable[[int], np.ndarray]  # t -> (units, t+1) bool held set
    budget: int  # k, the largest held set
    policy: str  # name shown in tables
    layout: UnitLayout
    weights: list[np.ndarray]  # units x (n, n) metric weights


def replay_setup(
    trace: Trace,
    policy: Policy | str,
    budget: float | int | str,
    *,
    budget_of: str = "sequence",
    config: ReplayConfig | None = None,
    about: str = "the check is about online eviction",
    given: tuple[Callable[[int], np.ndarray], int] | None = None,
    result: ReplayResult | None = None,
    weights: list[np.ndarray] | None = None,
    progress: bool = False,
) -> ReplaySetup:
    """The trajectory and unit weights that :func:`trace_bound_report` and
    :func:`theory.paper.paper_chain` check: ``given`` = ``(kept_at, k)`` held sets on
    ``config``'s units (``policy`` then only names them), else ``result``'s, else a
    replay of the online ``policy`` at ``budget`` (``about``: what an offline policy
    would be refused for). ``weights``: the units' ``(n, n)`` weights if already computed.

    Example: ``replay_setup(trace, "h2o", 0.2).kept_at(10)`` is the ``(units, 11)`` set
    h2o held at row 10; ``.weights[u][10, :11]`` that row's weights on unit ``u``."""
    if given is not None:
        kept_at, k = given
        name = policy if isinstance(policy, str) else policy.name
        config = config or ReplayConfig()
    else:
        policy = make_policy(policy) if isinstance(policy, str) else policy
        if result is None:
            if not policy.online:
                raise ValueError(f"policy {policy.name!r} is offline; {about}")
            result = replay(trace, policy, budget, budget_of=budget_of, config=config,
                            progress=progress)  # fmt: skip
        config, kept_at, k, name = result.config, result.kept_at, result.budget, policy.name
    layout = config.layout(trace)
    if weights is None:  # units x (n, n), not stacked: one copy of 30 x n x n floats less
        weights = [layout.weights(u) for u in range(layout.units)]
    return ReplaySetup(config=config, kept_at=kept_at, budget=int(k), policy=name, layout=layout,
                       weights=weights)  # fmt: skip


def seen_row(row: np.ndarray, kept: np.ndarray, observation: str) -> np.ndarray:
    """The row a policy saw: ``row`` itself (``observation`` "full") or renormalised over
    the ``kept`` keys (an empty set sees zeros). ``(units, t+1)``. Example: [[0.5, 0.3,
    0.2]] kept [[T, F, T]] -> [[5/7, 0, 2/7]]."""
    if observation == "full":
        return row
    kept_row = np.where(kept, row, 0.0)
    total = kept_row.sum(axis=1, keepdims=True)
    return np.divide(kept_row, total, out=np.zeros_like(kept_row), where=total > 0)


def trace_bound_report(
    trace: Trace,
    policy: Policy | str = "heavy",
    budget: float | int | str = 0.2,
    *,
    budget_of: str = "sequence",
    config: ReplayConfig | None = None,
    concave_name: str = "identity",
    charge_eps0: bool = False,
    progress: bool = False,
    held: np.ndarray | None = None,
    weights: list[np.ndarray] | None = None,
) -> TraceBoundReport:
    """Replay ``policy`` (or take ``held``) and check our certificate at every step and unit.

    ``charge_eps0``: charge 2 eps0 of every gain to beta, as the paper's split does
    (alpha then measures only the rest); by default delta = 0 and beta = 0, since the
    certificate already uses the true gains. Both bounds are valid.
    ``held``: ``(n, units, n)`` bool held sets to certify instead of replaying ``policy``
    (then ``policy`` is only a name and the observation is the full row).
    ``weights``: the units' ``(n, n)`` metric weights if already computed (``layout.weights``).
    """
    given = None
    if held is not None:
        config = config or ReplayConfig(observation="full")
        given = (lambda t: held[t, :, : t + 1], int(held.sum(axis=2).max()))
    setup = replay_setup(trace, policy, budget, budget_of=budget_of, config=config,
                         about="the bound is about online eviction", given=given,
                         weights=weights, progress=progress)  # fmt: skip
    config, kept_at, weights = setup.config, setup.kept_at, setup.weights
    n, units = trace.n, setup.layout.units
    true_score = np.zeros((units, n))  # A_i
    seen_score = np.zeros((units, n))  # A~_i
    slope = concave_slope(concave_name)
    arrays = {name: np.full((n, units), np.nan) for name in FIELDS}
    sizes = np.zeros((n, units), dtype=np.int64)
    previous_kept = None
    steps: Iterable[int] = range(n)
    if progress:
        from tqdm import tqdm

        steps = tqdm(steps, desc="bound report", unit="step", leave=False, delay=1.0)
    for i in steps:
        row = np.stack([w[i, : i + 1] for w in weights])  # (units, i+1)
        kept = kept_at(i)  # (units, i+1)
        true_score[:, : i + 1] += row
        seen_score[:, : i + 1] += seen_row(row, kept, config.observation)
        scores = true_score[:, : i + 1]
        size = kept.sum(axis=1)
        sizes[i] = size
        value = concave(concave_name, np.where(kept, scores, 0.0).sum(axis=1))
        optimum = concave(concave_name, _top_sum(scores, size))
        error = seen_score[:, : i + 1] - scores
        eps0 = slope * np.maximum(_top_sum(np.maximum(error, 0.0), size),
                                  _top_sum(np.maximum(-error, 0.0), size))  # fmt: skip
        allowed = np.ones_like(kept)
        delta = 2.0 * eps0 if charge_eps0 else np.zeros(units)
        alpha, beta = accumulated_certificate(scores, kept, allowed, concave_name, delta)
        arrays["value"][i], arrays["opt"][i], arrays["eps0"][i] = value, optimum, eps0
        arrays["alpha"][i], arrays["beta"][i] = alpha, beta
        arrays["bound"][i] = certificate_bound(optimum, alpha, beta)
        arrays["bound_exp"][i] = certificate_bound_exp(optimum, alpha, beta)
        if previous_kept is not None:
            padded = np.zeros_like(kept)
            padded[:, :i] = previous_kept
            before = concave(
                concave_name, np.where(padded[:, :i], scores[:, :i] - row[:, :i], 0.0).sum(axis=1)
            )
            after = concave(concave_name, np.where(padded, scores, 0.0).sum(axis=1))
            arrays["theta"][i] = np.where(
                before > 0, 1.0 - after / np.where(before > 0, before, 1.0), np.nan
            )
            last = arrays["opt"][i - 1]
            arrays["gamma"][i] = np.where(
                last > 0, optimum / np.where(last > 0, last, 1.0) - 1.0, np.nan
            )
        previous_kept = kept
    return TraceBoundReport(policy=setup.policy, budget=setup.budget, concave_name=concave_name,
                            charge_eps0=charge_eps0,
                            config=config, unit_labels=setup.layout.labels,
                            prompt_length=trace.prompt_length, sizes=sizes, arrays=arrays)  # fmt: skip
