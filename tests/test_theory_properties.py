"""Property tests of the approximation bounds (Hypothesis), and proof that they have teeth.

Each bound is a theorem for its family; Hypothesis draws instances (steered towards bad
cases with ``target``) and compares greedy with the brute-force optimum. A deliberately
false bound (greedy is always optimal: ratio 1.0) must be falsified.
"""

from __future__ import annotations

import glob
from itertools import product

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings, target
from hypothesis import strategies as st

from h2osim.engine import ReplayConfig
from h2osim.trace import Trace
from tests.strategies import (
    attention_set_functions,
    dynamic_instances,
    monotone_submodular_functions,
    non_submodular_functions,
)
from theory.bounds import (
    ONE_MINUS_INV_E,
    accumulated_certificate,
    greedy_certificate,
    noisy_gain_bound,
)
from theory.dynamic import dynamic_report, greedy_eviction
from theory.exact import all_masks, brute_force_max
from theory.functions import AccumulatedScore
from theory.greedy import greedy, lazy_greedy, noisy_greedy
from theory.report import trace_bound_report
from theory.submodularity import find_counterexample, find_monotonicity_violation


def _tolerance(value: float) -> float:
    return 1e-9 * max(1.0, abs(value))


def greedy_meets(f, k: int, ratio: float) -> None:
    """Assert greedy(f, k) >= ratio * OPT_k, steering Hypothesis towards small ratios."""
    optimum = brute_force_max(f, k).value
    value = greedy(f, k).value
    if optimum > 0:
        target(1.0 - value / optimum, label="greedy shortfall")
    assert value >= ratio * optimum - _tolerance(optimum), (
        f"greedy {value:.6g} < {ratio:.4f} x OPT {optimum:.6g} for {f.describe()}, k={k}"
    )


@given(f=monotone_submodular_functions(), k=st.integers(1, 8))
def test_greedy_reaches_one_minus_one_over_e(f, k):
    greedy_meets(f, k, ONE_MINUS_INV_E)


def test_a_false_bound_is_falsified():
    """Teeth: the same check with ratio 1.0 ('greedy is optimal') must fail."""

    @settings(max_examples=400, database=None, derandomize=True,
              suppress_health_check=list(HealthCheck))  # fmt: skip
    @given(f=monotone_submodular_functions(), k=st.integers(1, 8))
    def greedy_is_always_optimal(f, k):
        greedy_meets(f, k, 1.0)

    with pytest.raises(AssertionError, match=r"greedy .* < 1\.0000 x OPT"):
        greedy_is_always_optimal()


@given(f=monotone_submodular_functions(), k=st.integers(1, 8))
def test_lazy_greedy_is_greedy_with_fewer_evaluations(f, k):
    """Each lazy pick has the best gain given the lazy prefix: lazy greedy is a greedy run
    (it may differ from naive greedy only between gains equal up to rounding)."""
    naive, lazy = greedy(f, k), lazy_greedy(f, k)
    assert len(lazy.chosen) == len(naive.chosen)
    mask = np.zeros(f.size, dtype=bool)
    for pick, gain in zip(lazy.chosen, lazy.gains, strict=True):
        gains = f.gains(mask)
        assert gain == pytest.approx(gains[pick], abs=1e-9)
        assert gains[pick] >= gains[~mask].max() - 1e-9
        mask[pick] = True
    assert lazy.evaluations <= naive.evaluations
    np.testing.assert_allclose(naive.gains, naive.best_gains)  # naive greedy takes the best


@given(f=monotone_submodular_functions(), k=st.integers(1, 8),
       eps=st.sampled_from((0.0, 0.01, 0.1, 1.0)), seed=st.integers(0, 2**16),
       adversarial=st.booleans())  # fmt: skip
def test_noisy_gain_bound(f, k, eps, seed, adversarial):
    """Gains off by <= eps: f(S) >= (1 - 1/e) OPT - k (2 - 1/e) eps (Cor. D.18)."""
    rng = np.random.default_rng(seed)

    def noise(step, mask):
        if adversarial:  # hide the best element, favour the rest
            gains = np.where(mask, -np.inf, f.gains(mask))
            pushed = np.full(f.size, eps)
            pushed[int(np.argmax(gains))] = -eps
            return pushed
        return rng.uniform(-eps, eps, f.size)

    optimum = brute_force_max(f, k).value
    run = noisy_greedy(f, k, noise)
    assert np.all(run.gains >= run.best_gains - 2 * eps - 1e-9)
    bound = noisy_gain_bound(optimum, len(run.chosen), eps)
    target(bound - run.value, label="noisy bound tightness")
    assert run.value >= bound - _tolerance(optimum)


@given(instance=dynamic_instances())
def test_dynamic_bound_on_random_dynamic_instances(instance):
    """Greedy eviction on perceived objectives (within eps of the truth): at every step
    f_i(S_i) >= (1 - 1/e)(1 - alpha_i) opt_i - beta_i, with beta charging 2 eps0 per gain
    and, separately, with delta = 0 (everything charged to alpha)."""
    objectives, perceived, k, protect_newest = instance
    trajectory = greedy_eviction(perceived, k, protect_newest)
    report = dynamic_report(objectives, trajectory, perceived)
    target(float(-(report.slack / np.maximum(report.opt, 1e-12)).min()), label="bound slack")
    assert report.holds(), f"slack {report.slack}"
    for i, (f, held) in enumerate(zip(objectives, trajectory.held, strict=True)):
        drift_only = greedy_certificate(f, held, np.arange(f.size) <= i, delta=0.0)
        assert f(held) >= drift_only.bound(report.opt[i]) - _tolerance(report.opt[i])


@given(scores=st.lists(st.floats(0, 10), min_size=1, max_size=8), data=st.data())
def test_vectorised_certificate_matches_the_generic_one(scores, data):
    scores = np.array(scores)
    held = np.array(data.draw(st.lists(st.booleans(), min_size=len(scores), max_size=len(scores))))
    h = data.draw(st.sampled_from(("identity", "sqrt", "log")))
    delta = data.draw(st.sampled_from((0.0, 0.05)))
    generic = greedy_certificate(AccumulatedScore(scores, h), held, delta=delta)
    alpha, beta = accumulated_certificate(scores[None, :], held[None, :],
                                          np.ones((1, len(scores)), dtype=bool), h, delta)  # fmt: skip
    assert alpha[0] == pytest.approx(generic.alpha, abs=1e-9)
    assert beta[0] == pytest.approx(generic.beta, abs=1e-9)


SHIPPED = sorted(glob.glob("traces/*.npz"))


@pytest.mark.parametrize(("path", "setting"),
                         list(product(SHIPPED, [("heavy", "full", False), ("h2o", "renormalized", True)])))  # fmt: skip
def test_dynamic_bound_on_the_shipped_traces(path, setting):
    """The trajectories H2O's greedy really produces in the engine, first two stored layers."""
    policy, observation, charge = setting
    trace = Trace.load(path)
    config = ReplayConfig(observation=observation, layers=tuple(int(x) for x in trace.layers[:2]))
    report = trace_bound_report(trace, policy, 0.2, config=config, charge_eps0=charge)
    assert len(report.violations()) == 0
    evicting = report.sizes < np.arange(1, trace.n + 1)[:, None]
    assert evicting.any() and np.all(report.ratio <= 1 + 1e-9)
    assert np.all(report.alpha[~evicting] == 0)  # nothing evicted yet: held = optimum


# --------------------------------------------------------------------------- the checker
@given(f=monotone_submodular_functions(max_size=7))
def test_checker_finds_nothing_for_monotone_submodular_families(f):
    assert find_counterexample(f) is None
    assert find_monotonicity_violation(f) is None


@given(f=non_submodular_functions())
def test_checker_finds_a_counterexample_for_non_submodular_functions(f):
    witness = find_counterexample(f)
    assert witness is not None
    A, B, x = set(witness.A), set(witness.B), witness.x
    assert A < B and x not in B
    gain_a = f(sorted(A | {x})) - f(sorted(A))
    gain_b = f(sorted(B | {x})) - f(sorted(B))
    assert gain_a < gain_b and (gain_a, gain_b) == pytest.approx((witness.gain_A, witness.gain_B))


def _violates_by_definition(f) -> bool:
    """Every A <= B and x outside B, straight from the definition (slow, tiny n)."""
    masks = all_masks(f.size)
    values = dict(zip(map(tuple, masks), f.evaluate(masks), strict=True))
    for b in masks:
        for a in masks[~(masks & ~b).any(axis=1)]:  # subsets of b
            for x in np.flatnonzero(~b):
                a_x, b_x = a.copy(), b.copy()
                a_x[x] = b_x[x] = True
                if (
                    values[tuple(a_x)] - values[tuple(a)]
                    < values[tuple(b_x)] - values[tuple(b)] - 1e-9
                ):
                    return True
    return False


@given(f=st.one_of(attention_set_functions(), monotone_submodular_functions(max_size=5)))
def test_checker_agrees_with_the_definition(f):
    assert (find_counterexample(f) is not None) == _violates_by_definition(f)
