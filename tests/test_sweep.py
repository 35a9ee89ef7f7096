"""``python -m h2osim.sweep`` in one process: the grid, replay --sweep's output, resuming."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from h2osim.grid import load_grid, parse_budgets, trace_ref
from h2osim.replay import main as replay_main
from h2osim.store import ResultStore, read_part
from h2osim.sweep import main, run_grid
from tests.sweep_helpers import ROOT, child_env, deterministic, small_trace

pytestmark = pytest.mark.timeout(120)


@pytest.fixture(scope="module")
def trace(tmp_path_factory) -> Path:
    return small_trace(tmp_path_factory.mktemp("sweep") / "small.npz")


def run(capsys, entry, *argv) -> tuple[int, str, str]:
    code = entry([str(a) for a in argv] + ["--no-progress"])
    out = capsys.readouterr()
    return code, out.out, out.err


def without_seconds(payload: dict) -> dict:
    for key in ("results", "bound"):
        for record in payload.get(key, []):
            record.pop("seconds")
    return payload


def test_sweep_prints_and_writes_what_replay_sweep_does(capsys, tmp_path, trace):
    flags = ["--policy", "h2o,window,full,opt,h2o-drop", "--heavy-ratio", "0.3"]
    code, out_r, _ = run(capsys, replay_main, trace, *flags, "--sweep", "0.1:0.3:0.1",
                         "--json", tmp_path / "r.json", "--csv", tmp_path / "r.csv")  # fmt: skip
    assert code == 0
    code, out_s, err = run(capsys, main, trace, *flags, "--budget", "0.1:0.3:0.1",
                           "--json", tmp_path / "s.json", "--csv", tmp_path / "s.csv",
                           "--plot", tmp_path / "s.png")  # fmt: skip
    assert code == 0 and "computed in this process" in err
    assert out_s == out_r  # the same tables, line for line
    assert "gap to opt" in out_s and "topk" in out_s
    replayed = json.loads((tmp_path / "r.json").read_text())
    swept = json.loads((tmp_path / "s.json").read_text())
    assert without_seconds(swept) == without_seconds(replayed)
    assert [len(r) for r in swept["results"]] == [len(r) for r in replayed["results"]]
    strip = [line.split(",")[:-3] for line in (tmp_path / "r.csv").read_text().splitlines()]
    assert strip == [line.split(",")[:-3] for line in (tmp_path / "s.csv").read_text().splitlines()]
    assert (tmp_path / "s.png").read_bytes()[:4] == b"\x89PNG"


def test_grid_cells_and_keys(trace):
    from h2osim.grid import Grid, RunConfig, policy_specs

    ref = trace_ref(trace)
    specs = policy_specs(["h2o", "full", "opt"], {})
    grid = Grid([ref], specs, [0.1, 0.2], [RunConfig()])
    cells = grid.cells()
    # h2o and opt per budget, full once (it sets its own budget), topk per budget with opt
    assert [(c.policy.name, c.budget) for c in cells] == [
        ("h2o", 0.1), ("h2o", 0.2), ("full", None), ("opt", 0.1), ("opt", 0.2),
        ("topk", 0.1), ("topk", 0.2),
    ]  # fmt: skip
    assert len({c.key for c in cells}) == len(cells)
    # defaults filled in: h2o and h2o with its default heavy_ratio are one row
    explicit = policy_specs(["h2o"], {"heavy_ratio": 0.5})
    assert Grid([ref], explicit, [0.1]).cells()[0].key == cells[0].key
    other = policy_specs(["h2o"], {"heavy_ratio": 0.3})
    assert Grid([ref], other, [0.1]).cells()[0].key != cells[0].key
    assert (
        Grid([ref], specs[:1], [0.1], [RunConfig(aggregation="max")]).cells()[0].key != cells[0].key
    )
    assert parse_budgets("0.1:0.3:0.1") == [0.1, 0.2, 0.3]


def test_toml_grid_is_a_product(capsys, tmp_path, trace):
    grid_file = tmp_path / "grid.toml"
    grid_file.write_text(f'''
traces = ["{trace}"]
budgets = [0.2, 0.4]
[[policy]]
name = "h2o"
heavy_ratio = [0.25, 0.5]
[[policy]]
name = "window"
[config]
aggregation = ["sum", "max"]
''')
    grid = load_grid(grid_file)
    assert len(grid.policies) == 3 and len(grid.configs) == 2
    assert len(grid.cells()) == 3 * 2 * 2
    code, out, _ = run(capsys, main, "--grid", grid_file, "--json", tmp_path / "g.json",
                       "--plot", tmp_path / "g.png", "--store", tmp_path / "store")  # fmt: skip
    assert code == 0 and out.count("config: aggregation=") == 2
    runs = json.loads((tmp_path / "g.json").read_text())["runs"]
    assert [r["config"]["aggregation"] for r in runs] == ["sum", "max"]
    assert all(len(r["results"]) == 6 for r in runs)
    assert (tmp_path / "g-1.png").exists() and (tmp_path / "g-2.png").exists()
    assert len(ResultStore(tmp_path / "store")) == 12


@pytest.mark.parametrize(
    ("argv", "needle"),
    [
        (["--budget", "1:0:1"], "--budget"),
        (["--budget", "0"], "budget"),
        (["--policy", "nope"], "unknown policy"),
        (["--workers", "0"], "--workers"),
        (["--grid", "GRID", "--policy", "h2o"], "cannot be combined with --grid"),
        (["--grid", "BAD"], "not valid TOML"),
        (["--scheduler", "tcp://127.0.0.1:9"], "cannot reach the Dask scheduler"),
    ],
)
def test_bad_input_is_one_line_and_exit_2(capsys, tmp_path, trace, argv, needle):
    (tmp_path / "GRID").write_text(f'traces = ["{trace}"]\n')
    (tmp_path / "BAD").write_text("traces = [\n")
    argv = [str(tmp_path / a) if a in ("GRID", "BAD") else a for a in argv]
    import dask
    import distributed  # noqa: F401  (its config defaults first: set() would drop them on exit)

    with dask.config.set({"distributed.comm.timeouts.connect": "2s"}):
        code, _, err = run(capsys, main, trace, *argv)
    assert code == 2
    assert err.strip().count("\n") == 0 and needle in err, err


def test_rerun_computes_only_missing_rows(tmp_path, trace):
    from h2osim.grid import Grid, RunConfig, policy_specs

    store = ResultStore(tmp_path / "store")
    ref = trace_ref(trace)
    small = Grid([ref], policy_specs(["h2o", "window"], {}), [0.2], [RunConfig()])
    first = run_grid(small, store)
    assert (first.computed, first.reused) == (2, 0)
    parts = set(store.parts())
    again = run_grid(small, store)
    assert (again.computed, again.reused) == (0, 2) and set(store.parts()) == parts
    bigger = Grid([ref], policy_specs(["h2o", "window"], {}), [0.2, 0.3], [RunConfig()])
    grown = run_grid(bigger, store)
    assert (grown.computed, grown.reused) == (2, 2)
    new_parts = set(store.parts()) - parts
    assert {row["budget_requested"] for p in new_parts for row in read_part(p)} == {0.3}
    assert deterministic(grown.rows[:1]) == deterministic(first.rows[:1])
    # asking for per-step curves recomputes rows that lack them, once
    curves = run_grid(small, store, per_step=True)
    assert curves.computed == 2 and len(curves.rows[0]["retained_mass_steps"]) == ref.n
    assert (
        store.get(curves.cells[0])["retained_mass_steps"] == curves.rows[0]["retained_mass_steps"]
    )
    assert run_grid(small, store, per_step=True).computed == 0


def test_killed_run_leaves_complete_rows_and_resumes(tmp_path):
    """SIGKILL a serial sweep once it has published a part; the store loads, holds only
    complete rows, and the rerun computes exactly the rows that are missing."""
    trace = small_trace(tmp_path / "t.npz", n=200, layers=4, seed=3)
    store_path = tmp_path / "store"
    argv = [sys.executable, "-m", "h2osim.sweep", str(trace), "--policy", "h2o,window,tova,lru",
            "--budget", "0.05:0.5:0.05", "--store", str(store_path), "--no-progress",
            "--flush-seconds", "0"]  # fmt: skip
    process = subprocess.Popen(argv, cwd=ROOT, env=child_env(), stdout=subprocess.DEVNULL,
                               stderr=subprocess.PIPE)  # fmt: skip
    deadline = time.monotonic() + 90
    while not list(store_path.glob("part-*.parquet")) and time.monotonic() < deadline:
        assert process.poll() is None, process.stderr.read().decode()
        time.sleep(0.05)
    process.send_signal(signal.SIGKILL)
    process.wait(timeout=30)
    assert process.returncode == -signal.SIGKILL, "the sweep ended before it could be killed"
    store = ResultStore(store_path)
    kept = {row["key"]: row for row in store.rows()}
    assert 0 < len(kept) < 40
    assert all(row[c] is not None for row in kept.values() for c in ("retained_mass", "hit_rate"))
    grid = load_grid_from_flags(trace)
    resumed = run_grid(grid, store)
    assert resumed.reused == len(kept) and resumed.computed == 40 - len(kept)
    assert all(store.get(key) == row for key, row in kept.items())  # finished rows untouched
    everything = [row for part in store.parts() for row in read_part(part)]
    assert len(everything) == len({row["key"] for row in everything}) == 40  # each row once


def load_grid_from_flags(trace: Path):
    from h2osim.grid import Grid, RunConfig, policy_specs

    budgets = parse_budgets("0.05:0.5:0.05")
    return Grid([trace_ref(trace)], policy_specs(["h2o", "window", "tova", "lru"], {}), budgets,
                [RunConfig()])  # fmt: skip
