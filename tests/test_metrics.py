"""Metrics: hand-computed known answers."""

from __future__ import annotations

import numpy as np
import pytest

from h2osim.metrics import step_metrics, summarize


def test_step_metrics_known_answer():
    rows = np.array([[[0.5, 0.2, 0.3]]], dtype=np.float32)  # one unit, one head
    kept = np.array([[1.0, 0.0, 1.0]], dtype=np.float32)
    values = np.array([[[1.0, 0.0], [0.0, 1.0], [1.0, 1.0]]], dtype=np.float32)
    kept_mass, mass, hit_rate, error = step_metrics(rows, kept, values)
    assert kept_mass[0, 0] == pytest.approx(0.8)
    assert mass[0] == pytest.approx(0.8)
    assert hit_rate[0] == pytest.approx(2 / 3)  # all three are >= 1% of the max; two kept
    # full output [0.8, 0.5]; kept output (0.5*[1,0] + 0.3*[1,1]) / 0.8 = [1, 0.375]
    # |[0.2, -0.125]| / |[0.8, 0.5]| = 0.23585 / 0.94340 = 0.25
    assert error[0] == pytest.approx(0.25, rel=1e-5)


def test_significance_cut_and_unnormalised_rows():
    rows = np.array([[[0.994, 0.005, 0.001]]], dtype=np.float32) * 0.999  # float16-like row sum
    kept = np.array([[1.0, 0.0, 0.0]], dtype=np.float32)
    _, mass, hit_rate, _ = step_metrics(rows, kept, None)
    assert mass[0] == pytest.approx(0.994, rel=1e-6)  # a share of the row total
    assert hit_rate[0] == pytest.approx(1.0)  # 0.005 and 0.001 are below 1% of 0.994


def test_summarize_splits_decode_steps():
    mass = np.array([[1.0, 1.0], [1.0, 1.0], [0.5, 0.7], [0.3, 0.5]])
    summary = summarize(mass, np.ones_like(mass), None, prompt_length=2)
    assert summary["retained_mass"] == pytest.approx(0.75)
    assert summary["retained_mass_decode"] == pytest.approx(0.5)
    assert summary["worst_unit_mass"] == pytest.approx(0.7)  # unit 0: (1+1+0.5+0.3)/4
    assert summary["output_error"] is None
