"""Known answers: tiny hand-computed traces with every eviction written down.

One query head, one unit, n = 6, budget k = 3 (stream mode, renormalised observation).
Token 1 is the heavy hitter. ``evicted_at[j] = t`` means token j left at step t.
Hand computations are in the comments (acc = accumulated observed attention).
"""

from __future__ import annotations

import numpy as np
import pytest

from h2osim.engine import ReplayConfig, replay, resolve_budget
from h2osim.policies import lowest_scored, make_policy, policy_names
from h2osim.trace import Trace

ROWS = [
    [1.0],
    [0.2, 0.8],
    [0.1, 0.6, 0.3],
    [0.1, 0.5, 0.16, 0.24],
    [0.1, 0.4, 0.1, 0.1, 0.3],
    [0.1, 0.3, 0.1, 0.1, 0.1, 0.3],
]


def rows_trace(rows_per_head, head_map=(0,), prompt_length=None) -> Trace:
    """A one-layer trace from explicit rows: ``rows_per_head[h][t]`` is row t of head h."""
    n = len(rows_per_head[0])
    dense = np.zeros((1, len(rows_per_head), n, n), dtype=np.float32)
    for head, rows in enumerate(rows_per_head):
        for t, row in enumerate(rows):
            dense[0, head, t, : t + 1] = row
    return Trace.from_arrays(dense, head_map=list(head_map), prompt_length=prompt_length)


def evictions(
    policy_name: str, trace: Trace, budget, unit: int = 0, config=None, **params
) -> dict[int, int]:
    result = replay(trace, make_policy(policy_name, **params), budget, config=config)
    return {j: int(t) for j, t in enumerate(result.evicted_at[unit]) if t >= 0}


TRACE = rows_trace([ROWS])

KNOWN = {
    # FIFO: the oldest goes at each step once the cache is full.
    "window": ({}, {0: 3, 1: 4, 2: 5}),
    # token 0 is a sink; among the rest the oldest goes.
    "sink": ({"sinks": 1}, {1: 3, 2: 4, 3: 5}),
    # heavy 1 + recent 2. t=3: acc [1.3, 1.4, 0.3, -], {2,3} recent -> evict 0.
    # t=4: acc1 1.956, acc2 0.478 (row 3 over {1,2,3}), {3,4} recent -> evict 2. t=5: evict 3.
    "h2o": ({"heavy_ratio": 0.5}, {0: 3, 2: 4, 3: 5}),
    # no recent window. t=3: acc [1.3, 1.4, 0.3] -> evict 2. t=4: acc [1.419, 1.995, -, 0.286]
    # -> evict 3. t=5: acc [1.544, 2.495, -, -, 0.375] -> evict 4 (the newest-but-one).
    "heavy": ({}, {2: 3, 3: 4, 4: 5}),
    # latest served row. t=3: row 2 [.1,.6,.3] -> 0. t=4: row 3 over {1,2,3} [.556,.178,.267]
    # -> 2. t=5: row 4 over {1,3,4} [.5,.125,.375] -> 3.
    "tova": ({}, {0: 3, 2: 4, 3: 5}),
    "tova-kv": ({}, {0: 3, 2: 4, 3: 5}),  # one head: a layer unit is the KV-head unit
    # used = >= 50% of row max; last use [0, 2, 2] at t=3 -> 0; [-, 3, 2, 3] -> 2; [-, 4, -, 3, 4] -> 3.
    "lru": ({"threshold": 0.5}, {0: 3, 2: 4, 3: 5}),
    # uses [1, 2, 1] at t=3 -> tie 0/2, oldest 0; [-, 3, 1, 0] -> 3; [-, 4, 1, -, 1] -> tie 2/4 -> 2.
    "lfu": ({"threshold": 0.5}, {0: 3, 3: 4, 2: 5}),
    # unimportant = below 1/|kept|, history 2, no recent window. counts at t=3 [2, 0, 1] -> 0;
    # at t=4 [-, 0, 2, 1] -> 2; at t=5 [-, 0, -, 2, 0] -> 3.
    "scissorhands": ({"history": 2, "recent_ratio": 0.0}, {0: 3, 2: 4, 3: 5}),
    "full": ({}, {}),
    # acc / rows that saw it. t=3: [1.3/3, 1.4/2, .3/1] -> 2. t=4: row 3 over {0,1,3} ->
    # acc [1.419, 1.995, -, .286] / [4, 3, -, 1] -> 3. t=5: [1.544/5, 2.495/4, .375/1] -> 0.
    "observed": ({}, {2: 3, 3: 4, 0: 5}),
    # window 2, no pooling: t=3 scores key 0 by rows 1-2 (.15), keys 1-2 in the window -> 0.
    # t=4: key 1 (rows 2-3: .6, .556) is the only key older than the window -> 1. t=5: -> 2.
    "snapkv": ({"window": 2, "kernel": 1}, {0: 3, 1: 4, 2: 5}),
}


@pytest.mark.parametrize("name", sorted(KNOWN))
def test_known_evictions(name):
    params, expected = KNOWN[name]
    assert evictions(name, TRACE, 3, **params) == expected


# h2o-mask, -2023, -drop, -flexgen: row by row against the official code (test_golden_h2o.py);
# knorm: its own known answer below (it needs key norms)
VARIANT_TESTS = {"h2o-mask", "h2o-mask-2023", "h2o-drop", "h2o-flexgen", "h2o-sqrt", "h2o-log",
                 "a2sf", "knorm"}  # fmt: skip


def test_every_online_policy_has_a_known_answer():
    deterministic = set(policy_names(online=True)) - {"random"}
    assert deterministic <= set(KNOWN) | VARIANT_TESTS


def test_knorm_evicts_the_largest_key_norms():
    norms = {0: np.array([[3.0, 9.0, 4.0, 5.0, 1.0, 2.0]], dtype=np.float32)}
    dense = np.zeros((1, 1, 6, 6), dtype=np.float32)
    for t, row in enumerate(ROWS):
        dense[0, 0, t, : t + 1] = row
    trace = Trace.from_arrays(dense, head_map=[0], key_norms=norms)
    # t=3: norms of {0, 1, 2} = 3, 9, 4 -> 1; t=4: {0, 2, 3} -> 3 (5); t=5: {0, 2, 4} -> 2
    assert evictions("knorm", trace, 3) == {1: 3, 3: 4, 2: 5}
    with pytest.raises(ValueError, match="key norms"):
        replay(TRACE, make_policy("knorm"), 3)


def test_snapkv_pools_the_window_scores_with_zero_padding():
    """kvpress's avg_pool1d(kernel 5, padding 2): every key divided by 5, edges included."""
    from h2osim.policies.base import ReplayContext

    policy = make_policy("snapkv", window=2, kernel=5)
    policy.reset(ReplayContext(units=1, n=8, budget=3, prompt_length=8, unit_labels=((0, 0),)))
    for t in range(7):
        row = np.zeros((1, t + 1))
        row[0, 0] = 1.0  # all attention on key 0
        policy.observe(t, row, np.ones((1, t + 1), dtype=bool))
    scores = policy.score(7, np.ones((1, 8), dtype=bool))
    # keys 0..4 scored (older than the window 5-6): mean [1, 0, 0, 0, 0] pooled -> [.2, .2, .2, 0, 0]
    np.testing.assert_allclose(scores[0, :5], [0.2, 0.2, 0.2, 0.0, 0.0])
    assert np.isinf(scores[0, 5:]).all()


def test_h2o_known_retained_mass():
    result = replay(TRACE, make_policy("h2o"), 3)
    # kept at t=3: {1,2,3} -> 0.9; t=4: {1,3,4} -> 0.8; t=5: {1,4,5} -> 0.7
    np.testing.assert_allclose(result.retained_mass[:, 0], [1, 1, 1, 0.9, 0.8, 0.7], rtol=1e-6)
    assert result.kept_at(5)[0].tolist() == [False, True, False, False, True, True]


def test_prompt_attended_in_full_evicts_several_after_prefill():
    trace = rows_trace([ROWS], prompt_length=4)
    full = ReplayConfig(prompt_mode="full")
    # no eviction during the 4 prompt rows; at t=4 the cache holds 5 > 2 -> three go at once
    assert evictions("window", trace, 2, config=full) == {0: 4, 1: 4, 2: 4, 3: 5}
    # streamed, the same budget evicts from t=2 on
    assert evictions("window", trace, 2) == {0: 2, 1: 3, 2: 4, 3: 5}


# Two query heads sharing one KV head: at t=3 TOVA scores the latest row (row 2) of
# each head - head A [0.5, 0.3, 0.2], head B [0.001, 0.299, 0.7].
GQA_ROWS_A = [[1.0], [0.5, 0.5], [0.5, 0.3, 0.2], [0.25, 0.25, 0.25, 0.25]]
GQA_ROWS_B = [[1.0], [0.5, 0.5], [0.001, 0.299, 0.7], [0.25, 0.25, 0.25, 0.25]]


@pytest.mark.parametrize(
    ("aggregation", "unit", "victim"),
    [
        ("sum", 0, 0),  # [0.501, 0.599, 0.9] -> 0
        ("mean", 0, 0),  # the same ranking
        ("max", 0, 1),  # [0.5, 0.3, 0.7] -> 1
        ("per-head", 0, 2),  # head A alone -> 2
        ("per-head", 1, 0),  # head B alone -> 0
    ],
)
def test_gqa_aggregation_known_answer(aggregation, unit, victim):
    trace = rows_trace([GQA_ROWS_A, GQA_ROWS_B], head_map=(0, 0))
    got = evictions("tova-kv", trace, 3, unit=unit, config=ReplayConfig(aggregation=aggregation))
    assert got == {victim: 3}


def test_tova_keeps_one_set_per_layer():
    """Published TOVA: the latest row averaged over all heads of the layer, one kept set for
    the layer. Per-head units: head A alone would evict 2, head B 0; tova averages them
    ([0.2505, 0.2995, 0.45]) and both units evict 0. Layer units give the same set."""
    trace = rows_trace([GQA_ROWS_A, GQA_ROWS_B], head_map=(0, 0))
    for aggregation in ("per-head", "sum", "mean", "layer"):
        result = replay(trace, make_policy("tova"), 3, config=ReplayConfig(aggregation=aggregation))
        assert (result.evicted_at[:, 0] == 3).all() and (result.evicted_at[:, 1:] == -1).all()
    two_kv = rows_trace([GQA_ROWS_A, GQA_ROWS_B], head_map=(0, 1))  # one head per KV head
    assert evictions("tova", two_kv, 3, unit=1) == {0: 3}  # the layer's average decides
    assert evictions("tova-kv", two_kv, 3, unit=0) == {2: 3}  # per KV head: head A alone


def test_random_is_seeded_and_uniform():
    trace = rows_trace([ROWS])
    first = [evictions("random", trace, 3, seed=s) for s in range(200)]
    assert first[:5] == [evictions("random", trace, 3, seed=s) for s in range(5)]
    # at t=3 the candidates are {0, 1, 2}; each should go about a third of the time
    counts = np.bincount([min(j for j, t in e.items() if t == 3) for e in first], minlength=3)
    assert counts.sum() == 200 and counts.min() > 40


def test_lowest_scored_known_answers():
    scores = np.array([[0.5, 0.1, 0.4, 0.9]])
    kept = np.ones((1, 4), dtype=bool)
    assert lowest_scored(scores, kept, 1).tolist() == [[1]]
    assert lowest_scored(scores, kept, 2).tolist() == [[1, 2]]
    kept[0, 1] = False
    assert lowest_scored(scores, kept, 1).tolist() == [[2]]
    tied = np.array([[3.0, 1.0, 1.0, 0.0]])  # the newest (0.0) is protected; tie -> oldest
    assert lowest_scored(tied, np.ones((1, 4), dtype=bool), 1).tolist() == [[1]]


@pytest.mark.parametrize(
    ("budget", "of", "expected"),
    [(0.2, "sequence", 200), (1, "sequence", 1000), ("128", "sequence", 128), (0.0001, "sequence", 1),
     (0.5, "prompt", 300), (2, "prompt", 2)],
)  # fmt: skip
def test_resolve_budget(budget, of, expected):
    assert resolve_budget(budget, 1000, 600, of) == expected


@pytest.mark.parametrize("bad", [0, -3, 1.5, "abc", float("nan"), float("inf")])
def test_resolve_budget_rejects(bad):
    with pytest.raises(ValueError, match="budget"):
        resolve_budget(bad, 100, 50)


@pytest.mark.parametrize(
    ("name", "params"),
    [("h2o", {"heavy_ratio": 1.5}), ("sink", {"sinks": -1}), ("lru", {"threshold": 2.0}),
     ("scissorhands", {"history": 0}), ("scissorhands", {"recent_ratio": -0.1}),
     ("a2sf", {"forgetting": 0.0}), ("a2sf", {"heavy_ratio": -1}), ("h2o-drop", {"recent_size": -1}),
     ("h2o-mask", {"heavy_prompt_ratio": 2}), ("h2o-global", {"heavy_ratio": 1.01})],
)  # fmt: skip
def test_bad_parameters_are_rejected(name, params):
    ((key, value),) = params.items()
    with pytest.raises(ValueError, match=f"^{key} must be .* got {value}$"):
        make_policy(name, **params)


def test_lowest_scored_with_every_candidate_protected():
    # all cached candidates score +inf (e.g. sink tokens filling the budget): oldest kept goes
    scores = np.array([[np.inf, np.inf, np.inf, np.inf]])
    kept = np.array([[False, True, True, True]])
    assert lowest_scored(scores, kept, 1).tolist() == [[1]]
    assert lowest_scored(scores, kept, 2).tolist() == [[1, 2]]


# --------------------------------------------------------------------------- H2O variants
# Each follows one code path of the official repository (FMInference/H2O); the known
# answers below pin what each does on ROWS and how that differs from plain h2o.


def test_h2o_mask_budgets_from_the_prompt():
    trace = rows_trace([ROWS], prompt_length=5)
    # heavy floor(0.4*5)=2, recent floor(0.2*5)=1 -> k=3, --budget ignored. Prompt rows in
    # full; row 5 (> h + r) is masked: acc over rows 0-4 = [1.5, 2.3, .56, .34, .3], heavy =
    # top 2 of keys 0..3 = {0, 1}, recent {5}; key 4 (L - r) is the one-row gap. A mask:
    # evicted_at = the step after a key's last attended row.
    got = evictions("h2o-mask", trace, 0.9, heavy_prompt_ratio=0.4, recent_prompt_ratio=0.2)
    assert got == {2: 5, 3: 5, 4: 5}
    result = replay(
        trace, make_policy("h2o-mask", heavy_prompt_ratio=0.4, recent_prompt_ratio=0.2), 0.9
    )
    assert result.budget == 3 and result.config.prompt_mode == "full" and result.kind == "mask"
    assert result.kept_at(5)[0].tolist() == [True, True, False, False, False, True]


def test_h2o_drop_absolute_sizes_compress_after_prefill():
    trace = rows_trace([ROWS], prompt_length=4)
    # k = 1 heavy + 1 recent + the newest = 3, newest two protected. At t=4 the prompt
    # (4 tokens) + token 4 is compressed to 3: acc [1.4, 1.9, .46] over {0,1,2} -> 2, 0 go.
    # t=5: acc1 2.4 vs acc3 .365 (row 4 over {1,3,4}) -> 3 goes.
    assert evictions("h2o-drop", trace, 0.5, heavy_size=1, recent_size=1) == {0: 4, 2: 4, 3: 5}


def test_h2o_flexgen_promotes_the_token_leaving_the_ring():
    trace = rows_trace([ROWS], prompt_length=3)
    # hh_k = int(0.7 x 3) = 2 -> k=4: 2 heavy + 2 recent (--budget ignored). At t=4 FlexGen
    # protects {2, 3, 4} (2 is being promoted) and evicts 0 (acc 1.4 < 1.9); h2o protects
    # only {3, 4} and evicts 2 (acc .46).
    assert evictions("h2o-flexgen", trace, 0.1, heavy_prompt_ratio=0.7) == {0: 4, 2: 5}
    assert evictions("h2o", trace, 4, config=ReplayConfig(prompt_mode="full")) == {2: 4, 3: 5}


GLOBAL_ROWS = [
    [1.0],
    [0.9, 0.1],
    [0.8, 0.1, 0.1],
    [0.05, 0.9, 0.025, 0.025],
    [0.05, 0.9, 0.02, 0.02, 0.01],
    [0.05, 0.9, 0.01, 0.01, 0.01, 0.02],
]


def test_h2o_global_sees_the_future():
    trace = rows_trace([GLOBAL_ROWS])
    # h = int(0.2 x 6) = 1, r = 1. Column sums over all rows: [2.85, 2.9, .155, .055, .02,
    # .02] -> heavy {1}; row i attends {1} and the band {i-1, i}. Token 1 is heavy only
    # later, which global statistics know at row 2 and h2o cannot (acc [1.9, 0.1] then).
    result = replay(trace, make_policy("h2o-global", heavy_ratio=0.2, recent_ratio=0.2), 0.5)
    rows = [np.flatnonzero(result.kept_at(t)[0]).tolist() for t in range(6)]
    assert rows == [[0], [0, 1], [1, 2], [1, 2, 3], [1, 3, 4], [1, 4, 5]]
    assert result.kind == "mask" and result.budget == 3 and not result.online
    assert evictions("h2o", trace, 2)[1] == 2


def test_h2o_lmeval_tracker_known_answer():
    trace = rows_trace([GLOBAL_ROWS])
    # h = int(0.5 x 6) = 3, r = int(0.2 x 6) = 1. Rows 0-2 in full; tracker = rows 0-2
    # summed = [2.7, .2, .1]. Row 3: top h-1 = 2 -> {0, 1} + itself; band {2, 3}. Tracker
    # + row 3 -> [2.75, 1.1, -, .025] ({0, 1, 3} kept; key 2 zeroed, band or not). Row 4:
    # top 2 {0, 1} + 4, band {3, 4}; tracker [2.8, 2.0, -, -, .01]. Row 5: {0, 1, 5} + {4}.
    result = replay(trace, make_policy("h2o-lmeval", heavy_ratio=0.5, recent_ratio=0.2), 0.5)
    rows = [np.flatnonzero(result.kept_at(t)[0]).tolist() for t in range(6)]
    assert rows == [[0], [0, 1], [0, 1, 2], [0, 1, 2, 3], [0, 1, 3, 4], [0, 1, 4, 5]]


def test_concave_variants_evict_like_h2o():
    for name in ("h2o-sqrt", "h2o-log"):
        assert evictions(name, TRACE, 3) == KNOWN["h2o"][1]


def test_a2sf_forgetting_lets_the_early_token_go():
    # no recent window: like `heavy` until t=5, where token 0's decayed score (.297) falls
    # below the new token 4's (.375); `heavy` keeps 0 and evicts 4 instead.
    assert evictions("a2sf", TRACE, 3, heavy_ratio=1.0, forgetting=0.5) == {2: 3, 3: 4, 0: 5}
    assert evictions("heavy", TRACE, 3) == {2: 3, 3: 4, 4: 5}
