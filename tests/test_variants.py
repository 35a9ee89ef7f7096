"""Properties of the H2O variants: which ones must coincide with plain h2o, on any trace."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from h2osim.engine import GQA_MODES, ReplayConfig, replay
from h2osim.policies import make_policy
from tests.strategies import traces

configs = st.builds(ReplayConfig, aggregation=st.sampled_from(GQA_MODES))


@pytest.mark.parametrize(
    ("variant", "params"),
    [("h2o-sqrt", {}), ("h2o-log", {}), ("a2sf", {"forgetting": 1.0})],
)
@given(trace=traces(max_n=12), budget=st.integers(2, 10), config=configs)
def test_variant_equals_h2o(variant, params, trace, budget, config):
    """h increasing => h(acc) ranks like acc; a forgetting factor of 1 forgets nothing."""
    reference = replay(trace, make_policy("h2o"), budget, config=config)
    result = replay(trace, make_policy(variant, **params), budget, config=config)
    np.testing.assert_array_equal(result.evicted_at, reference.evicted_at)


@given(trace=traces(max_n=12, min_n=4), budget=st.integers(2, 10))
def test_h2o_drop_is_h2o_with_absolute_sizes(trace, budget):
    """h2o-drop(heavy, recent) = h2o over the prompt-in-full replay with k = heavy + recent + 1
    when heavy and recent split k the way h2o's heavy_ratio does."""
    heavy = budget // 2
    recent = budget - heavy - 1
    drop = replay(trace, make_policy("h2o-drop", heavy_size=heavy, recent_size=recent), 0.5)
    plain = replay(trace, make_policy("h2o", heavy_ratio=heavy / budget), budget,
                   config=ReplayConfig(prompt_mode="full"))  # fmt: skip
    assert drop.budget == plain.budget == budget
    np.testing.assert_array_equal(drop.evicted_at, plain.evicted_at)
