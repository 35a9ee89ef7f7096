"""``--scatter``: each trace file is read once by the client and sent to every worker once;
tasks take that future instead of the path. On a LocalCluster of 2 workers: the rows are
the by-path rows bit for bit, the workers never touch the original file (it is moved away
right after the scatter; the same grid by path then fails), a trace over the limit goes
by path with a note, and a file that changed after the grid was declared is an error."""

from __future__ import annotations

from pathlib import Path

import pytest

from h2osim import sweep
from h2osim.grid import Grid, RunConfig, policy_specs, trace_ref
from h2osim.sweep import main, run_grid
from tests.sweep_helpers import deterministic, small_trace

pytestmark = pytest.mark.timeout(180)


@pytest.fixture(scope="module")
def cluster():
    """One LocalCluster of 2 single-threaded worker processes for the module: (address, client)."""
    import logging

    from distributed import Client, LocalCluster

    with sweep.local_cluster_config(), LocalCluster(n_workers=2, threads_per_worker=1,
                                                    processes=True, dashboard_address=":0",
                                                    silence_logs=logging.ERROR) as running, \
            Client(running) as client:  # fmt: skip
        yield running.scheduler_address, client


def _forget() -> None:
    from h2osim import grid

    grid._TRACES.clear()


def _open_paths() -> list[str]:
    from h2osim import grid

    return [str(trace.path) for trace in grid._TRACES.values()]


def forget(client) -> None:
    """Close every trace the workers hold open: the next run must get its traces again."""
    client.run(_forget)


def small_grid(trace: Path, policies: list[str], budgets: list[float]) -> Grid:
    return Grid([trace_ref(trace)], policy_specs(policies, {}), budgets, [RunConfig()])


def test_scattered_rows_equal_by_path_rows_without_the_file(cluster, tmp_path, monkeypatch):
    address, client = cluster
    trace = small_trace(tmp_path / "t.npz")
    grid = small_grid(trace, ["h2o", "window", "opt"], [0.2, 0.4])  # opt: per-unit tasks too
    forget(client)
    by_path = run_grid(grid, scheduler=address, per_step=True)
    assert by_path.scattered == ()
    holders: dict = {}
    real = sweep.scatter_traces

    def then_hide(run_client, refs, limit):
        futures = real(run_client, refs, limit)
        holders.update(run_client.who_has(list(futures.values())))
        trace.rename(tmp_path / "hidden.npz")  # from here on no worker can read it by path
        return futures

    monkeypatch.setattr(sweep, "scatter_traces", then_hide)
    forget(client)
    scattered = run_grid(grid, scheduler=address, per_step=True, scatter=True)
    assert scattered.scattered == (str(trace),)
    assert [len(workers) for workers in holders.values()] == [2]  # broadcast: one copy each
    assert scattered.tasks == by_path.tasks == 2 * 2 + 2 * (4 + 1) + 2  # + topk per budget
    assert deterministic(scattered.rows) == deterministic(by_path.rows)  # curves included
    opened = [path for paths in client.run(_open_paths).values() for path in paths]
    sha = grid.traces[0].sha256
    assert opened and all(Path(path).name == f"h2osim-trace-{sha}.npz" for path in opened)
    assert not any(path == str(trace) for path in opened)
    forget(client)  # the wrong version fails: by path, the moved trace is not there
    with pytest.raises(FileNotFoundError, match="on this worker"):
        run_grid(grid, scheduler=address)


def test_a_trace_over_the_limit_goes_by_path(cluster, tmp_path, capsys):
    address, client = cluster
    trace = small_trace(tmp_path / "t.npz", seed=7)
    grid = small_grid(trace, ["h2o"], [0.3])
    forget(client)
    run = run_grid(grid, scheduler=address, scatter=True, scatter_limit_mib=1e-4)
    err = capsys.readouterr().err
    assert run.scattered == () and run.computed == 1
    assert f"{trace} is 0.0 MiB, over --scatter-limit 0.0001 MiB: its tasks read it by path" in err
    assert [path for paths in client.run(_open_paths).values() for path in paths] == [str(trace)]


def test_a_trace_changed_after_the_grid_was_declared_is_an_error(cluster, tmp_path):
    address, _ = cluster
    trace = small_trace(tmp_path / "t.npz", seed=8)
    grid = small_grid(trace, ["h2o"], [0.3])
    small_trace(trace, seed=9)  # the same path, other bytes
    with pytest.raises(ValueError, match="changed since the grid was declared"):
        run_grid(grid, scheduler=address, scatter=True)


def test_cli_scatter_prints_the_serial_tables(cluster, tmp_path, capsys):
    address, client = cluster
    trace = small_trace(tmp_path / "t.npz", seed=3)
    argv = [str(trace), "--policy", "h2o,opt", "--budget", "0.3", "--no-progress"]
    assert main(argv) == 0
    serial = capsys.readouterr().out
    forget(client)
    assert main([*argv, "--scheduler", address, "--scatter"]) == 0
    captured = capsys.readouterr()
    assert captured.out == serial
    assert "(7 Dask tasks, 1 trace scattered)" in captured.err


def test_scatter_limit_must_not_be_negative(tmp_path, capsys):
    trace = small_trace(tmp_path / "t.npz")
    assert main([str(trace), "--scatter", "--scatter-limit", "-1", "--no-progress"]) == 2
    err = capsys.readouterr().err
    assert err.strip().splitlines() == [err.strip()] and "--scatter-limit must be >= 0" in err
