"""The needle study on Dask: one task per prompt, the model loaded once per worker, and
the same records as the in-process run, record for record (timings aside).

The cluster is a ``LocalCluster(processes=False)`` of two single-threaded workers inside
the test process, reached through the CLI's ``--scheduler``: the model loads once for the
whole cluster (:func:`h2osim.studies.needle.worker_model` keeps one per process) instead of
~10-20 s per worker process on the shared CI cores; tasks that share a model take turns
(the recorder hooks its layers), so the two workers really do run at once here. The tasks
still travel through the scheduler and are pickled like on any cluster; ``--workers N``
(worker processes) is the same code path with :func:`h2osim.sweep.dask_client` making the
cluster.
"""

from __future__ import annotations

import json
import logging

import pytest

from h2osim.needle import main
from h2osim.studies import needle as study

pytestmark = pytest.mark.timeout(300)
TIMINGS = ("replay_seconds",)  # the only record fields that depend on the machine's load
GRID = ["--lengths", "160", "--depths", "0,1", "--seeds", "1", "--policy", "h2o", "--budgets",
        "0.3", "--prompt-mode", "full", "--prompt-mode", "prefill", "--replay", "--no-progress"]  # fmt: skip


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
    # two prompts, two tasks, both workers at once: they share the one model in turn
    assert main([*GRID, "--out", str(on_dask), "--scheduler", cluster.scheduler_address]) == 0
    dask_out = capsys.readouterr().out
    assert f"on Dask ({cluster.scheduler_address}, one task per prompt)" in dask_out
    assert list(study._WORKER_MODELS) == [study.ModelOptions()]  # loaded once, for both workers
    expected, got = _records(serial), _records(on_dask)
    assert len(got) == 2 * (1 + 2)  # per prompt: the full cache, h2o in 2 prompt modes
    assert [r["prompt_mode"] for r in got[:3]] == ["-", "full", "prefill"]
    assert [r["depth"] for r in got] == [0.0] * 3 + [1.0] * 3  # grid order, not finish order
    assert got == expected  # record for record
    tables = [out.split("\n", 1)[1].replace(str(folder), "OUT")
              for out, folder in ((serial_out, serial), (dask_out, on_dask))]  # fmt: skip
    assert tables[0] == tables[1]  # the same tables
    payload = json.loads((on_dask / "needle.json").read_text())
    assert payload["model"]["num_layers"] == 30 and payload["ran"].startswith("on Dask")
    # resume on Dask: a trials file with the first prompt done -> one task, same records
    lines = (serial / "needle-trials.jsonl").read_text().splitlines()
    assert len(lines) == 2
    resumed = tmp_path / "resumed"
    resumed.mkdir()
    first = json.loads(lines[0])
    (resumed / "needle-trials.jsonl").write_text(lines[0] + "\n")
    assert main([*GRID, "--out", str(resumed), "--scheduler", cluster.scheduler_address]) == 0
    capsys.readouterr()
    written = (resumed / "needle-trials.jsonl").read_text().splitlines()
    assert len(written) == 2 and json.loads(written[0]) == first  # only the missing one ran
    assert _records(resumed) == expected
