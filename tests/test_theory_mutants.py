"""Every bound the project reports, as a Hypothesis property - and wrong versions of each
("mutants") that the same property must falsify. A property that no mutant can fail
would pass for every input, and that is not a test.

Bounds (arXiv 2306.14048 numbering where they are the paper's):
- Nemhauser (Thm D.17): greedy >= (1 - 1/e) OPT;
- noisy gains (Cor. D.18): >= (1 - 1/e) OPT - k (2 - 1/e) eps;
- our a-posteriori certificate: f(S) >= (1 - e^-(1 - alpha)) opt - beta;
- Lemma D.30's bound on the paper's Algorithm 2 (exact scores, newest evictable), with the
  lemma's uniform theta, gamma (D.28 read as D.30 uses it), eps0;
- Thm D.32's guarantee on the paper's Algorithm 2 where its hypotheses hold (mutant: D.28
  read as stated, which admits every alpha on accumulated attention);
- Def. D.4's checker against the definition (mutant: the unconditioned definition);
- the minimality of the measured alpha (certificate) and of Thm D.32's alpha_min.

Each property carries explicit ``@example`` instances (known hard cases) besides the
drawn ones; no property returns early - instances where a bound does not apply are
filtered by the strategies, and every example asserts.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import numpy as np
import pytest
from hypothesis import HealthCheck, example, given, settings, target
from hypothesis import strategies as st

from tests.strategies import (
    dynamic_instances,
    eviction_runs,
    monotone_submodular_functions,
    slow_drift_chains,
)
from theory import functions as fn
from theory.bounds import (
    ONE_MINUS_INV_E,
    alpha_beta,
    certificate_bound_exp,
    nemhauser_bound,
    noisy_gain_bound,
)
from theory.dynamic import attention_objectives, dynamic_report, greedy_eviction
from theory.exact import brute_force_max
from theory.greedy import greedy, noisy_greedy
from theory.paper import PaperChain, algorithm2_trajectory, chain_from_scores

TEETH = settings(max_examples=200, database=None, derandomize=True, deadline=None,
                 suppress_health_check=list(HealthCheck))  # fmt: skip
TRAP = fn.WeightedCoverage(
    np.array([[1, 1, 1, 1, 0, 0], [1, 1, 0, 0, 1, 0], [0, 0, 1, 1, 0, 1]], dtype=bool), np.ones(6)
)
# The D.28 trap (theory.counterexamples.d28_directions): k = 1, every row after 2 attends to token 2.
TRAP_ROWS = np.array([[1, 0, 0, 0, 0, 0], [0.9, 0.1, 0, 0, 0, 0], [0, 0, 1, 0, 0, 0],
                      [0, 0, 1, 0, 0, 0], [0, 0, 1, 0, 0, 0], [0, 0, 1, 0, 0, 0]], dtype=float)  # fmt: skip
PROTECTED = (attention_objectives(np.array([[1.0, 0.0], [0.9, 0.1]]), "accumulated"), 1, True)


def _tolerance(value: float) -> float:
    return 1e-9 * max(1.0, abs(value))


def _expect_falsified(prop: Callable[[], None]) -> None:
    with pytest.raises(AssertionError):
        prop()


# --------------------------------------------------------------------------- Nemhauser (D.17)
NEMHAUSER_MUTANTS = {
    "greedy is optimal": lambda opt: opt,
    "1 - e^-2 instead of 1 - 1/e": lambda opt: (1 - math.exp(-2)) * opt,
}


def nemhauser_property(bound: Callable[[float], float]):
    @TEETH
    @given(f=monotone_submodular_functions(), k=st.integers(1, 8))
    @example(f=TRAP, k=2)
    def prop(f, k):
        optimum = brute_force_max(f, k).value
        assert greedy(f, k).value >= bound(optimum) - _tolerance(optimum)

    return prop


def test_nemhauser_holds():
    nemhauser_property(nemhauser_bound)()


@pytest.mark.parametrize("mutant", list(NEMHAUSER_MUTANTS))
def test_nemhauser_mutants_are_falsified(mutant):
    _expect_falsified(nemhauser_property(NEMHAUSER_MUTANTS[mutant]))


# --------------------------------------------------------------------------- Cor. D.18
NOISY_MUTANTS = {
    "noise ignored": lambda opt, k, eps: ONE_MINUS_INV_E * opt,
    "k eps / 4 instead of k (2 - 1/e) eps": lambda opt, k, eps: ONE_MINUS_INV_E * opt - k * eps / 4,
}


def noisy_property(bound: Callable[[float, int, float], float]):
    @TEETH
    @given(f=monotone_submodular_functions(), k=st.integers(1, 8),
           eps=st.sampled_from((0.01, 0.1, 0.5, 1.0)))  # fmt: skip
    @example(f=fn.AccumulatedScore(np.array([1.0, 0.05])), k=1, eps=0.5)
    def prop(f, k, eps):
        def against_the_best(step, mask):  # hide the best element, favour the rest
            gains = np.where(mask, -np.inf, f.gains(mask))
            pushed = np.full(f.size, eps)
            pushed[int(np.argmax(gains))] = -eps
            return pushed

        optimum = brute_force_max(f, k).value
        run = noisy_greedy(f, k, against_the_best)
        assert run.value >= bound(optimum, len(run.chosen), eps) - _tolerance(optimum)

    return prop


def test_noisy_gain_bound_holds():
    noisy_property(noisy_gain_bound)()


@pytest.mark.parametrize("mutant", list(NOISY_MUTANTS))
def test_noisy_gain_mutants_are_falsified(mutant):
    _expect_falsified(noisy_property(NOISY_MUTANTS[mutant]))


# --------------------------------------------------------------------------- our certificate
CERTIFICATE_MUTANTS = {
    "no drift (alpha = 0: the undrifted (1 - 1/e) opt)": lambda opt, a, b: (
        ONE_MINUS_INV_E * opt - b
    ),
    "alpha halved": lambda opt, a, b: certificate_bound_exp(opt, a / 2, b),
    "e^-(1 - alpha)^2": lambda opt, a, b: (1 - np.exp(-((1 - a) ** 0.5))) * opt - b,
}


def certificate_property(bound: Callable):
    @TEETH
    @given(instance=dynamic_instances())
    @example(instance=(PROTECTED[0], PROTECTED[0], PROTECTED[1], PROTECTED[2]))
    def prop(instance):
        objectives, perceived, k, protect_newest = instance
        report = dynamic_report(
            objectives, greedy_eviction(perceived, k, protect_newest), perceived
        )
        floor = bound(report.opt, report.alpha, report.beta)
        target(float(np.max(floor - report.value)), label="certificate shortfall")
        assert np.all(report.value >= floor - 1e-9 * np.maximum(1.0, report.opt))

    return prop


def test_certificate_holds():
    certificate_property(certificate_bound_exp)()


@pytest.mark.parametrize("mutant", list(CERTIFICATE_MUTANTS))
def test_certificate_mutants_are_falsified(mutant):
    _expect_falsified(certificate_property(CERTIFICATE_MUTANTS[mutant]))


@given(gain=st.floats(0, 10), best=st.floats(0.01, 10), delta=st.sampled_from((0.0, 0.1)))
def test_measured_alpha_is_the_smallest(gain, best, delta):
    """alpha_t is minimal: g >= (1 - alpha) g* - delta, and any smaller alpha breaks it."""
    best = max(best, gain)
    alpha, _ = alpha_beta(np.array([gain]), np.array([best]), delta)
    assert gain >= (1 - alpha) * best - delta - 1e-9
    if alpha > 1e-6:
        assert gain < (1 - alpha * 0.99) * best - delta  # too small an alpha is caught


# --------------------------------------------------------------------------- Lemma D.30
def _chain(weights: np.ndarray, k: int) -> PaperChain:
    rows = weights[:, None, :]
    held = algorithm2_trajectory(weights[None], k)
    return PaperChain(n=len(weights), concave_name="identity", unit_labels=((0, 0),),
                      arrays=chain_from_scores(rows, rows, held))  # fmt: skip


def _lemma(chain: PaperChain, gamma: float) -> np.ndarray:
    """D.30's bound at t with the lemma's uniform theta (>= 0) and a given gamma, eps0 = 0."""
    theta = max(0.0, float(chain.constants()["theta"][0]))
    power = np.arange(2, chain.n + 1)
    return ONE_MINUS_INV_E * (1 - theta) ** power * (1 - gamma) ** power * chain.opt[1:, 0]


LEMMA_BOUNDS = {
    "as the proof uses D.28": lambda c: _lemma(c, max(0.0, float(c.constants()["gamma_lemma"][0]))),
    "D.28 as stated": lambda c: _lemma(c, max(0.0, float(c.constants()["gamma"][0]))),
    "gamma = min over steps, not max": lambda c: _lemma(
        c, max(0.0, float(np.nanmin(c.gamma_lemma)))
    ),
}


def lemma_property(bound: Callable[[PaperChain], np.ndarray]):
    @TEETH
    @given(run=eviction_runs())
    @example(run=(TRAP_ROWS, 1))
    def prop(run):
        weights, k = run
        chain = _chain(weights, k)
        floor = bound(chain)
        assert np.all(chain.value[:-1, 0] >= floor - 1e-9 * np.maximum(1.0, chain.opt[1:, 0]))

    return prop


def test_lemma_d30_holds_on_the_papers_algorithm():
    lemma_property(LEMMA_BOUNDS["as the proof uses D.28"])()
    # and it is what PaperChain reports
    chain = _chain(TRAP_ROWS, 1)
    np.testing.assert_allclose(
        chain.lemma_bound()[:-1, 0], LEMMA_BOUNDS["as the proof uses D.28"](chain)
    )


@pytest.mark.parametrize("mutant", ["D.28 as stated", "gamma = min over steps, not max"])
def test_lemma_d30_mutants_are_falsified(mutant):
    _expect_falsified(lemma_property(LEMMA_BOUNDS[mutant]))


# --------------------------------------------------------------------------- Thm D.32's alpha_min
@given(chain=slow_drift_chains())
def test_alpha_min_is_the_smallest_admissible_alpha(chain):
    """alpha_min = 10 n max(0, theta, gamma): every alpha above it is admitted, every alpha
    below it is caught; when some alpha works the guarantee holds on the paper's algorithm."""
    c = chain.constants()
    alpha = float(c["alpha_min"][0])
    beta = 1e-12
    if alpha < 1:
        assert chain.admits(min(0.999999, alpha + 1e-9), beta)[0]
        assert len(chain.theorem_violations()) == 0
    if 0 < alpha < 1:
        assert not chain.admits(alpha * 0.99, beta)[0]
    assert not chain.admits(1.0, beta)[0]  # alpha must be < 1
    assert bool(chain.hypotheses_hold()[0]) == (alpha < 1)


# --------------------------------------------------------------------------- Thm D.32
def d32_property(as_stated: bool):
    """Where Thm D.32's hypotheses hold for the paper's Algorithm 2, its guarantee
    (1 - 1/e)(1 - alpha_min) opt_i - beta_min holds. Mutant: D.28 read as stated."""
    from tests.strategies import algorithm2_chains

    @TEETH
    @given(chain=algorithm2_chains())
    @example(chain=_chain(TRAP_ROWS, 1))
    def prop(chain):
        assert len(chain.theorem_violations(as_stated=as_stated)) == 0

    return prop


def test_thm_d32_holds_where_its_hypotheses_do():
    d32_property(as_stated=False)()


def test_thm_d32_with_d28_as_stated_is_falsified():
    _expect_falsified(d32_property(as_stated=True))


# --------------------------------------------------------------------------- Def. D.4
def _d4_by_definition(f, z: np.ndarray, ignore_z: bool = False) -> bool:
    """True iff some Z <= X <= Y, x outside Y has f(X + x) - f(X) < f(Y + x) - f(Y)."""
    from theory.exact import all_masks

    masks = all_masks(f.size)
    values = dict(zip(map(bytes, masks.astype(np.uint8)), f.evaluate(masks), strict=True))
    value = lambda m: values[bytes(m.astype(np.uint8))]  # noqa: E731
    above = [m for m in masks if ignore_z or not np.any(z & ~m)]
    for x_set in above:
        for y_set in above:
            if np.any(x_set & ~y_set):
                continue
            for x in np.flatnonzero(~y_set):
                grow_x, grow_y = x_set.copy(), y_set.copy()
                grow_x[x] = grow_y[x] = True
                if value(grow_x) - value(x_set) < value(grow_y) - value(y_set) - 1e-9:
                    return True
    return False


def d4_property(reference: Callable):
    from tests.strategies import conditioned_functions
    from theory.d4 import find_d4_counterexample

    @TEETH
    @given(instance=conditioned_functions())
    @example(
        instance=(
            fn.RenormalisedValue(np.ones(3), np.full(3, -3.0)),
            np.array([True, False, False]),
        )
    )
    def prop(instance):
        f, z = instance
        assert (find_d4_counterexample(f, z) is not None) == reference(f, z)

    return prop


def test_d4_checker_agrees_with_the_definition():
    d4_property(_d4_by_definition)()


def test_d4_without_z_is_a_different_condition():
    """Teeth: the unconditioned definition (every pair of sets) disagrees with D.4 somewhere."""
    _expect_falsified(d4_property(lambda f, z: _d4_by_definition(f, z, ignore_z=True)))
