"""Shared pieces of the sweep and store tests: small traces, a real Dask cluster, row equality."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
# Everything of a row that a replay determines (not how long it took).
TIMING = ("seconds",)


def small_trace(path: Path, n: int = 48, layers: int = 2, seed: int = 5) -> Path:
    from h2osim.synthetic import synthetic_trace

    synthetic_trace(n, layers=layers, heads=4, kv_heads=2, head_dim=4, seed=seed).save(path)
    return path


def deterministic(rows) -> dict[str, dict]:
    """Rows by key without the timing columns: what must match bit for bit."""
    return {row["key"]: {k: v for k, v in row.items() if k not in TIMING} for row in rows}


def child_env() -> dict[str, str]:
    """Subprocesses import this checkout's h2osim, with one BLAS thread."""
    return {**os.environ, "PYTHONPATH": str(ROOT), "H2OSIM_THREADS": "1", "OMP_NUM_THREADS": "1"}


def _dask(*args: str) -> list[str]:
    cli = Path(sys.executable).with_name("dask")
    return [str(cli), *args] if cli.exists() else [sys.executable, "-m", "dask", *args]


@contextlib.contextmanager
def dask_cluster(folder: Path, workers: int = 2, timeout: float = 90) -> Iterator[dict]:
    """``dask scheduler`` and ``workers`` x ``dask worker`` (no nanny, one thread each) on
    127.0.0.1, started as subprocesses and torn down after. Yields ``{"address": ...,
    "workers": [Popen, ...]}`` (worker i is named ``w{i}``); raises TimeoutError if the cluster is not up in ``timeout``."""
    folder.mkdir(parents=True, exist_ok=True)
    scheduler_file = folder / "scheduler.json"
    logs = [open(folder / f"dask-{i}.log", "w") for i in range(workers + 1)]  # noqa: SIM115
    processes: list[subprocess.Popen] = []
    deadline = time.monotonic() + timeout
    try:
        processes.append(subprocess.Popen(
            _dask("scheduler", "--host", "127.0.0.1", "--port", "0", "--no-dashboard",
                  "--scheduler-file", str(scheduler_file)),
            env=child_env(), stdout=logs[0], stderr=subprocess.STDOUT, cwd=ROOT))  # fmt: skip
        while not scheduler_file.exists():
            if time.monotonic() > deadline or processes[0].poll() is not None:
                raise TimeoutError("dask scheduler did not start; see " + str(folder))
            time.sleep(0.1)
        time.sleep(0.2)  # the file is written whole, but give the listener a moment
        address = json.loads(scheduler_file.read_text())["address"]
        for i in range(workers):
            processes.append(subprocess.Popen(
                _dask("worker", address, "--host", "127.0.0.1", "--nthreads", "1",
                      "--no-nanny", "--no-dashboard", "--death-timeout", "60",
                      "--memory-limit", "0", "--name", f"w{i}"),
                env=child_env(), stdout=logs[i + 1], stderr=subprocess.STDOUT, cwd=ROOT))  # fmt: skip
        from distributed import Client

        with Client(address, timeout=30) as client:
            client.wait_for_workers(workers, timeout=max(1.0, deadline - time.monotonic()))
        yield {"address": address, "workers": processes[1:], "folder": folder}
    finally:
        for process in reversed(processes):
            if process.poll() is None:
                process.send_signal(signal.SIGTERM)
        for process in processes:
            try:
                process.wait(timeout=15)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait(timeout=15)
        for log in logs:
            log.close()
