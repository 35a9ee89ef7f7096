"""A real Dask cluster (``dask scheduler`` + two ``dask worker`` processes on 127.0.0.1):
the store it fills equals a serial run's bit for bit, and a worker SIGKILLed mid-grid
costs nothing but time - Dask reruns its tasks and every row lands exactly once."""

from __future__ import annotations

import signal
import threading
import time

import pytest

from h2osim.grid import Grid, RunConfig, policy_specs, trace_ref
from h2osim.store import ResultStore, read_part
from h2osim.sweep import main, run_grid
from tests.sweep_helpers import deterministic, small_trace

pytestmark = pytest.mark.timeout(180)
POLICIES = "h2o,window,random,tova,full,opt,belady"


@pytest.fixture(scope="module")
def cluster(tmp_path_factory):
    from tests.sweep_helpers import dask_cluster

    with dask_cluster(tmp_path_factory.mktemp("dask")) as running:
        yield running


def test_cluster_store_equals_serial_run(cluster, tmp_path, capsys):
    trace = small_trace(tmp_path / "t.npz")
    argv = [str(trace), "--policy", POLICIES, "--budget", "0.2,0.4", "--per-step", "--no-progress"]
    assert main([*argv, "--store", str(tmp_path / "serial")]) == 0
    serial_out = capsys.readouterr().out
    assert (
        main([*argv, "--store", str(tmp_path / "cluster"), "--scheduler", cluster["address"]]) == 0
    )
    captured = capsys.readouterr()
    assert captured.out == serial_out  # the same tables
    # opt and belady ran as one task per cache unit (4 units) plus a replay task each
    cells = 6 * 2 + 1 + 2  # 6 policies x budgets, full once, topk per budget
    assert f"{cells} cells, {cells} computed in Dask at" in captured.err
    assert f"({cells + 2 * 2 * 4} Dask tasks)" in captured.err
    serial = ResultStore(tmp_path / "serial").rows()
    clustered = ResultStore(tmp_path / "cluster").rows()
    assert len(serial) == cells
    assert deterministic(clustered) == deterministic(serial)  # bit for bit, curves included
    assert all(row["retained_mass_steps"] is not None for row in clustered)


def test_worker_killed_mid_grid_is_rescheduled(tmp_path):
    from distributed import Client

    from tests.sweep_helpers import dask_cluster

    trace = small_trace(tmp_path / "t.npz", n=96, layers=4, seed=2)
    grid = Grid([trace_ref(trace)], policy_specs(["h2o", "window", "tova", "lru", "opt"], {}),
                [0.1, 0.2, 0.3, 0.4], [RunConfig()])  # fmt: skip
    started = time.perf_counter()
    serial = run_grid(grid, ResultStore(tmp_path / "serial"))
    print(f"serial grid: {time.perf_counter() - started:.1f} s")
    store = ResultStore(tmp_path / "cluster")
    with dask_cluster(tmp_path / "dask") as running, Client(running["address"]) as watcher:
        victim = running["workers"][0]
        address = next(a for a, w in watcher.scheduler_info()["workers"].items()
                       if w["name"] == "w0")  # fmt: skip
        outcome: dict = {}
        runner = threading.Thread(target=lambda: outcome.update(
            run=run_grid(grid, store, scheduler=running["address"])))  # fmt: skip
        runner.start()
        deadline = time.monotonic() + 60
        while not watcher.processing().get(address) and time.monotonic() < deadline:
            time.sleep(0.02)
        busy = list(watcher.processing().get(address, ()))
        victim.send_signal(signal.SIGKILL)  # mid-grid: the worker holds tasks
        runner.join(timeout=150)
        assert not runner.is_alive()
        survivors = watcher.scheduler_info()["workers"]
    assert busy, "the victim never got a task"
    assert address not in survivors and len(survivors) == 1
    run = outcome["run"]
    assert run.computed == len(grid.cells())
    raw = [row for part in store.parts() for row in read_part(part)]
    assert len(raw) == len({row["key"] for row in raw}) == len(grid.cells())  # exactly once
    assert deterministic(raw) == deterministic(serial.rows)


def test_local_cluster_workers_flag_equals_serial_run(tmp_path, capsys):
    """``--workers 2``: the run starts (and closes) its own LocalCluster, without Dask's
    MALLOC_TRIM_THRESHOLD_ in the workers, and stores the rows a serial run stores."""
    trace = small_trace(tmp_path / "t.npz")
    argv = [str(trace), "--policy", "h2o,opt", "--budget", "0.3", "--no-progress"]
    assert main([*argv, "--store", str(tmp_path / "serial")]) == 0
    assert main([*argv, "--store", str(tmp_path / "local"), "--workers", "2"]) == 0
    err = capsys.readouterr().err
    assert "computed in a local Dask cluster of 2 workers (7 Dask tasks)" in err
    serial = ResultStore(tmp_path / "serial").rows()
    assert deterministic(ResultStore(tmp_path / "local").rows()) == deterministic(serial)
