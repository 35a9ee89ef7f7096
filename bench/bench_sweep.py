"""Benchmark: the sweep grid on 2 local Dask workers against one process (issue #15).

Measured side by side in one run (absolute times drift on a shared machine; the ratios
are the result):

1. grid: the 3 shipped SmolLM2 traces x every online policy x 10 budgets (0.05..0.5),
   in this process (serial) and on a local Dask cluster of 2 single-threaded workers
   (target >= 1.7x). The cluster is started before the clock starts; its start-up is
   reported apart. No output error (``--no-output-error``: it would multiply every
   replay's time by ~5 without changing what is compared).
2. per-task overhead: a round of no-op tasks through the same cluster, per task, next
   to the median replay time of the grid's cells.
3. opt split per cache unit: a synthetic 30-layer trace (``h2osim.synthetic``; no shipped
   trace has 30 layers; written to a temporary folder, never to the repository) at
   n = 2048, planned and replayed in one process vs split into one planning task per unit
   over the 2 workers (target >= 1.8x). ``--opt-kv-heads`` sets the units per layer
   (default 1: 30 units, each solve ~7 s on this machine).

    python bench/bench_sweep.py                       # everything (~10 min on 2 free cores)
    python bench/bench_sweep.py --budgets 0.1,0.3 --opt-n 512 --opt-layers 6   # quick
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from h2osim.cli import limit_threads  # noqa: E402
from h2osim.grid import Grid, RunConfig, parse_budgets, policy_specs, trace_ref  # noqa: E402
from h2osim.policies import policy_class, policy_names  # noqa: E402
from h2osim.sweep import local_cluster_config, run_grid  # noqa: E402

TRACES = ("smollm2-pydoc.npz", "smollm2-code.npz", "smollm2-chat.npz")


def load() -> str:
    return " ".join(f"{value:.2f}" for value in os.getloadavg())


def timed_plan(cell, units: list[int]) -> float:
    from h2osim.sweep import plan_unit

    started = time.perf_counter()
    for unit in units:
        plan_unit(cell, unit)
    return time.perf_counter() - started


def plan_ceiling(client, cell) -> str:
    """The split's own ceiling on this machine: 4 units' plans on one worker alone, then 4
    on each of the two workers at once (after a warm-up plan on each worker, so the trace
    is open and the solver loaded). The solver streams an (n, n) float64 matrix,
    so two processes share the memory bus as well as the cores."""
    workers = sorted(client.scheduler_info()["workers"])[:2]
    client.gather([client.submit(timed_plan, cell, [8 + i], workers=[w], pure=False)
                   for i, w in enumerate(workers)])  # fmt: skip
    alone = client.submit(timed_plan, cell, [0, 1, 2, 3], workers=[workers[0]],
                          pure=False).result()  # fmt: skip
    both = client.gather([client.submit(timed_plan, cell, [4 * i, 4 * i + 1, 4 * i + 2,
                                                           4 * i + 3], workers=[w], pure=False)
                          for i, w in enumerate(workers)])  # fmt: skip
    return (
        f"4 units' plans alone {alone:.2f} s; 4 on each of two workers at once {both[0]:.2f} {both[1]:.2f} s "
        f"-> throughput x{2 * alone / max(both):.2f} (the most the split can gain here)"
    )


def noop(i: int) -> int:
    return i


def numpy_kernel(_: int = 0) -> float:
    """A replay step's kind of work: (units, G, t+1) float64 products and divisions."""
    import numpy as np

    rng = np.random.default_rng(0)
    rows, kept = rng.random((30, 3, 512)), rng.random((30, 512, 1))
    started = time.perf_counter()
    for _ in range(2000):
        mass = np.matmul(rows, kept)
        rows / np.maximum(mass, 1e-9)
    return time.perf_counter() - started


def python_kernel(_: int = 0) -> float:
    """Pure interpreter work (no numpy)."""
    started = time.perf_counter()
    total = 0
    for i in range(2_000_000):
        total += i * i
    return time.perf_counter() - started


MALLOC_PROBE = """
import statistics, sys
sys.path.insert(0, {root!r})
from h2osim.cli import limit_threads
from h2osim.grid import Grid, RunConfig, policy_specs, trace_ref
from h2osim.sweep import run_grid
limit_threads()
grid = Grid([trace_ref({trace!r})], policy_specs(["h2o", "window", "tova", "lru"], {{}}),
            [0.1, 0.2], [RunConfig(output_error=False)])
print(statistics.mean(row["seconds"] for row in run_grid(grid).rows))
"""


def malloc_check() -> None:
    """Dask's nanny sets MALLOC_TRIM_THRESHOLD_=65536 in its workers: 8 cells in a fresh
    process without it and with it (why h2osim's local cluster drops it)."""
    import subprocess

    code = MALLOC_PROBE.format(root=str(ROOT), trace=str(ROOT / "traces" / TRACES[0]))
    means = {}
    for setting in (None, "65536"):
        env = {k: v for k, v in os.environ.items() if k != "MALLOC_TRIM_THRESHOLD_"}
        if setting:
            env["MALLOC_TRIM_THRESHOLD_"] = setting
        done = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True,
                              text=True, check=True)  # fmt: skip
        means[setting] = float(done.stdout.split()[-1])
    print(f"   mean replay per cell: {means[None] * 1e3:.0f} ms unset, "
          f"{means['65536'] * 1e3:.0f} ms with MALLOC_TRIM_THRESHOLD_=65536 "
          f"({means['65536'] / means[None]:.2f}x slower)")  # fmt: skip


def ceiling(workers: int) -> None:
    """What this machine allows: one kernel alone vs ``workers`` copies at once."""
    from concurrent.futures import ProcessPoolExecutor

    for kernel in (numpy_kernel, python_kernel):
        alone = kernel()
        with ProcessPoolExecutor(workers) as pool:
            started = time.perf_counter()
            together = list(pool.map(kernel, range(workers)))
            wall = time.perf_counter() - started
        print(f"   {kernel.__name__:14s} alone {alone:.2f} s; {workers} at once "
              f"{' '.join(f'{t:.2f}' for t in together)} s -> throughput x"
              f"{workers * alone / max(wall, 1e-9):.2f}")  # fmt: skip


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--budgets", default="0.05:0.5:0.05")
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--noop-tasks", type=int, default=400)
    parser.add_argument("--opt-n", type=int, default=2048)
    parser.add_argument("--opt-layers", type=int, default=30)
    parser.add_argument("--opt-kv-heads", type=int, default=1)
    parser.add_argument("--opt-budget", type=float, default=0.2)
    parser.add_argument("--skip-grid", action="store_true")
    parser.add_argument("--skip-opt", action="store_true")
    args = parser.parse_args()
    limit_threads()
    os.environ.setdefault("PYTHONPATH", str(ROOT))  # the workers import this checkout

    import logging

    from distributed import Client, LocalCluster, as_completed

    print(f"machine: {os.cpu_count()} CPUs, load average {load()} (1, 5, 15 min)")
    print(f"0. ceiling of {args.workers} processes on this machine (same kernel, side by side)")
    ceiling(args.workers)
    print("   Dask's worker environment:")
    malloc_check()
    started = time.perf_counter()
    with local_cluster_config():  # as h2osim.sweep --workers N starts it
        cluster = LocalCluster(n_workers=args.workers, threads_per_worker=1, processes=True,
                               dashboard_address=":0", silence_logs=logging.ERROR)  # fmt: skip
    client = Client(cluster)
    print(
        f"local cluster of {args.workers} workers started in {time.perf_counter() - started:.1f} s"
    )
    environ = client.run(lambda: os.environ.get("MALLOC_TRIM_THRESHOLD_"))
    print(f"workers' MALLOC_TRIM_THRESHOLD_: {sorted(set(map(str, environ.values())))}")
    address = cluster.scheduler_address
    results = []

    if not args.skip_grid:
        budgets = parse_budgets(args.budgets)
        traces = [trace_ref(ROOT / "traces" / name) for name in TRACES]
        # knorm reads key norms, which the shipped traces (dumped before it) do not store.
        names = [n for n in policy_names(online=True) if not policy_class(n).needs_key_norms]
        grid = Grid(traces, policy_specs(names, {}), budgets,
                    [RunConfig(output_error=False)])  # fmt: skip
        cells = grid.cells()
        print(f"\n1. grid: {len(traces)} traces x {len(grid.policies)} online policies x "
              f"{len(budgets)} budgets = {len(cells)} cells (fixed-budget policies once)")  # fmt: skip
        started = time.perf_counter()
        serial = run_grid(grid)
        serial_s = time.perf_counter() - started
        print(f"   serial (this process)   {serial_s:8.1f} s   load {load()}")
        started = time.perf_counter()
        parallel = run_grid(grid, scheduler=address)
        parallel_s = time.perf_counter() - started
        print(f"   {args.workers} Dask workers          {parallel_s:8.1f} s   load {load()}")
        same = all(
            {k: v for k, v in a.items() if k != "seconds"}
            == {k: v for k, v in b.items() if k != "seconds"}
            for a, b in zip(serial.rows, parallel.rows, strict=True)
        )
        ratio = serial_s / parallel_s
        print(f"   speed-up {ratio:.2f}x (target >= 1.7x); rows identical: {same}")
        results.append(("grid speed-up", ratio, 1.7))
        replay_s = [row["seconds"] for row in serial.rows]
        worker_s = [row["seconds"] for row in parallel.rows]

        print(f"\n2. per-task overhead ({args.noop_tasks} no-op tasks)")
        started = time.perf_counter()
        for future in as_completed([client.submit(noop, i, pure=False)
                                    for i in range(args.noop_tasks)]):  # fmt: skip
            future.result()
        per_task = (time.perf_counter() - started) / args.noop_tasks
        median = statistics.median(replay_s)
        busy = sum(worker_s) / args.workers
        print(f"   no-op round trip        {per_task * 1e3:8.2f} ms per task (submit to result)")
        print(f"   median replay (serial)  {median * 1e3:8.1f} ms; overhead = "
              f"{per_task / median:.1%} of it")  # fmt: skip
        print(f"   grid on Dask: wall {parallel_s:.1f} s vs worker busy time {busy:.1f} s per "
              f"worker -> {(parallel_s - busy) / len(cells) * 1e3:.1f} ms idle per cell")  # fmt: skip

    if not args.skip_opt:
        from h2osim.synthetic import synthetic_trace

        print(f"\n3. opt on a synthetic {args.opt_layers}-layer trace, n = {args.opt_n}, "
              f"{args.opt_kv_heads} KV head(s) per layer (3 query heads each), budget "
              f"{args.opt_budget}")  # fmt: skip
        with tempfile.TemporaryDirectory(prefix="bench-sweep-") as folder:
            path = Path(folder) / "opt.npz"
            started = time.perf_counter()
            synthetic_trace(args.opt_n, layers=args.opt_layers, heads=3 * args.opt_kv_heads,
                            kv_heads=args.opt_kv_heads, head_dim=8, values=False,
                            dtype="float16", seed=0).save(path, compress=False)  # fmt: skip
            print(f"   trace written in {time.perf_counter() - started:.1f} s "
                  f"({path.stat().st_size / 2**20:.0f} MB, temporary)")  # fmt: skip
            grid = Grid([trace_ref(path)], policy_specs(["opt"], {}), [args.opt_budget],
                        [RunConfig(output_error=False)])  # fmt: skip
            units = grid.traces[0].units(grid.configs[0])
            print(f"   ceiling: {plan_ceiling(client, grid.cells()[0])}")
            started = time.perf_counter()
            whole = run_grid(grid, split="cell")  # plans every unit in reset, as replay does
            whole_s = time.perf_counter() - started
            print(f"   one process             {whole_s:8.1f} s   load {load()}")
            started = time.perf_counter()
            split = run_grid(grid, scheduler=address, split="unit")
            split_s = time.perf_counter() - started
            print(f"   {units} unit tasks on {args.workers} workers {split_s:8.1f} s   "
                  f"load {load()}")  # fmt: skip
            same = {k: v for k, v in whole.rows[0].items() if k != "seconds"} == {
                k: v for k, v in split.rows[0].items() if k != "seconds"
            }
            ratio = whole_s / split_s
            print(f"   speed-up {ratio:.2f}x (target >= 1.8x); row identical: {same}; "
                  f"replay after planning {split.rows[0]['seconds']:.1f} s (serial part)")  # fmt: skip
            results.append(("opt split speed-up", ratio, 1.8))
    client.close()
    cluster.close()
    print("\nsummary: " + "; ".join(f"{name} {value:.2f}x (target {target}x)"
                                    for name, value, target in results))  # fmt: skip


if __name__ == "__main__":
    main()
