"""Numbers the pages show about one attention head or one cache unit (pure NumPy).

Follows the H2O paper's Section 3 observations (arXiv 2306.14048): attention is sparse
(most entries are tiny next to their row's maximum), a few "heavy hitter" tokens collect
most of the accumulated attention, and the accumulated scores fall off like a power law.
The power-law exponent alpha is the estimator of ``python -m h2osim.observe`` (one
definition, :func:`h2osim.studies.observe.power_law_fit`), a least-squares line on
log-log axes at log-spaced ranks: a teaching aid, not a statistical test.
"""

from __future__ import annotations

import numpy as np

from h2osim.metrics import SIGNIFICANCE
from h2osim.studies import observe

# Cache states of a token at step t, as drawn by the token strip (codes are image values).
FUTURE, EVICTED, EVICTED_NOW, RECENT, HEAVY = range(5)
STATE_NAMES = {
    FUTURE: "not generated yet",
    EVICTED: "evicted earlier",
    EVICTED_NOW: "evicted at this step",
    RECENT: "kept: recent run",
    HEAVY: "kept: older (heavy hitter)",
}


def accumulated_attention(matrix: np.ndarray, per_row: bool = False) -> np.ndarray:
    """Attention each token received, summed over all query rows (column sums).

    ``matrix`` is a lower-triangular ``(n, n)`` attention matrix. H2O's score is the raw
    sum; ``per_row`` divides token j's sum by the n - j rows that could attend to it (an
    old token has been seen by more rows, so its sum is larger for that reason alone).
    Example: [[1, 0], [0.4, 0.6]] -> [1.4, 0.6]; per_row -> [0.7, 0.6].
    """
    column_sums = matrix.sum(axis=0, dtype=np.float64)  # (n,)
    if not per_row:
        return column_sums
    rows_seen = np.arange(matrix.shape[0], 0, -1)  # token j is attended by rows j..n-1
    return column_sums / rows_seen


def log_weights(scores: np.ndarray, decades: float = 3.0) -> np.ndarray:
    """Scores on a log scale in [0, 1]: the maximum -> 1, ``decades`` below it or less -> 0.

    Example: scores [100, 10, 1, 0.01], decades=3 -> [1, 2/3, 1/3, 0].
    """
    top = scores.max() if scores.size else 0.0
    if top <= 0:
        return np.zeros_like(scores, dtype=np.float64)
    with np.errstate(divide="ignore"):
        relative = np.log10(np.maximum(scores, 0) / top)  # (n,), 0 at the max, -inf at 0
    return np.clip(1.0 + relative / decades, 0.0, 1.0)


def sparsity(matrix: np.ndarray, threshold: float = SIGNIFICANCE) -> float:
    """Share of causal entries below ``threshold`` x their row's maximum.

    Example: [[1, 0], [0.005, 0.995]] -> 1 of 3 entries is below 1% of its row max -> 1/3.
    """
    n = matrix.shape[0]
    causal = np.tri(n, dtype=bool)  # (n, n), j <= t
    row_max = matrix.max(axis=1, keepdims=True)  # (n, 1)
    small = (matrix < threshold * row_max) & causal
    return float(small.sum() / causal.sum())


def sink_mass(matrix: np.ndarray) -> float:
    """Mean attention that rows t >= 1 give to token 0 (the attention sink).

    Example: [[1, 0, 0], [0.5, 0.5, 0], [0.2, 0.3, 0.5]] -> mean(0.5, 0.2) = 0.35.
    """
    if matrix.shape[0] < 2:
        return float(matrix[0, 0])
    return float(matrix[1:, 0].mean())


def top_share(scores: np.ndarray, fraction: float = 0.1) -> float:
    """Share of the total held by the top ``fraction`` of tokens (at least one token).

    Example: scores [6, 2, 1, 1], fraction 0.25 -> the top token holds 6 of 10 -> 0.6.
    """
    count = max(1, int(round(fraction * scores.size)))
    total = scores.sum()
    return float(np.sort(scores)[::-1][:count].sum() / total) if total > 0 else 0.0


def power_law(scores: np.ndarray) -> tuple[float, float, float]:
    """``(alpha, scale, r2)``: accumulated scores sorted high to low, fitted as
    ``scale * rank^(-alpha)`` by the estimator of ``python -m h2osim.observe``
    (:func:`h2osim.studies.observe.power_law_fit`, log-spaced ranks), so the app and the
    CLI report the same alpha; ``scale`` is the least-squares constant on those ranks.
    Zero scores are left out. Example: scores 5 / rank^1.3 -> (1.3, 5.0, 1.0).
    """
    ranked = np.sort(scores[scores > 0])[::-1]  # (m,)
    alpha, r2, _ = observe.power_law_fit(ranked)
    if not np.isfinite(alpha):
        return float("nan"), float("nan"), float("nan")
    ranks = np.unique(np.geomspace(1, ranked.size, observe.FIT_POINTS).astype(int))
    scale = float(np.exp(np.mean(np.log(ranked[ranks - 1]) + alpha * np.log(ranks))))
    return float(alpha), scale, float(r2)


def showcase_head(trace) -> tuple[int, int]:
    """The (layer, query head) of a trace whose heavy hitters stand out most: the largest
    share of accumulated attention held by its top 10% of tokens, token 0 (the sink) left
    out. The pages open on it."""
    best, choice = -1.0, (int(trace.layers[0]), 0)
    for layer in trace.layers.tolist():
        for head in range(trace.num_heads):
            scores = accumulated_attention(trace.head_matrix(layer, head))
            share = top_share(scores[1:], 0.1) if scores.size > 1 else 0.0
            if share > best:
                best, choice = share, (int(layer), head)
    return choice


def cache_states(evicted_at: np.ndarray, t: int) -> np.ndarray:
    """State code of every token of one cache unit when row t is served, ``(n,)`` int8.

    ``evicted_at`` is the unit's row of ``ReplayResult.evicted_at`` (step each token left,
    -1 = never). Kept tokens are split by position: the unbroken run of kept tokens ending
    at t is RECENT; kept tokens older than that run survived eviction and are HEAVY.
    Example: evicted_at [-1, 3, -1, -1, -1], t=3 ->
    [HEAVY, EVICTED_NOW, RECENT, RECENT, FUTURE].
    """
    n = evicted_at.shape[0]
    positions = np.arange(n)
    kept = (positions <= t) & ((evicted_at < 0) | (evicted_at > t))
    states = np.full(n, FUTURE, dtype=np.int8)
    states[(positions <= t) & ~kept] = EVICTED
    states[evicted_at == t] = EVICTED_NOW
    gaps = np.flatnonzero(~kept[: t + 1])
    recent_start = int(gaps[-1]) + 1 if gaps.size else 0
    states[: t + 1][kept[: t + 1]] = HEAVY
    states[recent_start : t + 1] = RECENT
    return states
