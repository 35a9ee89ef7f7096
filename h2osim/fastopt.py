"""A faster exact solver for ``opt``: shortest augmenting paths with cost scaling.

docs/long-context.md, "The exact optimum at long context". The problem is the one of
:mod:`h2osim.oracles`: eviction slots (step t repeated ``counts[t]`` times) are assigned
to distinct older tokens j < t at cost ``F[t, j] = sum_{s >= t} W[s, j]``, and
``OPT = total mass - min cost``. ``scipy.optimize.linear_sum_assignment`` (Crouse's
shortest-augmenting-path method, rows in order, duals from zero) solves it exactly but,
on continuous attention, each augmentation explores a large part of the matrix: many
tokens have almost the same tiny future mass, so many alternating paths are almost
equally short. Given the optimal duals the same search finds every row's path at once
(measured: 0.06 s instead of 8.5 s at n = 2048), so this module buys good duals cheaply:

1. **Cost scaling.** Solve the problem with costs rounded to a coarse grid ``delta``
   (many exact ties, so augmenting paths are short), keep the column duals and every
   slot whose token is still (one of) its cheapest under the finer costs, shrink the grid
   by ``factor`` and augment the other slots, down to the exact float64 costs. Each level
   ends in an optimal assignment of its own costs, so the last level is an exact solve of
   the true costs: warm starts change how long it takes, never what it returns.
2. **The structure.** ``F`` is read in place (no ``(slots, tokens)`` copy): slot i's row
   is ``F[slots[i]]`` and its admissible tokens are the prefix ``j < slots[i]`` (token j
   is available to every step after j), so each row scan stops at ``slots[i]``.
3. **Square form.** Tokens that are never evicted are matched to ``tokens - slots``
   dummy slots of cost 0, so every token is matched and column duals may start
   anywhere (warm starts are sound); dummy rows are never stored.
4. **Dual repair** between levels (:func:`_repair`): a row whose old token is no longer
   its cheapest is kept anyway when no other row prices that token below the row's slack
   (raising the token's dual by the slack keeps every reduced cost >= 0). Measured: 10-25%
   fewer augmentations on the fine levels; the time is within the machine's noise.
5. **Certificate** (:func:`certificate`): the plan's cost minus the LP dual bound of the
   search's own token duals - O(n^2), no second solver - bounds its distance from the
   optimum, so exactness can be checked at any n (bench/bench_opt.py prints it).

On quantized rows (few distinct values: :func:`tie_rich`) scipy's search is already fast
and :func:`h2osim.oracles.solve_fast` calls it instead. Simplifications: one unit at a time; exact to float64 rounding of ``F`` (the result is
checked against :func:`h2osim.oracles.solve_assignment`, the LPs and brute force in
tests/test_fastopt.py). Compiled with numba (``cache=True``: the first call in a fresh
environment compiles for a few seconds).
"""

from __future__ import annotations

import time

import numpy as np

try:  # numba is a dependency; the guard only keeps `import h2osim.oracles` cheap to fail
    import numba
except ImportError:  # pragma: no cover - installed by make setup
    numba = None

DEFAULT_LEVELS = 4  # grids delta, delta/factor, ... before the exact solve
DEFAULT_FACTOR = 32.0


def _jit(function):
    if numba is None:  # pragma: no cover
        raise ImportError("h2osim.fastopt needs numba: pip install numba (make setup does)")
    return numba.njit(cache=True, nogil=True)(function)


def _repair(future, slots, grid, v, u, col4row, row4col, repair):  # pragma: no cover - compiled
    """Warm start: ``u`` = each row's least reduced cost under ``v`` (feasible). A row whose
    old token j is still (one of) its cheapest is tight and kept. With ``repair``, a row
    whose token costs ``slack`` more is kept too when every OTHER row (dummies included)
    prices j at >= slack: then v[j] += slack makes the row tight and keeps every reduced
    cost >= 0 (only column j's change, each by slack). The rest are unmatched."""
    m = slots.shape[0]
    size = v.shape[0]
    inf = np.inf
    inverse = 1.0 / grid if grid > 0.0 else 0.0
    slack = np.zeros(size)
    top = -inf
    for c in range(size):
        if v[c] > top:
            top = v[c]
    for i in range(size):
        j = col4row[i]
        if j < 0:
            slack[i] = inf
            continue
        if i >= m:  # dummy: cost 0 to every token, least reduced cost -max(v)
            u[i] = -top
            slack[i] = top - v[j]
            continue
        row = future[slots[i]]
        lowest = inf
        for c in range(slots[i]):
            cost = row[c]
            if grid > 0.0:
                cost = np.floor(cost * inverse + 0.5) * grid
            if cost - v[c] < lowest:
                lowest = cost - v[c]
        cost = row[j]
        if grid > 0.0:
            cost = np.floor(cost * inverse + 0.5) * grid
        u[i] = lowest
        slack[i] = (cost - v[j]) - lowest
    first = np.full(size, inf)  # per column: least reduced cost over slot rows, its row, the next
    second = np.full(size, inf)
    owner = np.full(size, -1, np.int64)
    if repair:
        for k in range(m):
            row = future[slots[k]]
            base = u[k]
            for c in range(slots[k]):
                cost = row[c]
                if grid > 0.0:
                    cost = np.floor(cost * inverse + 0.5) * grid
                reduced = cost - base - v[c]
                if reduced < second[c]:
                    if reduced < first[c]:
                        second[c] = first[c]
                        first[c] = reduced
                        owner[c] = k
                    else:
                        second[c] = reduced
    dummies = size - m
    for i in range(size):
        j = col4row[i]
        if slack[i] <= 0.0:
            continue
        if j < 0:
            continue
        if repair:
            margin = second[j] if owner[j] == i else first[j]  # other slot rows
            if dummies > 1 or (dummies == 1 and i < m):  # another dummy prices j at top - v[j]
                margin = min(margin, top - v[j])
            if margin >= slack[i]:
                v[j] += slack[i]
                u[i] = -v[j] if i >= m else u[i]
                slack[i] = 0.0
                continue
        row4col[j] = -1
        col4row[i] = -1


if numba is not None:  # called from the compiled search (numba compiles it lazily, on first use)
    _repair = numba.njit(cache=True, nogil=True)(_repair)


def _augment_all(
    future, slots, grid, v, col4row, row4col, warm, repair
):  # pragma: no cover - compiled
    """Shortest augmenting paths (Crouse 2016, scipy's algorithm), square form, costs on a
    grid (``grid`` 0: exact). Rows 0..m-1 are slots (row i reads ``future[slots[i]]``,
    tokens ``< slots[i]``), rows m..N-1 dummies of cost 0. ``v`` (N,) column duals, warm
    (``repair``: see :func:`_repair`)."""
    m = slots.shape[0]
    size = v.shape[0]
    u = np.zeros(size)
    shortest = np.empty(size)
    path = np.full(size, -1, np.int64)
    inverse = 1.0 / grid if grid > 0.0 else 0.0
    inf = np.inf
    if warm:
        _repair(future, slots, grid, v, u, col4row, row4col, repair)
    else:
        col4row[:] = -1
        row4col[:] = -1
    done = np.zeros(size, np.bool_)
    scanned_rows = np.empty(size, np.int64)
    scanned_cols = np.empty(size, np.int64)
    augmented = 0
    for current in range(size):
        if col4row[current] != -1:
            continue
        augmented += 1
        for j in range(size):
            shortest[j] = inf
            done[j] = False
        n_rows = 0
        n_cols = 0
        minimum = 0.0
        i = current
        sink = -1
        while sink == -1:
            scanned_rows[n_rows] = i
            n_rows += 1
            if i >= m:  # dummy row: cost 0 to every token
                base = minimum - u[i]
                for j in range(size):
                    if not done[j]:
                        reduced = base - v[j]
                        if reduced < shortest[j]:
                            path[j] = i
                            shortest[j] = reduced
            else:
                base = minimum - u[i]
                row = future[slots[i]]
                for j in range(slots[i]):  # admissible tokens: a prefix, read in order
                    if not done[j]:
                        cost = row[j]
                        if grid > 0.0:
                            cost = np.floor(cost * inverse + 0.5) * grid
                        reduced = base + cost - v[j]
                        if reduced < shortest[j]:
                            path[j] = i
                            shortest[j] = reduced
            lowest = inf
            index = -1
            for j in range(size):
                if not done[j]:
                    value = shortest[j]
                    if value < lowest or (
                        value == lowest and row4col[j] == -1 and row4col[index] != -1
                    ):  # ties: a free token ends the path now
                        lowest = value
                        index = j
            if lowest == inf:
                return -1  # no feasible assignment (cannot happen for valid counts)
            minimum = lowest
            j = index
            if row4col[j] == -1:
                sink = j
            else:
                i = row4col[j]
            scanned_cols[n_cols] = j
            n_cols += 1
            done[j] = True
        u[current] += minimum
        for r in range(n_rows):
            row = scanned_rows[r]
            if row != current:
                u[row] += minimum - shortest[col4row[row]]
        for c in range(n_cols):
            col = scanned_cols[c]
            v[col] -= minimum - shortest[col]
        j = sink
        while True:
            i = path[j]
            row4col[j] = i
            previous = col4row[i]
            col4row[i] = j
            j = previous
            if i == current:
                break
    return augmented


_compiled = None


def tie_rich(weights: np.ndarray, rows: int = 32, share: float = 0.25) -> bool:
    """True when the last ``rows`` rows of ``weights`` hold fewer than ``share`` x their
    length distinct values - quantized attention (1024 levels) - where scipy's search is
    already fast. Example: rows of multiples of 1/8 over 400 tokens -> True."""
    n = len(weights)
    if n < 256:
        return False
    last = weights[n - rows :]
    distinct = [len(np.unique(row[: n - rows + i + 1])) for i, row in enumerate(last)]
    return float(np.mean(distinct)) < share * (n - rows / 2)


def _kernel():
    global _compiled
    if _compiled is None:
        _compiled = _jit(_augment_all)
    return _compiled


def assign_slots(
    future: np.ndarray,
    slots: np.ndarray,
    *,
    levels: int = DEFAULT_LEVELS,
    factor: float = DEFAULT_FACTOR,
    delta: float | None = None,
    stats: list[dict[str, float]] | None = None,
    exact: bool = True,
    repair: bool = True,
    duals: dict[str, np.ndarray] | None = None,
) -> np.ndarray:
    """``(len(slots),)`` token of each eviction slot in a min-cost assignment.

    ``future`` is ``(n, n)`` float64 F; ``slots`` the sorted step of each slot; slot i
    may take token j < slots[i]. ``levels`` coarse solves on grids ``delta``,
    ``delta / factor``, ... warm-start the exact one (``levels=0``: exact solve only).
    ``delta`` defaults to the largest cost / 256. ``repair`` keeps more rows between
    levels (:func:`_repair`). ``stats``, when given, receives one dict per level (grid,
    augmentations, seconds); ``duals``, when given, receives the token duals ``"v"`` for
    :func:`certificate`. ``exact=False`` skips the final exact solve - an approximation,
    only for tests that show the cross-checks catch it. Example: F = [[2, 1, 0], [1, 1,
    0], [0.5, 0.25, 0]], slots [2] -> token 1 (cost 0.25 < 0.5).
    """
    future = np.ascontiguousarray(future, dtype=np.float64)
    slots = np.ascontiguousarray(slots, dtype=np.int64)
    m = len(slots)
    if m == 0:
        return np.zeros(0, dtype=np.int64)
    size = int(slots.max())  # tokens that can ever be evicted: 0 .. last step - 1
    if np.any(np.diff(slots) < 0) or np.any(slots <= np.arange(m)):
        raise ValueError("slots must be sorted, with at most t slots at steps <= t")
    kernel = _kernel()
    v = np.zeros(size)
    col4row = np.empty(size, np.int64)
    row4col = np.empty(size, np.int64)
    top = float(future[slots[0] : slots[-1] + 1, :size].max(initial=0.0))
    grid = (top / 256.0 if delta is None else float(delta)) if top > 0 else 0.0
    grids = [grid / factor**level for level in range(levels)] if grid > 0 else []
    for level, level_grid in enumerate([*grids, 0.0] if exact or not grids else grids):
        started = time.perf_counter()
        augmented = kernel(future, slots, level_grid, v, col4row, row4col, level > 0, repair)
        if augmented < 0:
            raise RuntimeError("no feasible eviction schedule; the slot counts are invalid")
        if stats is not None:
            stats.append({"grid": level_grid, "augmentations": int(augmented),
                          "seconds": time.perf_counter() - started})  # fmt: skip
    if duals is not None:
        duals["v"] = v
    return col4row[:m].copy()


def _dual_bound(future, slots, v):  # pragma: no cover - compiled
    """The LP dual objective of token duals ``v`` made feasible: each slot row's least
    reduced cost ``min_j F[slots[i], j] - v[j]`` plus, per dummy slot, ``-max(v)``."""
    m = slots.shape[0]
    size = v.shape[0]
    total = 0.0
    for i in range(m):
        row = future[slots[i]]
        lowest = np.inf
        for j in range(slots[i]):
            if row[j] - v[j] < lowest:
                lowest = row[j] - v[j]
        total += lowest
    return total + v.sum() - (size - m) * v.max()


_bound_kernel = None


def certificate(future: np.ndarray, slots: np.ndarray, tokens: np.ndarray,
                v: np.ndarray) -> float:  # fmt: skip
    """How far the plan ``tokens`` can be from the optimum, at most: its cost minus the
    dual bound of ``v`` (weak LP duality; O(n^2), no solver needed).

    Any token duals ``v`` give a lower bound on the optimum once each slot's dual is set
    to its least reduced cost and each dummy slot's (a never-evicted token, cost 0) to
    ``-max(v)``; so ``cost(tokens) - bound >= cost(tokens) - OPT >= 0``, and a value at
    float64 rounding level certifies ``tokens`` optimal. A non-optimal plan can never
    pass, whatever ``v`` is. Example: F = [[2, 1, 0], [1, 1, 0], [0.5, 0.25, 0]], slots
    [2], tokens [1], v = [0.25, 0]: cost 0.25; bound = 0.25 (the slot's least reduced
    cost) + 0.25 (sum of v) - 0.25 (one dummy, -max v) = 0.25 -> 0.0, optimal.
    """
    global _bound_kernel
    if _bound_kernel is None:
        _bound_kernel = _jit(_dual_bound)
    future = np.ascontiguousarray(future, dtype=np.float64)
    slots = np.ascontiguousarray(slots, dtype=np.int64)
    tokens = np.asarray(tokens, dtype=np.int64)
    if len(slots) == 0:
        return 0.0
    size = int(slots.max())
    v = np.asarray(v, dtype=np.float64)
    if v.shape != (size,):
        raise ValueError(f"v must have one dual per evictable token: ({size},), got {v.shape}")
    if len(set(tokens.tolist())) != len(tokens) or np.any(tokens >= slots) or np.any(tokens < 0):
        raise ValueError("tokens must be distinct and older than their slots")
    cost = float(future[slots, tokens].sum())
    return cost - float(_bound_kernel(future, slots, v))
