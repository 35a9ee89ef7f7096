"""The replay engine: a conformance matrix over the registry, a differential check against
the slow reference loop, and proof that online policies never read the future."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from h2osim.engine import GQA_MODES, OBSERVATIONS, PROMPT_MODES, ReplayConfig, replay
from h2osim.policies import Policy, make_policy, policy_class, policy_names
from h2osim.synthetic import synthetic_trace
from h2osim.trace import Trace, pack_lower
from tests.reference_replay import reference_replay
from tests.strategies import attention_logits, softmax_rows, traces

ALL = policy_names()
ONLINE = policy_names(online=True)


class Recorder(Policy):
    """Wraps a policy and records what the engine showed it and what it answered."""

    def __init__(self, inner: Policy):
        self.inner = inner
        self.name, self.online, self.prompt_mode = inner.name, inner.online, inner.prompt_mode
        self.kind = inner.kind
        self.needs_key_norms = inner.needs_key_norms
        self.fixed_budget = inner.fixed_budget
        self.kept_seen: dict[int, np.ndarray] = {}
        self.contexts = []

    def describe(self) -> str:
        return self.inner.describe()

    def reset(self, context) -> None:
        self.contexts.append(context)
        self.inner.reset(context)

    def evict(self, t, kept, count):
        assert not kept.flags.writeable, "policies must get a read-only view of the cache"
        return self.inner.evict(t, kept, count)

    def attend(self, t):
        return self.inner.attend(t)

    def observe(self, t, observed, kept) -> None:
        self.kept_seen[t] = kept.copy()
        assert observed.shape == kept.shape and np.isfinite(observed).all()
        self.inner.observe(t, observed, kept)


configs = st.builds(
    ReplayConfig,
    aggregation=st.sampled_from(GQA_MODES),
    prompt_mode=st.sampled_from(PROMPT_MODES),
    observation=st.sampled_from(OBSERVATIONS),
)
budgets = st.one_of(st.integers(2, 14), st.floats(0.05, 1.0))


@pytest.mark.parametrize("name", ALL)
@given(trace=traces(max_n=12), budget=budgets, config=configs)
def test_conformance(name, trace, budget, config):
    recorder = Recorder(make_policy(name))
    result = replay(trace, recorder, budget, config=config)
    context = recorder.contexts[0]
    k = result.budget
    assert (context.unit_matrix is None) == policy_class(name).online  # no trace for online ones
    prompt, mode = trace.prompt_length, result.config.prompt_mode
    for t in range(trace.n):
        kept = recorder.kept_seen[t]  # what the engine really served row t over
        np.testing.assert_array_equal(kept, result.kept_at(t))
        served = np.stack([result.served(u)[t, : t + 1] for u in range(kept.shape[0])])
        np.testing.assert_array_equal(kept, served)
        if result.kind == "mask":
            continue  # a mask names each row's set: sizes vary, keys may come back
        assert kept[:, t].all(), "the newest token is always admitted"
        if mode == "prefill":  # compressed once, after the prompt, then appended
            expected = t + 1 if t < prompt or prompt <= k else k + 1 + (t - prompt)
        elif mode == "full" and t < prompt:
            expected = t + 1
        else:
            expected = min(t + 1, k)
        assert (kept.sum(axis=1) == expected).all(), "cache holds exactly what the schedule says"
        if t:
            previous = recorder.kept_seen[t - 1]
            assert not (kept[:, :t] & ~previous).any(), "an evicted token came back"
    assert np.all((result.retained_mass >= -1e-6) & (result.retained_mass <= 1 + 1e-5))
    assert np.all((result.hit_rate >= 0) & (result.hit_rate <= 1))
    again = replay(trace, make_policy(name), budget, config=config)
    np.testing.assert_array_equal(again.evicted_at, result.evicted_at)  # same seed, same output


# Policies whose budget comes from the replay (not from their own sizes, like h2o-drop).
REPLAY_BUDGETED = [name for name in ALL if make_policy(name).fixed_budget(100, 50) is None]


@pytest.mark.parametrize("name", REPLAY_BUDGETED)
@given(trace=traces(max_n=10), config=configs)
def test_budget_at_least_n_equals_full(name, trace, config):
    result = replay(trace, make_policy(name), trace.n + 3, config=config)
    full = replay(trace, make_policy("full"), 0.5, config=result.config)
    assert (result.evicted_at == -1).all()
    np.testing.assert_allclose(result.retained_mass, full.retained_mass)
    np.testing.assert_allclose(result.retained_mass, 1.0, atol=1e-6)


@pytest.mark.parametrize("name", ALL)
@given(trace=traces(max_n=9, max_layers=2), budget=budgets, config=configs)
def test_engine_matches_reference_loop(name, trace, budget, config):
    fast = replay(trace, make_policy(name), budget, config=config)
    slow = reference_replay(trace, make_policy(name), budget, config=config)
    np.testing.assert_array_equal(fast.evicted_at, slow["evicted_at"])
    np.testing.assert_allclose(fast.retained_mass, slow["retained_mass"], atol=2e-6)
    np.testing.assert_allclose(fast.hit_rate, slow["hit_rate"], atol=1e-6)
    if trace.has_values:
        np.testing.assert_allclose(fast.output_error, slow["output_error"], atol=2e-4, rtol=1e-3)


@st.composite
def trace_pairs(draw):
    """Two traces identical in rows < cut and (almost surely) different from row cut on."""
    trace = draw(traces(max_n=12, min_n=3, values=False))
    cut = draw(st.integers(1, trace.n - 1))
    other = {}
    for layer in trace.layers:
        dense = np.stack([trace.head_matrix(int(layer), h) for h in range(trace.num_heads)]).astype(
            np.float64
        )
        fresh = softmax_rows(draw(attention_logits(dense.shape)) + np.linspace(0, 3, trace.n))
        dense[:, cut:] = fresh[:, cut:]
        other[int(layer)] = pack_lower(dense).astype(np.float32)
    norms = {int(layer): trace.key_norms(int(layer)) for layer in trace.layers}
    changed = Trace.from_arrays(other, head_map=trace.head_map, prompt_length=trace.prompt_length,
                                key_norms=norms)  # fmt: skip
    return trace, changed, cut


@pytest.mark.parametrize("name", ONLINE)
@given(pair=trace_pairs(), budget=budgets, config=configs)
def test_online_policies_never_read_future_rows(name, pair, budget, config):
    trace, changed, cut = pair
    a = replay(trace, make_policy(name), budget, config=config)
    b = replay(changed, make_policy(name), budget, config=config)
    # decisions at steps <= cut depend only on rows < cut, which the traces share
    for t in range(cut + 1):
        np.testing.assert_array_equal(a.kept_at(t), b.kept_at(t))


def test_future_rows_do_matter_to_the_test():
    """Teeth: an engine bug that showed policies row t before evicting at step t would be caught."""
    trace = synthetic_trace(30, layers=1, heads=2, kv_heads=1, seed=0, values=False)
    peeking = [trace.rows(t)[0].sum(0) for t in range(trace.n)]  # (t+1,) per row

    class Peeker(Policy):
        name = "peeker"

        def evict(self, t, kept, count):  # uses row t: illegal for an online policy
            scores = np.where(kept[0], peeking[t], np.inf)
            scores[-1] = np.inf
            return np.argsort(scores, kind="stable")[:count][None, :]

    dense = np.stack([trace.head_matrix(0, h) for h in range(2)])
    dense[:, 20:] = softmax_rows(np.random.default_rng(1).normal(size=dense.shape) * 4)[:, 20:]
    changed = Trace.from_arrays(
        {0: pack_lower(dense)}, head_map=[0, 0], prompt_length=trace.prompt_length
    )
    peeking_changed = [changed.rows(t)[0].sum(0) for t in range(changed.n)]
    a = replay(trace, Peeker(), 8)
    peeking[:] = peeking_changed
    b = replay(changed, Peeker(), 8)
    assert any(not np.array_equal(a.kept_at(t), b.kept_at(t)) for t in range(21))


def test_engine_rejects_illegal_answers():
    trace = synthetic_trace(10, layers=1, heads=1, kv_heads=1, seed=0)

    class EvictsNewest(Policy):
        name = "bad"

        def evict(self, t, kept, count):
            return np.full((kept.shape[0], count), t)

    class EvictsTwice(Policy):
        name = "bad2"

        def evict(self, t, kept, count):
            return np.zeros((kept.shape[0], count), dtype=int)

    with pytest.raises(RuntimeError, match="outside"):
        replay(trace, EvictsNewest(), 3)
    with pytest.raises(RuntimeError, match="no longer cached"):
        replay(trace, EvictsTwice(), 3)


@given(trace=traces(max_n=10), config=configs)
def test_row_statistics_measured_in_a_replay_equal_the_direct_ones(trace, config):
    """A trace's first replay measures row sums/maxima/significant counts on the fly and
    caches them; they must equal the direct computation, and a second replay (which reads
    the cache) must give the same results."""
    first = replay(trace, make_policy("h2o"), 3, config=config)
    layers = trace.layers.tolist() if config.layers is None else list(config.layers)
    measured = {layer: trace.row_stats(layer, compute=False) for layer in layers}
    trace._row_stats.clear()
    for layer in layers:
        direct = trace.row_stats(layer)
        for got, want in zip(measured[layer], direct, strict=True):
            np.testing.assert_allclose(got, want, rtol=1e-12, atol=0)
    second = replay(trace, make_policy("h2o"), 3, config=config)
    np.testing.assert_array_equal(second.evicted_at, first.evicted_at)
    np.testing.assert_array_equal(second.retained_mass, first.retained_mass)
    np.testing.assert_array_equal(second.hit_rate, first.hit_rate)
