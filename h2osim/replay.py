"""The replay engine - the only loop over steps in h2osim - and ``python -m h2osim.replay``.

Open-loop replay (DESIGN.md, "Replay semantics"): for t = 0..n-1, every cache unit
admits token t; a unit holding more than its budget k asks the policy which tokens to
evict (deciding from rows < t only); then row t of the full-cache model is served over
what is kept and shown to the policy. Evicted tokens never return.

Caveat to teach: later rows come from the full-cache model, so evictions never change
them. What eviction really does to a model is measured by live eviction (closed loop).

Options: the budget as a count or a fraction (of the sequence or of the prompt); GQA
aggregation of a unit's query heads (sum, mean, max) or per-query-head units; the prompt
streamed row by row or attended in full (eviction starts after prefill, as in the H2O
masking simulation); observation renormalised over the kept tokens or the full row.
"""

from __future__ import annotations

import argparse
import dataclasses
import sys
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from h2osim.cli import (
    add_policy_arguments,
    add_replay_arguments,
    policy_parameters,
    replay_config_from_args,
    requested_policies,
)
from h2osim.files import write_json, write_output
from h2osim.metrics import kept_matrix, output_error, row_statistics_of, step_metrics, summarize
from h2osim.policies import Policy, ReplayContext, make_policy, policy_names
from h2osim.trace import AGGREGATIONS, Trace

GQA_MODES = AGGREGATIONS + ("per-head",)
PROMPT_MODES = ("stream", "full")
OBSERVATIONS = ("renormalized", "full")
BUDGET_BASES = ("sequence", "prompt")


def resolve_budget(
    budget: float | int | str, n: int, prompt_length: int, of: str = "sequence"
) -> int:
    """Turn a budget into a token count k >= 1.

    A value in (0, 1] is a fraction of the sequence length n (or of the prompt length
    with ``of="prompt"``); a value > 1 must be a whole token count.
    Examples: 0.2 of n=1000 -> 200; 1 -> n (everything); 128 -> 128; 0.001 of 100 -> 1.
    """
    if of not in BUDGET_BASES:
        raise ValueError(f"budget base must be one of {BUDGET_BASES}, got {of!r}")
    try:
        value = float(budget)
    except (TypeError, ValueError):
        raise ValueError(f"budget must be a number, got {budget!r}") from None
    if not np.isfinite(value) or value <= 0:
        raise ValueError(f"budget must be in (0, 1] as a fraction or > 1 as a count, got {budget}")
    if value <= 1:
        base = prompt_length if of == "prompt" else n
        return max(1, int(round(value * base)))
    if value != int(value):
        raise ValueError(f"a budget above 1 is a token count and must be whole, got {budget}")
    return int(value)


@dataclass(frozen=True)
class ReplayConfig:
    """How a replay is run (everything except the policy and its budget)."""

    aggregation: str = "sum"  # how a unit's query heads combine: sum | mean | max | per-head
    prompt_mode: str = "stream"  # stream: prompt rows one by one; full: evict after prefill
    observation: str = "renormalized"  # what policies see: renormalized over kept | full row
    layers: tuple[int, ...] | None = None  # model layers to replay (None = all stored)
    output_error: bool = True  # compute the attention-output error when values are stored

    def __post_init__(self) -> None:
        for value, choices, what in ((self.aggregation, GQA_MODES, "aggregation"),
                                     (self.prompt_mode, PROMPT_MODES, "prompt mode"),
                                     (self.observation, OBSERVATIONS, "observation")):  # fmt: skip
            if value not in choices:
                raise ValueError(f"{what} must be one of {choices}, got {value!r}")


class UnitLayout:
    """Arranges a trace's rows as ``(units, G, t+1)``: cache units x their query heads."""

    def __init__(self, trace: Trace, config: ReplayConfig):
        self.trace = trace
        self.config = config
        layers = trace.layers.tolist() if config.layers is None else list(config.layers)
        for layer in layers:
            if layer not in trace.layer_positions:
                raise ValueError(
                    f"layer {layer} is not stored in this trace; stored: {trace.layers.tolist()}"
                )
        self.layers = [int(layer) for layer in layers]
        self.per_head = config.aggregation == "per-head"
        order = np.argsort(trace.head_map, kind="stable")  # query heads grouped by KV head
        self.head_order = None if np.array_equal(order, np.arange(trace.num_heads)) else order
        if self.per_head:
            self.heads_per_unit = 1
            labels = [(layer, head) for layer in self.layers for head in range(trace.num_heads)]
        else:
            self.heads_per_unit = trace.group_size
            labels = [(layer, kv) for layer in self.layers for kv in range(trace.num_kv_heads)]
        self.labels: tuple[tuple[int, int], ...] = tuple(labels)
        self.units = len(labels)

    def rows(self, t: int) -> np.ndarray:
        """Row t of every unit's query heads, ``(units, G, t+1)`` float64.

        float64 because every float32/float16 row then sums exactly, in any order: the
        kept mass, and with it what policies observe, is bit-identical in any correct
        implementation (see :func:`_observe`).
        """
        block = self.trace.rows(t, self.layers, np.float64)  # (L, H, t+1)
        if self.head_order is not None and not self.per_head:
            block = block[:, self.head_order]
        return block.reshape(self.units, self.heads_per_unit, t + 1)

    def row_stats(self) -> tuple[np.ndarray, ...] | None:
        """Cached sum, maximum and significant-key count of every row, each ``(n, units, G)``
        in :meth:`rows` order, or None when some layer has none yet."""
        per_layer = [self.trace.row_stats(layer, compute=False) for layer in self.layers]
        if any(stats is None for stats in per_layer):
            return None
        shape = (self.units, self.heads_per_unit, self.trace.n)
        arranged = []
        for column in zip(*per_layer, strict=True):
            stacked = np.stack(column)  # (L, H, n)
            if self.head_order is not None and not self.per_head:
                stacked = stacked[:, self.head_order]
            arranged.append(np.moveaxis(stacked.reshape(shape), 2, 0).copy())
        return tuple(arranged)

    def store_row_stats(self, stats: tuple[np.ndarray, ...]) -> None:
        """Give the trace row statistics measured during a replay (inverse of :meth:`row_stats`)."""
        heads = self.trace.num_heads
        per_layer = []
        for column in stats:  # (n, units, G) -> (L, H, n)
            by_head = np.moveaxis(column, 0, 2).reshape(len(self.layers), heads, self.trace.n)
            if self.head_order is not None and not self.per_head:
                by_head = by_head[:, np.argsort(self.head_order)]
            per_layer.append(by_head)
        for position, layer in enumerate(self.layers):
            self.trace.set_row_stats(layer, tuple(part[position] for part in per_layer))

    def heads(self, unit: int) -> list[int]:
        """The query heads whose rows a unit serves."""
        _, head = self.labels[unit]
        return [head] if self.per_head else np.flatnonzero(self.trace.head_map == head).tolist()

    def output_errors(self, evicted_at: np.ndarray) -> np.ndarray:
        """Attention-output error ``(n, units)`` of a finished replay, one matmul pass per head.

        Computed after the loop from the eviction schedule (what each row was served over);
        the full-cache outputs are cached on the trace, so sweeps pay them once.
        """
        errors = np.empty((self.trace.n, self.units), dtype=np.float32)
        for unit, (layer, _) in enumerate(self.labels):
            kept = kept_matrix(evicted_at[unit])  # (n, n)
            values = self.trace.values(layer)  # (KVH, n, d)
            per_head = [
                output_error(self.trace.head_matrix(layer, head), values[self.trace.head_map[head]],
                             kept, full=self.trace.head_output(layer, head))
                for head in self.heads(unit)
            ]  # fmt: skip
            errors[:, unit] = np.mean(per_head, axis=0)
        return errors

    def matrix(self, unit: int) -> np.ndarray:
        """The unit's full ``(n, n)`` attention, aggregated as the engine does (for oracles)."""
        layer, head = self.labels[unit]
        if self.per_head:
            return self.trace.head_matrix(layer, head)
        return self.trace.unit_matrix(layer, head, self.config.aggregation)

    def weights(self, unit: int) -> np.ndarray:
        """The unit's ``(n, n)`` float64 metric weights (for oracles): entry [t, j] is what
        keeping token j while row t is served adds to its retained mass at step t - each
        query head's row as a share of its total, averaged over the unit's heads. Unlike
        :meth:`matrix` this is exact for every aggregation (max included)."""
        layer, head = self.labels[unit]
        heads = [head] if self.per_head else np.flatnonzero(self.trace.head_map == head)
        weights = np.zeros((self.trace.n, self.trace.n))
        for query_head in heads:
            rows = self.trace.head_matrix(layer, int(query_head)).astype(np.float64)
            row_total = rows.sum(axis=1, keepdims=True)  # (n, 1), 1 up to storage rounding
            weights += rows / np.where(row_total > 0, row_total, 1.0)
        return weights / len(heads)


@dataclass
class ReplayResult:
    """Everything one replay produced. Arrays are per step and unit: ``(n, units)``."""

    policy: str
    description: str
    online: bool
    budget: int
    n: int
    prompt_length: int
    config: ReplayConfig
    unit_labels: tuple[tuple[int, int], ...]
    evicted_at: np.ndarray  # (units, n) int32: step at which each token left, -1 = never
    retained_mass: np.ndarray  # (n, units) float32
    hit_rate: np.ndarray  # (n, units) float32
    output_error: np.ndarray | None  # (n, units) float32, None without values
    seconds: float = 0.0
    summary: dict[str, float | None] = field(default_factory=dict)

    def kept_at(self, t: int) -> np.ndarray:
        """``(units, t+1)`` bool: what each unit held when row t was served."""
        left = self.evicted_at[:, : t + 1]
        return (left < 0) | (left > t)

    def record(self) -> dict[str, Any]:
        """One flat, JSON-ready row for tables and files."""
        return {"policy": self.policy, "description": self.description, "online": self.online,
                "budget": self.budget, "budget_fraction": self.budget / self.n,
                "prompt_mode": self.config.prompt_mode, **self.summary,
                "seconds": round(self.seconds, 4)}  # fmt: skip


def replay(
    trace: Trace,
    policy: Policy | str,
    budget: float | int | str = 0.2,
    *,
    budget_of: str = "sequence",
    config: ReplayConfig | None = None,
    progress: bool = False,
) -> ReplayResult:
    """Replay ``trace`` through ``policy`` with ``budget`` tokens per cache unit.

    ``policy`` is a :class:`Policy` or a registered name (default parameters).
    """
    config = config or ReplayConfig()
    policy = make_policy(policy) if isinstance(policy, str) else policy
    layout = UnitLayout(trace, config)
    n, prompt = trace.n, trace.prompt_length
    fixed = policy.fixed_budget(n, prompt)
    budget_tokens = resolve_budget(budget, n, prompt, budget_of) if fixed is None else fixed
    if budget_tokens < 1:
        raise ValueError(
            f"policy {policy.name!r} asked for a budget of {budget_tokens}; it must be >= 1"
        )
    if policy.prompt_mode is not None and policy.prompt_mode != config.prompt_mode:
        config = dataclasses.replace(config, prompt_mode=policy.prompt_mode)
    context = ReplayContext(
        units=layout.units, n=n, budget=budget_tokens, prompt_length=prompt,
        unit_labels=layout.labels, unit_matrix=None if policy.online else layout.matrix,
        unit_weights=None if policy.online else layout.weights, prompt_mode=config.prompt_mode,
    )  # fmt: skip
    started = time.perf_counter()
    policy.reset(context)
    units = np.arange(layout.units)[:, None]
    kept = np.zeros((layout.units, n), dtype=bool)
    kept_weight = np.zeros((layout.units, n))  # kept as 0/1 for matmuls
    evicted_at = np.full((layout.units, n), -1, dtype=np.int32)
    retained_mass = np.empty((n, layout.units), dtype=np.float32)
    hit_rate = np.empty((n, layout.units), dtype=np.float32)
    stats = layout.row_stats()  # (n, units, G) each, cached after a trace's first replay
    measure_stats = stats is None
    if measure_stats:
        shape = (n, layout.units, layout.heads_per_unit)
        stats = (np.empty(shape), np.empty(shape), np.empty(shape, dtype=np.int64))
    row_totals, row_maxima, significant_totals = stats
    held = 0
    steps: Iterable[int] = range(n)
    if progress:
        from tqdm import tqdm

        steps = tqdm(
            steps, desc=f"{policy.name} k={budget_tokens}", unit="step", leave=False, delay=1.0
        )
    for t in steps:
        kept[:, t] = True
        kept_weight[:, t] = 1.0
        held += 1
        in_prefill = config.prompt_mode == "full" and t < prompt
        if held > budget_tokens and not in_prefill:
            count = held - budget_tokens
            view = kept[:, : t + 1]
            view.flags.writeable = False
            victims = np.asarray(policy.evict(t, view, count))
            view.flags.writeable = True
            check_victims(policy, victims, kept, t, count)
            kept[units, victims] = False
            kept_weight[units, victims] = 0.0
            evicted_at[units, victims] = t
            held = budget_tokens
        rows = layout.rows(t)  # (units, G, t+1) float64
        kept_mass = np.matmul(rows, kept_weight[:, : t + 1, None])[:, :, 0]  # (units, G), exact
        if measure_stats:
            row_totals[t], row_maxima[t], significant_totals[t] = row_statistics_of(rows)
        retained_mass[t], hit_rate[t] = step_metrics(
            rows, kept[:, : t + 1], kept_mass, row_totals[t], row_maxima[t], significant_totals[t]
        )
        observed = _observe(rows, kept_mass, kept_weight[:, : t + 1], config)
        view = kept[:, : t + 1]
        view.flags.writeable = False
        policy.observe(t, observed, view)
        view.flags.writeable = True
    if measure_stats:
        layout.store_row_stats(stats)
    errors = layout.output_errors(evicted_at) if config.output_error and trace.has_values else None
    result = ReplayResult(
        policy=policy.name, description=policy.describe(), online=policy.online,
        budget=budget_tokens, n=n, prompt_length=prompt, config=config, unit_labels=layout.labels,
        evicted_at=evicted_at, retained_mass=retained_mass, hit_rate=hit_rate,
        output_error=errors, seconds=time.perf_counter() - started,
    )  # fmt: skip
    result.summary = summarize(retained_mass, hit_rate, errors, prompt)
    return result


def _observe(
    rows: np.ndarray, kept_mass: np.ndarray, kept: np.ndarray, config: ReplayConfig
) -> np.ndarray:
    """What the policy sees of row t: ``(units, t+1)`` float64, the unit's heads aggregated.

    Renormalised mode: each head's row over the kept tokens divided by its kept mass
    (the softmax the model would compute over the cache), zero at evicted tokens.
    ``rows`` ``(units, G, t+1)`` and ``kept_mass`` ``(units, G)`` are float64, ``kept`` is
    0/1. Float32 probabilities sum exactly in float64 whatever the order, and the
    division is correctly rounded, so every correct implementation (the slow reference
    loop included) sees bit-identical observations: decisions at exact boundaries (a
    uniform row against scissorhands' 1/|kept|) agree.
    """
    if config.observation == "full":
        per_head = rows
    else:
        safe_mass = np.where(kept_mass > 0, kept_mass, 1.0)[:, :, None]  # kept rows of 0 stay 0
        per_head = rows / safe_mass
    if config.aggregation == "max":
        combined = per_head.max(axis=1)
    elif config.aggregation == "mean":
        combined = per_head.mean(axis=1)
    else:
        combined = per_head.sum(axis=1)  # (units, t+1)
    if config.observation != "full":
        combined *= kept  # evicted tokens observe 0 (after combining: one pass, not G)
    return combined


def check_victims(
    policy: Policy, victims: np.ndarray, kept: np.ndarray, t: int, count: int
) -> None:
    """Enforce the engine's rules on a policy's answer (cheap: count is usually 1)."""
    if victims.shape != (kept.shape[0], count) or victims.dtype.kind not in "iu":
        raise RuntimeError(f"policy {policy.name!r} returned evictions of shape {victims.shape} "
                           f"dtype {victims.dtype}; expected ({kept.shape[0]}, {count}) integers")  # fmt: skip
    if victims.min() < 0 or victims.max() >= t:
        raise RuntimeError(
            f"policy {policy.name!r} tried to evict a token outside 0..{t - 1} at step {t}"
        )
    if not kept[np.arange(kept.shape[0])[:, None], victims].all():
        raise RuntimeError(
            f"policy {policy.name!r} tried to evict a token no longer cached at step {t}"
        )
    if count > 1 and (np.diff(np.sort(victims, axis=1), axis=1) == 0).any():
        raise RuntimeError(f"policy {policy.name!r} named the same token twice at step {t}")


def sweep(
    trace: Trace,
    policies: Sequence[Policy],
    budgets: Sequence[float],
    *,
    budget_of: str = "sequence",
    config: ReplayConfig | None = None,
    progress: bool = False,
    on_result: Callable[[ReplayResult], None] | None = None,
) -> list[dict[str, Any]]:
    """Replay every policy at every budget; one record per (policy, budget).

    ``policies`` are instances (their state is reset per replay). Policies that set their
    own budget (the full cache, absolute-size variants) are replayed once, not per budget.
    """
    jobs = [(policy, budget) for policy in policies for budget in budgets]
    jobs = [
        (p, b)
        for p, b in jobs
        if b == budgets[0] or p.fixed_budget(trace.n, trace.prompt_length) is None
    ]
    iterator: Iterable = jobs
    if progress:
        from tqdm import tqdm

        iterator = tqdm(jobs, desc="sweep", unit="replay", delay=1.0)
    records = []
    for policy, budget in iterator:
        result = replay(trace, policy, budget, budget_of=budget_of, config=config)
        record = result.record()
        record["budget_requested"] = float(budget)
        records.append(record)
        if on_result is not None:
            on_result(result)
    return records


def parse_sweep(text: str) -> list[float]:
    """``"start:stop:step"`` (inclusive) or a comma list. Example: "0.1:0.3:0.1" -> [0.1, 0.2, 0.3]."""
    if ":" in text:
        parts = text.split(":")
        if len(parts) != 3:
            raise ValueError(f"--sweep takes start:stop:step, got {text!r}")
        start, stop, step = (float(part) for part in parts)
        if step <= 0 or stop < start:
            raise ValueError(f"--sweep needs step > 0 and stop >= start, got {text!r}")
        count = int(np.floor((stop - start) / step + 1e-9)) + 1
        return [round(start + i * step, 10) for i in range(count)]
    return [float(part) for part in text.split(",") if part.strip()]


# --------------------------------------------------------------------------- CLI
def build_parser() -> argparse.ArgumentParser:
    names = policy_names()
    parser = argparse.ArgumentParser(
        prog="python -m h2osim.replay",
        description="Replay an attention trace through KV-cache eviction policies and compare them.",
        epilog="policies: " + "; ".join(f"{name}{'' if make_policy(name).online else ' [offline]'}"
                                        for name in names)
        + ".  Example: python -m h2osim.replay traces/synthetic-demo.npz --policy all --budget 0.2",
    )  # fmt: skip
    parser.add_argument("trace", help="trace file (.npz, format v1; see docs/trace-format.md)")
    parser.add_argument("--policy", action="append", metavar="NAME",
                        help=f"policy to replay, repeatable, or 'all' (default: h2o). One of: {', '.join(names)}. "
                        "With opt, the table adds the topk bound and each policy's gap to opt")  # fmt: skip
    add_replay_arguments(parser)
    parser.add_argument("--sweep", metavar="A:B:STEP",
                        help="replay each policy at budgets A..B (inclusive) instead of --budget, e.g. 0.05:0.5:0.05")  # fmt: skip
    parser.add_argument(
        "--no-output-error",
        action="store_true",
        help="skip the attention-output error (faster; it needs stored values anyway)",
    )
    parser.add_argument(
        "--json", metavar="PATH", help="write results as JSON to PATH ('-' for stdout)"
    )
    parser.add_argument(
        "--csv", metavar="PATH", help="write results as CSV to PATH ('-' for stdout)"
    )
    parser.add_argument(
        "--plot",
        metavar="PNG",
        help="plot retained mass over steps (or budget curves with --sweep); with opt, the gap to opt is shaded",
    )
    parser.add_argument("--no-progress", action="store_true", help="hide progress bars")
    add_policy_arguments(parser)
    return parser


def format_table(records: list[dict[str, Any]], columns: Sequence[tuple[str, str, str]]) -> str:
    """A plain-text table; ``columns`` are (key, header, format) triples."""
    cells = [[header for _, header, _ in columns]]
    for record in records:
        cells.append(
            [
                "-" if record.get(key) is None else format(record[key], spec)
                for key, _, spec in columns
            ]
        )
    widths = [max(len(row[i]) for row in cells) for i in range(len(columns))]
    lines = ["  ".join(cell.rjust(width) if i else cell.ljust(width)
                       for i, (cell, width) in enumerate(zip(row, widths, strict=True)))
             for row in cells]  # fmt: skip
    lines.insert(1, "  ".join("-" * width for width in widths))
    return "\n".join(lines)


RESULT_COLUMNS = (
    ("rank", "#", "d"), ("policy", "policy", "s"), ("budget", "k", "d"),
    ("retained_mass", "mass", ".4f"), ("retained_mass_decode", "mass(decode)", ".4f"),
    ("worst_unit_mass", "worst unit", ".4f"), ("hit_rate", "hit rate", ".4f"),
    ("output_error", "out err", ".4f"), ("seconds", "sec", ".2f"),
)  # fmt: skip


def _csv_text(records: list[dict[str, Any]]) -> str:
    import csv
    import io

    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=list(records[0]))
    writer.writeheader()
    writer.writerows(records)
    return buffer.getvalue()


def run(args: argparse.Namespace) -> int:
    trace = Trace.load(args.trace)
    config = replay_config_from_args(args, output_error=not args.no_output_error)
    names = requested_policies(args.policy, policy_names())
    policies = [make_policy(name, **policy_parameters(args)) for name in names]
    progress = not args.no_progress
    print(f"trace {args.trace}: {trace.describe()}")
    bound_records: list[dict[str, Any]] = []  # the topk bound (with opt): not a policy
    if args.sweep:
        budgets = parse_sweep(args.sweep)
        for budget in budgets:
            resolve_budget(budget, trace.n, trace.prompt_length, args.budget_of)
        records = sweep(
            trace, policies, budgets, budget_of=args.budget_of, config=config, progress=progress
        )
        if any(record["policy"] == "opt" for record in records):
            from h2osim.policies.topk import topk_bound

            for budget in budgets:
                bound = topk_bound(trace, budget, budget_of=args.budget_of, config=config)
                bound_records.append({**bound.record(), "budget_requested": float(budget)})
        add_gap_to_opt(records + bound_records)
        _print_sweep(records + bound_records, budgets)
        if args.plot:
            from h2osim.plots import plot_budget_curves

            plot_budget_curves(records + bound_records, args.plot, title=Path(args.trace).name)
    else:
        results = []
        for policy in policies:
            results.append(replay(trace, policy, args.budget, budget_of=args.budget_of,
                                  config=config, progress=progress))  # fmt: skip
        bound = None  # with opt: the topk bound, shown unranked (it is not a policy)
        if any(result.policy == "opt" for result in results):
            from h2osim.policies.topk import topk_bound

            bound = topk_bound(trace, args.budget, budget_of=args.budget_of, config=config)
        # Policies that attend the prompt in full score 1 on every prompt row; when modes
        # differ, only the decode rows compare like with like.
        mixed_modes = len({result.config.prompt_mode for result in results}) > 1
        rank_by = "retained_mass_decode" if mixed_modes else "retained_mass"
        results.sort(key=lambda result: -result.summary[rank_by])
        records = [{"rank": i + 1, **result.record()} for i, result in enumerate(results)]
        has_error = records[0]["output_error"] is not None
        columns = [c for c in RESULT_COLUMNS if c[0] != "output_error" or has_error]
        bound_records = [] if bound is None else [{"rank": None, **bound.record()}]
        if add_gap_to_opt(records + bound_records):
            columns.insert(columns.index(("worst_unit_mass", "worst unit", ".4f")),
                           ("gap_to_opt", "gap to opt", ".4f"))  # fmt: skip
        if mixed_modes:
            columns.insert(3, ("prompt_mode", "prompt", "s"))
        print(format_table(bound_records + records, columns))
        if mixed_modes:
            print("ranked by mass(decode): some policies attend the prompt in full (prompt = full)")
        if bound is not None:
            print("topk: per-step upper bound (best tokens of each row, re-admission allowed), "
                  "not a policy; gap to opt = opt's retained mass minus the row's")  # fmt: skip
        if args.plot:
            from h2osim.plots import plot_retained_mass

            shown = results if bound is None else [bound, *results]
            plot_retained_mass(shown, args.plot, title=Path(args.trace).name)
    if args.json:
        payload = {"trace": str(args.trace), "config": vars(config), "results": records}
        if bound_records:
            payload["bound"] = bound_records
        write_json(args.json, payload)
    if args.csv:
        write_output(args.csv, _csv_text(records))
    return 0


def add_gap_to_opt(records: list[dict[str, Any]]) -> bool:
    """Give every record ``gap_to_opt``: opt's retained mass minus its own, when opt was
    replayed at the same budget and prompt mode (else None; negative for the topk bound).
    Without opt, records are left alone and it returns False. Example: opt 0.91, h2o
    0.87 -> gap 0.04."""
    optimum = {(r["budget"], r["prompt_mode"]): r["retained_mass"]
               for r in records if r["policy"] == "opt"}  # fmt: skip
    if not optimum:
        return False
    for record in records:
        best = optimum.get((record["budget"], record["prompt_mode"]))
        record["gap_to_opt"] = None if best is None else best - record["retained_mass"]
    return True


def _print_sweep(records: list[dict[str, Any]], budgets: Sequence[float]) -> None:
    """Policies x budgets matrix of mean retained mass."""
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
    print("mean retained attention mass by budget")
    print(
        format_table(
            rows, [("policy", "policy", "s")] + [(str(b), f"{b:g}", ".4f") for b in budgets]
        )
    )
    if any(record.get("gap_to_opt") is not None for record in records):
        gaps: dict[str, dict[float, Any]] = {}
        for record in records:
            gaps.setdefault(record["policy"], {})[record["budget_requested"]] = record["gap_to_opt"]
        print(
            "gap to opt (opt's retained mass minus the policy's; '-': other budget or prompt mode)"
        )
        print(format_table([{"policy": row["policy"], **{str(b): gaps[row["policy"]].get(b)
                                                          for b in budgets}} for row in rows],
                           [("policy", "policy", "s")] + [(str(b), f"{b:g}", ".4f") for b in budgets]))  # fmt: skip


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point; user errors print one line to stderr and exit 2."""
    from h2osim.cli import run_cli

    return run_cli(build_parser, run, argv)


if __name__ == "__main__":
    sys.exit(main())
