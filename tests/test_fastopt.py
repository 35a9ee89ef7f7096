"""The cost-scaled exact solver (h2osim.fastopt) against scipy's assignment, the LPs and
brute force, on random, tied and real attention; warm starts never change the answer; the
sparse method's pricing certificate is what makes it exact (without it, it is wrong)."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from h2osim import oracles
from h2osim.engine import ReplayConfig
from h2osim.fastopt import assign_slots
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
       method=st.sampled_from(("sparse", "dense")))  # fmt: skip
def test_warm_starts_change_the_time_never_the_answer(weights, levels, factor, delta, method):
    n = len(weights)
    counts = oracles.eviction_counts(n, max(1, n // 4), n)
    slots = np.repeat(np.arange(n), counts)
    tokens = assign_slots(oracles.future_mass(weights), slots, levels=levels, factor=factor,
                          delta=delta, method=method)  # fmt: skip
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
        assert stats[-1]["certified"]  # the sparse graph's duals price the whole matrix
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
def test_the_pricing_loop_alone_reaches_the_optimum(weights, data):
    """One candidate token per slot and one priced entry per slot and round: almost every
    optimal entry must come from pricing, in both prompt modes, on random and tied rows.
    The result carries the certificate and equals linear_sum_assignment's optimum."""
    n = len(weights)
    if data.draw(st.booleans(), label="quantize"):
        weights = quantized(weights)
    budget, prompt = data.draw(st.integers(1, n - 1)), data.draw(st.integers(1, n - 1))
    counts = oracles.eviction_counts(
        n, budget, prompt, data.draw(st.sampled_from(("stream", "full")))
    )
    slots = np.repeat(np.arange(n), counts)  # budget < n and a step after the prompt: >= 1 slot
    stats: list[dict[str, float]] = []
    tokens = assign_slots(oracles.future_mass(weights), slots, width=1, per_row=1,
                          levels=data.draw(st.integers(0, 3)), stats=stats)  # fmt: skip
    assert stats[-1]["certified"] and "dense" not in stats[-1]
    assert len(set(tokens.tolist())) == len(tokens) and np.all(tokens < slots)
    best = oracles.solve_assignment(weights, counts).retained
    assert weights.sum() - cost(weights, counts, tokens) == pytest.approx(best, abs=EXACT)


def test_an_uncertified_sparse_solve_is_finished_by_the_dense_search():
    """Too few pricing rounds to certify: the dense exact search takes over from the sparse
    duals, and the answer is still the optimum."""
    weights = synthetic_head(200, seed=4)
    counts = oracles.eviction_counts(200, 40, 200)
    slots = np.repeat(np.arange(200), counts)
    stats: list[dict[str, float]] = []
    tokens = assign_slots(oracles.future_mass(weights), slots, width=1, per_row=1, levels=0,
                          max_rounds=1, stats=stats)  # fmt: skip
    assert stats[-2]["certified"] is False and stats[-2]["rounds"] == 1
    assert stats[-1].get("dense") and stats[-1]["grid"] == 0.0
    best = oracles.solve_assignment(weights, counts).retained
    assert weights.sum() - cost(weights, counts, tokens) == pytest.approx(best, abs=EXACT)


def test_the_cross_check_catches_a_sparse_solve_without_its_certificate():
    """The pricing is what makes the sparse method exact: the optimum of the candidate
    graph alone (one cheapest token per slot, no pricing of the rest) is a worse schedule,
    and the comparison with linear_sum_assignment sees it."""
    weights = synthetic_head(200, seed=1)
    counts = oracles.eviction_counts(200, 40, 200)
    slots = np.repeat(np.arange(200), counts)
    stats: list[dict[str, float]] = []
    tokens = assign_slots(oracles.future_mass(weights), slots, width=1, levels=0,
                          certify=False, stats=stats)  # fmt: skip
    assert not stats[-1]["certified"]
    best = oracles.solve_assignment(weights, counts).retained
    assert weights.sum() - cost(weights, counts, tokens) < best - 1e-6


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
