"""Shared fixtures and the Hypothesis profiles (``dev`` locally, ``ci`` under CI=1)."""

from __future__ import annotations

import os

import pytest
from hypothesis import HealthCheck, settings

settings.register_profile("dev", max_examples=60, deadline=None)
settings.register_profile(
    "ci",
    max_examples=150,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow],
    print_blob=True,
)
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "ci" if os.environ.get("CI") else "dev"))


@pytest.fixture(scope="session", autouse=True)
def _one_blas_thread():
    """Tests run as the CLIs do: one BLAS thread (see h2osim.cli.limit_threads)."""
    from h2osim.cli import limit_threads

    limit_threads()


@pytest.fixture(scope="session")
def synthetic_small():
    """A small seeded synthetic trace (in memory): 2 layers, 6 heads -> 3 KV heads, n=40."""
    from h2osim.synthetic import synthetic_trace

    return synthetic_trace(40, layers=2, heads=6, kv_heads=3, head_dim=8, seed=7)
