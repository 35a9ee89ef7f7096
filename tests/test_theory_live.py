"""The paper's chain on a live trajectory: the caches SmolLM2 really had (``theory.check --live``).

A tiny synthetic trace supplies the token ids and the "true" attention; the live run decides
the caches. The numbers mean little here; what is checked is the plumbing: the live kept
sets reach :func:`theory.paper.paper_chain` unit by unit, within the budget.
"""

from __future__ import annotations

import numpy as np
import pytest

from h2osim.engine import ReplayConfig
from h2osim.synthetic import synthetic_trace
from theory.paper import live_trajectory, paper_chain

pytestmark = pytest.mark.model


def test_paper_chain_on_a_live_run():
    trace = synthetic_trace(24, layers=1, heads=9, kv_heads=3, head_dim=8, seed=1)
    config = ReplayConfig(observation="renormalized")
    kept_at, labels, k = live_trajectory(trace, "heavy", 0.25, config=config)
    assert k == 6 and len(labels) == 90  # 30 layers x 3 KV heads
    last = kept_at(trace.n - 1)
    assert last.shape == (90, trace.n) and last.sum(axis=1).max() <= k
    chain = paper_chain(trace, "heavy (live)", config=config, kept_at=kept_at, kept_labels=labels)
    assert chain.unit_labels == ((0, 0), (0, 1), (0, 2))
    np.testing.assert_array_equal(chain.size[-1], last[:3].sum(axis=1))
    summary = chain.summary()
    assert summary["hypotheses_hold"] is False and summary["gamma_lemma_max"] > 1 / (10 * trace.n)
