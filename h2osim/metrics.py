"""What eviction costs, per step and cache unit, and how it is summarised.

Per row t and query head, given the tokens the unit kept:

- **retained mass**: the full row's attention summed over the kept tokens, as a share
  of the row's total (1 = nothing lost; the total is 1 up to storage rounding). The
  quantity H2O's greedy eviction maximises step by step.
- **attention-output error**: ``|o - o_kept| / |o|`` with ``o = sum_j a_j v_j`` the
  full-cache attention output and ``o_kept`` the output over the kept tokens with the
  row renormalised (what the model would compute). Needs stored values.
- **significant-key hit rate**: of the keys with ``a_j >= 1%`` of the row max, the
  share still cached - the KV-cache twin of a classic cache's hit ratio.

A unit's value is the mean over its query heads. Summaries average over all steps,
over decode steps only (t >= prompt length), and report the worst unit.
"""

from __future__ import annotations

import numpy as np

SIGNIFICANCE = 0.01  # a key is significant at >= 1% of its row's maximum (paper, Section 3)
# The output error divides by |o|; an output that cancels to ~0 would make it explode on
# rounding noise, so the norm is floored (real value vectors have norms of order 1).
OUTPUT_NORM_FLOOR = 1e-6

SUMMARY_FIELDS = {
    "retained_mass": "mean retained attention mass over all steps and units",
    "retained_mass_decode": "the same over decode steps only (t >= prompt length)",
    "worst_unit_mass": "retained mass of the worst cache unit (mean over its steps)",
    "hit_rate": "share of significant keys (>= 1% of row max) still cached",
    "output_error": "mean relative L2 error of the attention output (needs values)",
    "output_error_decode": "the same over decode steps only",
}


def step_metrics(
    rows: np.ndarray,
    kept: np.ndarray,
    kept_mass: np.ndarray | None = None,
    row_total: np.ndarray | None = None,
    row_max: np.ndarray | None = None,
    significant_total: np.ndarray | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """Retained mass and significant-key hit rate of one step for every unit.

    ``rows`` is ``(units, G, t+1)`` (a unit's G query heads), ``kept`` is ``(units, t+1)``
    bool; ``kept_mass`` ``(units, G)`` (the rows summed over kept tokens), ``row_total``,
    ``row_max`` and ``significant_total`` ``(units, G)`` (see :func:`row_statistics`) may be
    passed when already computed. Rows need not sum exactly to 1 (float16 storage): mass is a
    share of the row total. Returns per-unit means ``(mass, hit_rate)``.
    Example: one head, row [0.5, 0.2, 0.3], kept [1, 0, 1] -> mass 0.8, hit rate 2/3.
    """
    if kept_mass is None:
        kept_mass = np.matmul(rows, kept[:, :, None].astype(rows.dtype))[:, :, 0]  # (units, G)
    row_total = rows.sum(axis=2) if row_total is None else row_total  # (units, G), ~1
    retained = kept_mass / np.where(row_total > 0, row_total, 1.0)  # share kept
    row_max = rows.max(axis=2) if row_max is None else row_max  # (units, G)
    significant = rows >= SIGNIFICANCE * row_max[:, :, None]  # (units, G, t+1)
    if significant_total is None:
        significant_total = np.count_nonzero(significant, axis=2)  # (units, G)
    significant &= kept[:, None, :]
    significant_kept = np.count_nonzero(significant, axis=2)
    hit_rate = (significant_kept / np.maximum(significant_total, 1)).mean(axis=1)
    return retained.mean(axis=1), hit_rate


def row_statistics(packed: np.ndarray, n: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Per row of one head's packed rows ``(n(n+1)/2,)``: sum, maximum and the number of
    significant keys (>= SIGNIFICANCE x the row maximum), each ``(n,)``.

    Example: rows [1], [0.7, 0.3], [0.5, 0.004, 0.496] -> sums [1, 1, 1], maxima
    [1, 0.7, 0.5], significant counts [1, 2, 2].
    """
    lengths = np.arange(1, n + 1)
    starts = np.cumsum(lengths) - lengths
    totals = np.add.reduceat(packed, starts, dtype=np.float64)
    maxima = np.maximum.reduceat(packed, starts).astype(np.float64)
    significant = packed >= np.repeat(SIGNIFICANCE * maxima, lengths)
    return totals, maxima, np.add.reduceat(significant, starts, dtype=np.int64)


def row_statistics_of(rows: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """:func:`row_statistics` of one step's rows ``(units, G, t+1)``: each ``(units, G)``."""
    maxima = rows.max(axis=2)
    significant = np.count_nonzero(rows >= SIGNIFICANCE * maxima[:, :, None], axis=2)
    return rows.sum(axis=2), maxima, significant


def kept_matrix(evicted_at: np.ndarray) -> np.ndarray:
    """``(n, n)`` bool: entry [t, j] says token j was cached when row t was served.

    ``evicted_at[j]`` is the step token j left (-1 = never). Example: evicted_at
    [2, -1, -1] -> rows [[1, 0, 0], [1, 1, 0], [0, 1, 1]].
    """
    n = len(evicted_at)
    step = np.arange(n)[:, None]  # (n, 1)
    admitted = np.arange(n)[None, :] <= step
    still_there = (evicted_at[None, :] < 0) | (evicted_at[None, :] > step)
    return admitted & still_there


def full_output(attention: np.ndarray, values: np.ndarray) -> np.ndarray:
    """Full-cache attention output per row, ``(n, d)`` float64: rows ``(n, n)`` normalised by
    their sums. Float64 because a head's output can cancel to ~0 (values of both signs): in
    float32 the rounding left over is then ~1e-7, which the relative error below would
    divide by its 1e-6 floor (Hypothesis found such a row: error 0.08 instead of 0)."""
    values = np.asarray(values, dtype=np.float64)
    total = attention.sum(axis=1, keepdims=True, dtype=np.float64)
    return (attention @ values) / np.where(total > 0, total, 1.0)


def output_error(
    attention: np.ndarray, values: np.ndarray, kept: np.ndarray, full: np.ndarray | None = None
) -> np.ndarray:
    """Relative L2 error of one query head's attention output at every row, ``(n,)``.

    ``attention`` ``(n, n)`` lower-triangular rows, ``values`` ``(n, d)``, ``kept`` from
    :func:`kept_matrix`; ``full`` (from :func:`full_output`) may be passed when cached.
    The kept output renormalises each row over the kept tokens, as the model would.
    Example: row [0.5, 0.2, 0.3], values [[1,0],[0,1],[1,1]], kept [1, 0, 1] -> 0.25.
    """
    full = full_output(attention, values) if full is None else full
    values = np.asarray(values, dtype=np.float64)  # float64, as full_output
    masked = attention * kept  # (n, n)
    kept_mass = masked.sum(axis=1, keepdims=True, dtype=np.float64)
    kept_out = (masked @ values) / np.where(kept_mass > 0, kept_mass, 1.0)
    difference = np.linalg.norm(full - kept_out, axis=1)
    return difference / np.maximum(np.linalg.norm(full, axis=1), OUTPUT_NORM_FLOOR)


def summarize(
    retained_mass: np.ndarray,
    hit_rate: np.ndarray,
    output_error: np.ndarray | None,
    prompt_length: int,
) -> dict[str, float | None]:
    """Aggregate per-step, per-unit arrays ``(n, units)`` into the fields of SUMMARY_FIELDS."""
    decode = slice(prompt_length, None) if prompt_length < retained_mass.shape[0] else slice(None)
    summary: dict[str, float | None] = {
        "retained_mass": float(retained_mass.mean()),
        "retained_mass_decode": float(retained_mass[decode].mean()),
        "worst_unit_mass": float(retained_mass.mean(axis=0).min()),
        "hit_rate": float(hit_rate.mean()),
        "output_error": None,
        "output_error_decode": None,
    }
    if output_error is not None:
        summary["output_error"] = float(output_error.mean())
        summary["output_error_decode"] = float(output_error[decode].mean())
    return summary
