"""The needle study on Dask: one task per prompt, the model loaded once per worker, and
the same records as the in-process run, record for record (timings aside).

The cluster is a ``LocalCluster(processes=False)`` of two single-threaded workers inside
the test process, reached through the CLI's ``--scheduler``: the model loads once for the
whole cluster (:func:`h2osim.studies.needle.worker_model` keeps one per process) instead of
~10-20 s per worker process on the shared CI cores. The tasks still travel through the
scheduler and are pickled like on any cluster; ``--workers N`` (worker processes) is the
same code path with :func:`h2osim.sweep.dask_client` making the cluster.
"""

from __future__ import annotations

import json
import logging

import pytest

from h2osim.needle import main
from h2osim.studies import needle as study

pytestmark = pytest.mark.timeout(300)
TIMINGS = ("replay_seconds",)  # the only record fields that depend on the machine's load
GRID = ["--lengths", "160", "--depths", "0,0.5,1", "--seeds", "1", "--policy", "window,h2o",
        "--budgets", "0.3", "--prompt-mode", "full", "--prompt-mode", "prefill", "--replay",
        "--no-progress"]  # fmt: skip


def _records(folder) -> list[dict]:
    payload = json.loads((folder / "needle.json").read_text())
    return [{k: v for k, v in r.items() if k not in TIMINGS} for r in payload["records"]]


@pytest.fixture(scope="module")
def cluster():
    from distributed import LocalCluster

    with LocalCluster(n_workers=2, threads_per_worker=1, processes=False, dashboard_address=":0",
                      silence_logs=logging.ERROR) as running:  # fmt: skip
        yield running


@pytest.mark.model
def test_dask_run_equals_the_in_process_run_and_resumes(cluster, tmp_path, capsys):
    serial, on_dask = tmp_path / "serial", tmp_path / "dask"
    assert main([*GRID, "--out", str(serial)]) == 0
    serial_out = capsys.readouterr().out
    assert "in this process" in serial_out
    # resume: the Dask run finds the first prompt done and computes the other two
    lines = (serial / "needle-trials.jsonl").read_text().splitlines()
    assert len(lines) == 3
    on_dask.mkdir()
    (on_dask / "needle-trials.jsonl").write_text(lines[0] + "\n")
    assert main([*GRID, "--out", str(on_dask), "--scheduler", cluster.scheduler_address]) == 0
    dask_out = capsys.readouterr().out
    assert f"on Dask ({cluster.scheduler_address}, one task per prompt)" in dask_out
    assert len((on_dask / "needle-trials.jsonl").read_text().splitlines()) == 3
    assert list(study._WORKER_MODELS) == [study.ModelOptions()]  # one model, both workers
    expected, got = _records(serial), _records(on_dask)
    assert len(got) == 3 * (1 + 2 * 2)  # per prompt: the full cache, 2 policies x 2 modes
    assert [r["prompt_mode"] for r in got[:5]] == ["-", "full", "full", "prefill", "prefill"]
    assert got == expected  # record for record, in grid order
    # the tables printed from those records are the same too
    assert dask_out.split("\n", 1)[1] == serial_out.split("\n", 1)[1]
    payload = json.loads((on_dask / "needle.json").read_text())
    assert payload["model"]["num_layers"] == 30 and payload["ran"].startswith("on Dask")


@pytest.mark.model
def test_a_trial_task_is_the_in_process_trial(cluster):
    """``trial_task`` through the scheduler (pickled spec and grid) against ``run_trial``."""
    from distributed import Client

    from tests.conftest_model import smollm2

    spec = study.TaskSpec(length=160, depth=1.0, seed=1)
    grid = study.StudyGrid(policies=("sink",), budgets=(0.25,), prompt_modes=("prefill",))
    loaded = smollm2()
    local = study.run_trial(loaded, study.make_task(spec, study.token_counter(loaded[1])),
                            grid.policies, grid.budgets, grid.prompt_modes)  # fmt: skip
    with Client(cluster) as client:
        records, seconds = client.submit(study.trial_task, study.ModelOptions(),
                                         spec, grid, False, 0.5).result()  # fmt: skip
    assert seconds > 0 and records == local.records
    assert records[1]["policy"] == "sink" and records[1]["prompt_mode"] == "prefill"
