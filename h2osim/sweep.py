"""``python -m h2osim.sweep TRACE [TRACE ...]``: a declared grid, run on Dask, kept in a store.

docs/scale.md. The grid (:mod:`h2osim.grid`) is traces x policies (with parameters) x
budgets x replay configs, from the ``replay`` flags or a TOML file (``--grid``). Its
cells run:

- in this process, one after another (default, ``--workers 1``: no cluster, no setup);
- on a local Dask cluster of ``--workers N`` single-threaded worker processes;
- on any running Dask cluster (``--scheduler tcp://HOST:PORT``).

Two task grains: one task per cell, and, on a cluster, one task per cache unit for the
offline planners (``opt``, ``belady``: :class:`h2osim.oracles.ScheduledPolicy` plans each
unit independently), followed by one replay task that follows the plans. Tasks carry a
trace's path and content hash, never its arrays: each worker opens a trace once and
keeps it (:func:`h2osim.grid.open_trace`). With ``--scatter`` the client reads each trace
file once and sends its bytes to every worker once (``Client.scatter(broadcast=True)``);
tasks then take that future instead of the path (:func:`scatter_traces`; workers need no
shared file system). The client alone writes the store
(:mod:`h2osim.store`), in atomic parts, so a row lands once even when Dask reruns a task
whose worker died. With ``--store``, cells whose row is already stored are not computed.

Output: per (trace, config), exactly the tables, JSON, CSV and plot of
``python -m h2osim.replay TRACE --sweep`` (which is this grid with one trace and one
config). Example:

    python -m h2osim.sweep traces/smollm2-*.npz --policy h2o,window,opt --budget 0.1:0.5:0.1 \\
        --workers 2 --store results/
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import hashlib
import sys
import time
import types
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

import h2osim
from h2osim.cli import add_policy_arguments, add_replay_arguments, format_table, run_cli
from h2osim.engine import add_gap_to_opt, replay
from h2osim.grid import (
    Cell,
    Grid,
    RunConfig,
    TraceRef,
    canonical,
    grid_from_args,
    load_grid,
    open_trace,
    parse_budgets,
)
from h2osim.policies import policy_names
from h2osim.store import ResultStore, record_of

SPLITS = ("auto", "cell", "unit")  # task grain of offline planners (auto: per unit on a cluster)
SCATTER_LIMIT_MIB = 256  # --scatter sends trace files up to this size; larger ones go by path


# --------------------------------------------------------------------------- tasks
_THREADS_LIMITED = False


def _worker_setup() -> None:
    """One BLAS thread per worker (as every h2osim process): workers are the parallelism."""
    global _THREADS_LIMITED
    if not _THREADS_LIMITED:
        from h2osim.cli import limit_threads

        limit_threads()
        _THREADS_LIMITED = True


def _steps(array: np.ndarray | None) -> list[float] | None:
    return None if array is None else array.mean(axis=1).astype(np.float64).tolist()  # (n,)


def _row(cell: Cell, result: Any, per_step: bool, evictions: bool = False) -> dict[str, Any]:
    """The store row of a finished replay (or bound) ``result``; ``evictions`` keeps a
    replay's eviction schedule ``(units, n)`` (bounds have none)."""
    record = result.record()
    row = {
        "key": cell.key, "trace_sha256": cell.trace.sha256, "trace_name": Path(cell.trace.path).name,
        "params": canonical(dict(cell.policy.params)), "budget_requested": cell.budget,
        "budget_of": cell.config.budget_of, "config": canonical(cell.config.as_dict()),
        "h2osim_version": h2osim.code_version(), "n": result.n, "prompt_length": result.prompt_length,
        "units": len(result.unit_labels), "bound": bool(record.get("bound", False)),
        **{name: record[name] for name in record if name != "bound"},
    }  # fmt: skip
    for name in ("retained_mass_steps", "hit_rate_steps", "output_error_steps"):
        row[name] = None
    if per_step:
        row["retained_mass_steps"] = _steps(result.retained_mass)
        if not cell.bound:
            row["hit_rate_steps"] = _steps(result.hit_rate)
            row["output_error_steps"] = _steps(result.output_error)
    keep = evictions and not cell.bound
    row["evicted_at"] = result.evicted_at.astype(np.int32) if keep else None
    row["evicted_shape"] = list(result.evicted_at.shape) if keep else None
    return row


def _budget(cell: Cell) -> float:
    # A policy that sets its own budget ignores the requested one; any valid value does.
    return 1.0 if cell.budget is None else cell.budget


def run_cell(cell: Cell, per_step: bool = False, evictions: bool = False) -> dict[str, Any]:
    """Task: replay one cell (or compute its topk bound); returns its store row."""
    _worker_setup()
    trace = open_trace(cell.trace)
    config = cell.config.replay_config()
    if cell.bound:
        from h2osim.oracles import topk_bound

        result = topk_bound(trace, _budget(cell), budget_of=cell.config.budget_of, config=config)
    else:
        result = replay(trace, cell.policy.make(), _budget(cell), budget_of=cell.config.budget_of,
                        config=config)  # fmt: skip
    return _row(cell, result, per_step, evictions)


def plan_unit(cell: Cell, unit: int) -> tuple[np.ndarray, float]:
    """Task: an offline planner's schedule for one cache unit of a cell - exactly what
    :meth:`h2osim.oracles.ScheduledPolicy.reset` computes for that unit. Returns the
    victims in step order ``(evictions,)`` and the retained total."""
    from h2osim.schedule import CacheSchedule

    _worker_setup()
    trace = open_trace(cell.trace)
    policy = cell.policy.make()
    config = cell.config.replay_config()
    schedule = CacheSchedule.for_policy(policy, _budget(cell), trace.n, trace.prompt_length,
                                        budget_of=cell.config.budget_of,
                                        prompt_mode=config.prompt_mode)  # fmt: skip
    counts = schedule.counts(trace.n)
    weights = config.layout(trace).weights(unit)  # (n, n) float64
    plan = policy.plan(weights, counts)
    return plan.victims(counts), plan.retained


def replay_planned(cell: Cell, plans: Sequence[tuple[np.ndarray, float]],
                   per_step: bool = False, evictions: bool = False) -> dict[str, Any]:  # fmt: skip
    """Task: replay an offline planner's cell from per-unit plans (:func:`plan_unit`)."""
    from h2osim.policies import Policy
    from h2osim.schedule import CacheSchedule

    _worker_setup()
    trace = open_trace(cell.trace)
    policy = cell.policy.make()

    def reset(self, context) -> None:  # ScheduledPolicy.reset, with the planning done
        Policy.reset(self, context)
        self.counts = CacheSchedule(context.budget, context.prompt_length,
                                    context.prompt_mode).counts(context.n)  # fmt: skip
        self.offsets = np.concatenate([[0], np.cumsum(self.counts)])  # (n+1,)
        if len(plans) != context.units:
            raise RuntimeError(f"{len(plans)} unit plans for {context.units} cache units")
        self.victims = np.stack([np.asarray(v, dtype=np.int64) for v, _ in plans])  # (units, e)
        self.planned_retained = np.array([retained for _, retained in plans])  # (units,)

    policy.reset = types.MethodType(reset, policy)
    result = replay(trace, policy, _budget(cell), budget_of=cell.config.budget_of,
                    config=cell.config.replay_config())  # fmt: skip
    return _row(cell, result, per_step, evictions)


def with_scattered(function: Any, ref: TraceRef, data: bytes, *args: Any) -> Any:
    """Task wrapper of ``--scatter``: open the trace whose file bytes the client scattered
    (``data``; Dask hands every task on a worker the same object), then run
    ``function(*args)``, whose :func:`h2osim.grid.open_trace` finds it open.

    The first task on a worker process writes the bytes to the worker's own scratch
    folder (``Worker.local_directory``, removed with the worker) and opens that copy with
    the ordinary loader - validated, never unpickled, its SHA-256 checked against
    ``ref`` - so the replay is the one a by-path task runs. Later tasks find it in the
    process's open traces (up to 4; h2osim's workers run one task at a time)."""
    from h2osim.files import atomic_write

    try:
        from distributed import get_worker

        folder = Path(get_worker().local_directory)
    except (ImportError, ValueError):  # not on a Dask worker (a direct call)
        import tempfile

        folder = Path(tempfile.gettempdir())
    local = folder / f"h2osim-trace-{ref.sha256}.npz"
    if not local.is_file():
        with atomic_write(local) as handle:
            handle.write(data)
    open_trace(dataclasses.replace(ref, path=str(local)))  # hash checked on first open
    return function(*args)


def scatter_traces(client: Any, refs: Sequence[TraceRef],
                   limit_mib: float = SCATTER_LIMIT_MIB) -> dict[str, Any]:  # fmt: skip
    """Read each trace file up to ``limit_mib`` once here and send its bytes to every
    worker once; returns ``{sha256: future}``. A larger trace is left out (its tasks read
    it by path; one line on stderr says so), and a file whose bytes no longer match its
    declared hash is an error. Example: ``scatter_traces(client, grid.traces, 64)``."""
    futures = {}
    for ref in {ref.sha256: ref for ref in refs}.values():
        size = Path(ref.path).stat().st_size
        if size > limit_mib * 2**20:
            print(f"h2osim.sweep: {ref.path} is {size / 2**20:.1f} MiB, over --scatter-limit "
                  f"{limit_mib:g} MiB: its tasks read it by path (workers need the file)",
                  file=sys.stderr)  # fmt: skip
            continue
        data = Path(ref.path).read_bytes()
        if hashlib.sha256(data).hexdigest() != ref.sha256:
            raise ValueError(f"trace {ref.path} changed since the grid was declared (its SHA-256 "
                             "differs); run the sweep again")  # fmt: skip
        futures[ref.sha256] = client.scatter(data, broadcast=True, hash=False)
    return futures


def splits_per_unit(cell: Cell) -> bool:
    """Whether the cell's policy plans each unit independently (opt, belady)."""
    from h2osim.oracles import ScheduledPolicy

    return not cell.bound and isinstance(cell.policy.make(), ScheduledPolicy)


# --------------------------------------------------------------------------- the run
@dataclass
class GridRun:
    """What :func:`run_grid` did: every cell's row (grid order) and where it came from."""

    cells: list[Cell]
    rows: list[dict[str, Any]]
    computed: int  # rows computed by this run
    reused: int  # rows read from the store
    seconds: float
    tasks: int  # Dask tasks submitted (0 in process)
    scattered: tuple[str, ...] = ()  # traces sent to the workers by scatter_traces (paths)

    def row(self, cell: Cell) -> dict[str, Any]:
        return self.rows[self.cells.index(cell)]


@contextlib.contextmanager
def dask_client(scheduler: str | None, workers: int) -> Iterator[Any]:
    """A client of the cluster at ``scheduler``, or of a new local cluster of ``workers``
    single-threaded processes (closed on exit)."""
    import logging

    try:
        from distributed import Client, LocalCluster
    except ImportError as exc:
        from h2osim.errors import UserError

        raise UserError(f"Dask is not installed ({exc}); run `make setup` or "
                        "pip install 'dask[distributed]'") from None  # fmt: skip
    if scheduler is not None:
        try:
            client = Client(scheduler)  # waits distributed.comm.timeouts.connect (30 s)
        except (OSError, TimeoutError) as exc:
            raise ValueError(f"cannot reach the Dask scheduler at {scheduler} ({exc}); "
                             "start one with `dask scheduler` or drop --scheduler") from None  # fmt: skip
        with client:
            yield client
        return
    # CRITICAL: a task's error reaches the client through its future anyway; at ERROR the
    # workers print a heartbeat traceback when the cluster closes under them (harmless).
    with local_cluster_config(), LocalCluster(n_workers=workers, threads_per_worker=1,
                                              processes=True, dashboard_address=":0",
                                              silence_logs=logging.CRITICAL) as cluster, \
            Client(cluster) as client:  # fmt: skip
        yield client


def local_cluster_config():
    """Dask settings for h2osim's local workers: the nanny's default environment minus
    ``MALLOC_TRIM_THRESHOLD_``. Dask sets it to 65536 to hand freed memory back to the OS;
    glibc then stops raising its mmap threshold, so every step's temporary arrays (a few
    hundred kB) are fresh, zero-filled mappings: replays of a shipped trace took 2.2x
    longer with it (708 vs 318 ms per cell; bench/bench_sweep.py measures it)."""
    import dask

    environ = dict(dask.config.get("distributed.nanny.pre-spawn-environ", {}))
    environ.pop("MALLOC_TRIM_THRESHOLD_", None)
    return dask.config.set({"distributed.nanny.pre-spawn-environ": environ})


def ensure(store: ResultStore, grid: Grid, **options: Any) -> list[dict[str, Any]]:
    """Compute the rows ``store`` lacks for ``grid`` (``options`` as :func:`run_grid`:
    workers, scheduler, per_step, evictions, progress) and return the row of every cell, in
    grid order.
    Example: ``ensure(ResultStore("results/"), grid)`` twice computes nothing the second time."""
    return run_grid(grid, store=store, **options).rows


def run_grid(
    grid: Grid,
    store: ResultStore | None = None,
    *,
    workers: int = 1,
    scheduler: str | None = None,
    per_step: bool = False,
    evictions: bool = False,
    progress: bool = False,
    split: str = "auto",
    flush_seconds: float = 1.0,
    scatter: bool = False,
    scatter_limit_mib: float = SCATTER_LIMIT_MIB,
) -> GridRun:
    """Compute every cell of ``grid`` that ``store`` lacks and return all rows.

    ``workers`` 1 without ``scheduler``: in this process. Else on Dask (see
    :func:`dask_client`). ``split``: offline planners as one task per cache unit
    (``unit``; ``auto`` = on Dask) or one per cell (``cell``). Finished rows are written
    to the store at least every ``flush_seconds`` and when the run ends or fails.
    ``scatter``: on Dask, send each trace file up to ``scatter_limit_mib`` to the workers
    once (:func:`scatter_traces`) instead of letting them read it by path (same rows).
    ``evictions`` keeps each replay's eviction schedule in its row (what the claims read).
    """
    if split not in SPLITS:
        raise ValueError(f"split must be one of {SPLITS}, got {split!r}")
    if workers < 1:
        raise ValueError(f"--workers must be >= 1, got {workers}")
    if not flush_seconds >= 0:
        raise ValueError(f"--flush-seconds must be >= 0, got {flush_seconds}")
    if not scatter_limit_mib >= 0:
        raise ValueError(f"--scatter-limit must be >= 0 MiB, got {scatter_limit_mib}")
    started = time.perf_counter()
    cells = grid.cells()
    todo = list({cell.key: cell for cell in (cells if store is None else
                                             store.missing(cells, per_step, evictions))}.values())  # fmt: skip
    computing = {cell.key for cell in todo}
    stored = {} if store is None else {key: row for key, row in store.lookup(
        cell.key for cell in cells).items() if key not in computing}  # fmt: skip
    done: dict[str, dict[str, Any]] = {}
    pending: list[dict[str, Any]] = []
    last_flush = time.monotonic()

    def finished(row: dict[str, Any]) -> None:
        nonlocal last_flush
        done[row["key"]] = row
        pending.append(row)
        if store is not None and time.monotonic() - last_flush >= flush_seconds:
            store.write(pending)
            pending.clear()
            last_flush = time.monotonic()

    bar = _progress(len(todo), progress)
    tasks = 0
    scattered: dict[str, Any] = {}  # sha256 -> future of the trace file's bytes
    try:
        if scheduler is None and workers == 1:
            for cell in todo:
                finished(run_cell(cell, per_step, evictions))
                bar.update()
        elif todo:
            from distributed import as_completed

            with dask_client(scheduler, workers) as client:
                if scatter:
                    scattered = scatter_traces(client, [cell.trace for cell in todo],
                                               scatter_limit_mib)  # fmt: skip

                def submit(function, cell: Cell, *args: Any, key: str) -> Any:
                    data = scattered.get(cell.trace.sha256)  # the trace's future, or by path
                    if data is None:
                        return client.submit(function, cell, *args, key=key)
                    return client.submit(with_scattered, function, cell.trace, data, cell, *args,
                                         key=key)  # fmt: skip

                futures = []
                for cell in todo:
                    name = cell.key[:16]
                    if split != "cell" and splits_per_unit(cell):
                        plans = [submit(plan_unit, cell, unit, key=f"plan-{name}-{unit}")
                                 for unit in range(cell.trace.units(cell.config))]  # fmt: skip
                        futures.append(submit(replay_planned, cell, plans, per_step, evictions,
                                              key=f"replay-{name}"))  # fmt: skip
                        tasks += len(plans) + 1
                    else:
                        futures.append(submit(run_cell, cell, per_step, evictions,
                                              key=f"cell-{name}"))  # fmt: skip
                        tasks += 1
                for future in as_completed(futures):
                    finished(future.result())
                    bar.update()
    finally:
        bar.close()
        if store is not None and pending:
            store.write(pending)
    if store is not None and len(store.parts()) > 32:
        store.compact()
    every = {**stored, **done}
    sent = tuple(ref.path for ref in grid.traces if ref.sha256 in scattered)
    return GridRun(cells, [every[cell.key] for cell in cells], len(done), len(stored),
                   time.perf_counter() - started, tasks, sent)  # fmt: skip


def _progress(total: int, shown: bool):
    from tqdm import tqdm

    return tqdm(total=total, desc="grid", unit="cell", delay=1.0, disable=not shown or total == 0)


# --------------------------------------------------------------------------- reporting
def group_records(
    run: GridRun, grid: Grid, trace: TraceRef, config: RunConfig
) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """The records and bound records ``replay --sweep`` writes for one (trace, config),
    gaps to opt included, in grid order."""
    records, bounds = [], []
    for cell, row in zip(run.cells, run.rows, strict=True):
        if cell.trace == trace and cell.config == config:
            (bounds if cell.bound else records).append(record_of(row, grid.budgets[0]))
    add_gap_to_opt(records + bounds)
    return records, bounds


def print_sweep(records: list[dict[str, Any]], budgets: Sequence[float]) -> None:
    """Policies x budgets matrix of mean retained mass (and the gaps to opt, with opt)."""
    by_policy: dict[str, dict[float, float]] = {}
    for record in records:
        by_policy.setdefault(record["policy"], {})[record["budget_requested"]] = record[
            "retained_mass"
        ]
    rows = []
    for policy, masses in by_policy.items():
        row: dict[str, Any] = {"policy": policy}
        for budget in budgets:
            row[str(budget)] = masses.get(budget, masses.get(budgets[0]))
        rows.append(row)
    rows.sort(key=lambda row: -float(np.mean([row[str(b)] for b in budgets])))
    columns = [("policy", "policy", "s")] + [(str(b), f"{b:g}", ".4f") for b in budgets]
    print("mean retained attention mass by budget")
    print(format_table(rows, columns))
    if any(record.get("gap_to_opt") is not None for record in records):
        gaps: dict[str, dict[float, Any]] = {}
        for record in records:
            gaps.setdefault(record["policy"], {})[record["budget_requested"]] = record["gap_to_opt"]
        print(
            "gap to opt (opt's retained mass minus the policy's; '-': other budget or prompt mode)"
        )
        print(format_table([{"policy": row["policy"], **{str(b): gaps[row["policy"]].get(b)
                                                          for b in budgets}} for row in rows],
                           columns))  # fmt: skip


def csv_text(records: list[dict[str, Any]]) -> str:
    import csv
    import io

    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=list(records[0]))
    writer.writeheader()
    writer.writerows(records)
    return buffer.getvalue()


def report(run: GridRun, grid: Grid, *, json_path: str | None, csv_path: str | None,
           plot: str | None, header: bool = True) -> None:  # fmt: skip
    """Print each (trace, config)'s tables and write the files, as ``replay --sweep`` does.
    One group: exactly its output. Several: one block each; the JSON holds
    ``{"runs": [...]}``, the CSV gains trace and config columns, plots get ``-N`` suffixes."""
    from h2osim.files import write_json, write_output

    groups = grid.groups()
    payloads, csv_records = [], []
    for index, (trace, config) in enumerate(groups):
        if header and (index or len(groups) > 1):
            print(f"trace {trace.path}: {trace.describe}")
        if len(grid.configs) > 1:
            print("config: " + " ".join(f"{k}={v}" for k, v in config.as_dict().items()))
        records, bounds = group_records(run, grid, trace, config)
        print_sweep(records + bounds, grid.budgets)
        if plot:
            from h2osim.plots import plot_budget_curves

            target = plot if len(groups) == 1 else _suffixed(plot, index + 1)
            plot_budget_curves(records + bounds, target, title=Path(trace.path).name)
        payload = {"trace": trace.path, "config": vars(config.replay_config()), "results": records}
        if bounds:
            payload["bound"] = bounds
        payloads.append(payload)
        extra = {} if len(groups) == 1 else {"trace": trace.path, **config.as_dict()}
        csv_records += [{**extra, **record} for record in records]
    if json_path:
        write_json(json_path, payloads[0] if len(groups) == 1 else {"runs": payloads})
    if csv_path:
        write_output(csv_path, csv_text(csv_records))


def _suffixed(path: str, index: int) -> str:
    target = Path(path)
    return str(target.with_name(f"{target.stem}-{index}{target.suffix}"))


# --------------------------------------------------------------------------- CLI
def add_engine_arguments(parser: argparse.ArgumentParser) -> None:
    """``--store --workers --scheduler --flush-seconds --per-step --scatter --scatter-limit
    --split``: where and how the grid runs."""
    group = parser.add_argument_group("where the grid runs and where its rows go")
    group.add_argument("--store", metavar="PATH",
                       help="results store folder (Parquet parts): stored cells are not recomputed")  # fmt: skip
    group.add_argument("--workers", type=int, default=1, metavar="N",
                       help="1 (default): run in this process; N > 1: a local Dask cluster of N "
                       "single-threaded worker processes")  # fmt: skip
    group.add_argument("--scheduler", metavar="tcp://HOST:PORT",
                       help="run on this existing Dask cluster instead (workers read traces by "
                       "path: they need the same files, or --scatter)")  # fmt: skip
    group.add_argument("--flush-seconds", type=float, default=1.0, metavar="S",
                       help="publish finished rows to the store at least every S seconds "
                       "(default 1; 0: after every row)")  # fmt: skip
    group.add_argument(
        "--per-step",
        action="store_true",
        help="also store per-step curves (mean over cache units) of each row",
    )
    group.add_argument("--scatter", action="store_true",
                       help="on Dask: read each trace here once and send it to every worker once "
                       "instead of the workers reading it by path (for workers without the "
                       "trace files; see docs/scale.md)")  # fmt: skip
    group.add_argument("--scatter-limit", type=float, default=SCATTER_LIMIT_MIB, metavar="MIB",
                       help=f"with --scatter: only traces up to MIB MiB are sent (default "
                       f"{SCATTER_LIMIT_MIB}); larger ones go by path, with a note on stderr")  # fmt: skip
    group.add_argument("--split", choices=SPLITS, default="auto",
                       help="opt/belady as one task per cache unit (unit; auto = on Dask) or one "
                       "per cell (cell)")  # fmt: skip


def build_parser() -> argparse.ArgumentParser:
    names = policy_names()
    parser = argparse.ArgumentParser(
        prog="python -m h2osim.sweep",
        description="Run a grid of replays (traces x policies x budgets x configs) in this "
        "process or on Dask, keep the rows in a results store, print replay --sweep's tables.",
        epilog="Example: python -m h2osim.sweep traces/smollm2-pydoc.npz --policy h2o,window "
        "--budget 0.1:0.5:0.1 --workers 2 --store results/",
    )
    parser.add_argument("traces", nargs="*", metavar="TRACE", help="trace files (.npz, format v1)")
    parser.add_argument("--grid", metavar="FILE",
                        help="TOML grid: traces, budgets, [[policy]] with parameter lists, [config] "
                        "(see docs/scale.md); replaces the policy, budget and replay flags")  # fmt: skip
    parser.add_argument("--policy", action="append", metavar="NAME",
                        help=f"policies, repeatable, comma lists, or 'all' (default h2o): {', '.join(names)}")  # fmt: skip
    add_replay_arguments(parser)
    parser.add_argument("--sweep", metavar="A:B:STEP", help="the same as --budget A:B:STEP")
    parser.add_argument("--no-output-error", action="store_true",
                        help="skip the attention-output error (faster)")  # fmt: skip
    parser.add_argument("--json", metavar="PATH", help="results as JSON ('-' for stdout)")
    parser.add_argument("--csv", metavar="PATH", help="results as CSV ('-' for stdout)")
    parser.add_argument("--plot", metavar="PNG", help="budget curves (one PNG per trace x config)")
    parser.add_argument("--no-progress", action="store_true", help="hide the progress bar")
    add_engine_arguments(parser)
    add_policy_arguments(parser)
    for action in parser._actions:  # --budget takes a list or a range here (parse_budgets)
        if action.dest == "budget":
            action.type = None
            action.help = "budgets: A:B:STEP (inclusive) or a comma list; fractions in (0, 1] or counts > 1 (default 0.2)"  # fmt: skip
    return parser


GRID_FLAGS = ("policy", "budget", "sweep", "budget_of", "aggregation", "prompt_mode", "observe",
              "layers", "no_output_error")  # fmt: skip


def run(args: argparse.Namespace) -> int:
    from h2osim.cli import check_counts, check_outputs, policy_parameters

    check_outputs({"--json": args.json, "--csv": args.csv, "--plot": args.plot},
                  inputs=[*args.traces, args.grid], stdout_ok={"--json", "--csv"})  # fmt: skip
    if args.grid:
        defaults = build_parser().parse_args([])
        given = [name for name in GRID_FLAGS if getattr(args, name) != getattr(defaults, name)]
        from h2osim.policies import all_parameters

        given += [name for name in all_parameters() if getattr(args, name) is not None]
        if given:
            flag = "--" + given[0].replace("_", "-")
            raise ValueError(f"{flag} cannot be combined with --grid: the grid file declares "
                             "policies, budgets and configs; put it there")  # fmt: skip
        grid = load_grid(args.grid, args.traces)
    else:
        if not args.traces:
            raise ValueError("give at least one TRACE (or --grid FILE)")
        budgets = parse_budgets(args.sweep or args.budget, "--sweep" if args.sweep else "--budget")
        grid = grid_from_args(args, args.traces, budgets)
    for trace in grid.traces:
        check_counts(policy_parameters(args), trace.n)
    store = None if args.store is None else ResultStore(args.store)
    if len(grid.groups()) == 1:
        print(f"trace {grid.traces[0].path}: {grid.traces[0].describe}")
    result = run_grid(grid, store, workers=args.workers, scheduler=args.scheduler,
                      per_step=args.per_step, progress=not args.no_progress,
                      split=args.split, flush_seconds=args.flush_seconds, scatter=args.scatter,
                      scatter_limit_mib=args.scatter_limit)  # fmt: skip
    report(result, grid, json_path=args.json, csv_path=args.csv, plot=args.plot)
    where = (f"Dask at {args.scheduler}" if args.scheduler else
             f"a local Dask cluster of {args.workers} workers" if args.workers > 1
             else "this process")  # fmt: skip
    stored = f"; store {args.store}: {result.reused} rows read" if store is not None else ""
    sent = len(result.scattered)
    scattered = f", {sent} trace{'s' if sent > 1 else ''} scattered" if sent else ""
    tasks = f" ({result.tasks} Dask tasks{scattered})" if result.tasks else ""
    print(f"grid: {len(result.cells)} cells, {result.computed} computed in {where}{tasks} "
          f"in {result.seconds:.1f} s{stored}", file=sys.stderr)  # fmt: skip
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point; user errors print one line to stderr and exit 2."""
    return run_cli(build_parser, run, argv)


if __name__ == "__main__":
    sys.exit(main())


__all__ = ["GridRun", "dask_client", "group_records", "local_cluster_config", "main", "plan_unit", "print_sweep",
           "replay_planned", "report", "run_cell", "run_grid", "scatter_traces", "with_scattered"]  # fmt: skip
