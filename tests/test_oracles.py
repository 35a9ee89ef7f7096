"""Offline oracles: exact solvers agree, opt is exact in the engine, and the hierarchy
sum(topk) >= opt >= every realisable policy (belady included) holds on any trace."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from h2osim import oracles
from h2osim.engine import ReplayConfig, replay
from h2osim.oracles import topk_bound
from h2osim.policies import ReplayContext, make_policy, policy_names
from h2osim.trace import Trace
from tests.strategies import budgets, eviction_problems, replay_configs, traces

TOLERANCE = 2e-5  # float32 metric accumulated over <= 14 steps


def single_unit_trace(rows: list[list[float]], prompt_length: int = 1) -> Trace:
    """One layer, one head; ``rows[t]`` has t + 1 entries."""
    n = len(rows)
    dense = np.zeros((1, 1, n, n), dtype=np.float32)
    for t, row in enumerate(rows):
        dense[0, 0, t, : t + 1] = row
    return Trace.from_arrays(dense, head_map=[0], prompt_length=prompt_length)


# Belady keeps the token whose mass comes later and evicts the one needed now.
BELADY_TRAP = [[1.0], [0.5, 0.5], [0.5, 0.0, 0.5], [0.0, 0.6, 0.4, 0.0]]


# --------------------------------------------------------------------------- known answers
def test_eviction_counts_follow_the_engine_rules():
    assert oracles.eviction_counts(5, 2, 3, "stream").tolist() == [0, 0, 1, 1, 1]
    assert oracles.eviction_counts(5, 2, 3, "full").tolist() == [0, 0, 0, 2, 1]
    assert oracles.eviction_counts(5, 4, 2, "full").tolist() == [0, 0, 0, 0, 1]
    assert oracles.eviction_counts(3, 5, 1, "stream").tolist() == [0, 0, 0]
    assert oracles.cache_sizes(np.array([0, 0, 0, 2, 1])).tolist() == [1, 2, 3, 2, 2]
    with pytest.raises(ValueError, match="prompt mode"):
        oracles.eviction_counts(3, 1, 1, "later")


def test_future_mass_and_topk_known_answers():
    weights = np.array([[1.0, 0.0], [0.25, 0.75]])
    np.testing.assert_allclose(oracles.future_mass(weights), [[1.25, 0.75], [0.25, 0.75]])
    row = np.array([[1, 0, 0, 0], [0.5, 0.5, 0, 0], [0.3, 0.3, 0.4, 0], [0.5, 0.1, 0.3, 0.1]])
    # Sizes 1, 2, 2, 2: row 3 keeps the newest (0.1) and the best older token (0.5).
    np.testing.assert_allclose(oracles.topk_per_step(row, np.array([1, 2, 2, 2])),
                               [1.0, 1.0, 0.7, 0.6])  # fmt: skip


def test_opt_beats_belady_on_a_hand_checked_trace():
    """Step 2 must drop token 0 (0.5 left, all of it now) or token 1 (0.6 left, all at step
    3). Belady drops token 0 and then loses 0.4 more at step 3; opt drops token 1, whose
    slot is needed at step 3 anyway, then token 0 for free: 3.4 vs 3.1 of 4 rows."""
    weights = np.array([[1, 0, 0, 0], [0.5, 0.5, 0, 0], [0.5, 0, 0.5, 0], [0, 0.6, 0.4, 0]])
    counts = oracles.eviction_counts(4, 2, 1)
    best = oracles.solve_assignment(weights, counts)
    assert best.evicted_at.tolist() == [3, 2, -1, -1] and best.retained == pytest.approx(3.4)
    clairvoyant = oracles.belady_schedule(weights, counts)
    assert clairvoyant.evicted_at.tolist() == [2, -1, 3, -1]
    assert clairvoyant.retained == pytest.approx(3.1)
    # The same through the engine: retained mass per step.
    trace = single_unit_trace(BELADY_TRAP)
    opt, belady = replay(trace, "opt", 2), replay(trace, "belady", 2)
    np.testing.assert_allclose(opt.retained_mass[:, 0], [1, 1, 1, 0.4], atol=1e-6)
    np.testing.assert_allclose(belady.retained_mass[:, 0], [1, 1, 0.5, 0.6], atol=1e-6)
    assert opt.summary["retained_mass"] > belady.summary["retained_mass"] + 0.07


def test_solve_assignment_small_known_answer():
    weights = np.array([[1, 0, 0], [0.5, 0.5, 0], [0.9, 0, 0.1]])
    schedule = oracles.solve_assignment(weights, oracles.eviction_counts(3, 2, 1))
    assert schedule.evicted_at.tolist() == [-1, 2, -1]
    assert schedule.retained == pytest.approx(3.0)


def test_check_schedule_rejects_what_the_engine_rejects():
    counts = np.array([0, 0, 1, 1])
    oracles.check_schedule(np.array([2, 3, -1, -1]), counts)
    with pytest.raises(ValueError, match="own step"):
        oracles.check_schedule(np.array([2, -1, 3, 3]), counts)  # token 3 at its own step
    with pytest.raises(ValueError, match="engine asks"):
        oracles.check_schedule(np.array([2, 2, -1, -1]), counts)  # two at step 2, none at 3


def test_brute_force_refuses_large_problems():
    weights = np.tril(np.ones((30, 30)))
    with pytest.raises(ValueError, match="tiny"):
        oracles.solve_brute_force(weights, oracles.eviction_counts(30, 10, 1))


def test_scheduled_policy_refuses_an_unplanned_eviction_count():
    policy = make_policy("opt")
    weights = np.tril(np.ones((4, 4))) / np.arange(1, 5)[:, None]
    context = ReplayContext(units=1, n=4, budget=2, prompt_length=1, unit_labels=((0, 0),),
                            unit_weights=lambda unit: weights)  # fmt: skip
    policy.reset(context)
    assert policy.evict(2, np.ones((1, 3), dtype=bool), 1).shape == (1, 1)
    with pytest.raises(RuntimeError, match="planned 1 evictions at step 3"):
        policy.evict(3, np.ones((1, 4), dtype=bool), 2)
    with pytest.raises(RuntimeError, match="unit matrices"):
        policy.reset(dataclasses.replace(context, unit_weights=None))


def test_hand_built_context_falls_back_to_normalised_unit_matrix(synthetic_small):
    """Contexts that carry only unit_matrix (e.g. tests/reference_replay.py) still plan on
    the metric weights: exact for per-head units."""
    config = ReplayConfig(aggregation="per-head")
    layout = config.layout(synthetic_small)
    context = ReplayContext(units=layout.units, n=synthetic_small.n, budget=8, prompt_length=30,
                            unit_labels=layout.labels, unit_matrix=layout.matrix)  # fmt: skip
    for unit in (0, layout.units - 1):
        np.testing.assert_allclose(oracles.unit_weights(context, unit), layout.weights(unit),
                                   atol=1e-6)  # fmt: skip


def test_unit_weights_are_the_metric_for_max_aggregation(synthetic_small):
    """The engine's retained mass of a kept set equals the kept weights' sum, whatever the
    aggregation - so opt optimises the metric (the aggregated unit matrix would not, for max)."""
    config = ReplayConfig(aggregation="max")
    result = replay(synthetic_small, "h2o", 10, config=config)
    layout = config.layout(synthetic_small)
    for unit in range(layout.units):
        weights = layout.weights(unit)
        kept = oracles.kept_mask(result.evicted_at[unit].astype(np.int64))
        np.testing.assert_allclose((weights * kept).sum(axis=1), result.retained_mass[:, unit],
                                   atol=1e-5)  # fmt: skip


def test_oracles_are_registered_offline_and_topk_is_not_a_policy():
    assert {"opt", "belady"} <= set(policy_names(online=False))
    assert "topk" not in policy_names()


def test_opt_and_belady_on_the_shipped_synthetic_trace():
    trace = Trace.load("traces/synthetic-demo.npz")
    config = ReplayConfig(layers=(int(trace.layers[0]),))
    opt = replay(trace, "opt", 0.2, config=config)
    belady = replay(trace, "belady", 0.2, config=config)
    h2o = replay(trace, "h2o", 0.2, config=config)
    bound = topk_bound(trace, 0.2, config=config)
    mass = {r.policy: r.summary["retained_mass"] for r in (bound, opt, belady, h2o)}
    assert mass["topk"] >= mass["opt"] > mass["belady"]  # opt strictly beats belady here
    assert mass["opt"] > mass["h2o"]


# --------------------------------------------------------------------------- differential
@given(eviction_problems())
def test_assignment_lp_flow_and_brute_force_agree(problem):
    weights, counts = problem
    schedules = {name: solver(weights, counts) for name, solver in oracles.SOLVERS.items()}
    best = schedules["brute"].retained
    for name, schedule in schedules.items():
        oracles.check_schedule(schedule.evicted_at, counts)
        assert schedule.retained == pytest.approx(best, abs=1e-6), name
        # The value each solver reports is the value of the schedule it returns.
        assert oracles.retained_per_step(weights, schedule.evicted_at).sum() == pytest.approx(
            schedule.retained
        )
    clairvoyant = oracles.belady_schedule(weights, counts)
    oracles.check_schedule(clairvoyant.evicted_at, counts)
    assert clairvoyant.retained <= best + 1e-9
    bound = oracles.topk_per_step(weights, oracles.cache_sizes(counts))
    assert np.all(bound >= oracles.retained_per_step(weights, schedules["brute"].evicted_at) - 1e-9)


@given(trace=traces(max_n=12, max_layers=2), budget=budgets(), config=replay_configs())
def test_opt_replays_exactly_the_schedule_it_planned(trace, budget, config):
    policy = make_policy("opt")
    result = replay(trace, policy, budget, config=config)
    np.testing.assert_allclose(result.retained_mass.astype(np.float64).sum(axis=0),
                               policy.planned_retained, atol=TOLERANCE)  # fmt: skip


# --------------------------------------------------------------------------- the hierarchy
@settings(max_examples=40)
@given(trace=traces(max_n=12, max_layers=2), budget=budgets(), config=replay_configs())
def test_oracle_hierarchy_on_any_trace(trace, budget, config):
    """sum(topk) >= opt >= every registered cache policy, per cache unit, for every
    ReplayConfig; mask policies (re-admission) are bounded by topk at their own row sizes,
    not by opt. Each policy is compared at the budget, prompt mode and aggregation it was
    actually replayed with (some variants force them or fix their budget)."""
    opt_by_setting: dict[tuple[str, int], np.ndarray] = {}

    def opt_mass(mode: str, tokens: int) -> np.ndarray:
        if (mode, tokens) not in opt_by_setting:
            moded = dataclasses.replace(config, prompt_mode=mode)
            fraction = min(tokens, trace.n) / trace.n  # resolves back to exactly `tokens`
            opt = replay(trace, "opt", fraction, config=moded)
            assert opt.budget == min(tokens, trace.n)
            bound = topk_bound(trace, fraction, config=moded).retained_mass.sum(0)
            assert np.all(bound >= opt.retained_mass.sum(0) - TOLERANCE), "topk below opt"
            opt_by_setting[mode, tokens] = opt.retained_mass.sum(0)
        return opt_by_setting[mode, tokens]

    for name in policy_names():
        if name == "opt":
            continue
        result = replay(trace, name, budget, config=config)
        mass = result.retained_mass.astype(np.float64).sum(axis=0)
        assert np.all(oracles.topk_at_sizes(trace, result).sum(0) >= mass - TOLERANCE), name
        if result.kind == "mask" or result.config.aggregation != config.aggregation:
            continue  # opt is planned on other units, or does not bound re-admission
        best = opt_mass(result.config.prompt_mode, result.budget)
        assert np.all(best >= mass - TOLERANCE), name


def test_opt_does_not_bound_a_mask_and_topk_does():
    """Teeth for the hierarchy above: HEAD's masking simulation re-admits keys, and on this
    trace it retains more than the best permanent eviction at its own budget - so checking
    masks against opt would be wrong - while topk at its row sizes still bounds it."""
    rows = [[1.0], [0.79, 0.21], [0.94, 0.06, 0.0], [0.05, 0.26, 0.02, 0.67],
            [0.45, 0.14, 0.0, 0.0, 0.41], [0.14, 0.0, 0.05, 0.14, 0.0, 0.67]]  # fmt: skip
    dense = np.zeros((1, 1, 6, 6), dtype=np.float32)
    for t, row in enumerate(rows):
        dense[0, 0, t, : t + 1] = row
    trace = Trace.from_arrays(dense, head_map=[0], prompt_length=4)
    # h = 2, r = 1: rows 4 and 5 attend 3 keys; key 3 (row 4's gap) comes back at row 5
    mask = replay(
        trace, make_policy("h2o-mask", heavy_prompt_ratio=0.5, recent_prompt_ratio=0.25), 1
    )
    assert mask.row_sizes()[0].tolist() == [1, 2, 3, 4, 3, 3]
    opt = replay(trace, "opt", 3, config=ReplayConfig(prompt_mode="full"))
    mask_mass = mask.retained_mass.sum()
    assert mask_mass > opt.retained_mass.sum() + 0.1
    assert oracles.topk_at_sizes(trace, mask).sum() >= mask_mass - TOLERANCE


@given(problem=eviction_problems(max_n=7), data=st.data())
def test_no_schedule_beats_opt(problem, data):
    """Any schedule the engine accepts - drawn at random step by step - retains no more."""
    weights, counts = problem
    n = len(counts)
    cached: list[int] = []
    evicted_at = np.full(n, -1, dtype=np.int64)
    for t in range(n):
        for _ in range(int(counts[t])):
            victim = data.draw(st.sampled_from(cached))
            cached.remove(victim)
            evicted_at[victim] = t
        cached.append(t)
    drawn = oracles.retained_per_step(weights, evicted_at).sum()
    assert oracles.solve_assignment(weights, counts).retained >= drawn - 1e-9


# --------------------------------------------------------------------------- replay CLI
def test_add_gap_to_opt_matches_budget_and_prompt_mode():
    from h2osim.engine import add_gap_to_opt

    records = [
        {"policy": "opt", "budget": 8, "prompt_mode": "stream", "retained_mass": 0.91},
        {"policy": "h2o", "budget": 8, "prompt_mode": "stream", "retained_mass": 0.87},
        {"policy": "h2o-mask", "budget": 8, "prompt_mode": "full", "retained_mass": 0.95},
        {"policy": "full", "budget": 40, "prompt_mode": "stream", "retained_mass": 1.0},
    ]
    assert add_gap_to_opt(records)
    assert [r["gap_to_opt"] for r in records] == [0.0, pytest.approx(0.04), None, None]
    without_opt = [{k: v for k, v in r.items() if k != "gap_to_opt"} for r in records[1:]]
    assert not add_gap_to_opt(without_opt)
    assert all("gap_to_opt" not in r for r in without_opt)


def test_replay_cli_shows_gap_to_opt_and_the_topk_bound(tmp_path, capsys):
    import json

    from h2osim.replay import main as replay_main

    report, png = tmp_path / "out.json", tmp_path / "gap.png"
    code = replay_main(["traces/synthetic-demo.npz", "--layers", "0", "--policy", "opt,belady,h2o",
                        "--no-progress", "--json", str(report), "--plot", str(png)])  # fmt: skip
    out = capsys.readouterr().out
    assert code == 0 and "gap to opt" in out and "topk" in out
    payload = json.loads(report.read_text())
    gaps = {r["policy"]: r["gap_to_opt"] for r in payload["results"] + payload["bound"]}
    assert gaps["opt"] == 0 and gaps["h2o"] > gaps["belady"] > 0 and gaps["topk"] <= 0
    assert [r["policy"] for r in payload["results"]] == ["opt", "belady", "h2o"]  # ranked
    assert png.read_bytes()[:4] == b"\x89PNG"
    replay_main(["traces/synthetic-demo.npz", "--layers", "0", "--policy", "h2o", "--no-progress"])
    assert "gap to opt" not in capsys.readouterr().out


def test_replay_cli_sweep_prints_the_gap_matrix(tmp_path, capsys):
    from h2osim.replay import main as replay_main

    png = tmp_path / "sweep.png"
    code = replay_main(["traces/synthetic-demo.npz", "--layers", "0", "--policy", "opt,h2o",
                        "--sweep", "0.1,0.2", "--no-progress", "--plot", str(png)])  # fmt: skip
    out = capsys.readouterr().out
    assert code == 0 and "gap to opt (opt's retained mass minus the policy's" in out
    gap_table = out[out.index("gap to opt") :]
    assert "topk" in gap_table and "h2o" in gap_table
    assert png.exists()
