"""theory/: known answers for the set functions, solvers, bounds, checker and the CLI."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest

from theory import functions as fn
from theory.bounds import (
    ONE_MINUS_INV_E,
    accumulated_certificate,
    alpha_beta,
    certificate_bound,
    certificate_bound_exp,
    greedy_certificate,
    nemhauser_bound,
    noisy_gain_bound,
)
from theory.check import main as check_main
from theory.dynamic import attention_objectives, dynamic_report, greedy_eviction
from theory.exact import accumulated_score_max, all_masks, brute_force_max
from theory.greedy import greedy, lazy_greedy, noisy_greedy
from theory.submodularity import find_counterexample, find_monotonicity_violation

# Greedy's classic trap: element 0 covers 4 of 6 items, elements 1 and 2 split them so
# that together they cover all 6. Greedy takes 0 first and ends at 5 of 6 with k=2.
TRAP = fn.WeightedCoverage(
    np.array([[1, 1, 1, 1, 0, 0], [1, 1, 0, 0, 1, 0], [0, 0, 1, 1, 0, 1]], dtype=bool), np.ones(6)
)


def test_set_function_known_values():
    score = fn.AccumulatedScore([3, 1, 0], "sqrt")
    assert score([0]) == pytest.approx(2.0) and score([0, 1]) == pytest.approx(math.sqrt(5))
    assert score([]) == pytest.approx(1.0)  # sqrt(0 + 1)
    assert fn.AccumulatedScore([3, 1], "log")([0, 1]) == pytest.approx(math.log(5))
    facility = fn.FacilityLocation(np.array([[1, 0], [0.5, 1]]))
    assert facility([0]) == pytest.approx(1.5) and facility([0, 1]) == pytest.approx(2.0)
    assert facility([]) == 0.0
    coverage = fn.WeightedCoverage(np.array([[1, 1], [0, 1]], dtype=bool), np.array([2.0, 1.0]))
    assert coverage([1]) == pytest.approx(1.0) and coverage([0, 1]) == pytest.approx(3.0)
    lse = fn.LogSumExp(np.array([[1.0]]), np.array([[0.0], [math.log(3)]]))
    assert lse([1]) == pytest.approx(math.log(4)) and lse([0, 1]) == pytest.approx(math.log(5))
    assert lse([]) == pytest.approx(0.0)
    value = fn.RenormalisedValue(np.array([1.0, 1.0]), np.array([-1.0, 2.0]))
    assert value([1]) == pytest.approx(2.0) and value([0, 1]) == pytest.approx(0.5)
    fidelity = fn.OutputFidelity(np.array([1.0, 1.0]), np.array([[1.0], [3.0]]))
    assert fidelity([0, 1]) == pytest.approx(1.0) and fidelity([]) == 0.0
    assert fidelity([1]) == pytest.approx(0.5)  # output 3 vs full 2: relative error 1/2


def test_set_functions_reject_bad_input():
    with pytest.raises(ValueError, match="non-negative"):
        fn.AccumulatedScore([-1.0])
    with pytest.raises(ValueError, match="concave"):
        fn.AccumulatedScore([1.0], "cube")
    with pytest.raises(ValueError, match="elements must be in"):
        fn.AccumulatedScore([1.0])([3])
    with pytest.raises(ValueError, match="zero"):
        fn.OutputFidelity(np.array([1.0, 1.0]), np.array([[1.0], [-1.0]]))


def test_brute_force_and_closed_form_optima():
    assert all_masks(2).tolist() == [[False, False], [True, False], [False, True], [True, True]]
    best = brute_force_max(TRAP, 2)
    assert best.subset == (1, 2) and best.value == 6.0
    top = accumulated_score_max(fn.AccumulatedScore([1, 5, 3]), 2)
    assert top.subset == (1, 2) and top.value == 8.0
    allowed = np.array([True, False, True])
    assert brute_force_max(fn.AccumulatedScore([1, 5, 3]), 2, allowed).subset == (0, 2)


def test_greedy_falls_into_the_trap_and_lazy_greedy_matches_it():
    run = greedy(TRAP, 2)
    assert run.chosen == (0, 1) and run.value == 5.0
    np.testing.assert_allclose(run.gains, [4, 1])
    np.testing.assert_allclose(run.best_gains, [4, 1])
    assert run.value >= nemhauser_bound(brute_force_max(TRAP, 2).value)
    lazy = lazy_greedy(TRAP, 2)
    assert lazy.chosen == run.chosen and lazy.value == run.value
    assert lazy.evaluations < run.evaluations


def test_noisy_greedy_records_true_gains():
    def against_the_best(step, mask):  # -eps on the element with the best true gain
        gains = np.where(mask, -np.inf, TRAP.gains(mask))
        noise = np.full(TRAP.size, 0.6)
        noise[int(np.argmax(gains))] = -0.6
        return noise

    run = noisy_greedy(TRAP, 2, against_the_best)
    assert run.chosen[0] == 1  # gains 3 + 0.6 beat 4 - 0.6
    assert run.gains[0] == 3.0 and run.best_gains[0] == 4.0
    assert run.value >= noisy_gain_bound(6.0, 2, 0.6)


def test_bound_formulas():
    assert abs(ONE_MINUS_INV_E - 0.6321205588) < 1e-9
    assert noisy_gain_bound(10, 2, 0.1) == pytest.approx(
        10 * ONE_MINUS_INV_E - 0.2 * (2 - 1 / math.e)
    )
    assert certificate_bound(1.0, 0.5, 0.0) == pytest.approx(ONE_MINUS_INV_E / 2)
    assert certificate_bound_exp(1.0, 0.5, 0.0) == pytest.approx(1 - math.exp(-0.5))
    assert alpha_beta([1, 0.5], [1, 1], 0.0) == pytest.approx((0.25, 0.0))
    alpha, beta = alpha_beta([1, 0.5], [1, 1], 0.1)
    # alpha_t = [0, 0.4]; beta = 0.1 (shrink_2 + 1) with shrink_2 = 1 - 0.6 / 2.
    assert (alpha, beta) == pytest.approx((0.2, 0.1 * (0.7 + 1)))


def test_greedy_certificate_known_answers():
    coverage = fn.WeightedCoverage(
        np.array([[1, 1, 0], [0, 0, 1], [1, 0, 0]], dtype=bool), np.ones(3)
    )
    certificate = greedy_certificate(coverage, [1, 2])
    assert certificate.order == (1, 2) and certificate.alpha == pytest.approx(0.5)
    assert certificate.bound(3.0) == pytest.approx(ONE_MINUS_INV_E * 0.5 * 3.0)
    alpha, beta = accumulated_certificate(np.array([[5.0, 1.0, 3.0]]), np.array([[True, True, False]]),
                                          np.ones((1, 3), dtype=bool))  # fmt: skip
    assert alpha[0] == pytest.approx(1 / 3) and beta[0] == 0.0
    with pytest.raises(ValueError, match="within the allowed"):
        greedy_certificate(coverage, [1, 2], allowed=np.array([True, True, False]))


def test_checker_returns_concrete_witnesses():
    value = fn.RenormalisedValue(np.array([1.0, 1.0]), np.array([-3.0, 2.0]))
    witness = find_counterexample(value)
    assert (witness.A, witness.B, witness.x) == ((), (0,), 1)
    assert (witness.gain_A, witness.gain_B) == pytest.approx((2.0, 2.5))
    drop = find_monotonicity_violation(fn.RenormalisedValue(np.ones(2), np.array([-1.0, 2.0])))
    assert (drop.S, drop.x, drop.drop) == ((), 0, pytest.approx(1.0))
    assert find_counterexample(TRAP) is None and find_monotonicity_violation(TRAP) is None
    # Two opposite values: each harmful alone, exact together.
    fidelity = fn.OutputFidelity(np.ones(3), np.array([[3.0], [-1.0], [1.0]]))
    assert find_counterexample(fidelity) is not None


def test_greedy_eviction_known_answer():
    attention = np.array([[1.0, 0.0], [0.9, 0.1]])
    objectives = attention_objectives(attention, "accumulated")
    assert greedy_eviction(objectives, 1).held[1].tolist() == [True, False]
    assert greedy_eviction(objectives, 1, protect_newest=True).held[1].tolist() == [False, True]
    report = dynamic_report(objectives, greedy_eviction(objectives, 1, protect_newest=True))
    # Step 1 holds {1} (score 0.1) while opt holds {0} (1.9): alpha = 1 - 0.1/1.9.
    assert report.value.tolist() == pytest.approx([1.0, 0.1])
    assert report.opt.tolist() == pytest.approx([1.0, 1.9])
    assert report.alpha[1] == pytest.approx(1 - 0.1 / 1.9)
    assert report.gamma[1] == pytest.approx(0.9) and report.holds()


# --------------------------------------------------------------------------- the CLI
def test_check_cli_reports_the_bound_and_writes_a_png(tmp_path, capsys):
    png = tmp_path / "bound.png"
    code = check_main(["traces/synthetic-demo.npz", "--layers", "0", "--plot", str(png),
                       "--no-progress", "--rows", "4"])  # fmt: skip
    out = capsys.readouterr().out
    assert code == 0
    assert "certificate holds at all 768 (step, unit) pairs" in out
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_check_cli_json_and_eps0(capsys):
    code = check_main(["traces/synthetic-demo.npz", "--layers", "1", "--observe", "renormalized",
                       "--charge-eps0", "--no-plot", "--no-progress", "--json", "-"])  # fmt: skip
    out = capsys.readouterr().out
    payload = json.loads(out[out.index("{\n") :])
    assert code == 0 and payload["certificate"]["violations"] == 0
    assert payload["certificate"]["max_eps0"] > 0  # renormalised scores are approximate
    assert payload["paper"]["eps0_max"] > 0


@pytest.mark.parametrize(
    "argv, message",
    [
        (["missing.npz"], "no trace file at missing.npz"),
        (["traces/synthetic-demo.npz", "--budget", "0"], "budget must be in (0, 1]"),
        (["traces/synthetic-demo.npz", "--layers", "x"], "--layers takes"),
    ],
)
def test_check_cli_errors_are_one_line_exit_2(argv, message, capsys):
    assert check_main(argv + ["--no-plot", "--no-progress"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("python -m theory.check: error:") and message in err
    assert "\n" not in err


def test_check_cli_help(capsys):
    with pytest.raises(SystemExit) as exit_info:
        check_main(["--help"])
    assert exit_info.value.code == 0
    assert "--charge-eps0" in capsys.readouterr().out
