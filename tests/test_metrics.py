"""Metrics: hand-computed known answers."""

from __future__ import annotations

import numpy as np
import pytest

from h2osim.metrics import full_output, kept_matrix, output_error, step_metrics, summarize


def test_step_metrics_known_answer():
    rows = np.array([[[0.5, 0.2, 0.3]]], dtype=np.float32)  # one unit, one head
    kept = np.array([[True, False, True]])
    mass, hit_rate = step_metrics(rows, kept)
    assert mass[0] == pytest.approx(0.8)
    assert hit_rate[0] == pytest.approx(2 / 3)  # all three are >= 1% of the max; two kept


def test_output_error_known_answer():
    attention = np.array([[1.0, 0, 0], [0.4, 0.6, 0], [0.5, 0.2, 0.3]], dtype=np.float32)
    values = np.array([[1.0, 0.0], [0.0, 1.0], [1.0, 1.0]], dtype=np.float32)
    kept = kept_matrix(np.array([-1, 2, -1]))  # token 1 leaves at step 2
    assert kept.tolist() == [[True, False, False], [True, True, False], [True, False, True]]
    # row 2: full output [0.8, 0.5]; kept (0.5*[1,0] + 0.3*[1,1]) / 0.8 = [1, 0.375]
    # |[0.2, -0.125]| / |[0.8, 0.5]| = 0.23585 / 0.94340 = 0.25; rows 0, 1 lose nothing
    np.testing.assert_allclose(output_error(attention, values, kept), [0.0, 0.0, 0.25], atol=1e-6)
    np.testing.assert_allclose(full_output(attention, values)[2], [0.8, 0.5], rtol=1e-6)


def test_significance_cut_and_unnormalised_rows():
    rows = np.array([[[0.994, 0.005, 0.001]]], dtype=np.float32) * 0.999  # float16-like row sum
    kept = np.array([[True, False, False]])
    mass, hit_rate = step_metrics(rows, kept)
    assert mass[0] == pytest.approx(0.994, rel=1e-6)  # a share of the row total
    assert hit_rate[0] == pytest.approx(1.0)  # 0.005 and 0.001 are below 1% of 0.994


def test_summarize_splits_decode_steps():
    mass = np.array([[1.0, 1.0], [1.0, 1.0], [0.5, 0.7], [0.3, 0.5]])
    summary = summarize(mass, np.ones_like(mass), None, prompt_length=2)
    assert summary["retained_mass"] == pytest.approx(0.75)
    assert summary["retained_mass_decode"] == pytest.approx(0.5)
    assert summary["worst_unit_mass"] == pytest.approx(0.7)  # unit 0: (1+1+0.5+0.3)/4
    assert summary["output_error"] is None
