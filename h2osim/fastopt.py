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
DEFAULT_WIDTH = 16  # candidate tokens per slot in the first sparse graph
DEFAULT_PER_ROW = 8  # priced entries a slot may add per round


def _jit(function):
    if numba is None:  # pragma: no cover
        raise ImportError("h2osim.fastopt needs numba: pip install numba (make setup does)")
    return numba.njit(cache=True, nogil=True)(function)


def _augment_all(future, slots, grid, v, col4row, row4col, warm):  # pragma: no cover - compiled
    """Shortest augmenting paths (Crouse 2016, scipy's algorithm), square form, costs on a
    grid (``grid`` 0: exact). Rows 0..m-1 are slots (row i reads ``future[slots[i]]``,
    tokens ``< slots[i]``), rows m..N-1 dummies of cost 0. ``v`` (N,) column duals, warm."""
    m = slots.shape[0]
    size = v.shape[0]
    u = np.zeros(size)
    shortest = np.empty(size)
    path = np.full(size, -1, np.int64)
    done = np.zeros(size, np.bool_)
    inverse = 1.0 / grid if grid > 0.0 else 0.0
    scanned_rows = np.empty(size, np.int64)
    scanned_cols = np.empty(size, np.int64)
    inf = np.inf
    if warm:  # keep each row whose old token is still (one of) its cheapest: tight and feasible
        for i in range(size):
            j = col4row[i]
            dummy = i >= m
            limit = size if dummy else slots[i]
            lowest = inf
            for c in range(limit):
                cost = 0.0
                if not dummy:
                    cost = future[slots[i], c]
                    if grid > 0.0:
                        cost = np.floor(cost / grid + 0.5) * grid
                if cost - v[c] < lowest:
                    lowest = cost - v[c]
            cost = 0.0
            if not dummy:
                cost = future[slots[i], j]
                if grid > 0.0:
                    cost = np.floor(cost / grid + 0.5) * grid
            if cost - v[j] <= lowest:
                u[i] = cost - v[j]
            else:
                row4col[j] = -1
                col4row[i] = -1
    else:
        col4row[:] = -1
        row4col[:] = -1
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
    method: str = "sparse",
    width: int = DEFAULT_WIDTH,
    per_row: int = DEFAULT_PER_ROW,
    max_rounds: int = 200,
    certify: bool = True,
) -> np.ndarray:
    """``(len(slots),)`` token of each eviction slot in a min-cost assignment.

    ``future`` is ``(n, n)`` float64 F; ``slots`` the sorted step of each slot; slot i
    may take token j < slots[i]. ``levels`` coarse solves on grids ``delta``,
    ``delta / factor``, ... warm-start the exact one (``levels=0``: exact solve only).
    ``delta`` defaults to the largest cost / 256. ``method``: "sparse" (each level on a
    candidate graph - the ``width`` cheapest tokens per slot - that grows by up to
    ``per_row`` priced entries per slot and round until the exact level's duals certify
    the whole matrix; if ``max_rounds`` rounds do not certify it, the dense search finishes
    from its duals) or "dense" (every level on the whole matrix). ``stats``, when given,
    receives one dict per level (grid, augmentations, seconds; for "sparse" also rounds,
    edges, kept columns, worst reduced cost, certified). ``exact=False`` skips the final
    exact solve and ``certify=False`` the exact level's pricing (the optimum of the
    candidate graph only) - approximations, only for tests that show the cross-checks
    catch them. Example: F = [[2, 1, 0], [1, 1, 0], [0.5, 0.25, 0]], slots [2] -> token 1
    (cost 0.25 < 0.5).
    """
    future = np.ascontiguousarray(future, dtype=np.float64)
    slots = np.ascontiguousarray(slots, dtype=np.int64)
    m = len(slots)
    if m == 0:
        return np.zeros(0, dtype=np.int64)
    size = int(slots.max())  # tokens that can ever be evicted: 0 .. last step - 1
    if np.any(np.diff(slots) < 0) or np.any(slots <= np.arange(m)):
        raise ValueError("slots must be sorted, with at most t slots at steps <= t")
    if method not in ("sparse", "dense"):
        raise ValueError(f"method must be 'sparse' or 'dense', got {method!r}")
    top = float(future[slots[0] : slots[-1] + 1, :size].max(initial=0.0))
    grid = (top / 256.0 if delta is None else float(delta)) if top > 0 else 0.0
    grids = [grid / factor**level for level in range(levels)] if grid > 0 else []
    grids = [*grids, 0.0] if exact or not grids else grids
    kernel = _kernel()
    if method == "sparse":
        col4row, row4col, v, certified = _sparse_solve(
            future, slots, size, grids, width=width, per_row=per_row, coarse_rounds=1,
            max_rounds=max_rounds, stats=stats, certify=certify)  # fmt: skip
        if stats is not None:
            stats[-1]["certified"] = certified
        if certified or not exact or not certify:
            return col4row[:m].copy()
        grids = [0.0]  # not certified: the dense exact search finishes from these duals
        warm = True
    else:
        v = np.zeros(size)
        col4row = np.empty(size, np.int64)
        row4col = np.empty(size, np.int64)
        warm = False
    for level_grid in grids:
        started = time.perf_counter()
        augmented = kernel(future, slots, level_grid, v, col4row, row4col, warm)
        warm = True
        if augmented < 0:
            raise RuntimeError("no feasible eviction schedule; the slot counts are invalid")
        if stats is not None:
            stats.append({"grid": level_grid, "augmentations": int(augmented), "dense": True,
                          "seconds": time.perf_counter() - started})  # fmt: skip
    return col4row[:m].copy()


# --------------------------------------------------------------------------- sparse + certificate
def _level_cost(cost, grid, inverse):  # pragma: no cover - compiled
    if grid > 0.0:
        return np.floor(cost * inverse + 0.5) * grid
    return cost


def _before(key, rank, other_key, other_rank):  # pragma: no cover - compiled
    return key < other_key or (key == other_key and rank < other_rank)


def _heap_push(keys, ranks, cols, size, key, rank, col):  # pragma: no cover - compiled
    """Binary min-heap on (``keys``, ``ranks``): at equal distance a free token (rank 0)
    comes first, so the search ends as soon as it can (scipy's tie rule)."""
    position = size
    while position > 0:
        parent = (position - 1) >> 1
        if not _before(key, rank, keys[parent], ranks[parent]):
            break
        keys[position] = keys[parent]
        ranks[position] = ranks[parent]
        cols[position] = cols[parent]
        position = parent
    keys[position] = key
    ranks[position] = rank
    cols[position] = col
    return size + 1


def _heap_pop(keys, ranks, cols, size):  # pragma: no cover - compiled
    """Remove the root (the caller has read it); returns the new size."""
    size -= 1
    key = keys[size]
    rank = ranks[size]
    col = cols[size]
    position = 0
    while True:
        child = 2 * position + 1
        if child >= size:
            break
        if child + 1 < size and _before(
            keys[child + 1], ranks[child + 1], keys[child], ranks[child]
        ):
            child += 1
        if not _before(keys[child], ranks[child], key, rank):
            break
        keys[position] = keys[child]
        ranks[position] = ranks[child]
        cols[position] = cols[child]
        position = child
    if size > 0:
        keys[position] = key
        ranks[position] = rank
        cols[position] = col
    return size


def _sparse_augment(
    indptr, indices, costs, keep, m, grid, v, u, col4row, row4col, warm
):  # pragma: no cover - compiled
    """Shortest augmenting paths over a candidate graph, square form.

    Rows 0..m-1 are slots with edges ``indices[indptr[i]:indptr[i+1]]`` (costs ``costs``,
    rounded to ``grid`` when > 0); rows m..N-1 are the dummy slots of never-evicted tokens,
    all with the same edges: cost 0 to every column in ``keep``. Dummies are identical, so
    in one search only the first matched dummy reached is relaxed (the others would offer
    the same columns at no smaller distance). ``u``, ``v`` (N,) duals in/out, ``warm``:
    keep the rows still tight under ``v``. Returns the number of augmentations, -1 when
    the candidate graph has no perfect matching."""
    size = v.shape[0]
    inf = np.inf
    inverse = 1.0 / grid if grid > 0.0 else 0.0
    in_keep = np.zeros(size, np.bool_)
    for c in range(keep.shape[0]):
        in_keep[keep[c]] = True
    if warm:
        for i in range(m):
            j = col4row[i]
            lowest = inf
            mine = inf
            for e in range(indptr[i], indptr[i + 1]):
                reduced = _level_cost(costs[e], grid, inverse) - v[indices[e]]
                if reduced < lowest:
                    lowest = reduced
                if indices[e] == j:
                    mine = reduced
            if j >= 0 and mine <= lowest:
                u[i] = mine
            else:
                if j >= 0:
                    row4col[j] = -1
                col4row[i] = -1
                u[i] = 0.0
        top = -inf
        for c in range(keep.shape[0]):
            if v[keep[c]] > top:
                top = v[keep[c]]
        for d in range(m, size):
            j = col4row[d]
            if j >= 0 and in_keep[j] and v[j] >= top:
                u[d] = -top
            else:
                if j >= 0:
                    row4col[j] = -1
                col4row[d] = -1
                u[d] = 0.0
    else:
        col4row[:] = -1
        row4col[:] = -1
        u[:] = 0.0
    shortest = np.full(size, inf)
    done = np.zeros(size, np.bool_)
    path = np.full(size, -1, np.int64)
    touched = np.empty(size, np.int64)
    scanned_rows = np.empty(size, np.int64)
    scanned_cols = np.empty(size, np.int64)
    capacity = indices.shape[0] + 2 * keep.shape[0] + 1
    keys = np.empty(capacity)
    ranks = np.empty(capacity, np.bool_)
    heap_cols = np.empty(capacity, np.int64)
    augmented = 0
    for current in range(size):
        if col4row[current] != -1:
            continue
        augmented += 1
        n_touched = 0
        n_rows = 0
        n_cols = 0
        heap = 0
        minimum = 0.0
        i = current
        sink = -1
        dummy_relaxed = False
        while sink == -1:
            scanned_rows[n_rows] = i
            n_rows += 1
            base = minimum - u[i]
            if i >= m:
                if i == current or not dummy_relaxed:
                    if i != current:
                        dummy_relaxed = True
                    for c in range(keep.shape[0]):
                        j = keep[c]
                        if not done[j]:
                            reduced = base - v[j]
                            if reduced < shortest[j]:
                                if shortest[j] == inf:
                                    touched[n_touched] = j
                                    n_touched += 1
                                shortest[j] = reduced
                                path[j] = i
                                heap = _heap_push(
                                    keys, ranks, heap_cols, heap, reduced, row4col[j] != -1, j
                                )
            else:
                for e in range(indptr[i], indptr[i + 1]):
                    j = indices[e]
                    if not done[j]:
                        reduced = base + _level_cost(costs[e], grid, inverse) - v[j]
                        if reduced < shortest[j]:
                            if shortest[j] == inf:
                                touched[n_touched] = j
                                n_touched += 1
                            shortest[j] = reduced
                            path[j] = i
                            heap = _heap_push(
                                keys, ranks, heap_cols, heap, reduced, row4col[j] != -1, j
                            )
            j = -1
            while heap > 0:
                key = keys[0]
                col = heap_cols[0]
                heap = _heap_pop(keys, ranks, heap_cols, heap)
                if not done[col] and key <= shortest[col]:
                    j = col
                    break
            if j == -1:
                return -1
            minimum = shortest[j]
            done[j] = True
            scanned_cols[n_cols] = j
            n_cols += 1
            if row4col[j] == -1:
                sink = j
            else:
                i = row4col[j]
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
        for c in range(n_touched):
            shortest[touched[c]] = inf
            done[touched[c]] = False
    return augmented


def _price(
    future, slots, grid, v, u, size, tol, per_row, out_rows, out_cols
):  # pragma: no cover - compiled
    """Reduced costs of EVERY admissible entry under duals ``u``, ``v``: writes up to
    ``per_row`` of the most negative (< -tol) per slot row into ``out_rows``/``out_cols``
    and every column a dummy slot prices below -tol (row m). Returns (count, worst
    reduced cost, worst complementary-slackness gap on matched entries is the caller's)."""
    m = slots.shape[0]
    inverse = 1.0 / grid if grid > 0.0 else 0.0
    count = 0
    worst = 0.0
    found = np.empty(size)
    where = np.empty(size, np.int64)
    for i in range(m):
        s = slots[i]
        row = future[s]
        ui = u[i]
        n_found = 0
        for j in range(s):
            reduced = _level_cost(row[j], grid, inverse) - ui - v[j]
            if reduced < -tol:
                found[n_found] = reduced
                where[n_found] = j
                n_found += 1
        if n_found == 0:
            continue
        order = np.argsort(found[:n_found])[:per_row] if n_found > per_row else np.arange(n_found)
        for o in order:
            out_rows[count] = i
            out_cols[count] = where[o]
            count += 1
        if found[order[0]] < worst:
            worst = found[order[0]]
    dummy = -np.inf
    for d in range(m, size):
        if u[d] > dummy:
            dummy = u[d]
    for j in range(size):
        reduced = -dummy - v[j]
        if reduced < -tol:
            out_rows[count] = m
            out_cols[count] = j
            count += 1
            if reduced < worst:
                worst = reduced
    return count, worst


def _candidates(future, slots, v, width):  # pragma: no cover - compiled
    """Per slot row: the ``width`` tokens of least ``F - v`` (ties kept) and the diagonal
    token i (slot i may always take token i < slots[i]: a perfect matching exists)."""
    m = slots.shape[0]
    total = 0
    rows = np.empty(m * (width + 1) + m, np.int64)
    cols = np.empty(m * (width + 1) + m, np.int64)
    capacity = rows.shape[0]
    for i in range(m):
        s = slots[i]
        reduced = future[s, :s] - v[:s]
        threshold = np.partition(reduced, width - 1)[width - 1] if s > width else np.inf
        for j in range(s):
            if reduced[j] <= threshold or j == i:
                if total == capacity:
                    capacity *= 2
                    rows = np.concatenate((rows, np.empty(capacity - rows.shape[0], np.int64)))
                    cols = np.concatenate((cols, np.empty(capacity - cols.shape[0], np.int64)))
                rows[total] = i
                cols[total] = j
                total += 1
    return rows[:total], cols[:total]


if numba is not None:  # helpers the sparse kernels call (numba compiles lazily, on first use)
    _level_cost, _before, _heap_push, _heap_pop = (
        numba.njit(cache=True, nogil=True, inline="always")(helper)
        for helper in (_level_cost, _before, _heap_push, _heap_pop)
    )
_sparse = None


def _sparse_kernels():
    global _sparse
    if _sparse is None:
        _sparse = (_jit(_sparse_augment), _jit(_price), _jit(_candidates))
    return _sparse


def _graph(future, slots, rows, cols, size):
    """Candidate edges as CSR (deduplicated, sorted by row then token) with exact costs."""
    keys = np.unique(rows * size + cols)
    rows, cols = keys // size, keys % size
    indptr = np.zeros(len(slots) + 1, np.int64)
    np.cumsum(np.bincount(rows, minlength=len(slots)), out=indptr[1:])
    return rows, cols, indptr, future[slots[rows], cols]


def _sparse_solve(future, slots, size, grids, *, width, per_row, coarse_rounds, max_rounds,
                  stats, certify):  # fmt: skip
    """Cost-scaled shortest augmenting paths on a candidate graph; at each level the full
    matrix is priced against the level's duals and violated entries join the graph. The
    exact level repeats until no admissible entry has a negative reduced cost: the duals
    then certify the assignment optimal for the whole problem (LP duality). Returns
    (col4row, v, certified)."""
    augment, price, candidates = _sparse_kernels()
    m = len(slots)
    v, u = np.zeros(size), np.zeros(size)
    col4row, row4col = np.full(size, -1, np.int64), np.full(size, -1, np.int64)
    rows, cols = candidates(future, slots, v, width)
    last = future[slots[-1], :size]
    keep = np.union1d(np.arange(m, size), np.argsort(-last, kind="stable")[: 2 * (size - m)])
    top = float(future[slots[0] : slots[-1] + 1, :size].max(initial=0.0))
    tol = 1e-14 * max(1.0, top)
    out_rows = np.empty(m * per_row + size, np.int64)
    out_cols = np.empty(m * per_row + size, np.int64)
    warm, certified = False, False
    for grid in grids:
        exact = grid == 0.0
        started = time.perf_counter()
        total, rounds, worst = 0, 0, 0.0
        while True:
            rows, cols, indptr, costs = _graph(future, slots, rows, cols, size)
            augmented = augment(indptr, cols, costs, keep, m, grid, v, u, col4row, row4col, warm)
            if augmented < 0:
                raise RuntimeError("no feasible eviction schedule; the slot counts are invalid")
            warm = True
            total += augmented
            rounds += 1
            if not certify and exact:
                break
            count, worst = price(future, slots, grid, v, u, size, tol, per_row, out_rows, out_cols)
            new_rows, new_cols = out_rows[:count], out_cols[:count]
            dummy = new_rows == m
            grown = np.setdiff1d(new_cols[dummy], keep)
            before = len(rows)
            rows = np.concatenate((rows, new_rows[~dummy]))
            cols = np.concatenate((cols, new_cols[~dummy]))
            keep = np.union1d(keep, grown)
            if count == 0:
                certified = exact
                break
            if len(np.unique(rows * size + cols)) == before and len(grown) == 0:
                break  # violations only on edges already solved (rounding): not certified
            if rounds >= (max_rounds if exact else coarse_rounds):
                break
        if stats is not None:
            stats.append({"grid": grid, "augmentations": int(total), "rounds": rounds,
                          "edges": len(rows), "keep": len(keep), "worst_reduced": float(worst),
                          "seconds": time.perf_counter() - started})  # fmt: skip
    if certified:  # complementary slackness: every matched entry (dummies too) is tight
        matched = col4row[:m]
        slack = np.abs(future[slots, matched] - u[:m] - v[matched])
        kept = np.abs(u[m:] + v[col4row[m:]])
        certified = max(slack.max(initial=0.0), kept.max(initial=0.0)) <= tol
    return col4row, row4col, v, bool(certified)
