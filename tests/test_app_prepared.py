"""The pages' cold-run results prepared at setup (app/h2oapp/prepared.py): equal to what
the pages compute on the fly, read only by the code that made them, and the pages show the
same with and without them."""

from __future__ import annotations

import dataclasses
import json
import sys
from pathlib import Path

import numpy as np
import pytest
import streamlit as st
from streamlit.testing.v1 import AppTest

REPO_ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO_ROOT / "app"))

from h2oapp import analysis, precompute, prepared  # noqa: E402

from h2osim.synthetic import synthetic_trace  # noqa: E402
from h2osim.trace import Trace  # noqa: E402


@pytest.fixture
def store(tmp_path, monkeypatch) -> Path:
    """One tiny trace (with values) in its own folder, precomputed into a tmp store."""
    folder = tmp_path / "traces"
    folder.mkdir()
    synthetic_trace(36, layers=2, heads=4, kv_heads=2, head_dim=8, seed=5).save(folder / "t.npz")
    monkeypatch.setenv("H2OSIM_APP_CACHE", str(tmp_path / "store"))
    monkeypatch.setenv("H2OSIM_TRACE_DIR", str(folder))
    precompute.precompute(folder / "t.npz", ["h2o", "window"], (0.2,))
    st.cache_data.clear()
    st.cache_resource.clear()
    yield folder / "t.npz"
    st.cache_data.clear()
    st.cache_resource.clear()


def assert_same_result(stored, fresh) -> None:
    for field in dataclasses.fields(fresh):
        if field.name == "seconds":  # the replay's own timing
            continue
        a, b = getattr(stored, field.name), getattr(fresh, field.name)
        if isinstance(b, np.ndarray) or isinstance(a, np.ndarray):
            assert a.dtype == b.dtype and np.array_equal(a, b), field.name
        else:
            assert a == b, field.name


def test_prepared_results_equal_the_pages_own(store):
    sha = precompute.file_sha256(store)
    stored = prepared.read(precompute.store_folder(), sha)
    trace = Trace.load(store)
    assert set(stored["replays"]) == set(prepared.DYNAMICS)
    for policy in prepared.DYNAMICS:
        params = prepared.default_params(policy)
        hit = prepared.stored_replay(stored, policy, params, 0.2, prepared.DEFAULT_OPTIONS, False)
        fresh = prepared.replay_of(trace, policy, params, 0.2, prepared.DEFAULT_OPTIONS)
        assert_same_result(hit, fresh)
    layer, head = analysis.showcase_head(trace)
    spec = prepared.stored_heatmap(stored, layer, head, True)
    assert spec == json.loads(json.dumps(prepared.heatmap_of(trace, layer, head, True)))
    # anything else is not stored: the page computes it
    assert prepared.stored_heatmap(stored, layer, head, False) is None
    h2o = prepared.default_params("h2o")
    assert prepared.stored_replay(stored, "h2o", h2o, 0.25, prepared.DEFAULT_OPTIONS, False) is None
    assert prepared.stored_replay(stored, "h2o", h2o, 0.2, prepared.DEFAULT_OPTIONS, True) is None
    assert prepared.stored_replay(stored, "h2o", h2o, 0.2, ("max", "stream", "full"), False) is None
    assert prepared.stored_replay(stored, "sink", (), 0.2, prepared.DEFAULT_OPTIONS, False) is None


def test_prepared_results_of_other_code_or_another_trace_are_not_read(store, monkeypatch, tmp_path):
    sha = precompute.file_sha256(store)
    assert prepared.read(precompute.store_folder(), sha)  # made by this code: read
    other = tmp_path / "other.npz"
    synthetic_trace(36, layers=1, heads=4, kv_heads=2, head_dim=8, seed=6).save(other)
    assert prepared.read(precompute.store_folder(), precompute.file_sha256(other)) == {}
    monkeypatch.setattr(prepared, "_VERSION", "another version of h2osim or the app")
    assert prepared.read(precompute.store_folder(), sha) == {}
    # --if-stale then rewrites the views (the race cells are still current)
    monkeypatch.setattr(precompute, "prepare_views", lambda path: calls.append(path) or path)
    calls: list[Path] = []
    assert precompute.main([str(store), "--if-stale"]) == 0
    assert calls == [store]


def page_output(page: str) -> tuple:
    app = AppTest.from_file(str(REPO_ROOT / "app" / "main.py"), default_timeout=60)
    app.run()
    app.switch_page(f"views/{page}.py").run()
    assert not app.exception, app.exception
    charts = [chart.proto.spec for chart in app.get("vega_lite_chart")]
    assert charts and app.metric  # the page drew its charts and metrics
    return ([m.value for m in app.metric], [m.value for m in app.markdown], charts)


@pytest.mark.parametrize("page", ["eviction_dynamics", "trace_explorer"])
def test_pages_read_the_prepared_results_and_show_the_same_without_them(store, monkeypatch, page):
    def computed(*args, **kwargs):
        raise AssertionError("a prepared result was computed again")

    with monkeypatch.context() as patched:
        patched.setattr(prepared, "replay_of", computed)
        patched.setattr(prepared, "heatmap_of", computed)
        with_store = page_output(page)
    st.cache_data.clear()
    st.cache_resource.clear()
    prepared.path_for(precompute.store_folder(), precompute.file_sha256(store)).unlink()
    without = page_output(page)  # computed on the fly
    assert with_store == without


def test_prepared_by_hand_example_equals_the_pages_own(tmp_path, monkeypatch):
    from h2oapp import by_hand

    monkeypatch.setenv("H2OSIM_APP_CACHE", str(tmp_path / "store"))
    prepared.write_by_hand(precompute.store_folder())
    stored = prepared.read_by_hand(precompute.store_folder())
    source, k, recent, layer, unit = prepared.by_hand_default()
    decisions, scores, compared = prepared.stored_by_hand(stored, source, k, recent, layer, unit)
    trace = by_hand.toy_trace(list(source[1]), list(source[2]))
    fresh_decisions, fresh_scores, fresh_compared = by_hand.worked_example(trace, k, recent)
    assert decisions == fresh_decisions and len(decisions) == 4  # the worked example's 4 steps
    assert np.array_equal(scores, fresh_scores, equal_nan=True)
    assert list(compared) == list(fresh_compared) == list(by_hand.COMPARED)
    for name, result in compared.items():
        assert_same_result(result, fresh_compared[name])
    # other settings are not stored; nor is anything made by other code
    assert prepared.stored_by_hand(stored, source, k, recent - 1, layer, unit) is None
    monkeypatch.setattr(prepared, "_VERSION", "another version")
    assert prepared.read_by_hand(precompute.store_folder()) == {}


def test_by_hand_page_reads_the_prepared_example_and_shows_the_same_without_it(
    tmp_path, monkeypatch
):
    from h2oapp import by_hand

    monkeypatch.setenv("H2OSIM_APP_CACHE", str(tmp_path / "store"))
    prepared.write_by_hand(precompute.store_folder())

    def shown() -> tuple:
        st.cache_data.clear()
        st.cache_resource.clear()
        app = AppTest.from_file(str(REPO_ROOT / "app" / "main.py"), default_timeout=60)
        app.run()
        assert not app.exception, app.exception
        tables = [table.value.to_json() for table in app.dataframe]
        assert tables and app.markdown
        return [m.value for m in app.markdown], tables, [h.proto.body for h in app.get("html")]

    with monkeypatch.context() as patched:
        patched.setattr(by_hand, "worked_example", lambda *a: pytest.fail("computed again"))
        with_store = shown()
    prepared.by_hand_path(precompute.store_folder()).unlink()
    assert with_store == shown()


def test_a_prepared_trace_is_not_validated_again_any_other_is(store, monkeypatch, tmp_path):
    from h2oapp import cached

    validated: list[str] = []
    real_validate = Trace.validate
    other = tmp_path / "other.npz"
    synthetic_trace(36, layers=1, heads=4, kv_heads=2, head_dim=8, seed=6).save(other)
    monkeypatch.setattr(
        Trace, "validate", lambda self: validated.append(self.path.name) or real_validate(self)
    )
    assert cached.load_trace(cached.trace_key(store)).n == 36  # setup validated these bytes
    assert cached.load_trace(cached.trace_key(other)).n == 36
    assert validated == ["other.npz"]
    st.cache_resource.clear()
    monkeypatch.setattr(prepared, "_VERSION", "another version")  # made by other code: check
    cached.load_trace(cached.trace_key(store))
    assert validated == ["other.npz", "t.npz"]
