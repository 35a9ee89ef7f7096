"""The paper's App. D chain (theory.paper), its counterexamples, Def. D.4 and theory.check's
``paper`` / ``certificate`` sections: known answers and the findings on the shipped traces.

Numbering: arXiv 2306.14048, App. D (Def. D.4, D.25-D.28, Lemma D.30, Thm D.32).
"""

from __future__ import annotations

import json
import math

import numpy as np
import pytest

from h2osim.engine import ReplayConfig
from h2osim.trace import Trace
from theory import counterexamples
from theory.bounds import ONE_MINUS_INV_E
from theory.check import main as check_main
from theory.d4 import d4_instance, d4_on_trace, find_d4_counterexample
from theory.functions import AccumulatedScore, RenormalisedValue
from theory.paper import (
    PaperChain,
    algorithm2_chain,
    algorithm2_trajectory,
    chain_from_scores,
    paper_chain,
)
from theory.report import trace_bound_report
from theory.submodularity import find_counterexample

CHAT, PYDOC = "traces/smollm2-chat.npz", "traces/smollm2-pydoc.npz"


def uniform_chain(n: int) -> PaperChain:
    """Rows uniform over keys 0..t, nothing evicted (k = n)."""
    rows = np.tril(np.ones((n, n))) / np.arange(1, n + 1)[:, None]
    rows = rows[:, None, :]  # (n, 1, n)
    held = np.tril(np.ones((n, n), dtype=bool))[:, None, :]
    return PaperChain(n=n, concave_name="identity", unit_labels=((0, 0),),
                      arrays=chain_from_scores(rows, rows, held))  # fmt: skip


# --------------------------------------------------------------------------- known answers
def test_chain_known_answers_on_uniform_rows():
    chain = uniform_chain(3)
    np.testing.assert_allclose(chain.opt[:, 0], [1, 2, 3])
    # D.28 as stated: 1 - opt_t / opt_{t-1}
    np.testing.assert_allclose(chain.gamma[1:, 0], [-1.0, -0.5])
    np.testing.assert_allclose(chain.gamma_lemma[:-1, 0], [0.5, 1 / 3])  # as D.30 uses it
    # theta_t = 1 - f_t(C_{t-1}) / f_{t-1}(C_{t-1}) = 1 - (t + t/(t+1)) / t = -1/(t+1)
    np.testing.assert_allclose(chain.theta[1:, 0], [-1 / 2, -1 / 3])
    np.testing.assert_allclose(chain.eps0[:, 0], 0.0)
    summary = chain.summary()
    assert summary["alpha_needed"] == pytest.approx(10 * 3 * 0.5)
    assert not summary["hypotheses_hold"] and summary["alpha_min"] is None
    assert summary["hypotheses_hold_as_stated"] and summary["alpha_min_as_stated"] == 0.0
    # Lemma D.30 with theta = max(0, -1/3) = 0, gamma = 1/2, eps0 = 0, at t = 0:
    # (1 - 1/e)(1 - 1/2)^2 opt_1 = (1 - 1/e) / 2.
    assert chain.lemma_bound()[0, 0] == pytest.approx(ONE_MINUS_INV_E * 0.25 * 2)


def test_eps0_is_one_sided_and_per_set_size():
    """Renormalised rows overshoot kept tokens: eps0 = top-|C_t| of (A~ - A)^+."""
    true = np.array([[[1.0, 0.0]], [[0.5, 0.5]]])  # (n, 1, n)
    seen = np.array([[[1.0, 0.0]], [[1.0, 0.0]]])  # row 1 renormalised over {0}
    held = np.array([[[True, False]], [[True, False]]])
    chain = chain_from_scores(true, seen, held)
    assert chain["eps0"][:, 0].tolist() == pytest.approx([0.0, 0.5])


def test_admits_catches_a_too_small_alpha():
    chain = counterexamples._chain(*_slow_drift())
    alpha = chain.constants()["alpha_min"][0]
    assert 0 < alpha < 1
    assert chain.admits(alpha * 1.001, 1e-9)[0]
    assert not chain.admits(alpha * 0.999, 1e-9)[0]  # a deliberately too-small alpha is caught


def _slow_drift() -> tuple[np.ndarray, np.ndarray]:
    """Token 0 (weight 1) gains 1e-4 per step; later tokens arrive with 0.5; k = 1."""
    n = 5
    weights = np.zeros((1, n, n))
    weights[0, 0, 0] = 1.0
    for t in range(1, n):
        weights[0, t, t] = 0.5
        weights[0, t, 0] = 1e-4
    return weights, algorithm2_trajectory(weights, 1)


# --------------------------------------------------------------------------- counterexamples
def test_algorithm1_read_literally_freezes_the_cache():
    example = counterexamples.algorithm1_literal_freezes()
    assert example.broken
    assert example.numbers["literal_held"][-1] == [0, 1, 2]
    assert example.numbers["full_rows_held"][-1] == [0, 2, 4]


def test_d28_direction_and_the_false_stated_theorem():
    example = counterexamples.d28_directions()
    numbers = example.numbers
    assert example.broken
    assert numbers["gamma_as_stated"] == pytest.approx([-1, -1 / 2, -1 / 3, -1 / 4, -1 / 5])
    assert numbers["gamma_as_used"] == pytest.approx([1 / 2, 1 / 3, 1 / 4, 1 / 5, 1 / 6])
    assert numbers["trap_held"] == [[0]] * 6 and numbers["trap_ratio_last"] == pytest.approx(0.475)
    assert numbers["trap_alpha_as_stated"] == 0.0 and numbers["trap_eps0"] == 0.0
    assert numbers["trap_alpha_as_used"] > 1 and numbers["trap_violations_as_stated"] >= 1


def test_protected_newest_breaks_d30_step_2_and_d32():
    example = counterexamples.protected_newest_breaks_step2()
    numbers = example.numbers
    assert example.broken
    assert numbers["paper_held"] == [[0]] * 5
    assert numbers["engine_held"] == [[t] for t in range(5)]
    assert numbers["step2_new_vs_old"][0] == pytest.approx((0.01, 1.0))
    assert numbers["alpha_min"] == 0.0 and numbers["beta_min"] == 0.0  # hypotheses hold
    assert numbers["held_over_opt_last"] == pytest.approx(0.01)
    assert numbers["theorem_violations"] == 4


def test_per_step_gamma_collapses_the_chain():
    example = counterexamples.per_step_gamma_collapses()
    assert example.broken and example.numbers["held_over_opt"] == pytest.approx(1.0)
    assert example.numbers["per_step_chain_over_opt"][-1] == pytest.approx(ONE_MINUS_INV_E / 8)


# --------------------------------------------------------------------------- real traces
@pytest.mark.parametrize(("policy", "observation"),
                         [("heavy", "full"), ("h2o", "renormalized"), ("random", "full"),
                          ("window", "full")])  # fmt: skip
def test_thm_d32_hypotheses_fail_on_smollm2(policy, observation):
    """The finding: gamma (as D.30 uses it) is far above alpha/(10 n) for every alpha < 1."""
    trace = Trace.load(CHAT)
    chain = paper_chain(
        trace, policy, 0.2, config=ReplayConfig(observation=observation, layers=(0,))
    )
    summary = chain.summary()
    assert not summary["hypotheses_hold"] and summary["alpha_min"] is None
    assert summary["gamma_lemma_max"] > summary["alpha_over_10n_limit"]
    assert summary["alpha_needed"] > 1
    assert summary["theta_max"] <= 0 and summary["gamma_max"] <= 0  # accumulation only grows
    assert summary["hypotheses_hold_as_stated"]
    assert (summary["eps0_max"] > 1) == (observation == "renormalized")
    assert summary["lemma_d30_below_1pct_share"] > 0.9  # the lemma's bound is vacuous here


def test_chain_on_a_given_trajectory_equals_the_replayed_one():
    """Any trajectory (a live run's kept sets, say) goes in through ``kept_at``."""
    from h2osim.engine import replay

    trace = Trace.load("traces/synthetic-demo.npz")
    config = ReplayConfig(observation="renormalized", layers=(0,))
    result = replay(trace, "h2o", 0.2, config=config)
    replayed = paper_chain(trace, "h2o", 0.2, config=config, result=result)
    given_ = paper_chain(trace, "h2o", config=config, kept_at=result.kept_at)
    for name in ("value", "theta", "gamma_lemma", "eps0"):
        np.testing.assert_array_equal(getattr(replayed, name), getattr(given_, name))
    assert given_.budget == replayed.budget and given_.summary()["eps0_max"] > 0


def test_the_papers_own_algorithm_breaks_thm_d32_as_stated_on_pydoc():
    """Algorithm 2 with exact scores, newest evictable: theta <= 0, gamma (as stated) <= 0,
    eps0 = 0, so the stated hypotheses hold for every alpha, beta - and f falls below
    (1 - 1/e) opt_i (layer 10, k = 102)."""
    chain = algorithm2_chain(
        Trace.load(PYDOC), 0.2, config=ReplayConfig(observation="full", layers=(10,))
    )
    summary = chain.summary()
    assert summary["eps0_max"] == 0.0 and summary["alpha_min_as_stated"] == 0.0
    assert summary["theorem_as_stated_violations"] > 0
    witness = summary["theorem_as_stated_witness"]
    assert witness["held"] < ONE_MINUS_INV_E * witness["opt"]
    assert summary["theorem_violations"] == 0  # with D.28 as the proof uses it: no claim


def test_undrifted_bound_is_false_on_the_shipped_traces():
    """A wrong certificate (alpha = beta = 0: plain (1 - 1/e) opt_i) fails for greedy on
    real attention; ours (with alpha) does not."""
    trace = Trace.load(PYDOC)
    report = trace_bound_report(
        trace, "heavy", 0.2, config=ReplayConfig(observation="full", layers=(10,))
    )
    assert len(report.undrifted_violations()) > 0 and report.ratio.min() < 0.6
    assert len(report.violations()) == 0


def test_greedy_certificate_is_tighter_than_random_and_window():
    trace = Trace.load(CHAT)
    config = ReplayConfig(observation="full", layers=(0,))
    means = {policy: trace_bound_report(trace, policy, 0.2, config=config).summary()
             for policy in ("heavy", "random", "window")}  # fmt: skip
    for other in ("random", "window"):
        assert means["heavy"]["mean_bound_ratio"] > means[other]["mean_bound_ratio"] + 0.2
        assert means["heavy"]["mean_bound_exp_ratio"] > means[other]["mean_bound_exp_ratio"] + 0.2
        assert means[other]["violations"] == 0  # valid for any set: it certifies, it cannot predict
    for summary in means.values():
        assert summary["mean_bound_exp_ratio"] > summary["mean_bound_ratio"]  # the tighter form


# --------------------------------------------------------------------------- Def. D.4
def test_d4_is_required_only_above_z():
    f = RenormalisedValue(np.ones(3), np.full(3, -3.0))  # f(empty) = 0, f = -3 otherwise
    assert find_counterexample(f) is not None  # not submodular on the whole lattice
    assert find_d4_counterexample(f, np.array([True, False, False])) is None  # but on [{0}, V]
    g = RenormalisedValue(np.ones(3), np.array([-3.0, 2.0, 0.0]))
    a, b, x, gain_a, gain_b = find_d4_counterexample(g, np.array([False, False, True]))
    assert 2 in a and set(a) <= set(b) and x not in b and gain_a < gain_b
    assert g(list(a) + [x]) - g(list(a)) == pytest.approx(gain_a)


def test_d4_fails_on_real_attention_with_recomputable_witnesses():
    trace = Trace.load(CHAT)
    report = d4_on_trace(trace, "heavy", 0.2, config=ReplayConfig(observation="full", layers=(0,)),
                         ground=6, stride=32)  # fmt: skip
    assert report.checked["output"] > 5 and report.rate("output") > 0.3
    assert report.failed["score"] == 0  # the paper's own score: concave of modular
    witness = next(w for w in report.witnesses if w.objective == "output")
    f = d4_instance(trace, witness.layer, witness.kv_head, witness.step, witness.ground)
    position = {token: i for i, token in enumerate(witness.ground)}
    a = [position[t] for t in witness.A]
    b = [position[t] for t in witness.B]
    assert set(witness.Z) <= set(witness.A) <= set(witness.B)
    x = position[witness.x]
    assert f(a + [x]) - f(a) == pytest.approx(witness.gain_A, abs=1e-9)
    assert f(b + [x]) - f(b) == pytest.approx(witness.gain_B, abs=1e-9)
    assert witness.gain_A < witness.gain_B


def test_d4_checker_catches_a_convex_score():
    """Teeth for the score objective: h(z) = z^2 (convex) is not submodular above Z."""

    class Convex(AccumulatedScore):
        def evaluate(self, masks):
            return (np.asarray(masks, dtype=np.float64) @ self.scores) ** 2

    z = np.array([True, False, False, False])
    assert find_d4_counterexample(Convex(np.array([1.0, 2.0, 3.0, 4.0])), z) is not None
    assert (
        find_d4_counterexample(AccumulatedScore(np.array([1.0, 2.0, 3.0, 4.0]), "sqrt"), z) is None
    )


# --------------------------------------------------------------------------- the CLI
def test_check_json_has_paper_and_certificate_sections(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    out = tmp_path / "check.json"
    code = check_main([str(_repo(CHAT)), "--layers", "0", "--json", str(out), "--no-progress"])
    assert code == 0
    payload = json.loads(out.read_text())
    paper = payload["paper"]
    for name in ("theta_max", "gamma_max", "gamma_lemma_max", "eps0_max", "hypotheses_hold",
                 "alpha_min", "beta_min", "lemma_d30_bound_over_opt"):  # fmt: skip
        assert name in paper
    assert paper["hypotheses_hold"] is False and paper["alpha_min"] is None
    assert paper["beta_min"] is None and "0" in paper["per_layer"]
    assert "not the paper" in payload["certificate"]["kind"]
    assert payload["certificate"]["violations"] == 0
    assert list(tmp_path.glob("*.png")) == []  # no figure unless --plot
    text = capsys.readouterr().out
    assert "Thm D.32's hypotheses FAIL" in text and "certificate holds" in text


def test_check_plot_only_where_asked(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    png = tmp_path / "figure.png"
    assert check_main([str(_repo(CHAT)), "--layers", "0", "--plot", str(png), "--no-progress"]) == 0
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert [p.name for p in tmp_path.iterdir()] == ["figure.png"]


def test_check_exits_1_when_the_theorem_fails_under_hypotheses_that_hold(monkeypatch, capsys):
    """The static instance of the protected-newest counterexample: D.32's hypotheses hold
    (alpha_min = 0) and its conclusion fails, so the CLI must say so with exit 1."""
    import theory.check

    example = counterexamples.protected_newest_breaks_step2()
    n = 5
    weights = np.zeros((1, n, n))
    weights[0, 0, 0] = 1.0
    for t in range(1, n):
        weights[0, t, t] = 0.01
    chain = counterexamples._chain(
        weights, algorithm2_trajectory(weights, 1, newest_evictable=False)
    )
    assert example.numbers["theorem_violations"] == len(chain.theorem_violations())
    monkeypatch.setattr(theory.check, "paper_chain", lambda *args, **kwargs: chain)
    assert check_main(["traces/synthetic-demo.npz", "--layers", "0", "--no-progress"]) == 1
    assert "hypotheses HOLD" in capsys.readouterr().out


def test_check_algorithm2_trajectory_reports_the_stated_counterexample(capsys):
    code = check_main([PYDOC, "--layers", "10", "--trajectory", "algorithm2", "--no-progress",
                       "--json", "-"])  # fmt: skip
    out = capsys.readouterr().out
    payload = json.loads(out[out.index("{\n") :])
    assert code == 0 and payload["trajectory"] == "algorithm2"
    assert payload["paper"]["theorem_as_stated_violations"] > 0


def test_check_bad_input_is_one_line_exit_2(capsys):
    assert check_main([CHAT, "--d4", "40", "--layers", "0", "--no-progress"]) == 2
    err = capsys.readouterr().err.strip()
    assert "ground must be in 2..14" in err and "\n" not in err


def _repo(path: str):
    from pathlib import Path

    return Path(__file__).resolve().parents[1] / path


def test_one_minus_exp_form_is_tighter_everywhere():
    for alpha in np.linspace(0, 1, 11):
        assert 1 - math.exp(-(1 - alpha)) >= ONE_MINUS_INV_E * (1 - alpha) - 1e-12
