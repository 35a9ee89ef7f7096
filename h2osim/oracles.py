"""Offline optima of the engine's eviction problem: exact solvers, Belady, the per-step bound.

docs/theory.md, "The oracles". The problem, per cache unit, is exactly what
:func:`h2osim.engine.replay` replays: step t admits token t; the engine asks for
``counts[t]`` evictions among the cached tokens older than t (:func:`eviction_counts`:
one per step once the cache is full, or several at once right after a fully attended
prompt); row t is then served over what is kept; evicted tokens never return. The
objective is the total retained mass ``sum_t sum_{j kept at t} W[t, j]`` where ``W`` is
the unit's metric weights (:meth:`h2osim.units.UnitLayout.weights`), so maximising it
maximises the engine's ``retained_mass`` metric for every aggregation.

Evicting token j at step t loses ``F[t, j] = sum_{s >= t} W[s, j]`` (its whole future
mass, row t included: eviction happens before row t is served). Every schedule is an
assignment of eviction slots (step t repeated ``counts[t]`` times) to distinct tokens
j < t, and every such assignment is a schedule the engine accepts, so

    OPT = total mass - min-cost assignment of slots to tokens         (solve_assignment)

Cross-checks: the occupancy LP straight from the engine's rules, sharing none of the
reduction (y[t, j] = 1 when j is cached at row t; HiGHS, integral because the
constraint matrix is a unimodular image of a transportation matrix); brute force over
every schedule on tiny n, also reduction-free; and the same assignment as an LP (HiGHS)
and as a min-cost flow (networkx network simplex on integer-scaled costs).

Simplifications: one unit at a time (units are independent); costs in float64 from the
float32 trace. ``linear_sum_assignment`` is exact on those floats; on float32 attention
with many near-equal tiny costs its search is slow (see bench/bench_opt.py).
"""

from __future__ import annotations

import itertools
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, ClassVar

import numpy as np

from h2osim.metrics import summarize
from h2osim.policies.base import Policy, ReplayContext
from h2osim.schedule import CacheSchedule, cache_sizes, compressed_size, resolve_budget


def eviction_counts(
    n: int, budget: int, prompt_length: int, prompt_mode: str = "stream"
) -> np.ndarray:
    """``(n,)`` int64: how many tokens the engine evicts at each step - the step rule of
    :class:`h2osim.schedule.CacheSchedule`, seen whole.

    Examples: n=5, k=2, stream -> [0, 0, 1, 1, 1]; n=5, k=2, prompt 3, full -> [0, 0, 0, 2, 1]
    (nothing leaves during the prompt, then the cache shrinks from 4 to 2 at once).
    """
    return CacheSchedule(budget, prompt_length, prompt_mode).counts(n)


def future_mass(weights: np.ndarray) -> np.ndarray:
    """``F[t, j] = sum_{s >= t} W[s, j]``: what evicting token j at step t loses. ``(n, n)``.

    Example: W = [[1, 0], [0.25, 0.75]] -> F = [[1.25, 0.75], [0.25, 0.75]].
    """
    weights = np.asarray(weights, dtype=np.float64)
    future = np.empty_like(weights)  # C-contiguous: the numba solver reads it without a copy
    np.cumsum(weights[::-1], axis=0, out=future[::-1])
    return future


def kept_mask(evicted_at: np.ndarray) -> np.ndarray:
    """``(n, n)`` bool: token j is cached when row t is served (j <= t, not yet evicted).

    ``evicted_at[j]`` is the step at which j leaves, -1 for never (ReplayResult's convention).
    Example: evicted_at [2, -1, -1] -> row 2 keeps {1, 2}.
    """
    n = len(evicted_at)
    steps = np.arange(n)[:, None]
    leaves = np.where(evicted_at < 0, n, evicted_at)[None, :]
    return (np.arange(n)[None, :] <= steps) & (steps < leaves)


def retained_per_step(weights: np.ndarray, evicted_at: np.ndarray) -> np.ndarray:
    """``(n,)``: retained mass of each row under a schedule. Example: W rows sum to 1 and
    nothing is evicted -> all ones."""
    return np.where(kept_mask(evicted_at), np.asarray(weights, dtype=np.float64), 0.0).sum(axis=1)


def check_schedule(evicted_at: np.ndarray, counts: np.ndarray) -> None:
    """Raise ValueError unless ``evicted_at`` is a schedule the engine would accept.

    Rules: a token leaves at most once, strictly after its own step (the newest token is
    never evicted at its own step), and step t evicts exactly ``counts[t]`` tokens.
    """
    evicted_at = np.asarray(evicted_at)
    n = len(counts)
    if evicted_at.shape != (n,):
        raise ValueError(f"schedule has shape {evicted_at.shape}, expected ({n},)")
    leaving = evicted_at >= 0
    tokens = np.flatnonzero(leaving)
    if np.any(evicted_at[leaving] <= tokens) or np.any(evicted_at >= n):
        raise ValueError("a token is evicted at or before its own step, or after the last step")
    per_step = np.bincount(evicted_at[leaving], minlength=n)
    if not np.array_equal(per_step, counts):
        bad = int(np.flatnonzero(per_step != counts)[0])
        raise ValueError(
            f"step {bad} evicts {per_step[bad]} tokens, the engine asks for {counts[bad]}"
        )


@dataclass(frozen=True)
class Schedule:
    """One unit's eviction schedule and the total mass it retains."""

    evicted_at: np.ndarray  # (n,) int64: step at which token j leaves, -1 = never
    retained: float  # sum over steps of the kept weights

    def victims(self, counts: np.ndarray) -> np.ndarray:
        """Evicted tokens ordered by step (then position): ``(counts.sum(),)``."""
        leaving = np.flatnonzero(self.evicted_at >= 0)
        order = np.lexsort((leaving, self.evicted_at[leaving]))
        victims = leaving[order]
        if len(victims) != int(counts.sum()):
            raise ValueError("schedule does not match the eviction counts")
        return victims


def _schedule(weights: np.ndarray, evicted_at: np.ndarray, counts: np.ndarray) -> Schedule:
    check_schedule(evicted_at, counts)
    return Schedule(evicted_at, float(retained_per_step(weights, evicted_at).sum()))


def _slots(counts: np.ndarray) -> np.ndarray:
    """One entry per eviction: the step it happens at. Example: [0, 0, 2, 1] -> [2, 2, 3]."""
    return np.repeat(np.arange(len(counts)), counts)


def _check_weights(weights: np.ndarray, counts: np.ndarray) -> np.ndarray:
    weights = np.asarray(weights, dtype=np.float64)
    n = len(counts)
    if weights.shape != (n, n):
        raise ValueError(f"weights must be ({n}, {n}) for {n} steps, got {weights.shape}")
    if not np.all(np.isfinite(weights)) or weights.min(initial=0.0) < 0:
        raise ValueError("weights must be finite and non-negative")
    return np.tril(weights)


# --------------------------------------------------------------------------- exact solvers
def solve_assignment(weights: np.ndarray, counts: np.ndarray) -> Schedule:
    """The optimum by ``scipy.optimize.linear_sum_assignment`` (the fast path).

    Rows are eviction slots, columns tokens; slot at step t may take token j < t at cost
    F[t, j]. Example: W = [[1, 0, 0], [0.5, 0.5, 0], [0.9, 0, 0.1]], k=2 (counts [0, 0, 1]):
    evicting token 1 at step 2 loses 0, token 0 loses 0.9 -> evict 1, retained 2.0.
    """
    from scipy.optimize import linear_sum_assignment

    weights = _check_weights(weights, counts)
    n = len(counts)
    evicted_at = np.full(n, -1, dtype=np.int64)
    slots = _slots(counts)
    if len(slots):
        width = int(slots.max())  # tokens that can ever be evicted: 0 .. last step - 1
        cost = future_mass(weights)[slots, :width]  # (slots, width)
        cost[np.arange(width)[None, :] >= slots[:, None]] = np.inf  # only older tokens
        rows, tokens = linear_sum_assignment(cost)
        evicted_at[tokens] = slots[rows]
    return _schedule(weights, evicted_at, counts)


def solve_fast(
    weights: np.ndarray, counts: np.ndarray, *, duals: dict[str, np.ndarray] | None = None
) -> Schedule:
    """The optimum by :func:`h2osim.fastopt.assign_slots`: the same assignment as
    :func:`solve_assignment`, solved by cost-scaled shortest augmenting paths over ``F``
    read in place (several times faster on continuous attention at n >= 2048; see
    docs/long-context.md). Rows with many tied values (the quantized encoding) go to
    :func:`solve_assignment`, which ties already make fast. Same example: W = [[1, 0, 0], [0.5, 0.5, 0], [0.9, 0, 0.1]],
    counts [0, 0, 1] -> evict token 1 at step 2 (it loses 0), retained 3.0. ``duals``, when
    given, receives the token duals ``"v"`` that :func:`h2osim.fastopt.certificate` checks
    the plan with (not for tie-rich rows, which linear_sum_assignment solves).
    """
    from h2osim.fastopt import assign_slots, tie_rich

    weights = _check_weights(weights, counts)
    if tie_rich(weights):  # quantized rows: ties end scipy's searches early, it is faster
        return solve_assignment(weights, counts)
    n = len(counts)
    evicted_at = np.full(n, -1, dtype=np.int64)
    slots = _slots(counts)
    if len(slots):
        evicted_at[assign_slots(future_mass(weights), slots, duals=duals)] = slots
    return _schedule(weights, evicted_at, counts)


def solve_lp(weights: np.ndarray, counts: np.ndarray) -> Schedule:
    """The optimum of the occupancy LP, solved by HiGHS (scipy ``linprog``).

    Variables y[t, j] (j <= t): token j cached when row t is served. Constraints, straight
    from the engine's rules: y[j, j] = 1 (the newest is admitted and kept), y[t, j] <=
    y[t-1, j] (evicted tokens never return), sum_j y[t, j] = cache size at t. Maximise
    sum W[t, j] y[t, j]. The vertex HiGHS returns is integral (checked).
    """
    from scipy.optimize import linprog
    from scipy.sparse import coo_matrix

    weights = _check_weights(weights, counts)
    n = len(counts)
    rows, cols = np.tril_indices(n)  # variable v <-> (t=rows[v], j=cols[v]), t-major
    index = np.full((n, n), -1, dtype=np.int64)
    index[rows, cols] = np.arange(len(rows))
    # Monotone: y[t, j] - y[t-1, j] <= 0 for t > j.
    later = rows > cols
    current, previous = index[rows[later], cols[later]], index[rows[later] - 1, cols[later]]
    constraint = np.arange(len(current))
    monotone = coo_matrix(
        (np.r_[np.ones(len(current)), -np.ones(len(current))],
         (np.r_[constraint, constraint], np.r_[current, previous])),
        shape=(len(current), len(rows)),
    )  # fmt: skip
    sizes = coo_matrix((np.ones(len(rows)), (rows, np.arange(len(rows)))), shape=(n, len(rows)))
    bounds = np.column_stack([np.where(rows == cols, 1.0, 0.0), np.ones(len(rows))])
    result = linprog(
        -weights[rows, cols],
        A_ub=monotone.tocsr() if len(current) else None,
        b_ub=np.zeros(len(current)) if len(current) else None,
        A_eq=sizes.tocsr(),
        b_eq=cache_sizes(counts).astype(np.float64),
        bounds=bounds,
        method="highs",
    )
    if result.status != 0:
        raise RuntimeError(f"HiGHS did not solve the occupancy LP: {result.message}")
    occupancy = result.x
    if np.max(np.abs(occupancy - np.round(occupancy)), initial=0.0) > 1e-6:
        raise RuntimeError("HiGHS returned a fractional vertex; the LP should be integral")
    cached = np.zeros((n, n), dtype=bool)
    cached[rows, cols] = np.round(occupancy) > 0.5
    return _schedule(weights, _evicted_from_occupancy(cached), counts)


def solve_transport_lp(weights: np.ndarray, counts: np.ndarray) -> Schedule:
    """The assignment formulation as an LP, solved by HiGHS: x[t, j] in [0, 1] for each
    eviction step t and older token j, sum_j x[t, j] = counts[t], sum_t x[t, j] <= 1,
    minimise sum F[t, j] x[t, j]. A transportation polytope: HiGHS's vertex is integral."""
    from scipy.optimize import linprog
    from scipy.sparse import coo_matrix

    weights = _check_weights(weights, counts)
    n = len(counts)
    evicted_at = np.full(n, -1, dtype=np.int64)
    steps = np.flatnonzero(counts)
    if len(steps):
        step_index, tokens = np.nonzero(np.arange(n)[None, :] < steps[:, None])  # x variables
        variables = np.arange(len(tokens))
        per_step = coo_matrix((np.ones(len(tokens)), (step_index, variables)),
                              shape=(len(steps), len(tokens)))  # fmt: skip
        per_token = coo_matrix((np.ones(len(tokens)), (tokens, variables)), shape=(n, len(tokens)))
        result = linprog(future_mass(weights)[steps[step_index], tokens],
                         A_ub=per_token.tocsr(), b_ub=np.ones(n), A_eq=per_step.tocsr(),
                         b_eq=counts[steps].astype(np.float64), bounds=(0, 1), method="highs")  # fmt: skip
        if result.status != 0:
            raise RuntimeError(f"HiGHS did not solve the assignment LP: {result.message}")
        if np.max(np.abs(result.x - np.round(result.x))) > 1e-6:
            raise RuntimeError("HiGHS returned a fractional vertex; the LP should be integral")
        chosen = np.round(result.x) > 0.5
        evicted_at[tokens[chosen]] = steps[step_index[chosen]]
    return _schedule(weights, evicted_at, counts)


def _evicted_from_occupancy(cached: np.ndarray) -> np.ndarray:
    """First step t > j at which token j is no longer cached, -1 if it stays."""
    n = cached.shape[0]
    evicted_at = np.full(n, -1, dtype=np.int64)
    for j in range(n):
        gone = np.flatnonzero(~cached[j + 1 :, j])
        if gone.size:
            evicted_at[j] = j + 1 + int(gone[0])
    return evicted_at


def solve_min_cost_flow(weights: np.ndarray, counts: np.ndarray, scale: float = 1e9) -> Schedule:
    """The optimum as a min-cost flow (networkx network simplex).

    Network: source -> step t (capacity counts[t]) -> token j < t (capacity 1, cost F[t, j])
    -> sink (capacity 1). Costs are scaled by ``scale`` and rounded to integers (network
    simplex wants integers), so the schedule is optimal to within n / scale in mass.
    """
    import networkx as nx

    weights = _check_weights(weights, counts)
    n = len(counts)
    future = future_mass(weights)
    graph = nx.DiGraph()
    total = int(counts.sum())
    graph.add_node("source", demand=-total)
    graph.add_node("sink", demand=total)
    for t in np.flatnonzero(counts):
        graph.add_edge("source", ("step", int(t)), capacity=int(counts[t]), weight=0)
        for j in range(t):
            graph.add_edge(("step", int(t)), ("token", j), capacity=1,
                           weight=int(round(future[t, j] * scale)))  # fmt: skip
    for j in range(n):
        graph.add_edge(("token", j), "sink", capacity=1, weight=0)
    evicted_at = np.full(n, -1, dtype=np.int64)
    if total:
        _, flow = nx.network_simplex(graph)
        for node, out in flow.items():
            if isinstance(node, tuple) and node[0] == "step":
                for target, amount in out.items():
                    if amount:
                        evicted_at[target[1]] = node[1]
    return _schedule(weights, evicted_at, counts)


def solve_brute_force(weights: np.ndarray, counts: np.ndarray, limit: int = 200_000) -> Schedule:
    """The optimum by trying every schedule the engine allows (tiny n only).

    Simulates the cache directly - admit, choose ``counts[t]`` victims among the older
    cached tokens, serve row t - and keeps the best total. Ties: the first found.
    Raises ValueError when there are more than ``limit`` schedules.
    """
    weights = _check_weights(weights, counts)
    n = len(counts)
    sizes_before = cache_sizes(counts) + counts - 1  # older cached tokens at each step
    schedules = 1
    for t in np.flatnonzero(counts):
        schedules *= len(list(itertools.combinations(range(int(sizes_before[t])), int(counts[t]))))
        if schedules > limit:
            raise ValueError(f"more than {limit} schedules; brute force is for tiny traces")
    best = (-1.0, np.full(n, -1, dtype=np.int64))

    def explore(t: int, cache: tuple[int, ...], evicted_at: np.ndarray, retained: float) -> None:
        nonlocal best
        if t == n:
            if retained > best[0]:
                best = (retained, evicted_at.copy())
            return
        for victims in itertools.combinations(cache, int(counts[t])):
            kept = tuple(j for j in cache if j not in victims) + (t,)
            evicted_at[list(victims)] = t
            explore(t + 1, kept, evicted_at, retained + float(weights[t, list(kept)].sum()))
            evicted_at[list(victims)] = -1

    explore(0, (), np.full(n, -1, dtype=np.int64), 0.0)
    return _schedule(weights, best[1], counts)


# --------------------------------------------------------------------------- baselines
def belady_schedule(weights: np.ndarray, counts: np.ndarray) -> Schedule:
    """Evict the cached token with the least future mass F[t, j] (ties: oldest first).

    Clairvoyant but NOT optimal for retained mass: a token whose mass comes late can be
    worth keeping now only if nothing better needs the slot in between. Example: see
    tests/test_oracles.py, where opt retains more on a 5-token trace.
    """
    weights = _check_weights(weights, counts)
    n = len(counts)
    future = future_mass(weights)
    cached = np.zeros(n, dtype=bool)
    evicted_at = np.full(n, -1, dtype=np.int64)
    for t in range(n):
        if counts[t]:
            older = np.flatnonzero(cached[:t])
            order = np.lexsort((older, future[t, older]))  # least future mass, then oldest
            victims = older[order[: counts[t]]]
            cached[victims] = False
            evicted_at[victims] = t
        cached[t] = True
    return _schedule(weights, evicted_at, counts)


def topk_per_step(weights: np.ndarray, sizes: np.ndarray) -> np.ndarray:
    """``(n,)``: the most mass any cache of the engine's size could hold at each step.

    The best set of ``sizes[t]`` tokens that contains the newest (the engine always keeps
    it): W[t, t] + the top sizes[t] - 1 of W[t, :t]. Re-admission is allowed, so this
    bounds every realisable schedule step by step. Example: row [0.5, 0.1, 0.3, 0.1],
    size 2 -> 0.1 + 0.5 = 0.6.
    """
    weights = np.asarray(weights, dtype=np.float64)
    n = weights.shape[0]
    older = np.tril(weights, k=-1)  # (n, n), row t holds W[t, :t]
    best_first = -np.sort(-older, axis=1)
    running = np.cumsum(best_first, axis=1)
    take = np.asarray(sizes) - 1  # older tokens kept at each step
    older_part = np.where(take > 0, running[np.arange(n), np.maximum(take - 1, 0)], 0.0)
    return np.diagonal(weights) + older_part


def row_topk(weights: np.ndarray, sizes: np.ndarray) -> np.ndarray:
    """``(n,)``: the most mass any set of ``sizes[t]`` keys of row t could hold - the
    bound for mask policies, whose rows need not contain the newest key. Example: row
    [0.5, 0.1, 0.3, 0.1], size 2 -> 0.8."""
    weights = np.tril(np.asarray(weights, dtype=np.float64))
    running = np.cumsum(-np.sort(-weights, axis=1), axis=1)  # (n, n)
    take = np.asarray(sizes)
    return np.where(take > 0, running[np.arange(len(take)), np.maximum(take - 1, 0)], 0.0)


def topk_at_sizes(trace, result) -> np.ndarray:
    """``(n, units)``: the per-row ``topk`` bound at the row sizes ``result`` (a
    ReplayResult, cache or mask) was really served with - the bound that holds for every
    kind. opt bounds only permanent eviction (``kind == "cache"``)."""
    layout = result.config.layout(trace)
    sizes = result.row_sizes()  # (units, n)
    return np.stack([row_topk(layout.weights(u), sizes[u]) for u in range(layout.units)], 1)


# --------------------------------------------------------------------------- the topk bound
# At each step, the most retained mass any cache of the engine's size could hold is the top
# of the current row (the newest token included, since the engine always keeps it; during a
# fully attended prompt, everything). Summed over steps this bounds ``opt`` and so every
# policy. A cache that may re-admit evicted tokens is not a cache the engine can replay, so
# ``topk`` is NOT a registered policy: :func:`topk_bound` computes it from the same metric
# weights and cache sizes the engine uses and returns a :class:`BoundResult` that the replay
# table and plots show as one more row (``python -m h2osim.replay ... --policy opt`` adds
# it). It has no hit rate, no output error and no schedule.
NAME = "topk"


@dataclass
class BoundResult:
    """The per-step bound, shaped like the parts of a ReplayResult that tables and plots read."""

    budget: int
    n: int
    prompt_length: int
    config: Any  # the ReplayConfig it was computed for
    unit_labels: tuple[tuple[int, int], ...]
    retained_mass: np.ndarray  # (n, units) float64: the bound per step and unit
    seconds: float = 0.0
    summary: dict[str, float | None] = field(default_factory=dict)
    policy: str = NAME
    description: str = "topk (bound: per-step best, re-admission allowed)"
    online: bool = False

    def record(self) -> dict[str, Any]:
        return {"policy": self.policy, "description": self.description, "online": self.online,
                "bound": True, "budget": self.budget, "budget_fraction": self.budget / self.n,
                "prompt_mode": self.config.prompt_mode, **self.summary,
                "seconds": round(self.seconds, 4)}  # fmt: skip


def topk_bound(trace, budget: float | int | str = 0.2, *, budget_of: str = "sequence",
               config=None) -> BoundResult:  # fmt: skip
    """The ``topk`` bound of ``trace`` at ``budget`` under ``config`` (a ReplayConfig).

    Example: one unit, rows [[1], [0.5, 0.5], [0.9, 0.05, 0.05]], k=2 -> per step
    [1, 1, 0.95] (row 2 keeps token 0 and the newest).
    """
    from h2osim.engine import ReplayConfig

    config = config or ReplayConfig()
    started = time.perf_counter()
    layout = config.layout(trace)
    n, prompt = trace.n, trace.prompt_length
    budget_tokens = resolve_budget(budget, n, prompt, budget_of)
    if getattr(config, "compression_ratio", None) is not None:
        budget_tokens = compressed_size(prompt, config.compression_ratio)
    sizes = cache_sizes(eviction_counts(n, budget_tokens, prompt, config.prompt_mode))
    bound = np.stack([topk_per_step(layout.weights(u), sizes) for u in range(layout.units)], 1)
    summary = summarize(bound, np.zeros_like(bound), None, prompt)
    summary["hit_rate"] = None  # a bound has no cache, so no hit rate
    return BoundResult(budget=budget_tokens, n=n, prompt_length=prompt, config=config,
                       unit_labels=layout.labels, retained_mass=bound,
                       seconds=time.perf_counter() - started, summary=summary)  # fmt: skip


# --------------------------------------------------------------------------- policies
def unit_weights(context: ReplayContext, unit: int) -> np.ndarray:
    """The unit's metric weights from the engine, or (for hand-built contexts that carry
    only ``unit_matrix``) that matrix with each row rescaled to sum to 1 - the same
    weights for per-head units, and for sum/mean units whose rows sum exactly to 1."""
    if context.unit_weights is not None:
        return np.asarray(context.unit_weights(unit), dtype=np.float64)
    if context.unit_matrix is None:
        raise RuntimeError("an offline policy needs the replay to provide the unit matrices")
    matrix = np.asarray(context.unit_matrix(unit), dtype=np.float64)
    total = matrix.sum(axis=1, keepdims=True)
    return matrix / np.where(total > 0, total, 1.0)


class ScheduledPolicy(Policy):
    """An offline policy that plans every unit's whole schedule in :meth:`reset` and then
    answers the engine's per-step ``evict`` calls from the plan."""

    online: ClassVar[bool] = False

    def plan(self, weights: np.ndarray, counts: np.ndarray) -> Schedule:
        raise NotImplementedError

    def reset(self, context: ReplayContext) -> None:
        super().reset(context)
        self.counts = CacheSchedule(context.budget, context.prompt_length,
                                    context.prompt_mode).counts(context.n)  # fmt: skip
        self.offsets = np.concatenate([[0], np.cumsum(self.counts)])  # (n+1,)
        self.victims = np.zeros((context.units, int(self.counts.sum())), dtype=np.int64)
        self.planned_retained = np.zeros(context.units)  # (units,) total retained per unit
        units: Sequence[int] = range(context.units)
        if context.units > 1 and context.n >= 1024:
            from tqdm import tqdm

            units = tqdm(units, desc=f"{self.name}: planning", unit="unit", leave=False,
                         disable=None)  # fmt: skip
        for unit in units:
            schedule = self.plan(unit_weights(context, unit), self.counts)
            self.victims[unit] = schedule.victims(self.counts)
            self.planned_retained[unit] = schedule.retained

    def evict(self, t: int, kept: np.ndarray, count: int) -> np.ndarray:
        if count != self.counts[t]:
            raise RuntimeError(
                f"{self.name} planned {self.counts[t]} evictions at step {t}, the engine asks for {count}"
            )
        return self.victims[:, self.offsets[t] : self.offsets[t + 1]]


Solver = Callable[[np.ndarray, np.ndarray], Schedule]
SOLVERS: dict[str, Solver] = {
    "assignment": solve_assignment,
    "fast": solve_fast,
    "lp": solve_lp,
    "transport-lp": solve_transport_lp,
    "flow": solve_min_cost_flow,
    "brute": solve_brute_force,
}
