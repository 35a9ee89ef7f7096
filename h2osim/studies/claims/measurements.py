"""What the claims table measures: the shared measurements every claim reads.

The claims (:mod:`h2osim.studies.claims.rows`) check the H2O paper (Zhang et al., NeurIPS
2023, arXiv 2306.14048), A2SF (arXiv 2407.20485) and this project's own findings on the
real SmolLM2-135M. Their numbers come from a few expensive measurements, run once per
trace and shared by every claim that names them in ``Claim.needs``:

* ``observe`` - Section 3 statistics per stored layer (:mod:`h2osim.studies.observe`);
* ``bias`` - accumulated score by position, with and without A2SF's forgetting factor;
* ``sweep`` - open-loop replays of every sweep policy at every budget (opt, belady and the
  topk bound included), concave vs plain h2o evictions, the a2sf forgetting grid: cells of
  a grid (:mod:`h2osim.grid`) run by :func:`h2osim.sweep.run_grid`, read from the results
  store (:mod:`h2osim.store`) when one is given - each row with its eviction schedule, from
  which the concave comparison and the cache contents at the last row are read;
* ``paths`` - the official H2O code paths at one budget and heavy/recent split;
* ``live`` - closed-loop (live) eviction inside the model, teacher-forced on the same tokens;
* ``long`` - the length-dependent measurements (observe, bias, sweep at 20%) at n = 4096 and
  n = 512 on two long texts, recorded in ``docs/long-context.json`` (re-measured with
  ``--long`` from the traces that docs/long-context.md dumps);
* ``needle`` - the recorded needle-in-a-haystack study (``docs/needle/needle.json``).

:data:`MEASUREMENTS` lists them in the order they run; :func:`measure` runs the ones asked
for (``live=False`` leaves the model out) and fills one :class:`Measurements`.

``--quick`` is the smoke setting (:data:`QUICK`): prefixes of two traces (n = 160, 3 layers),
two budgets and a 64-token live run - under a minute on 2 cores. The full setting
(:data:`FULL`: whole traces, 5 budgets, live runs of 384 tokens at 3 budgets on two texts)
took 7 minutes on 2 busy cores.

Simplifications: retained attention mass is the replay metric (``output_error`` is off for
speed); live quality is teacher-forced perplexity against the full cache; means over
traces weigh each trace the same; ratios over texts are geometric means.
"""

from __future__ import annotations

import dataclasses
import sys
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from h2osim.engine import ReplayConfig, add_gap_to_opt, replay, resolve_budget
from h2osim.grid import Cell, Grid, PolicySpec, RunConfig, TraceRef, open_trace, trace_ref
from h2osim.grid import trace_prefix as trace_prefix  # re-exported: the settings' views of traces
from h2osim.store import ResultStore, evictions_of, record_of
from h2osim.studies.observe import early_positions
from h2osim.trace import Trace

TRACE_FILES = {
    "pydoc": "traces/smollm2-pydoc.npz",
    "code": "traces/smollm2-code.npz",
    "chat": "traces/smollm2-chat.npz",
}
# How the live CLI encodes the same tokens as each trace's first n (checked in the tests).
LIVE_TEXT_ARGS = {
    "pydoc": "--pydoc-topic naming",
    "code": "--text-file \"$(python -c 'import bisect; print(bisect.__file__)')\"",
}
SWEEP_POLICIES = ("opt", "belady", "h2o", "h2o-sqrt", "h2o-log", "a2sf", "tova", "sink",
                  "heavy", "window")  # fmt: skip
LIVE_POLICIES = ("h2o", "window", "heavy", "sink", "a2sf")
CONCAVE = ("h2o-sqrt", "h2o-log")
BIAS_FORGETTING = (1.0, 0.99, 0.95)  # curves on the early-token-bias plot
MIN_DECODE_ROWS = 16  # the code-path comparison needs decode rows to compare
SWEEP_CONFIG = RunConfig(output_error=False)  # the sweep's replay configuration (defaults else)
KEPT_POLICIES = ("h2o", "a2sf", "opt")  # cache contents at the last row, main budget (bias plot)


@dataclass(frozen=True)
class Settings:
    """What a run measures. ``FULL`` and ``QUICK`` are the two presets."""

    mode: str
    traces: tuple[str, ...]  # names in TRACE_FILES
    n: int | None  # replay a prefix of each trace (None: the whole trace)
    layers: tuple[int, ...] | None  # stored layers to use (None: all)
    budgets: tuple[float, ...]  # fractions of the sequence
    live_texts: tuple[str, ...]  # traces whose first live_n tokens are run live
    live_n: int
    live_budgets: tuple[float, ...]
    main_budget: float = 0.2  # the paper's 20% (10% heavy + 10% recent)
    forgetting: float = 0.95  # a2sf's default
    forgetting_grid: tuple[float, ...] = (0.9, 0.95, 0.99, 0.999)
    sweep_policies: tuple[str, ...] = SWEEP_POLICIES
    trace_files: tuple[tuple[str, str], ...] = ()  # (name, file) beside TRACE_FILES

    def file(self, name: str) -> str:
        """The trace file of ``name``, relative to the root. Example: "chat" ->
        "traces/smollm2-chat.npz"."""
        return dict(self.trace_files).get(name) or TRACE_FILES[name]

    def __post_init__(self) -> None:
        known = {**TRACE_FILES, **dict(self.trace_files)}
        unknown = [name for name in self.traces + self.live_texts if name not in known]
        if unknown:
            raise ValueError(f"unknown trace {unknown[0]!r}; choose from {', '.join(known)}")
        missing = [name for name in self.live_texts if name not in LIVE_TEXT_ARGS]
        if missing:
            raise ValueError(
                f"no live text for {missing[0]!r}; live texts: {', '.join(LIVE_TEXT_ARGS)}"
            )
        if self.main_budget not in self.budgets:
            raise ValueError(f"the budgets {self.budgets} must include {self.main_budget}")
        if self.live_texts and self.main_budget not in self.live_budgets:
            raise ValueError(
                f"the live budgets {self.live_budgets} must include {self.main_budget}"
            )
        if self.n is not None and self.n < 32:
            raise ValueError(f"--n must be >= 32 tokens, got {self.n}")
        if self.live_texts and self.live_n < 16:
            raise ValueError(f"--live-n must be >= 16 tokens, got {self.live_n}")


FULL = Settings(mode="full", traces=("pydoc", "code", "chat"), n=None, layers=None,
                budgets=(0.05, 0.1, 0.2, 0.3, 0.5), live_texts=("pydoc", "code"), live_n=384,
                live_budgets=(0.1, 0.2, 0.3))  # fmt: skip
QUICK = Settings(mode="quick", traces=("pydoc", "chat"), n=160, layers=(3, 16, 29),
                 budgets=(0.1, 0.2), live_texts=("pydoc",), live_n=64, live_budgets=(0.2,))  # fmt: skip


# --------------------------------------------------------------------------- measurements
@dataclass
class Measurements:
    """Everything measured, filled by :data:`MEASUREMENTS`; each claim's ``numbers`` reads it."""

    settings: Settings
    traces: dict[str, dict[str, Any]] = field(default_factory=dict)  # name -> n, prompt, layers
    observe: dict[str, list[dict[str, Any]]] = field(default_factory=dict)  # name -> layer records
    sweep: list[dict[str, Any]] = field(
        default_factory=list
    )  # one record per (trace, policy, budget)
    concave: dict[str, int] = field(default_factory=lambda: {"identical": 0, "compared": 0})
    paths: list[dict[str, Any]] = field(default_factory=list)
    path_defaults: list[dict[str, Any]] = field(default_factory=list)
    mask_drop_identical: bool | None = None
    bias: dict[str, dict[str, Any]] = field(default_factory=dict)  # name -> curves and shares
    kept: dict[str, dict[str, list[float]]] = field(default_factory=dict)  # name -> policy -> share
    live: list[dict[str, Any]] = field(default_factory=list)
    live_tokens: dict[str, list[int]] = field(default_factory=dict)
    long: dict[str, Any] = field(default_factory=dict)  # docs/long-context.json's content
    needle: dict[str, Any] = field(default_factory=dict)  # the needle study's h2o/full records
    grid: dict[str, Any] = field(default_factory=lambda: {"cells": 0, "computed": 0, "reused": 0})
    notes: list[str] = field(default_factory=list)


class Progress:
    """A tqdm bar over weighted tasks (a replay ~1, opt ~5, a live step ~1/4 of a replay)."""

    def __init__(self, total: float, enabled: bool):
        from tqdm import tqdm

        self.bar = tqdm(total=total, unit="work", desc="claims", disable=not enabled,
                        file=sys.stderr, dynamic_ncols=True,
                        bar_format="{desc}: {percentage:3.0f}%|{bar}| {elapsed}<{remaining} {postfix}")  # fmt: skip

    def step(self, weight: float, label: str = "") -> None:
        if label:
            self.bar.set_postfix_str(label, refresh=False)
        self.bar.update(weight)

    def close(self) -> None:
        self.bar.close()


@dataclass
class Run:
    """What a measurement writes into and reports to while :func:`measure` runs."""

    measured: Measurements
    config: ReplayConfig
    progress: Progress
    model: Any = None  # the live model, loaded on first use when not given
    store: ResultStore | None = None  # where the sweep's grid cells are read and written
    refs: dict[str, TraceRef] = field(
        default_factory=dict
    )  # name -> the trace (view) as a grid has it
    root: Path = Path(".")
    options: dict[str, Any] = field(default_factory=dict)  # what measure() was asked (long, paths)

    def run_grid(self, grid: Grid, evictions: bool = False) -> dict[Cell, dict[str, Any]]:
        """Each cell's store row (read from the store, or computed in this process and
        written to it), by cell; counts what was computed in ``measured.grid``."""
        from h2osim.sweep import run_grid

        done = run_grid(grid, self.store, evictions=evictions)
        counts = self.measured.grid
        counts["cells"] += len(done.cells)
        counts["computed"] += done.computed
        counts["reused"] += done.reused
        return dict(zip(done.cells, done.rows, strict=True))


def measure_observe(name: str, trace: Trace, run: Run) -> None:
    """Section 3 statistics per stored layer (h2osim.studies.observe)."""
    from h2osim.studies.observe import observe

    result = observe(trace)
    run.measured.observe[name] = [layer.record() for layer in result.layers]
    run.progress.step(3, f"{name} observe")


def sweep_specs(settings: Settings) -> dict[str, PolicySpec]:
    """The sweep's policies with every parameter (a2sf at the settings' forgetting factor)."""
    from h2osim.policies import make_policy

    return {name: PolicySpec.of(make_policy(name, forgetting=settings.forgetting))
            for name in settings.sweep_policies}  # fmt: skip


def forgetting_specs(settings: Settings) -> list[PolicySpec]:
    """a2sf at the other factors of the forgetting grid (the default is in the sweep)."""
    from h2osim.policies import make_policy

    return [PolicySpec.of(make_policy("a2sf", forgetting=f)) for f in settings.forgetting_grid
            if f != settings.forgetting]  # fmt: skip


def measure_sweep(name: str, trace: Trace, run: Run) -> None:
    """Every sweep policy at every budget, the topk bound, concave vs h2o evictions, the
    a2sf forgetting grid, and what each cache holds at the end (for the bias plot).

    Every replay is a grid cell (one grid per budget, :func:`Run.run_grid`): with a store,
    stored rows are read, not replayed. The rows keep their eviction schedules, which give
    the concave comparison and the cache contents at the last row."""
    measured, progress = run.measured, run.progress
    settings = measured.settings
    ref = run.refs[name]
    specs = sweep_specs(settings)
    records: list[dict[str, Any]] = []
    for budget in settings.budgets:
        rows = run.run_grid(Grid([ref], list(specs.values()), [budget], [SWEEP_CONFIG]),
                            evictions=True)  # fmt: skip
        evictions: dict[str, np.ndarray] = {}
        for policy_name, spec in specs.items():
            row = rows[_cell(ref, spec, budget, rows)]
            evictions[policy_name] = evictions_of(row)
            records.append(_sweep_record(name, row, budget, spec))
            if budget == settings.main_budget and policy_name in KEPT_POLICIES:
                measured.kept.setdefault(name, {})[policy_name] = kept_share(row)
            progress.step(
                5 if policy_name in ("opt", "belady") else 1, f"{name} {policy_name} {budget:g}"
            )
        for variant in CONCAVE:
            if variant in evictions and "h2o" in evictions:
                measured.concave["compared"] += 1
                measured.concave["identical"] += bool(
                    np.array_equal(evictions[variant], evictions["h2o"])
                )
        bounds = [row for cell, row in rows.items() if cell.bound]
        for bound in bounds:  # the topk bound (the grid adds it beside opt)
            records.append({"trace": name, **record_of(bound)})
            progress.step(2, f"{name} topk {budget:g}")
    grid_specs = forgetting_specs(settings)
    if grid_specs:
        main = settings.main_budget
        rows = run.run_grid(Grid([ref], grid_specs, [main], [SWEEP_CONFIG]))
        for spec in grid_specs:
            row = rows[_cell(ref, spec, main, rows)]
            records.append({**_sweep_record(name, row, main, spec), "grid": True})
            progress.step(1, f"{name} a2sf f={dict(spec.params)['forgetting']:g}")
    add_gap_to_opt([r for r in records if not r.get("grid")])
    measured.sweep += records


def _cell(ref: TraceRef, spec: PolicySpec, budget: float, rows: dict[Cell, Any]) -> Cell:
    """The grid's cell of ``spec`` at ``budget`` (a policy that sets its own budget: its one cell)."""
    cell = Cell(ref, spec, float(budget), SWEEP_CONFIG)
    return cell if cell in rows else Cell(ref, spec, None, SWEEP_CONFIG)


def _sweep_record(
    name: str, row: dict[str, Any], budget: float, spec: PolicySpec
) -> dict[str, Any]:
    """One sweep record from a store row: the replay's record, the trace, the budget asked
    for (and a2sf's factor)."""
    record = {"trace": name, **record_of(row, budget)}
    record["budget_requested"] = float(budget)
    params = dict(spec.params)
    if "forgetting" in params:
        record["forgetting"] = float(params["forgetting"])
    return record


def kept_share(row: dict[str, Any]) -> list[float]:
    """Share of cache units holding each position when the last row is served, ``(n,)``,
    read from a (cache policy's) row's eviction schedule."""
    from h2osim.schedule import kept_at

    return kept_at(evictions_of(row), row["n"] - 1).mean(axis=0).round(4).tolist()


def path_parameters(n: int, prompt_length: int, budget: float) -> dict[str, Any] | None:
    """Parameters that make every official code path hold the same k tokens as h2o at
    ``budget`` with the same heavy/recent split (heavy = floor(k/2), recent = k - heavy);
    None when the prompt is too short for h2o-mask's prompt-relative budgets.

    Example: n=435, P=48, budget 0.2 -> k=87: heavy 43, recent 44; h2o-mask ratios
    43.5/48 and 44.5/48 (floors give 43 and 44); h2o-drop heavy_size 43, recent_size 43
    (its newest recent_size + 1 are protected).
    """
    k = resolve_budget(budget, n, prompt_length)
    heavy = k // 2
    recent = k - heavy
    if recent + 0.5 > prompt_length or recent < 1:
        return None
    return {"k": k, "heavy": heavy, "recent": recent,
            "heavy_prompt_ratio": round((heavy + 0.5) / prompt_length, 6),
            "recent_prompt_ratio": round((recent + 0.5) / prompt_length, 6),
            "heavy_size": heavy, "recent_size": recent - 1}  # fmt: skip


PATH_LABELS = ("h2o", "h2o-mask", "h2o-drop", "h2o-flexgen", "h2o-global", "h2o (prompt in full)")
ONLINE_PATHS = ("h2o", "h2o-mask", "h2o-drop", "h2o-flexgen")


def measure_paths(name: str, trace: Trace, run: Run) -> None:
    """The official code paths at one budget and one heavy/recent split (decode rows), and
    h2o-mask / h2o-drop at their shipped defaults."""
    from h2osim.policies import make_policy

    measured, config, progress = run.measured, run.config, run.progress
    budget = measured.settings.main_budget
    params = path_parameters(trace.n, trace.prompt_length, budget)
    if trace.decode_steps < MIN_DECODE_ROWS or params is None:
        measured.notes.append(f"official paths: {name} skipped ({trace.decode_steps} decode rows, "
                              f"prompt {trace.prompt_length})")  # fmt: skip
        progress.step(9)
        return
    full = dataclasses.replace(config, prompt_mode="full")
    runs = {
        "h2o": (make_policy("h2o"), config),
        "h2o (prompt in full)": (make_policy("h2o"), full),
        "h2o-mask": (make_policy("h2o-mask", **params), full),
        "h2o-drop": (make_policy("h2o-drop", **params), full),
        # FlexGen sizes its cache itself, k = 2 int(ratio P): the mask's heavy ratio gives
        # hh_k = floor(k/2), so it holds k (even k) or k - 1 tokens, the same heavy/recent split
        "h2o-flexgen": (
            make_policy("h2o-flexgen", heavy_prompt_ratio=params["heavy_prompt_ratio"]),
            full,
        ),
        "h2o-global": (make_policy("h2o-global"), full),
    }
    evictions = {}
    for label, (policy, run_config) in runs.items():
        result = replay(trace, policy, budget, config=run_config)
        evictions[label] = result.evicted_at
        measured.paths.append({"trace": name, "label": label, **result.record(),
                               "parameters": params if label in ("h2o-mask", "h2o-drop", "h2o-flexgen") else None})  # fmt: skip
        progress.step(2 if label == "h2o-global" else 1, f"{name} {label}")
    same = all(np.array_equal(evictions[label], evictions["h2o (prompt in full)"])
               for label in ("h2o-mask", "h2o-drop"))  # fmt: skip
    measured.mask_drop_identical = same and measured.mask_drop_identical is not False
    for policy_name in ("h2o-mask", "h2o-drop"):  # the official defaults: their own budgets
        result = replay(trace, make_policy(policy_name), budget, config=config)
        measured.path_defaults.append(
            {"trace": name, "label": f"{policy_name} (defaults)", **result.record()}
        )
        progress.step(1, f"{name} {policy_name} defaults")


def score_by_position(matrix: np.ndarray, forgetting: float) -> np.ndarray:
    """Accumulated score of every token after the last row: ``sum_t f^(n-1-t) a[t, j]``.

    ``matrix`` is ``(n, n)`` lower-triangular attention (rows t, keys j). ``forgetting``
    1 is h2o's plain sum (column sums); < 1 is a2sf's decayed sum.
    Example: rows [[1], [0.5, 0.5]], f=0.5 -> [0.5 * 1 + 0.5, 0.5] = [1.0, 0.5].
    """
    n = matrix.shape[0]
    weights = forgetting ** np.arange(n - 1, -1, -1, dtype=np.float64)  # (n,) row weights
    return weights @ matrix.astype(np.float64)


def uniform_score(n: int, forgetting: float) -> np.ndarray:
    """:func:`score_by_position` under uniform attention (row t gives 1/(t+1) to each key)."""
    uniform = np.tril(np.ones((n, n))) / np.arange(1, n + 1)[:, None]
    return score_by_position(uniform, forgetting)


def measure_bias(name: str, trace: Trace, run: Run) -> None:
    """Score share by position (mean over query heads) with and without forgetting; the
    early tokens' and the sink's shares (early = :func:`h2osim.studies.observe.early_positions`);
    the same under uniform attention."""
    measured = run.measured
    n = trace.n
    forgettings = sorted(set(BIAS_FORGETTING) | {measured.settings.forgetting}, reverse=True)
    early = early_positions(n)
    heads = [(layer, head) for layer in trace.layers for head in range(trace.num_heads)]
    curves = {f: np.zeros(n) for f in forgettings}
    early_share = dict.fromkeys(forgettings, 0.0)
    sink_share = dict.fromkeys(forgettings, 0.0)
    for layer, head in heads:
        matrix = trace.head_matrix(int(layer), head)
        for f in forgettings:
            score = score_by_position(matrix, f)  # (n,)
            total = score.sum()
            curves[f] += score / total / len(heads)
            sink_share[f] += score[0] / total / len(heads)
            after_sink = score[1:].sum()
            early_share[f] += (score[early].sum() / after_sink if after_sink > 0 else 0.0) / len(
                heads
            )
    uniform = {}
    for f in forgettings:
        score = uniform_score(n, f)
        uniform[f] = {
            "curve": (score / score.sum()).tolist(),
            "early_share": float(score[early].sum() / score[1:].sum()),
        }
    measured.bias[name] = {
        "n": n, "position_share": (early.stop - early.start) / (n - 1),
        "curves": {f"{f:g}": curves[f].tolist() for f in forgettings},
        "uniform": {f"{f:g}": uniform[f]["curve"] for f in forgettings},
        "early_share": {f"{f:g}": float(early_share[f]) for f in forgettings},
        "uniform_early_share": {f"{f:g}": uniform[f]["early_share"] for f in forgettings},
        "sink_share": {f"{f:g}": float(sink_share[f]) for f in forgettings},
    }  # fmt: skip
    run.progress.step(2, f"{name} bias")


def measure_live(traces: dict[str, Trace], run: Run) -> None:
    """Teacher-forced live runs of LIVE_POLICIES on each live text, at each live budget."""
    from h2osim.model.live import teacher_forced

    measured, progress, model = run.measured, run.progress, run.model
    settings = measured.settings
    if model is None:
        from h2osim.model import load_model, set_threads

        set_threads(1)  # 2 threads on a busy 2-core box were 15x slower (docs/architecture.md)
        progress.step(0, "loading SmolLM2")
        model, _, _ = load_model(device="cpu", dtype="float32")
        run.model = model
    for name in settings.live_texts:
        ids = [int(token) for token in traces[name].token_ids[: settings.live_n]]
        measured.live_tokens[name] = ids
        for budget in settings.live_budgets:
            report = teacher_forced(model, ids, list(LIVE_POLICIES), budget)
            full = report.reference.summary
            for result in [report.reference, *report.results]:
                summary = result.summary
                measured.live.append({
                    "text": name, "n": len(ids), "budget_requested": budget, "policy": result.policy,
                    "budget": result.budget, "perplexity": summary["perplexity"],
                    "perplexity_ratio": summary["perplexity"] / full["perplexity"],
                    "kl": summary["kl"], "top1": summary["top1"], "kv_bytes": summary["kv_bytes"],
                    "kv_fraction": summary["kv_fraction"],
                    "decode_ms_per_step": result.timing.get("decode_ms_per_step"),
                })  # fmt: skip
            progress.step(len(ids) * (1 - 0.9 * budget) * 0.2 + 1, f"live {name} {budget:g}")


# --------------------------------------------------------------------------- long context
LONG_JSON = "docs/long-context.json"  # the recorded long-context measurements (issue #16)
LONG_DIR = ".cache/long"  # where docs/long-context.md dumps the 4096-token traces
LONG_TEXTS = {"prose": "prose-4096.npz", "code": "code-4096.npz"}
LONG_POLICIES = ("opt", "belady", "h2o", "window")  # the rows' sweep (opt brings the topk bound)
LONG_LENGTHS = (512, None)  # the first 512 tokens of each text, and the whole (4096) trace
LONG_FORMAT = 1
# The commands of docs/long-context.md that dump the two traces (minutes each on 2 cores).
LONG_DUMPS = (
    "python -m h2osim.dump --pydoc-topic specialnames --truncate 4096 --max-new-tokens 0 "
    "--max-tokens 4096 --layers 0,15,29 -o .cache/long/prose-4096.npz",
    "python -m h2osim.dump --text-file \"$(python -c 'import argparse; print(argparse.__file__)')\" "
    "--truncate 4096 --max-new-tokens 0 --max-tokens 4096 --layers 0,15,29 -o .cache/long/code-4096.npz",
)


def long_settings(folder: str = LONG_DIR, n: int | None = None) -> Settings:
    """The long-context setting: the two texts' traces in ``folder`` (whole, or their first
    ``n`` tokens), every stored layer, one budget (20%), the :data:`LONG_POLICIES`."""
    return Settings(mode="long", traces=tuple(LONG_TEXTS), n=n, layers=None, budgets=(0.2,),
                    live_texts=(), live_n=16, live_budgets=(0.2,), forgetting_grid=(),
                    sweep_policies=LONG_POLICIES,
                    trace_files=tuple((name, f"{folder}/{file}") for name, file in LONG_TEXTS.items()))  # fmt: skip


def long_measurements(root: Path, folder: str = LONG_DIR, *, store: ResultStore | None = None,
                      command: str = "python -m h2osim.claims --long",
                      progress: bool = False) -> dict[str, Any]:  # fmt: skip
    """Measure the long-context rows' inputs: observe, bias and the sweep (every
    :data:`LONG_POLICIES` at 20%) on each text's trace, at each of :data:`LONG_LENGTHS`.
    Returns what ``docs/long-context.json`` holds. Expensive: ``opt`` plans 9 units of
    4096 tokens per text (~25 s each on a busy core)."""
    import datetime
    import time

    started = time.perf_counter()
    blocks = []
    for n in LONG_LENGTHS:
        settings = long_settings(folder, n)
        for name in settings.traces:
            if not (root / settings.file(name)).is_file():
                raise FileNotFoundError(f"no long-context trace {root / settings.file(name)}; dump it with "
                                        "the commands in docs/long-context.md (about 5-10 min each)")  # fmt: skip
        sub = measure(settings, live=False, root=root, needs=("observe", "bias", "sweep"),
                      store=store, progress=progress)  # fmt: skip
        blocks.append({
            "n": n, "traces": sub.traces, "observe": sub.observe, "sweep": sub.sweep,
            "bias": {name: {key: value for key, value in bias.items() if key not in ("curves", "uniform")}
                     for name, bias in sub.bias.items()},
            "kept": sub.kept, "grid": sub.grid,
        })  # fmt: skip
    return {"format": LONG_FORMAT, "command": command,
            "generated": datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
            "seconds": round(time.perf_counter() - started, 1), "lengths": blocks}  # fmt: skip


def load_long(path: Path) -> dict[str, Any]:
    """A long-context measurement file; ValueError naming what is wrong with it."""
    import json

    try:
        payload = json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise ValueError(f"{path}: not valid JSON ({exc}); re-measure it with "
                         "python -m h2osim.claims --long") from None  # fmt: skip
    blocks = payload.get("lengths") if isinstance(payload, dict) else None
    if (
        payload.get("format") != LONG_FORMAT
        or not isinstance(blocks, list)
        or not all(
            isinstance(b, dict) and {"traces", "observe", "sweep", "bias"} <= set(b) for b in blocks
        )
    ):
        raise ValueError(f"{path}: not a long-context measurement file of format {LONG_FORMAT}; "
                         "re-measure it with python -m h2osim.claims --long")  # fmt: skip
    return payload


def long_measured(payload: dict[str, Any], which: str = "longest",
                  text: str | None = None) -> Measurements | None:  # fmt: skip
    """The recorded long-context measurement at one length as :class:`Measurements` (what
    the rows' ``numbers`` read): ``which`` = "longest" or "shortest" n; ``text``: that
    trace alone (default both). None if nothing is recorded."""
    blocks = [block for block in payload.get("lengths", []) if block.get("traces")]
    if not blocks:
        return None
    size = [max(info["n"] for info in block["traces"].values()) for block in blocks]
    block = blocks[int(np.argmax(size) if which == "longest" else np.argmin(size))]
    keep = (lambda name: True) if text is None else (lambda name: name == text)  # noqa: E731
    return Measurements(
        settings=long_settings(n=block.get("n")),
        traces={k: v for k, v in block["traces"].items() if keep(k)},
        observe={k: v for k, v in block["observe"].items() if keep(k)},
        bias={k: v for k, v in block["bias"].items() if keep(k)},
        sweep=[r for r in block["sweep"] if keep(r["trace"])],
        kept={k: v for k, v in block.get("kept", {}).items() if keep(k)},
    )


def measure_long(traces: dict[str, Trace], run: Run) -> None:
    """The long-context rows' measurements: read the recorded ``docs/long-context.json``,
    or, with ``long`` (``--long``), measure them from the traces in ``long_dir`` and
    rewrite that file first."""
    from h2osim.files import json_default, write_text

    options = run.options
    path = Path(options.get("long_json") or run.root / LONG_JSON)
    if options.get("long"):
        import json

        payload = long_measurements(run.root, options.get("long_dir", LONG_DIR), store=run.store,
                                    command=options.get("long_command", "python -m h2osim.claims --long"))  # fmt: skip
        path.parent.mkdir(parents=True, exist_ok=True)
        write_text(path, json.dumps(payload, indent=1, default=json_default) + "\n")
        run.measured.notes.append(f"long-context rows measured now, written to {path}")
    elif path.is_file():
        payload = load_long(path)
    else:
        run.measured.notes.append(f"no {path}: the long-context rows are not measured "
                                  "(python -m h2osim.claims --long measures them)")  # fmt: skip
        payload = {}
    run.measured.long = payload
    run.progress.step(1, "long context")


# --------------------------------------------------------------------------- needle
NEEDLE_JSON = "docs/needle/needle.json"  # the recorded needle study (docs/needle.md)
NEEDLE_PROMPT = ("task", "length", "depth", "seed", "filler", "needle", "question", "keys")
NEEDLE_FIELDS = (*NEEDLE_PROMPT, "n", "policy", "budget_requested", "prompt_mode", "correct")


def measure_needle(traces: dict[str, Trace], run: Run) -> None:
    """Read the full cache's and h2o's trials from the recorded needle study (any prompt
    mode: records are read by their fields, filtered later by ``prompt_mode``)."""
    import json

    path = Path(run.options.get("needle_json") or run.root / NEEDLE_JSON)
    run.progress.step(0.1, "needle")
    if not path.is_file():
        run.measured.notes.append(f"no {path}: the needle row is not measured")
        return
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise ValueError(f"{path}: not valid JSON ({exc})") from None
    records = data.get("records") if isinstance(data, dict) else None
    if not isinstance(records, list) or not all(isinstance(r, dict) for r in records):
        raise ValueError(f"{path}: not a needle study file (no list of records); "
                         "write it with python -m h2osim.needle --out DIR")  # fmt: skip
    wanted = [r for r in records if r.get("policy") in ("full", "h2o")]
    run.measured.needle = {"file": NEEDLE_JSON if path == run.root / NEEDLE_JSON else str(path),
                           "command": data.get("command"),
                           "records": [{key: r.get(key) for key in NEEDLE_FIELDS} for r in wanted]}  # fmt: skip


# --------------------------------------------------------------------------- the registry
def _sweep_work(settings: Settings) -> float:
    policies = settings.sweep_policies
    per_budget = len(policies) + 4 * sum(p in ("opt", "belady") for p in policies)
    per_budget += 2 if "opt" in policies else 0  # opt and belady weigh 5, topk 2
    return len(settings.budgets) * per_budget + len(forgetting_specs(settings))


def _live_work(settings: Settings) -> float:
    per_text = sum(settings.live_n * (1 - 0.9 * b) * 0.2 + 1 for b in settings.live_budgets)
    return len(settings.live_texts) * per_text


@dataclass(frozen=True)
class Measurement:
    """One shared measurement: run once, read by every claim whose ``needs`` names it.

    ``per_trace`` measurements are called ``run(name, trace, run)`` for each trace of the
    settings (the prefix the settings ask for); the others ``run(traces, run)`` once with
    the whole loaded traces. ``work`` is the progress-bar weight (per trace when per_trace;
    a replay weighs about 1), the same weights the functions report as they go.
    """

    name: str
    run: Callable[..., None]
    work: Callable[[Settings], float]
    per_trace: bool = True
    needs_model: bool = False  # skipped by ``measure(live=False)`` (``--no-live``)


MEASUREMENTS: dict[str, Measurement] = {
    m.name: m
    for m in (
        Measurement("observe", measure_observe, lambda settings: 3),
        Measurement("bias", measure_bias, lambda settings: 2),
        Measurement("sweep", measure_sweep, _sweep_work),
        Measurement("paths", measure_paths, lambda settings: 9),
        Measurement("live", measure_live, _live_work, per_trace=False, needs_model=True),
        Measurement("long", measure_long, lambda settings: 1, per_trace=False),
        Measurement("needle", measure_needle, lambda settings: 0.1, per_trace=False),
    )
}


def measure(settings: Settings, *, live: bool = True, model: Any = None, progress: bool = False,
            root: Path = Path("."), needs: Iterable[str] | None = None,
            store: ResultStore | None = None, **options: Any) -> Measurements:  # fmt: skip
    """Run the measurements named in ``needs`` (default: all of :data:`MEASUREMENTS`), in
    registry order, each once; ``live=False`` skips those that need the model.

    ``store``: the results store the sweep's cells are read from and written to (None:
    replay them in this process, keep nothing). ``options``: ``long`` (re-measure the
    long-context file), ``long_dir``, ``long_json``, ``long_command``, ``needle_json``.
    The claims table passes the union of its claims' ``needs``
    (:func:`h2osim.studies.claims.rows.needed_measurements`).
    """
    wanted = set(MEASUREMENTS) if needs is None else set(needs)
    unknown = sorted(wanted - set(MEASUREMENTS))
    if unknown:
        raise ValueError(f"unknown measurement {unknown[0]!r}; known: {', '.join(MEASUREMENTS)}")
    chosen = [m for m in MEASUREMENTS.values() if m.name in wanted and (live or not m.needs_model)]
    per_trace = [m for m in chosen if m.per_trace]
    once = [m for m in chosen if not m.per_trace]
    work = sum(m.work(settings) * (len(settings.traces) if m.per_trace else 1) for m in chosen)
    measured = Measurements(settings=settings)
    run = Run(measured, ReplayConfig(output_error=False), Progress(work, progress), model,
              store=store, root=root, options=options)  # fmt: skip
    try:
        loaded: dict[str, Trace] = {}
        with_model = any(m.needs_model for m in once)
        names = settings.traces + (settings.live_texts if with_model else ())
        for name in dict.fromkeys(names if per_trace or with_model else ()):
            loaded[name] = Trace.load(root / settings.file(name))
        for name in settings.traces if per_trace else ():
            file = root / settings.file(name)
            run.refs[name] = trace_ref(file, loaded[name], n=settings.n, layers=settings.layers)
            trace = open_trace(run.refs[name])  # the view the grid's cells replay
            measured.traces[name] = {"file": settings.file(name), "n": trace.n,
                                     "prompt_length": trace.prompt_length,
                                     "layers": trace.layers.tolist()}  # fmt: skip
            for measurement in per_trace:
                measurement.run(name, trace, run)
        for measurement in once:
            measurement.run(loaded, run)
    finally:
        run.progress.close()
    return measured


# --------------------------------------------------------------------------- reading them
def mean(values: Sequence[float | None]) -> float | None:
    present = [float(v) for v in values if v is not None]
    return float(np.mean(present)) if present else None


def geomean(values: Sequence[float | None]) -> float | None:
    present = [float(v) for v in values if v is not None and v > 0]
    return float(np.exp(np.mean(np.log(present)))) if present else None


def sweep_values(measured: Measurements, policy: str, budget: float, key: str = "retained_mass",
                 trace: str | None = None) -> dict[str, float]:  # fmt: skip
    """trace -> value of ``key`` for ``policy`` at ``budget`` (grid runs left out)."""
    return {r["trace"]: r[key] for r in measured.sweep
            if r["policy"] == policy and r["budget_requested"] == budget and not r.get("grid")
            and (trace is None or r["trace"] == trace)}  # fmt: skip


def live_values(measured: Measurements, policy: str, budget: float,
                key: str = "perplexity_ratio") -> dict[str, float]:  # fmt: skip
    return {r["text"]: r[key] for r in measured.live
            if r["policy"] == policy and r["budget_requested"] == budget}  # fmt: skip
