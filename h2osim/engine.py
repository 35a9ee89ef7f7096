"""The replay engine: one trace, one policy, one budget -> a :class:`ReplayResult`.

Open-loop replay (docs/architecture.md, "The engine loop"): for t = 0..n-1, every cache
unit admits token t; when :class:`h2osim.schedule.CacheSchedule` says tokens must leave,
the policy chooses which (deciding from rows < t only); then row t of the full-cache
model is served over what is kept, measured, and shown to the policy. Evicted tokens
never return - except under a mask policy (``kind = "mask"``: the official H2O masking
simulations), which names each row's attended set itself and is served and measured the
same way (docs/fidelity.md). :func:`replay` below is that loop; :func:`sweep` runs it over policies x
budgets; :func:`add_gap_to_opt` compares records with the exact optimum. No argparse and
no printing here: the command line is :mod:`h2osim.replay`.

Caveat to teach: later rows come from the full-cache model, so evictions never change
them. What eviction really does to a model is measured by live eviction (closed loop,
:mod:`h2osim.model.live`).

Options: the budget as a count or a fraction (of the sequence or of the prompt); GQA
aggregation of a unit's query heads (sum, mean, max) or per-query-head units; the prompt
streamed row by row, attended in full (eviction starts after prefill, as in the H2O
masking simulation) or compressed once after prefill (kvpress; ``compression_ratio``);
units per KV head, per query head or per layer; observation renormalised over the kept
tokens or the full row.
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from h2osim.metrics import row_statistics_of, step_metrics, summarize
from h2osim.policies import Policy, ReplayContext, make_policy
from h2osim.schedule import (
    BUDGET_BASES,
    PROMPT_MODES,
    CacheSchedule,
    ask_mask,
    ask_policy,
    check_compression,
    departures,
    kept_at,
    read_only,
    resolve_budget,
)
from h2osim.trace import Trace, aggregate_heads
from h2osim.units import GQA_MODES, UnitLayout, observed_aggregation

OBSERVATIONS = ("renormalized", "full")  # what a policy observes of a served row

__all__ = [
    "BUDGET_BASES", "GQA_MODES", "OBSERVATIONS", "PROMPT_MODES", "ReplayConfig", "ReplayResult",
    "UnitLayout", "add_gap_to_opt", "replay", "resolve_budget", "sweep",
]  # fmt: skip


@dataclass(frozen=True)
class ReplayConfig:
    """How a replay is run (everything except the policy and its budget)."""

    aggregation: str = "sum"  # how query heads combine: sum | mean | max | per-head | layer
    prompt_mode: str = "stream"  # stream | full: evict after prefill | prefill: compress once
    observation: str = "renormalized"  # what policies see: renormalized over kept | full row
    layers: tuple[int, ...] | None = None  # model layers to replay (None = all stored)
    output_error: bool = True  # compute the attention-output error when values are stored
    # prompt mode "prefill" only: keep int(P (1 - ratio)) prompt tokens (kvpress), not --budget
    compression_ratio: float | None = None

    def __post_init__(self) -> None:
        for value, choices, what in ((self.aggregation, GQA_MODES, "aggregation"),
                                     (self.prompt_mode, PROMPT_MODES, "prompt mode"),
                                     (self.observation, OBSERVATIONS, "observation")):  # fmt: skip
            if value not in choices:
                raise ValueError(f"{what} must be one of {choices}, got {value!r}")
        check_compression(self.prompt_mode, self.compression_ratio)

    def layout(self, trace: Trace) -> UnitLayout:
        """The trace's cache units under this configuration."""
        return UnitLayout(trace, self.aggregation, self.layers)


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
    # (units, n) int32: step at which each token left, -1 = never. For a mask policy: the
    # step after which the key is never attended again (schedule.departures).
    evicted_at: np.ndarray
    retained_mass: np.ndarray  # (n, units) float32
    hit_rate: np.ndarray  # (n, units) float32
    output_error: np.ndarray | None  # (n, units) float32, None without values
    seconds: float = 0.0
    summary: dict[str, float | None] = field(default_factory=dict)
    kind: str = "cache"  # "cache" (permanent eviction) | "mask" (a chosen set per row)
    # mask policies: (units, n, ceil(n/8)) uint8, row t's attended keys as packed bits
    attended: np.ndarray | None = field(default=None, repr=False)

    def kept_at(self, t: int) -> np.ndarray:
        """``(units, t+1)`` bool: what each unit held (mask policies: attended) at row t."""
        return kept_at(self.evicted_at, t, self.attended)

    def served(self, unit: int) -> np.ndarray:
        """``(n, n)`` bool: entry [t, j] says row t of ``unit`` was served over key j."""
        if self.attended is not None:
            return np.unpackbits(self.attended[unit], axis=-1, count=self.n).astype(bool)
        from h2osim.metrics import kept_matrix

        return kept_matrix(self.evicted_at[unit])

    def row_sizes(self) -> np.ndarray:
        """``(units, n)`` int: keys each row was served over."""
        if self.attended is not None:
            return np.unpackbits(self.attended, axis=-1, count=self.n).sum(axis=-1)
        return np.stack([self.served(unit).sum(axis=1) for unit in range(len(self.unit_labels))])

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

    ``policy`` is a :class:`Policy` or a registered name (default parameters). The loop,
    step by step (the rule itself is :class:`h2osim.schedule.CacheSchedule`):

    1. token t enters every unit's cache;
    2. if the schedule says tokens must leave, the policy is asked which (it sees the
       cache contents read-only and has seen rows 0..t-1 only), and the answer is checked;
    3. row t of the full-cache model is served over what is kept: the retained mass
       (kept share of the row) and the hit rate of significant keys are measured;
    4. the policy observes row t - renormalised over the kept tokens by default, as
       the model's softmax over the cache would be - with the unit's heads aggregated.

    After the loop, the attention-output error is computed from the eviction schedule.
    """
    config = config or ReplayConfig()
    policy = make_policy(policy) if isinstance(policy, str) else policy
    layout = config.layout(trace)
    n, prompt = trace.n, trace.prompt_length
    schedule = CacheSchedule.for_policy(policy, budget, n, prompt, budget_of=budget_of,
                                        prompt_mode=config.prompt_mode,
                                        compression_ratio=config.compression_ratio)  # fmt: skip
    config = dataclasses.replace(config, prompt_mode=schedule.prompt_mode)
    context = ReplayContext(
        units=layout.units, n=n, budget=schedule.budget, prompt_length=prompt,
        unit_labels=layout.labels, unit_matrix=None if policy.online else layout.matrix,
        unit_weights=None if policy.online else layout.weights, prompt_mode=config.prompt_mode,
        key_norms=layout.key_norms if policy.needs_key_norms else None,
    )  # fmt: skip
    started = time.perf_counter()
    policy.reset(context)
    mask = policy.kind == "mask"
    units = np.arange(layout.units)[:, None]
    kept = np.zeros((layout.units, n), dtype=bool)  # (units, n) cache contents / row mask
    kept_weight = np.zeros((layout.units, n))  # the same as 0/1 floats, for matmuls
    evicted_at = np.full((layout.units, n), -1, dtype=np.int32)
    attended = np.zeros((layout.units, n, (n + 7) // 8), dtype=np.uint8) if mask else None
    retained_mass = np.empty((n, layout.units), dtype=np.float32)
    hit_rate = np.empty((n, layout.units), dtype=np.float32)
    stats = RowStatistics(layout)
    held = 0
    for t in _steps(n, progress, f"{policy.name} k={schedule.budget}"):
        if mask:
            # 1-2. a mask policy names the whole set row t attends (re-admission allowed)
            kept[:, : t + 1] = ask_mask(policy, t, layout.units)
            kept_weight[:, : t + 1] = kept[:, : t + 1]
            attended[:, t] = np.packbits(kept, axis=-1)
        else:
            # 1. admit token t
            kept[:, t] = True
            kept_weight[:, t] = 1.0
            held += 1
            # 2. evict what the schedule asks for, chosen by the policy
            count = schedule.evictions(t, held)
            if count:
                victims = ask_policy(policy, t, kept, count)  # (units, count)
                kept[units, victims] = False
                kept_weight[units, victims] = 0.0
                evicted_at[units, victims] = t
                held -= count
        # 3. serve row t over the cache and measure it
        rows = layout.rows(t)  # (units, G, t+1) float64
        kept_mass = np.matmul(rows, kept_weight[:, : t + 1, None])[:, :, 0]  # (units, G), exact
        row_total, row_max, significant = stats.at(t, rows)
        retained_mass[t], hit_rate[t] = step_metrics(
            rows, kept[:, : t + 1], kept_mass, row_total, row_max, significant
        )
        # 4. show the policy what it served
        observed = _observe(rows, kept_mass, kept_weight[:, : t + 1], config)
        policy.observe(t, observed, read_only(kept[:, : t + 1]))
    stats.finish()
    if mask:
        evicted_at = departures(attended, n)
    result = ReplayResult(
        policy=policy.name, description=policy.describe(), online=policy.online,
        budget=schedule.budget, n=n, prompt_length=prompt, config=config,
        unit_labels=layout.labels, evicted_at=evicted_at, retained_mass=retained_mass,
        hit_rate=hit_rate, output_error=None, kind=policy.kind, attended=attended,
    )  # fmt: skip
    if config.output_error and trace.has_values:
        result.output_error = layout.output_errors(result.served if mask else evicted_at)
    result.seconds = time.perf_counter() - started
    result.summary = summarize(retained_mass, hit_rate, result.output_error, prompt)
    return result


class RowStatistics:
    """Sum, maximum and significant-key count of every served row, per unit and head.

    Every replay of a trace needs the same statistics; the first replay measures them on
    the rows it reads anyway and leaves them on the trace, later replays read them back.
    """

    def __init__(self, layout: UnitLayout) -> None:
        self.layout = layout
        self.cached = layout.row_stats()  # each (n, units, G), or None on a first replay
        if self.cached is None:
            shape = (layout.trace.n, layout.units, layout.heads_per_unit)
            self.measured = (np.empty(shape), np.empty(shape), np.empty(shape, dtype=np.int64))

    def at(self, t: int, rows: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """The statistics of row t, ``(units, G)`` each; ``rows`` is that row."""
        if self.cached is not None:
            return tuple(column[t] for column in self.cached)
        for column, value in zip(self.measured, row_statistics_of(rows), strict=True):
            column[t] = value
        return tuple(column[t] for column in self.measured)

    def finish(self) -> None:
        """Leave freshly measured statistics on the trace for the next replay."""
        if self.cached is None:
            self.layout.store_row_stats(self.measured)


def _steps(n: int, progress: bool, label: str) -> Iterable[int]:
    """Steps 0..n-1, with a progress bar when asked (shown only past a second)."""
    if not progress:
        return range(n)
    from tqdm import tqdm

    return tqdm(range(n), desc=label, unit="step", leave=False, delay=1.0)


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
    combined = aggregate_heads(per_head, observed_aggregation(config.aggregation), axis=1)
    if config.observation != "full":
        combined *= kept  # evicted tokens observe 0 (after combining: one pass, not G)
    return combined


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
    jobs = [
        (policy, budget)
        for policy in policies
        for budget in budgets
        if budget == budgets[0] or policy.fixed_budget(trace.n, trace.prompt_length) is None
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


def add_gap_to_opt(records: list[dict[str, Any]]) -> bool:
    """Give every record ``gap_to_opt``: opt's retained mass minus its own, when opt was
    replayed at the same budget and prompt mode (else None; negative for the topk bound,
    and possibly for mask policies, which opt does not bound). Without opt, records are
    left alone and it returns False. Example: opt 0.91, h2o 0.87 -> gap 0.04."""
    optimum = {(r["budget"], r["prompt_mode"]): r["retained_mass"]
               for r in records if r["policy"] == "opt"}  # fmt: skip
    if not optimum:
        return False
    for record in records:
        best = optimum.get((record["budget"], record["prompt_mode"]))
        record["gap_to_opt"] = None if best is None else best - record["retained_mass"]
    return True
