"""The cost-scaled exact solver (h2osim.fastopt) against scipy's assignment, the LPs and
brute force, on random, tied and real attention; warm starts (with or without the dual
repair) never change the answer; the weak-duality certificate passes every optimum and
fails every non-optimal plan."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from h2osim import oracles
from h2osim.engine import ReplayConfig
from h2osim.fastopt import assign_slots, certificate
from h2osim.synthetic import synthetic_trace
from h2osim.trace import Trace, pack_lower, quantize_rows, unpack_lower
from tests.strategies import eviction_problems, weight_matrices

EXACT = 1e-9  # float64 rounding of sums of <= a few hundred terms


def synthetic_head(n: int, seed: int) -> np.ndarray:
    head = synthetic_trace(n, layers=1, heads=1, kv_heads=1, values=False, seed=seed)
    return head.head_matrix(0, 0).astype(np.float64)


def cost(weights: np.ndarray, counts: np.ndarray, tokens: np.ndarray) -> float:
    slots = np.repeat(np.arange(len(counts)), counts)
    return float(oracles.future_mass(np.tril(weights))[slots, tokens].sum())


def quantized(weights: np.ndarray, levels: int = 64) -> np.ndarray:
    """Rows on a coarse grid, as the quantized encoding stores them: exact zeros and ties."""
    n = len(weights)
    codes = quantize_rows(pack_lower(weights.astype(np.float32)), n, levels)
    rows = unpack_lower(codes / levels, n)
    rows = rows.astype(np.float64)
    return rows / rows.sum(axis=1, keepdims=True)


def test_known_answer_and_empty_problem():
    weights = np.array([[1, 0, 0], [0.5, 0.5, 0], [0.9, 0, 0.1]])
    schedule = oracles.solve_fast(weights, np.array([0, 0, 1]))
    assert schedule.evicted_at.tolist() == [-1, 2, -1]
    assert schedule.retained == pytest.approx(3.0)
    none = oracles.solve_fast(np.eye(3), np.zeros(3, dtype=np.int64))
    assert none.evicted_at.tolist() == [-1, -1, -1]


def test_refuses_slots_that_no_schedule_can_fill():
    with pytest.raises(ValueError, match="at most t slots"):
        assign_slots(np.ones((3, 3)), np.array([1, 1]))  # two evictions at step 1, one older token


@given(eviction_problems(max_n=9))
def test_agrees_with_brute_force_and_both_lps(problem):
    weights, counts = problem
    fast = oracles.solve_fast(weights, counts)
    oracles.check_schedule(fast.evicted_at, counts)
    for reference in (oracles.solve_brute_force, oracles.solve_lp, oracles.solve_transport_lp):
        assert fast.retained == pytest.approx(reference(weights, counts).retained, abs=1e-7)


@settings(max_examples=60)
@given(weights=weight_matrices(max_n=48, min_n=2), data=st.data())
def test_agrees_with_linear_sum_assignment_on_random_and_tied_rows(weights, data):
    n = len(weights)
    if data.draw(st.booleans(), label="quantize"):
        weights = quantized(weights)
    counts = oracles.eviction_counts(n, data.draw(st.integers(1, n)), data.draw(st.integers(1, n)),
                                     data.draw(st.sampled_from(("stream", "full"))))  # fmt: skip
    fast = oracles.solve_fast(weights, counts)
    oracles.check_schedule(fast.evicted_at, counts)
    reference = oracles.solve_assignment(weights, counts)
    assert fast.retained == pytest.approx(reference.retained, abs=EXACT)


@settings(max_examples=25)
@given(weights=weight_matrices(max_n=30, min_n=3), levels=st.integers(0, 6),
       factor=st.sampled_from((2.0, 8.0, 32.0, 1e3)),
       delta=st.sampled_from((None, 1e-12, 1e-3, 1.0, 1e6)),
       repair=st.booleans())  # fmt: skip
def test_warm_starts_change_the_time_never_the_answer(weights, levels, factor, delta, repair):
    n = len(weights)
    counts = oracles.eviction_counts(n, max(1, n // 4), n)
    slots = np.repeat(np.arange(n), counts)
    tokens = assign_slots(oracles.future_mass(weights), slots, levels=levels, factor=factor,
                          delta=delta, repair=repair)  # fmt: skip
    assert len(set(tokens.tolist())) == len(tokens) and np.all(tokens < slots)
    best = oracles.solve_assignment(weights, counts).retained
    assert weights.sum() - cost(weights, counts, tokens) == pytest.approx(best, abs=EXACT)


@pytest.mark.parametrize("encoding", ["float32", "quantized"])
def test_agrees_on_a_long_synthetic_head(encoding):
    """n = 400, continuous or quantized rows, both prompt modes and three budgets."""
    weights = synthetic_head(400, seed=3)
    if encoding == "quantized":
        weights = quantized(weights, 1024)
    for mode, budget in (("stream", 40), ("stream", 200), ("full", 80)):
        counts = oracles.eviction_counts(400, budget, 300, mode)
        stats: list[dict[str, float]] = []
        slots = np.repeat(np.arange(400), counts)
        tokens = assign_slots(oracles.future_mass(weights), slots, stats=stats)
        assert [level["grid"] for level in stats][-1] == 0.0  # the last level is exact
        fast = weights.sum() - cost(weights, counts, tokens)
        assert fast == pytest.approx(oracles.solve_assignment(weights, counts).retained, abs=EXACT)


def test_agrees_on_every_unit_of_a_real_trace():
    trace = Trace.load("traces/smollm2-chat.npz")
    layout = ReplayConfig(layers=tuple(int(layer) for layer in trace.layers[:3])).layout(trace)
    for mode in ("stream", "full"):
        counts = oracles.eviction_counts(trace.n, trace.n // 5, trace.prompt_length, mode)
        for unit in range(layout.units):
            weights = layout.weights(unit)
            fast = oracles.solve_fast(weights, counts).retained
            assert fast == pytest.approx(oracles.solve_assignment(weights, counts).retained,
                                         abs=EXACT), (mode, unit)  # fmt: skip


def test_the_cross_check_catches_a_solver_that_stops_at_a_coarse_grid():
    """The comparison above is not vacuous: the same search without its exact last level
    (costs rounded to a grid) returns a worse schedule on continuous attention."""
    weights = synthetic_head(200, seed=1)
    counts = oracles.eviction_counts(200, 40, 200)
    slots = np.repeat(np.arange(200), counts)
    coarse = assign_slots(oracles.future_mass(weights), slots, levels=1, delta=0.05, exact=False)
    best = oracles.solve_assignment(weights, counts).retained
    assert weights.sum() - cost(weights, counts, coarse) < best - 1e-6


@settings(max_examples=40)
@given(weights=weight_matrices(max_n=40, min_n=2), data=st.data())
def test_the_certificate_passes_every_optimum_and_no_other_plan(weights, data):
    """The solver's own duals certify its plan (gap at rounding level) on random and tied
    rows in both prompt modes; any other plan's certified gap is at least its true excess
    over the optimum, so a non-optimal plan can never pass."""
    n = len(weights)
    if data.draw(st.booleans(), label="quantize"):
        weights = quantized(weights)
    budget, prompt = data.draw(st.integers(1, n - 1)), data.draw(st.integers(1, n - 1))
    counts = oracles.eviction_counts(
        n, budget, prompt, data.draw(st.sampled_from(("stream", "full")))
    )
    slots = np.repeat(np.arange(n), counts)  # budget < n and a step after the prompt: >= 1 slot
    future = oracles.future_mass(weights)
    duals: dict[str, np.ndarray] = {}
    tokens = assign_slots(future, slots, duals=duals, levels=data.draw(st.integers(0, 3)))
    assert abs(certificate(future, slots, tokens, duals["v"])) <= EXACT  # rounding level
    best = weights.sum() - oracles.solve_assignment(weights, counts).retained
    other = oracles.belady_schedule(weights, counts).victims(counts)  # one feasible plan
    excess = cost(weights, counts, other) - best
    gap = certificate(future, slots, other, duals["v"])
    assert gap >= excess - EXACT
    assert certificate(future, slots, other, np.zeros_like(duals["v"])) >= excess - EXACT


def test_the_certificate_catches_the_coarse_plan_that_the_cross_check_catches():
    """The plan the search returns without its exact level is worse than the optimum; its
    certificate says so with the same duals that certify the optimal plan."""
    weights = synthetic_head(200, seed=1)
    counts = oracles.eviction_counts(200, 40, 200)
    slots = np.repeat(np.arange(200), counts)
    future = oracles.future_mass(weights)
    duals: dict[str, np.ndarray] = {}
    best = assign_slots(future, slots, duals=duals)
    coarse = assign_slots(future, slots, levels=1, delta=0.05, exact=False)
    assert certificate(future, slots, best, duals["v"]) <= EXACT
    excess = cost(weights, counts, coarse) - cost(weights, counts, best)
    assert excess > 1e-6 and certificate(future, slots, coarse, duals["v"]) >= excess - EXACT
    with pytest.raises(ValueError, match="distinct"):
        certificate(future, slots, np.zeros(len(slots), np.int64), duals["v"])


def test_repair_keeps_more_rows_between_levels():
    """The dual repair only ever keeps rows the plain warm start would drop: fewer
    augmentations on the levels after the first, same optimum."""
    weights = synthetic_head(300, seed=5)
    counts = oracles.eviction_counts(300, 60, 300)
    slots = np.repeat(np.arange(300), counts)
    future = oracles.future_mass(weights)
    runs = {}
    for repair in (True, False):
        stats: list[dict[str, float]] = []
        runs[repair] = (assign_slots(future, slots, repair=repair, stats=stats), stats)
    with_repair = sum(level["augmentations"] for level in runs[True][1][1:])
    without = sum(level["augmentations"] for level in runs[False][1][1:])
    assert with_repair < without
    assert cost(weights, counts, runs[True][0]) == pytest.approx(cost(weights, counts, runs[False][0]),
                                                               abs=EXACT)  # fmt: skip


def test_tie_rich_rows_go_to_linear_sum_assignment():
    from h2osim.fastopt import tie_rich

    grid = np.tril(np.random.default_rng(0).integers(1, 8, (400, 400)) / 8.0)
    assert tie_rich(grid) and not tie_rich(synthetic_head(400, seed=2))
    assert tie_rich(quantized(synthetic_head(400, seed=2), 1024))
    assert not tie_rich(grid[:100, :100])  # short problems always take the fast solver
    weights = grid / grid.sum(axis=1, keepdims=True)
    counts = oracles.eviction_counts(400, 80, 400)
    fast = oracles.solve_fast(weights, counts)
    assert fast.retained == pytest.approx(oracles.solve_assignment(weights, counts).retained)
