"""The race results precomputed at setup (app/h2oapp/precompute.py) and how the app reads them."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest
from streamlit.testing.v1 import AppTest

REPO_ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO_ROOT / "app"))

from h2oapp import cached, precompute  # noqa: E402

from h2osim.engine import ReplayConfig, sweep  # noqa: E402
from h2osim.policies import make_policy  # noqa: E402
from h2osim.synthetic import synthetic_trace  # noqa: E402
from h2osim.trace import Trace  # noqa: E402


@pytest.fixture
def store(tmp_path, monkeypatch) -> Path:
    """One tiny trace in its own folder, its race cells precomputed into a tmp store."""
    folder = tmp_path / "traces"
    folder.mkdir()
    synthetic_trace(36, layers=1, heads=4, kv_heads=2, head_dim=8, seed=11).save(folder / "t.npz")
    monkeypatch.setenv("H2OSIM_APP_CACHE", str(tmp_path / "store"))
    monkeypatch.setenv("H2OSIM_TRACE_DIR", str(folder))
    precompute.precompute(folder / "t.npz", ["h2o", "window", "opt", "full"], (0.2, 0.5))
    return folder / "t.npz"


def test_store_is_json_with_the_engine_sweep_records(store):
    sha = precompute.file_sha256(store)
    payload = json.loads(precompute.store_path(sha).read_text())  # plain JSON, no pickle
    assert payload["format"] == precompute.FORMAT and payload["trace_sha256"] == sha
    cells = precompute.read_store(sha)
    assert set(cells) == {"h2o@0.2", "h2o@0.5", "window@0.2", "window@0.5", "opt@0.2",
                          "opt@0.5", "full@fixed"}  # full: once (fixed budget)  # fmt: skip
    config = ReplayConfig(*precompute.DEFAULT_OPTIONS, output_error=True)
    (fresh,) = sweep(Trace.load(store), [make_policy("h2o")], [0.5], config=config)
    stored = cells["h2o@0.5"]
    for metric in ("retained_mass", "hit_rate", "output_error", "worst_unit_mass"):
        assert stored[metric] == pytest.approx(fresh[metric], abs=1e-12), metric


def test_a_changed_trace_misses_the_store(store, tmp_path):
    other = tmp_path / "other.npz"
    synthetic_trace(36, layers=1, heads=4, kv_heads=2, head_dim=8, seed=12).save(other)
    assert precompute.read_store(precompute.file_sha256(other)) == {}


def test_the_race_reads_the_store_instead_of_replaying(store, monkeypatch):
    def no_replays(*args, **kwargs):
        raise AssertionError("a stored cell was replayed")

    monkeypatch.setattr(cached, "sweep", no_replays)
    app = AppTest.from_file(str(REPO_ROOT / "app" / "main.py"), default_timeout=60)
    app.run()
    app.switch_page("views/policy_race.py")
    app.session_state["race_policies"] = ["h2o", "window", "opt", "full"]
    app.session_state["race_budgets"] = [0.2, 0.5]
    app.run()
    assert not app.exception, app.exception
    table = app.dataframe[0].value.set_index(["policy", "budget_requested"])
    assert len(table) == 7 and table["gap_to_opt"].notna().sum() == 6  # full: another k
    assert table.loc[("full", 0.2), "output_error"] == 0.0  # stored with the output error


def test_results_made_by_other_code_are_not_read(store, monkeypatch):
    """A stored payload carries the library's fingerprint: after a code change it misses."""
    sha = precompute.file_sha256(store)
    assert precompute.read_store(sha)  # made by this code: read
    monkeypatch.setattr(precompute, "_ENGINE", "another version of h2osim")
    assert precompute.read_store(sha) == {}
