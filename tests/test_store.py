"""The results store: round trip, schema, atomic parts, and broken stores as one-line errors."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from h2osim.grid import Grid, RunConfig, policy_specs, trace_ref
from h2osim.store import COLUMNS, MARKER, ResultStore, StoreError, record_of, schema
from h2osim.sweep import ensure, run_grid
from tests.sweep_helpers import ROOT, child_env, deterministic, small_trace

pytestmark = pytest.mark.timeout(120)


@pytest.fixture(scope="module")
def filled(tmp_path_factory) -> tuple[Path, Path, list[dict]]:
    folder = tmp_path_factory.mktemp("store")
    trace = small_trace(folder / "t.npz")
    grid = Grid([trace_ref(trace)], policy_specs(["h2o", "full", "opt"], {}), [0.25, 0.5],
                [RunConfig(), RunConfig(prompt_mode="full", output_error=False)])  # fmt: skip
    run = run_grid(grid, ResultStore(folder / "store"), per_step=True)
    return folder / "store", trace, run.rows


def test_round_trip_and_schema(filled, tmp_path):
    path, _, rows = filled
    store = ResultStore(path)
    assert len(store) == len(rows) == 2 * (2 + 1 + 2 + 2)  # h2o, full, opt, topk per config
    assert deterministic(store.rows()) == deterministic(rows)
    assert {row["key"]: row for row in store.rows()} == {row["key"]: row for row in rows}
    assert store.table().schema == schema() and tuple(store.table().column_names) == COLUMNS
    for part in store.parts():  # every published part has exactly the schema
        assert pq.read_schema(part).remove_metadata() == schema()
    # a copy of the rows written to a new store reads back identically
    copy = ResultStore(tmp_path / "copy")
    copy.write(store.rows())
    assert {r["key"]: r for r in copy.rows()} == {r["key"]: r for r in store.rows()}
    assert json.loads((tmp_path / "copy" / MARKER).read_text()) == {"format": 1}


def test_queries(filled):
    path, trace, rows = filled
    store = ResultStore(path)
    h2o = store.rows(policy="h2o", trace=trace)
    assert len(h2o) == 4 and {r["budget_requested"] for r in h2o} == {0.25, 0.5}
    assert (
        store.rows(policy="h2o", prompt_mode="full", budget_requested=0.5)[0]["output_error"]
        is None
    )
    assert store.get(rows[0]["key"]) == rows[0]
    assert store.get("0" * 64) is None
    assert store.rows(trace=trace, policy="nope") == []
    with pytest.raises(ValueError, match="no store column"):
        store.rows(colour="red")
    full = next(r for r in rows if r["policy"] == "full")
    assert full["budget_requested"] is None and record_of(full, 0.25)["budget_requested"] == 0.25
    bound = next(r for r in rows if r["policy"] == "topk")
    assert record_of(bound)["bound"] is True and "bound" not in record_of(rows[0])
    assert len(rows[0]["retained_mass_steps"]) == rows[0]["n"]


def test_temporaries_are_ignored_and_ensure_reuses(filled, tmp_path):
    path, trace, rows = filled
    (path / ".part-123.parquet.tmp").write_bytes(b"half a file")  # what a SIGKILL can leave
    store = ResultStore(path)
    assert len(store) == len(rows)
    grid = Grid([trace_ref(trace)], policy_specs(["h2o"], {}), [0.25], [RunConfig()])
    assert ensure(store, grid) == [store.get(grid.cells()[0])]
    assert store.missing(grid.cells()) == []


def write_bad(folder: Path, kind: str) -> Path:
    store = folder / "store"
    store.mkdir()
    (store / MARKER).write_text('{"format": 1}\n')
    part = store / "part-00000000000000000001-abcdef12.parquet"
    if kind == "garbage":
        part.write_bytes(b"PAR1 this is not parquet")
    elif kind == "truncated":
        good = folder / "good"
        ResultStore(good).write([{name: None for name in COLUMNS} | {"key": "k", "policy": "h2o"}])
        data = next(good.glob("part-*.parquet")).read_bytes()
        part.write_bytes(data[: len(data) // 2])
    elif kind == "schema":
        pq.write_table(pa.table({"key": ["k"], "policy": ["h2o"]}), part)
    elif kind == "shape":  # the store schema, but a schedule its shape does not fit
        row = {name: None for name in COLUMNS} | {
            "key": "k",
            "policy": "h2o",
            "evicted_at": [1, 2, 3],
            "evicted_shape": [2, 2],
        }
        pq.write_table(pa.Table.from_pylist([row], schema=schema()), part)
    elif kind == "marker":
        (store / MARKER).write_text("{not json")
    elif kind == "foreign":
        (store / MARKER).unlink()
        (store / "notes.txt").write_text("mine")
    elif kind == "file":
        for child in store.iterdir():
            child.unlink()
        store.rmdir()
        store.write_text("a file")
    return store


@pytest.mark.parametrize(("kind", "needle"), [
    ("garbage", "is corrupt"), ("truncated", "is corrupt"), ("schema", "missing ["),
    ("shape", "cannot reshape"),
    ("marker", "is corrupt"), ("foreign", "not an h2osim results store"), ("file", "is a file"),
])  # fmt: skip
def test_broken_store_is_one_line_exit_2(tmp_path, kind, needle):
    store = write_bad(tmp_path, kind)
    with pytest.raises(StoreError, match=needle.replace("[", r"\[")):
        ResultStore(store).rows()
    trace = small_trace(tmp_path / "t.npz", n=16, layers=1)
    done = subprocess.run([sys.executable, "-m", "h2osim.sweep", str(trace), "--store", str(store),
                           "--no-progress"], cwd=ROOT, env=child_env(), capture_output=True,
                          text=True, timeout=120)  # fmt: skip
    assert done.returncode == 2, done.stderr
    assert done.stderr.count("\n") == 1 and needle in done.stderr and "Traceback" not in done.stderr
    assert done.stderr.startswith("python -m h2osim.sweep: error: ")


def test_a_row_key_names_the_code_that_computed_it(tmp_path, monkeypatch):
    """Keys carry h2osim.code_version (release + source hash): edited code recomputes."""
    import h2osim

    version = h2osim.code_version()
    assert version.startswith(h2osim.__version__ + "+") and len(version.split("+")[1]) == 12
    grid = Grid([trace_ref(small_trace(tmp_path / "t.npz"))], policy_specs(["h2o"], {}), [0.5])
    (cell,) = grid.cells()
    before = cell.key
    monkeypatch.setattr(h2osim, "code_version", lambda: "0.1.0+another-code")
    assert cell.key != before


# --------------------------------------------------------------------------- eviction schedules
def test_eviction_schedules_round_trip_and_are_asked_for(tmp_path):
    """``evictions=True`` keeps each replay's ``evicted_at`` (units, n) in its row, exactly
    the replay's; bounds have none; a row stored without one is recomputed when asked."""
    import numpy as np

    from h2osim.engine import ReplayConfig, replay
    from h2osim.store import evictions_of
    from h2osim.trace import Trace

    path = small_trace(tmp_path / "t.npz")
    grid = Grid([trace_ref(path)], policy_specs(["h2o", "opt"], {}), [0.25],
                [RunConfig(output_error=False)])  # fmt: skip
    store = ResultStore(tmp_path / "store")
    plain = run_grid(grid, store)  # first without schedules
    assert all(row["evicted_at"] is None for row in plain.rows)
    replays = [cell for cell in grid.cells() if not cell.bound]
    assert store.missing(grid.cells(), evictions=True) == replays  # bounds never need one
    again = run_grid(grid, store, evictions=True)
    assert again.computed == len(replays) and again.reused == 1  # the bound is read
    expected = replay(Trace.load(path), "h2o", 0.25, config=ReplayConfig(output_error=False))
    reopened = ResultStore(tmp_path / "store")  # both versions of each row are on disk
    h2o = reopened.get(replays[0])
    assert h2o["policy"] == "h2o" and h2o["evicted_shape"] == list(expected.evicted_at.shape)
    np.testing.assert_array_equal(evictions_of(h2o), expected.evicted_at)
    assert evictions_of(h2o).dtype == np.int32
    np.testing.assert_array_equal(evictions_of(again.rows[0]), evictions_of(h2o))
    assert reopened.missing(grid.cells(), evictions=True) == []
    assert run_grid(grid, reopened, evictions=True).computed == 0
    bound = next(row for row in reopened.rows() if row["bound"])
    assert bound["evicted_at"] is None and evictions_of(bound) is None
    assert reopened.table().schema == schema()


def test_a_part_written_before_the_eviction_columns_still_loads(filled, tmp_path):
    """Old stores (no evicted_at / evicted_shape columns) load, those columns None; asking
    for schedules recomputes only the rows that lack them."""
    from h2osim.store import EVICTION_FIELDS, legacy_schema

    path, trace, rows = filled
    old = tmp_path / "old"
    old.mkdir()
    (old / MARKER).write_text('{"format": 1}\n')
    table = ResultStore(path).table().drop_columns(list(EVICTION_FIELDS))
    assert table.schema == legacy_schema()
    pq.write_table(table, old / "part-00000000000000000001-abcdef12.parquet")
    store = ResultStore(old)
    assert len(store) == len(rows)
    assert all(row["evicted_at"] is None and row["evicted_shape"] is None for row in store.rows())
    assert deterministic(store.rows()) == deterministic(rows)
    grid = Grid([trace_ref(trace)], policy_specs(["h2o"], {}), [0.25], [RunConfig()])
    assert run_grid(grid, store).computed == 0  # summary rows are enough without evictions
    assert run_grid(grid, store, evictions=True).computed == 1
    assert ResultStore(old).get(grid.cells()[0])["evicted_at"] is not None  # the richer row wins


# --------------------------------------------------------------------------- trace views
def test_a_view_of_a_trace_is_its_own_cell(tmp_path):
    """trace_ref(n=..., layers=...) names the first n tokens and a layer subset: keys differ
    from the whole trace's, and the rows equal replays of the in-memory prefix."""
    from h2osim.engine import ReplayConfig, replay
    from h2osim.grid import open_trace, trace_prefix
    from h2osim.trace import Trace

    path = small_trace(tmp_path / "t.npz", n=48, layers=2)
    whole, view = trace_ref(path), trace_ref(path, n=32, layers=[1])
    assert (view.n, view.layers, view.view) == (32, (1,), {"n": 32, "layers": [1]})
    assert whole.view is None and trace_ref(path) == whole
    specs = policy_specs(["h2o"], {})
    config = RunConfig(output_error=False)
    (on_whole,), (on_view,) = (
        Grid([ref], specs, [0.25], [config]).cells() for ref in (whole, view)
    )
    assert on_whole.key != on_view.key and "trace_view" not in on_whole.identity
    prefix = trace_prefix(Trace.load(path), 32, [1])
    assert open_trace(view).n == 32 and open_trace(view).layers.tolist() == [1]
    row = run_grid(Grid([view], specs, [0.25], [config]), ResultStore(tmp_path / "s")).rows[0]
    expected = replay(prefix, "h2o", 0.25, config=ReplayConfig(output_error=False))
    assert row["n"] == 32 and row["units"] == 2  # one layer x 2 KV heads
    assert row["retained_mass"] == expected.summary["retained_mass"]
