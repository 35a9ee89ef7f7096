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
    rows: np.ndarray, kept: np.ndarray, values: np.ndarray | None
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray | None]:
    """Metrics of one step for every unit.

    ``rows`` is ``(units, G, t+1)`` float32 (a unit's G query heads), ``kept`` is
    ``(units, t+1)`` float32 0/1, ``values`` is ``(units, t+1, d)`` or None. Rows need
    not sum exactly to 1 (float16 storage): mass is a share of the row total and outputs
    are normalised by it. Returns ``kept_mass (units, G)`` (attention summed over kept
    tokens, per head) and per-unit means ``mass, hit_rate, output_error``.
    Example: one head, row [0.5, 0.2, 0.3], kept [1, 0, 1] -> retained mass 0.8.
    """
    row_total = rows.sum(axis=2)  # (units, G), 1 up to storage rounding
    kept_mass = np.matmul(rows, kept[:, :, None])[:, :, 0]  # (units, G)
    retained = kept_mass / np.where(row_total > 0, row_total, 1.0)  # share kept
    row_max = rows.max(axis=2, keepdims=True)  # (units, G, 1)
    significant = rows >= SIGNIFICANCE * row_max  # (units, G, t+1)
    significant_total = np.count_nonzero(significant, axis=2)  # (units, G)
    significant_kept = np.count_nonzero(significant & (kept[:, None, :] > 0), axis=2)
    hit_rate = (significant_kept / np.maximum(significant_total, 1)).mean(axis=1)
    output_error = None
    if values is not None:
        full_output = np.matmul(rows, values) / row_total[:, :, None]  # (units, G, d)
        kept_output = np.matmul(rows * kept[:, None, :], values)
        kept_output /= np.where(kept_mass > 0, kept_mass, 1.0)[:, :, None]
        difference = np.linalg.norm(full_output - kept_output, axis=2)
        scale = np.linalg.norm(full_output, axis=2)
        output_error = (difference / np.maximum(scale, OUTPUT_NORM_FLOOR)).mean(axis=1)
    return kept_mass, retained.mean(axis=1), hit_rate, output_error


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
