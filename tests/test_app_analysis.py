"""Known answers for the app's pure helpers (h2oapp.analysis, h2oapp.figures), no Streamlit run."""

from __future__ import annotations

import io
import sys
from pathlib import Path

import numpy as np
import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "app"))

from h2oapp import analysis, figures  # noqa: E402
from h2oapp.analysis import EVICTED, EVICTED_NOW, FUTURE, HEAVY, RECENT  # noqa: E402
from h2oapp.cached import shipped_traces  # noqa: E402

from h2osim.studies import observe  # noqa: E402


def test_accumulated_attention_sums_columns_or_averages_per_row_seen():
    matrix = np.array([[1.0, 0.0], [0.4, 0.6]])
    np.testing.assert_allclose(analysis.accumulated_attention(matrix), [1.4, 0.6])
    np.testing.assert_allclose(analysis.accumulated_attention(matrix, per_row=True), [0.7, 0.6])


def test_sparsity_counts_entries_below_one_percent_of_the_row_max():
    assert analysis.sparsity(np.array([[1.0, 0.0], [0.005, 0.995]])) == pytest.approx(1 / 3)
    assert analysis.sparsity(np.tril(np.ones((4, 4)))) == 0.0


def test_sink_mass_is_the_mean_attention_on_token_zero_after_row_zero():
    matrix = np.array([[1, 0, 0], [0.5, 0.5, 0], [0.2, 0.3, 0.5]])
    assert analysis.sink_mass(matrix) == pytest.approx(0.35)


def test_top_share():
    assert analysis.top_share(np.array([6.0, 2.0, 1.0, 1.0]), 0.25) == pytest.approx(0.6)
    assert analysis.top_share(np.zeros(3)) == 0.0


def test_power_law_recovers_the_exponent_and_is_the_cli_estimator():
    ranks = np.arange(1, 201, dtype=float)
    alpha, scale, r2 = analysis.power_law(np.random.default_rng(0).permutation(5.0 * ranks**-1.3))
    assert (alpha, scale, r2) == (pytest.approx(1.3), pytest.approx(5.0), pytest.approx(1.0))
    bent = np.exp(-ranks / 40.0)  # not a power law: the estimators must agree anyway
    assert analysis.power_law(bent)[0] == observe.power_law_fit(bent)[0]


def test_log_weights_span_three_decades():
    weights = analysis.log_weights(np.array([100.0, 10.0, 1.0, 0.01, 0.0]), decades=3)
    np.testing.assert_allclose(weights, [1, 2 / 3, 1 / 3, 0, 0])


def test_cache_states_known_answer():
    evicted_at = np.array([-1, 3, -1, -1, -1])
    np.testing.assert_array_equal(
        analysis.cache_states(evicted_at, 3), [HEAVY, EVICTED_NOW, RECENT, RECENT, FUTURE]
    )
    np.testing.assert_array_equal(
        analysis.cache_states(evicted_at, 4), [HEAVY, EVICTED, RECENT, RECENT, RECENT]
    )
    np.testing.assert_array_equal(
        analysis.cache_states(np.full(3, -1), 0), [RECENT, FUTURE, FUTURE]
    )


def test_cache_states_agree_with_the_replay(synthetic_small):
    from h2osim.engine import replay

    result = replay(synthetic_small, "h2o", 0.25)
    for t in (5, 20, synthetic_small.n - 1):
        states = np.stack([analysis.cache_states(row, t) for row in result.evicted_at])
        kept = (states == RECENT) | (states == HEAVY)
        np.testing.assert_array_equal(kept[:, : t + 1], result.kept_at(t))
        assert (kept.sum(axis=1) <= result.budget).all()


def _validate(spec: dict) -> None:
    """Check a spec against the Vega-Lite JSON schema (data sets made JSON first)."""
    import altair as alt
    import pandas as pd

    spec = dict(spec)
    spec["datasets"] = {name: data.to_dict("records") if isinstance(data, pd.DataFrame) else data
                        for name, data in spec["datasets"].items()}  # fmt: skip
    alt.LayerChart.from_dict(spec, validate=True)


def test_charts_build_valid_vega_lite_specs():
    rng = np.random.default_rng(0)
    tokens = [f" w{i}" for i in range(30)]
    curves = {"h2o": rng.random(30), "window": rng.random(30)}
    evicted = {"h2o": np.where(rng.random(30) < 0.5, -1, 29), "window": np.arange(30) - 30}
    states = {"h2o": analysis.cache_states(evicted["h2o"], 12)}
    records = [{"policy": p, "budget_fraction": b, "budget": int(b * 30), "retained_mass": m}
               for p, m0 in (("h2o", 0.8), ("opt", 0.9)) for b, m in ((0.1, m0), (0.2, m0 + 0.05))]  # fmt: skip
    records.append({"policy": "full", "budget_fraction": 1.0, "budget": 30, "retained_mass": 1.0})
    specs = [
        figures.power_law_chart(rng.random(30), tokens, 1.0, 1.0, "accumulated attention"),
        figures.sink_chart(rng.random(30), 20),
        figures.token_strip(states, 12),
        figures.attention_heatmap(np.tril(rng.random((30, 30))), 20),
        figures.attention_heatmap(np.tril(rng.random((30, 30))), 30, log_scale=False),
        figures.retained_mass_chart(curves, 12, 20, "title"),
        figures.eviction_times_chart(evicted, tokens, 12),
        figures.greedy_chart([0.0, 1.0, 1.5], [0.0, 1.0, 1.8]),
        figures.bound_chart(
            {
                "ratio_mean": rng.random(30),
                "ratio_min": rng.random(30),
                "ratio_max": rng.random(30),
                "bound_mean": rng.random(30),
                "bound_exp_mean": rng.random(30),
                "prompt_length": 20,
            }
        ),
        figures.alpha_beta_chart({"alpha_mean": rng.random(30), "beta_mean": rng.random(30)}),
        figures.running_perplexity_chart({"full": -rng.random(30), "h2o": -rng.random(30)}, 8),
        figures.race_chart(records, "retained_mass", "retained mass", shade="h2o"),
    ]
    for spec in specs:
        _validate(spec)
    assert "area" in str(specs[-1])  # the gap to opt is shaded


def test_html_escapes_token_text():
    text = figures.weighted_tokens_html(["<b>", "\n"], np.array([1.0, 0.0]), np.array([2.0, 0.0]))
    assert "&lt;b&gt;" in text and "<b>" not in text
    assert figures.cache_text_html(["<i>", "x"], np.array([EVICTED, RECENT]), 1).count("<span") == 2


def test_heatmap_png_has_one_pixel_per_token_and_a_white_upper_triangle(synthetic_small):
    from PIL import Image

    matrix = synthetic_small.head_matrix(0, 0)
    image = Image.open(io.BytesIO(figures.heatmap_png(matrix, 1e-4, 1.0, log_scale=True)))
    pixels = np.asarray(image)
    assert pixels.shape == (synthetic_small.n, synthetic_small.n, 3)
    assert (pixels[0, 1:] == 255).all() and (pixels[1:, 0] != 255).any()


def test_heatmap_of_a_long_trace_is_max_pooled():
    from PIL import Image

    matrix = np.tril(np.full((1300, 1300), 1e-4))
    matrix[:, 7] = 1.0  # one heavy-hitter column must survive the pooling
    pixels = np.asarray(Image.open(io.BytesIO(figures.heatmap_png(matrix, 1e-4, 1.0, True))))
    assert pixels.shape[0] == -(-1300 // 4)  # blocks of 4 tokens: at most 400 pixels
    assert (pixels[5:, 2] == pixels[5, 2]).all() and not (pixels[5, 2] == pixels[5, 10]).all()


def test_segments():
    assert figures._segments(np.array([3, 3, 1, 0])) == [(0, 2, 3), (2, 3, 1), (3, 4, 0)]


def test_shipped_traces_put_real_models_first(tmp_path, monkeypatch):
    for name in ("synthetic-demo.npz", "smollm2-b.npz", "smollm2-a.npz", "notes.txt"):
        (tmp_path / name).write_bytes(b"")
    monkeypatch.setenv("H2OSIM_TRACE_DIR", str(tmp_path))
    assert [p.name for p in shipped_traces()] == [
        "smollm2-a.npz",
        "smollm2-b.npz",
        "synthetic-demo.npz",
    ]


def test_a_policy_keeps_its_colour_and_oracles_are_dashed():
    records = [{"policy": p, "budget_fraction": b, "budget": int(b * 100), "retained_mass": m}
               for p, m in (("h2o", 0.8), ("opt", 0.9), ("window", 0.6)) for b in (0.1, 0.2)]  # fmt: skip
    race = figures.race_chart(records, "retained_mass", "retained mass", shade="h2o")
    colour = next(layer for layer in race["layer"] if layer["data"]["name"] == "curves")
    scale = colour["encoding"]["color"]["scale"]
    assert "gap h2o to opt (shaded)" in scale["domain"]  # the band has its legend entry
    dynamics = figures.retained_mass_chart(
        {"window": np.ones(5), "h2o (left)": np.ones(5)}, 2, 5, ""
    )
    dyn_scale = dynamics["layer"][0]["encoding"]["color"]["scale"]
    for name, label in (("h2o", "h2o (left)"), ("window", "window")):
        assert scale["range"][scale["domain"].index(name)] == figures.policy_colour(name)
        assert dyn_scale["range"][dyn_scale["domain"].index(label)] == figures.policy_colour(name)
    dash = colour["encoding"]["strokeDash"]["scale"]
    assert dash["range"][dash["domain"].index("opt")] != [1, 0]  # opt dashed
    assert dash["range"][dash["domain"].index("h2o")] == [1, 0]
    assert figures.policy_colour("h2o") != figures.policy_colour("opt")


def test_heatmap_hover_cells_name_tokens_not_the_image():
    matrix = np.tril(np.full((4, 4), 0.25))
    matrix[3, 1] = 0.7
    cells = figures.heatmap_cells(matrix, ["a", " b", " c", " d"], grid=2)
    assert len(cells) == 3  # blocks (0,0), (1,0), (1,1) of 2x2 tokens
    low_left = next(c for c in cells if c["y"] == 2 and c["x"] == 0)
    assert low_left["query"] == "t = 3: ' d'" and low_left["key"] == "j = 1: ' b'"
    assert low_left["attention"] == pytest.approx(0.7)
    spec = figures.attention_heatmap(matrix, 4, tokens=["a", " b", " c", " d"])
    image = spec["layer"][0]
    assert image["mark"]["tooltip"] is False and "tooltip" not in image["encoding"]


def test_token_tooltips_say_text_score_rank_and_state():
    states = np.array([HEAVY, EVICTED, RECENT, RECENT])
    tips = figures.token_tooltips(["The", " cat", " sat", " on"], np.array([3.0, 0.5, 1.0, 0.2]),
                                  3, np.array([-1, 2, -1, -1]), states)  # fmt: skip
    assert tips[0] == "'The' (token 0): score 3, rank 1 of 4; kept: older (heavy hitter)"
    assert tips[1] == "' cat' (token 1): score 0.5, rank 3 of 4; evicted at step 2"
