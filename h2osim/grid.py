"""A declared experiment grid: traces x policies (with parameters) x budgets x replay configs.

docs/scale.md, "The grid". A grid is data, not a loop: it comes from command-line flags
(the same ones ``python -m h2osim.replay --sweep`` takes) or from a TOML file, and
:meth:`Grid.cells` expands it into :class:`Cell` s - one replay each - whose
:attr:`Cell.key` names the row they produce in the results store (:mod:`h2osim.store`).
A key is the SHA-256 of what determines the row: the trace's content hash (not its path:
a renamed copy is the same trace), the policy and all its hyperparameters (defaults
filled in, so ``h2o`` and ``h2o --heavy-ratio 0.5`` are one row), the requested budget and
its basis, the replay configuration and the h2osim version.

TOML form (every list is a dimension of the product; a scalar is a one-value list)::

    traces = ["traces/smollm2-pydoc.npz", "traces/smollm2-code.npz"]
    budgets = "0.05:0.5:0.05"          # or [0.1, 0.2]; counts > 1 are tokens
    budget_of = "sequence"

    [[policy]]
    name = "h2o"
    heavy_ratio = [0.25, 0.5]          # two policies: h2o(heavy_ratio=0.25), h2o(0.5)

    [[policy]]
    name = "window"

    [config]                           # each key: a value or a list (product)
    aggregation = ["sum", "max"]
    prompt_mode = "stream"
    observe = "renormalized"
    layers = "all"                     # or "0,5,10-12"
    output_error = true

A trace may also be a *view* of its file (:func:`trace_ref` with ``n`` and/or ``layers``):
its first n tokens and a subset of its stored layers, made in memory by
:func:`trace_prefix` (the claims table's ``--quick`` setting). The view is part of the
cell's identity (its key), so a view's rows never mix with the whole trace's.

Simplifications: the policy ``all`` expands to the registry as the CLI does; paths are
relative to the current folder (flags) or to the TOML file's folder.
"""

from __future__ import annotations

import argparse
import dataclasses
import hashlib
import itertools
import json
import os
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import h2osim
from h2osim.engine import ReplayConfig
from h2osim.errors import UserError
from h2osim.files import file_sha256 as file_hash  # a trace's identity in the store
from h2osim.policies import Policy, make_policy, policy_names

FIXED = None  # budget_requested of a policy that sets its own budget (full, absolute sizes)


MAX_BUDGETS = 200  # budgets one --sweep/--budget may ask for (each is a replay of every policy)


def parse_budgets(text: str, flag: str = "--sweep") -> list[float]:
    """``"start:stop:step"`` (inclusive) or a comma list; errors name ``flag``.

    Every budget is checked like ``--budget`` (finite, a fraction in (0, 1] or a whole
    count) and at most :data:`MAX_BUDGETS` are allowed, counted before any list is
    built: "0.1:0.5:1e-12" and "0:inf:0.1" are refused, not expanded.
    Example: "0.1:0.3:0.1" -> [0.1, 0.2, 0.3]; "0.05,0.5" -> [0.05, 0.5].
    """
    import numpy as np

    from h2osim.cli import ArgumentValueError, budget_value
    from h2osim.files import printable

    if len(text) > 10_000:
        raise ValueError(
            f"{flag} is {len(text)} characters long; give at most {MAX_BUDGETS} budgets"
        )
    if ":" in text:
        parts = text.split(":")
        if len(parts) != 3:
            raise ValueError(f"{flag} takes start:stop:step, got {printable(text[:80])!r}")
        try:
            start, stop, step = (float(part) for part in parts)
        except ValueError:
            raise ValueError(
                f"{flag} takes numbers start:stop:step, got {printable(text[:80])!r}"
            ) from None
        if not all(np.isfinite([start, stop, step])) or step <= 0 or stop < start:
            raise ValueError(
                f"{flag} needs finite numbers, step > 0 and stop >= start, got {printable(text[:80])!r}"
            )
        points = (stop - start) / step + 1e-9
        if not points < MAX_BUDGETS:
            raise ValueError(f"{flag} {printable(text[:80])} asks for {points + 1:.3g} budgets; "
                             f"at most {MAX_BUDGETS} (use a larger step)")  # fmt: skip
        budgets = [round(start + i * step, 10) for i in range(int(np.floor(points)) + 1)]
    else:
        parts = [part.strip() for part in text.split(",") if part.strip()]
        if not parts:
            raise ValueError(f"{flag} needs at least one budget, got {printable(text[:80])!r}")
        if len(parts) > MAX_BUDGETS:
            raise ValueError(f"{flag} lists {len(parts)} budgets; at most {MAX_BUDGETS}")
        budgets = []
        for part in parts:
            try:
                budgets.append(float(part))
            except ValueError:
                raise ValueError(f"{flag}: {printable(part[:40])!r} is not a number") from None
    for budget in budgets:
        try:
            budget_value(str(budget))
        except ArgumentValueError as exc:
            raise ValueError(f"{flag}: {exc}") from None
    return budgets


def canonical(value: Any) -> str:
    """Compact, key-sorted JSON: the one spelling hashed into keys and stored in the store."""
    return json.dumps(value, sort_keys=True, separators=(",", ":"))


@dataclass(frozen=True)
class RunConfig:
    """A replay configuration plus the budget basis: everything of a cell but trace,
    policy and budget. ``layers`` None = every stored layer."""

    aggregation: str = "sum"
    prompt_mode: str = "stream"
    observation: str = "renormalized"
    layers: tuple[int, ...] | None = None
    output_error: bool = True
    budget_of: str = "sequence"

    def replay_config(self) -> ReplayConfig:
        return ReplayConfig(aggregation=self.aggregation, prompt_mode=self.prompt_mode,
                            observation=self.observation, layers=self.layers,
                            output_error=self.output_error)  # fmt: skip

    def as_dict(self) -> dict[str, Any]:
        data = dataclasses.asdict(self)
        data["layers"] = None if self.layers is None else list(self.layers)
        return data


@dataclass(frozen=True)
class PolicySpec:
    """A registered policy with every hyperparameter value (defaults filled in)."""

    name: str
    params: tuple[tuple[str, Any], ...] = ()

    @classmethod
    def of(cls, policy: Policy) -> PolicySpec:
        values = tuple(sorted((f.name, getattr(policy, f.name)) for f in policy.parameters()))
        return cls(policy.name, values)

    def make(self) -> Policy:
        return make_policy(self.name, **dict(self.params))


@dataclass(frozen=True)
class TraceRef:
    """A trace by path plus what the client read from it once (workers load it by path)."""

    path: str
    sha256: str
    n: int
    prompt_length: int
    describe: str
    layers: tuple[int, ...] = ()
    num_heads: int = 1
    num_kv_heads: int = 1
    # a view of the file (trace_prefix): its first view_n tokens / only view_layers; None: all
    view_n: int | None = None
    view_layers: tuple[int, ...] | None = None

    @property
    def view(self) -> dict[str, Any] | None:
        """The view's part of a cell's identity (None for the whole trace, keeping its keys)."""
        if self.view_n is None and self.view_layers is None:
            return None
        return {"n": self.view_n,
                "layers": None if self.view_layers is None else list(self.view_layers)}  # fmt: skip

    def units(self, config: RunConfig) -> int:
        """Cache units a replay under ``config`` has. Example: 10 layers, 3 KV heads -> 30."""
        layers = len(self.layers if config.layers is None else config.layers)
        return layers * (self.num_heads if config.aggregation == "per-head" else self.num_kv_heads)


@dataclass(frozen=True)
class Cell:
    """One replay of the grid: the unit of work and of the store."""

    trace: TraceRef
    policy: PolicySpec
    budget: float | None  # requested budget; None (FIXED) when the policy sets its own
    config: RunConfig
    bound: bool = False  # the topk bound (computed with opt), not a policy

    @property
    def identity(self) -> dict[str, Any]:
        identity = {"trace_sha256": self.trace.sha256, "policy": self.policy.name,
                    "params": dict(self.policy.params), "budget_requested": self.budget,
                    "config": self.config.as_dict(), "h2osim_version": h2osim.code_version()}  # fmt: skip
        if self.trace.view is not None:
            identity["trace_view"] = self.trace.view
        return identity

    @property
    def key(self) -> str:
        return hashlib.sha256(canonical(self.identity).encode()).hexdigest()


@dataclass
class Grid:
    """Traces x policies x budgets x configs; :meth:`cells` expands it."""

    traces: list[TraceRef]
    policies: list[PolicySpec]
    budgets: list[float]
    configs: list[RunConfig] = field(default_factory=lambda: [RunConfig()])

    def cells(self) -> list[Cell]:
        """Policy-major, then budget (the order ``replay --sweep`` prints and writes).
        A policy that sets its own budget is one cell per (trace, config), not per budget;
        with ``opt`` among the policies, every (trace, config, budget) gets a bound cell."""
        cells: list[Cell] = []
        for trace, config in itertools.product(self.traces, self.configs):
            for spec in self.policies:
                if spec.make().fixed_budget(trace.n, trace.prompt_length) is not None:
                    cells.append(Cell(trace, spec, FIXED, config))
                    continue
                cells += [Cell(trace, spec, float(budget), config) for budget in self.budgets]
            if any(spec.name == "opt" for spec in self.policies):
                cells += [Cell(trace, PolicySpec("topk"), float(budget), config, bound=True)
                          for budget in self.budgets]  # fmt: skip
        return cells

    def groups(self) -> list[tuple[TraceRef, RunConfig]]:
        """(trace, config) pairs in order: each prints as one ``replay --sweep`` table."""
        return list(itertools.product(self.traces, self.configs))


# --------------------------------------------------------------------------- building
_TRACES: dict[str, Any] = {}  # sha256 -> Trace: this process's open traces (workers too)
_OPEN_TRACES = 4  # at most this many kept open per process (each caches decoded layers)


def trace_ref(path: str | os.PathLike[str], trace: Any = None, *, n: int | None = None,
              layers: Sequence[int] | None = None) -> TraceRef:  # fmt: skip
    """Open ``path`` once (header and validation; or take the already open ``trace``) and
    hash its bytes; the open trace stays in this process's cache, so an in-process run
    does not load it again. ``n`` / ``layers``: a view of the file (:func:`trace_prefix`)."""
    from h2osim.trace import Trace

    trace = Trace.load(path) if trace is None else trace
    sha256 = file_hash(path)
    _remember(sha256, trace)
    view_layers = None if layers is None else tuple(int(layer) for layer in layers)
    shown = trace if n is None and layers is None else trace_prefix(trace, n, view_layers)
    ref = TraceRef(str(path), sha256, shown.n, shown.prompt_length, shown.describe(),
                   tuple(int(layer) for layer in shown.layers), shown.num_heads,
                   shown.num_kv_heads, n, view_layers)  # fmt: skip
    if ref.view is not None:
        _VIEWS[(sha256, n, view_layers)] = shown
    return ref


def trace_prefix(trace: Any, n: int | None = None, layers: Sequence[int] | None = None) -> Any:
    """The trace of the first ``n`` tokens (and only ``layers``), in memory, float32.

    Exact for a causal model: rows 0..n-1 attend only to tokens 0..n-1, so the first n
    rows of a trace are the trace of the first n tokens. The prompt is cut to n if longer.
    Example: the chat trace (n=435, prompt 48) with n=160 -> 160 rows, prompt 48, decode 112.
    """
    import numpy as np

    from h2osim.trace import Trace, pack_lower

    chosen = [int(layer) for layer in (trace.layers if layers is None else layers)]
    if (n is None or n >= trace.n) and chosen == trace.layers.tolist():
        return trace
    n = trace.n if n is None else min(n, trace.n)
    attention = {
        layer: np.stack([trace.head_matrix(layer, head)[:n, :n] for head in range(trace.num_heads)])
        for layer in chosen
    }  # layer -> (H, n, n)
    values = {layer: trace.values(layer)[:, :n] for layer in chosen} if trace.has_values else None
    return Trace.from_arrays(
        {layer: pack_lower(dense) for layer, dense in attention.items()},
        head_map=trace.head_map, token_ids=trace.token_ids[:n], tokens=trace.tokens[:n],
        prompt_length=min(trace.prompt_length, n), layers=chosen, values=values,
        metadata={**trace.metadata, "prefix_of": str(trace.path), "prefix_n": n},
        validate=False,  # already validated as part of the whole trace
    )  # fmt: skip


def _remember(sha256: str, trace: Any) -> None:
    _TRACES.pop(sha256, None)
    _TRACES[sha256] = trace
    while len(_TRACES) > _OPEN_TRACES:
        _TRACES.pop(next(iter(_TRACES)))


def open_trace(ref: TraceRef):
    """The trace ``ref`` names, loaded by path once per process (a Dask worker keeps it for
    every later cell). The file's hash must still match: a trace that changed since the
    grid was declared (or differs on this worker's file system) is an error, not a row."""
    from h2osim.trace import Trace

    trace = _TRACES.get(ref.sha256)
    if trace is None:
        if not Path(ref.path).is_file():
            raise FileNotFoundError(f"no trace file at {ref.path} on this worker; workers read "
                                    "traces by path, so they need the same file system")  # fmt: skip
        if file_hash(ref.path) != ref.sha256:
            raise ValueError(f"trace {ref.path} changed since the grid was declared (its SHA-256 "
                             "differs); run the sweep again")  # fmt: skip
        trace = Trace.load(ref.path)
        _remember(ref.sha256, trace)
    return trace if ref.view is None else _viewed(ref, trace)


_VIEWS: dict[tuple[Any, ...], Any] = {}  # (sha256, n, layers) -> the view, this process's


def _viewed(ref: TraceRef, trace: Any) -> Any:
    """The view ``ref`` names of the open ``trace`` (made once per process, kept like traces)."""
    key = (ref.sha256, ref.view_n, ref.view_layers)
    view = _VIEWS.pop(key, None)
    if view is None:
        view = trace_prefix(trace, ref.view_n, ref.view_layers)
    _VIEWS[key] = view
    while len(_VIEWS) > _OPEN_TRACES:
        _VIEWS.pop(next(iter(_VIEWS)))
    return view


def check_budgets(grid: Grid) -> None:
    """Every budget must resolve on every trace (same errors as ``replay --sweep``)."""
    from h2osim.schedule import resolve_budget

    if not grid.budgets:
        raise ValueError("the grid has no budgets; give --budget or --sweep")
    for trace, config in grid.groups():
        for budget in grid.budgets:
            resolve_budget(budget, trace.n, trace.prompt_length, config.budget_of)


def policy_specs(names: Iterable[str], params: dict[str, Any]) -> list[PolicySpec]:
    """One spec per name, with the flag values each policy has (others ignored)."""
    return [PolicySpec.of(make_policy(name, **params)) for name in names]


def grid_from_args(args: argparse.Namespace, traces: Sequence[str], budgets: list[float]) -> Grid:
    """The grid that a replay-style command line describes (one config, flags' policies)."""
    from h2osim.cli import policy_parameters, replay_config_from_args, requested_policies

    names = requested_policies(args.policy, policy_names())
    specs = policy_specs(names, policy_parameters(args))
    replay_config = replay_config_from_args(args, output_error=not args.no_output_error)
    config = RunConfig(aggregation=replay_config.aggregation,
                       prompt_mode=replay_config.prompt_mode,
                       observation=replay_config.observation, layers=replay_config.layers,
                       output_error=replay_config.output_error, budget_of=args.budget_of)  # fmt: skip
    grid = Grid([trace_ref(path) for path in traces], specs, budgets, [config])
    check_budgets(grid)
    return grid


def _values(value: Any) -> list[Any]:
    return list(value) if isinstance(value, list) else [value]


CONFIG_KEYS = {"aggregation", "prompt_mode", "observe", "layers", "output_error"}


def load_grid(path: str | os.PathLike[str], extra_traces: Sequence[str] = ()) -> Grid:
    """Read a TOML grid (see the module docstring). ``extra_traces`` (command-line
    traces) are added to the file's. Bad files raise ValueError naming the problem."""
    import tomllib

    from h2osim.cli import parse_layers

    file = Path(path)
    if not file.is_file():
        raise FileNotFoundError(f"no grid file at {file}")
    try:
        data = tomllib.loads(file.read_text(encoding="utf-8"))
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as exc:
        raise ValueError(f"grid file {file} is not valid TOML: {exc}") from None
    unknown = set(data) - {"traces", "budgets", "budget_of", "policy", "config"}
    if unknown:
        raise ValueError(f"grid file {file}: unknown keys {sorted(unknown)}; "
                         "allowed: traces, budgets, budget_of, [[policy]], [config]")  # fmt: skip
    traces = [str((file.parent / p) if not Path(p).is_absolute() else p)
              for p in _values(data.get("traces", []))] + list(extra_traces)  # fmt: skip
    if not traces:
        raise ValueError(f"grid file {file} names no traces (traces = [...]) and none were given")
    raw_budgets = data.get("budgets", [0.2])
    budgets = (parse_budgets(raw_budgets) if isinstance(raw_budgets, str)
               else [float(b) for b in _values(raw_budgets)])  # fmt: skip
    specs: list[PolicySpec] = []
    for entry in data.get("policy", [{"name": "h2o"}]):
        if not isinstance(entry, dict) or "name" not in entry:
            raise ValueError(f"grid file {file}: every [[policy]] needs a name")
        names = policy_names() if entry["name"] == "all" else _values(entry["name"])
        params = {key: _values(value) for key, value in entry.items() if key != "name"}
        for name in names:
            for combo in itertools.product(*params.values()):
                specs.append(
                    PolicySpec.of(make_policy(name, **dict(zip(params, combo, strict=True))))
                )
    specs = list(dict.fromkeys(specs))
    table = data.get("config", {})
    bad = set(table) - CONFIG_KEYS
    if bad:
        raise ValueError(f"grid file {file}: unknown [config] keys {sorted(bad)}; "
                         f"allowed: {sorted(CONFIG_KEYS)}")  # fmt: skip
    axes = {key: _values(table.get(key, default)) for key, default in
            (("aggregation", "sum"), ("prompt_mode", "stream"), ("observe", "renormalized"),
             ("layers", "all"), ("output_error", True))}  # fmt: skip
    configs = []
    for aggregation, mode, observe, layers, output_error in itertools.product(*axes.values()):
        parsed = parse_layers(str(layers) if not isinstance(layers, str) else layers)
        ReplayConfig(aggregation=aggregation, prompt_mode=mode, observation=observe)  # checks
        configs.append(RunConfig(aggregation, mode, observe,
                                 None if parsed is None else tuple(parsed), bool(output_error),
                                 str(data.get("budget_of", "sequence"))))  # fmt: skip
    if not isinstance(data.get("budget_of", "sequence"), str):
        raise ValueError(f"grid file {file}: budget_of must be 'sequence' or 'prompt'")
    grid = Grid([trace_ref(p) for p in traces], specs, budgets, configs)
    check_budgets(grid)
    return grid


__all__ = [
    "FIXED", "Cell", "Grid", "PolicySpec", "RunConfig", "TraceRef", "UserError", "canonical",
    "check_budgets", "file_hash", "grid_from_args", "load_grid", "open_trace", "parse_budgets",
    "policy_specs", "trace_prefix", "trace_ref",
]  # fmt: skip
