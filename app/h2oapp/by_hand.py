"""Algorithm 1 of H2O by hand: one sentence, one cache unit, every decision written out.

Follows Zhang et al., NeurIPS 2023 (arXiv 2306.14048), Algorithm 1 (H2O eviction): at
step t token t enters the cache; when the cache holds more than k tokens, the newest r
tokens are protected (the recent window) and, of the older ones (the candidates), the
one with the lowest **accumulated attention** - the sum of the attention it received in
rows 0..t-1, each row renormalised over the tokens cached at that row - leaves for good.

Nothing here re-implements the policy: :func:`walk_through` runs the engine's
:func:`h2osim.engine.replay` on the registered ``h2o`` policy and records what the
policy saw (cache contents, scores with the protected tokens at +inf) and answered at
each of its ``evict`` calls. Pure NumPy, no Streamlit.

Toy mode (a textbook exercise): every word is one token with a hand-set weight w_j, and
row t of the full-cache "model" attends to token j <= t with w_j / sum(w_0..w_t). The
worked example below is pinned by tests/test_app_by_hand.py, written down by hand:

    "Children laughed and played in the sunny park", weights 4 1 1 3 1 1 2 2, k = 4,
    2 recent + 2 heavy. Steps 0-3 fill the cache. Step 4: "in" arrives, "played" and
    "in" are protected; of Children 2.911, laughed 0.478, and 0.278 -> "and" leaves.
    Step 5: laughed (0.589) < played (0.667) < Children (3.356) -> "laughed". Step 6:
    "in" (0.222) -> "in". Step 7: "the" (0.211) -> "the". Kept: Children played sunny park.

Simplification: toy weights are per token, not per (query, key) pair; real-attention
mode uses one (layer, KV head) cache unit of a trace dumped from SmolLM2.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from h2osim.engine import ReplayConfig, ReplayResult, replay
from h2osim.policies import ScorePolicy, make_policy
from h2osim.trace import Trace

DEFAULT_SENTENCE = "Children laughed and played in the sunny park"
DEFAULT_WEIGHTS = (4.0, 1.0, 1.0, 3.0, 1.0, 1.0, 2.0, 2.0)  # the worked example's
DEFAULT_BUDGET = 4
DEFAULT_RECENT = 2
COMPARED = ("h2o", "opt", "window")  # shown side by side


def words(sentence: str) -> list[str]:
    """Toy tokens: the sentence split at spaces, each word (after the first) with its
    leading space, as a tokenizer would. Example: "a b" -> ["a", " b"]."""
    parts = sentence.split()
    return [part if i == 0 else " " + part for i, part in enumerate(parts)]


def default_weights(tokens: list[str]) -> list[float]:
    """The worked example's weights for the default sentence; otherwise 3 for the first
    word (a sink-like start) and 1 for the rest, to be edited by hand."""
    if [t.strip() for t in tokens] == DEFAULT_SENTENCE.split():
        return list(DEFAULT_WEIGHTS)
    return [3.0] + [1.0] * (len(tokens) - 1) if tokens else []


def toy_trace(tokens: list[str], weights: list[float]) -> Trace:
    """A one-layer, one-head trace: row t gives token j <= t the share w_j / sum(w_0..w_t).

    Example: weights [4, 1] -> rows [1], [0.8, 0.2].
    """
    w = np.asarray(weights, dtype=np.float64)
    if w.size < 2:
        raise ValueError("type at least two words")
    if not np.all(np.isfinite(w)) or np.any(w <= 0):
        raise ValueError("every toy weight must be a positive number")
    n = w.size
    dense = np.tril(np.broadcast_to(w, (n, n)))  # (n, n): row t holds w_0..w_t
    dense = dense / dense.sum(axis=1, keepdims=True)
    return Trace.from_arrays(dense[None, None], head_map=[0], tokens=tokens,
                             metadata={"model": "toy", "tool": "h2oapp.by_hand"})  # fmt: skip


def h2o_policy(budget: int, recent: int) -> ScorePolicy:
    """``h2o`` with ``recent`` protected tokens of ``budget`` (heavy = budget - recent).

    Example: k=4, recent=2 -> heavy_ratio 0.5 (H2O's default 2 heavy + 2 recent).
    """
    if not 1 <= recent <= budget:
        raise ValueError(f"recent tokens must be between 1 and k = {budget}, got {recent}")
    ratio = (budget - recent) / budget
    if int(ratio * budget) != budget - recent:  # float rounding: nudge up to the integer
        ratio = min(1.0, ratio + 1e-9)
    return make_policy("h2o", heavy_ratio=ratio)


@dataclass
class Decision:
    """One eviction decision of one cache unit at step t."""

    t: int
    cached: list[int]  # positions held after token t arrived (before eviction)
    scores: dict[int, float]  # accumulated attention of each cached token (rows < t)
    protected: list[int]  # the recent window: never a candidate
    candidates: list[int]
    evicted: list[int]


def _recording(
    policy: ScorePolicy, unit: int, decisions: list[Decision], history: np.ndarray
) -> None:
    """Wrap ``policy.evict`` and ``policy.observe``: each eviction records what the policy
    saw and chose; each observed row records the unit's accumulated scores after it."""
    original = policy.evict
    original_observe = policy.observe

    def observe(t: int, observed: np.ndarray, kept: np.ndarray) -> None:
        original_observe(t, observed, kept)
        history[t] = policy.accumulated_score[unit]

    def evict(t: int, kept: np.ndarray, count: int) -> np.ndarray:
        victims = original(t, kept, count)  # (units, count)
        scores = policy.accumulated_score[unit, : t + 1]
        protected_mask = ~np.isfinite(policy.score(t, kept)[unit])  # recent: +inf
        cached = np.flatnonzero(kept[unit]).tolist()
        protected = [j for j in cached if protected_mask[j] or j == t]
        decisions.append(Decision(
            t=t, cached=cached, scores={j: float(scores[j]) for j in cached},
            protected=protected, candidates=[j for j in cached if j not in protected],
            evicted=sorted(int(v) for v in victims[unit]),
        ))  # fmt: skip
        return victims

    policy.evict = evict  # instance attributes: the class stays untouched
    policy.observe = observe


def walk_through(
    trace: Trace, budget: int, recent: int, layer: int | None = None, unit: int = 0
) -> tuple[ReplayResult, list[Decision], np.ndarray]:
    """Replay ``h2o`` (k = ``budget``, ``recent`` protected) through the engine; return the
    result, every eviction decision of cache unit ``unit`` of ``layer`` and the unit's
    accumulated scores after each row, ``(n, n)``."""
    policy = h2o_policy(budget, recent)
    decisions: list[Decision] = []
    history = np.zeros((trace.n, trace.n))
    _recording(policy, unit, decisions, history)
    result = replay(trace, policy, budget, config=_config(trace, layer))
    return result, decisions, history


def _config(trace: Trace, layer: int | None) -> ReplayConfig:
    layers = None if layer is None else (int(layer),)
    return ReplayConfig(layers=layers, output_error=False)


def compare(
    trace: Trace, budget: int, recent: int, layer: int | None = None
) -> dict[str, ReplayResult]:
    """``h2o``, ``opt`` and ``window`` at the same budget, through the engine."""
    results = {}
    for name in COMPARED:
        policy = h2o_policy(budget, recent) if name == "h2o" else make_policy(name)
        results[name] = replay(trace, policy, budget, config=_config(trace, layer))
    return results


def worked_example(
    trace: Trace, budget: int, recent: int, layer: int | None = None, unit: int = 0
) -> tuple[list[Decision], np.ndarray, dict[str, ReplayResult]]:
    """What the page shows: the decisions of :func:`walk_through`, its
    :func:`score_matrix` ``(n, n)`` and the :func:`compare` replays."""
    result, decisions, history = walk_through(trace, budget, recent, layer, unit)
    return decisions, score_matrix(result, history, unit), compare(trace, budget, recent, layer)


def reason(decision: Decision, tokens: list[str]) -> str:
    """Why the evicted token left, in words. Example: "lowest score of the 3 candidates
    (0.278 < laughed 0.478)"."""
    if not decision.candidates:
        return "every cached token is protected: the oldest leaves"
    ranked = sorted(decision.candidates, key=lambda j: (decision.scores[j], j))
    gone = decision.evicted
    left = [j for j in ranked if j not in gone]
    text = f"lowest score of the {len(decision.candidates)} candidates"
    if left:
        runner = left[0]
        worst = max(decision.scores[j] for j in gone)
        text += f" ({worst:.3f} < {tokens[runner].strip()!r} {decision.scores[runner]:.3f})"
        if np.isclose(worst, decision.scores[runner]):
            text += "; a tie goes to the older token"
    return text


def decision_rows(decisions: list[Decision], tokens: list[str]) -> list[dict[str, Any]]:
    """The step table: one row per eviction step, token texts instead of positions."""

    def named(positions: list[int]) -> str:
        return ", ".join(tokens[j].strip() or repr(tokens[j]) for j in positions)

    return [
        {"step t": d.t, "arrives": tokens[d.t].strip() or repr(tokens[d.t]),
         "in the cache": named(d.cached), "protected (recent)": named(d.protected),
         "candidates (accumulated score)": ", ".join(
             f"{tokens[j].strip() or repr(tokens[j])} {d.scores[j]:.3f}" for j in d.candidates),
         "evicted": named(d.evicted), "why": reason(d, tokens)}
        for d in decisions
    ]  # fmt: skip


def score_matrix(result: ReplayResult, history: np.ndarray, unit: int = 0) -> np.ndarray:
    """``(n, n)``: token j's accumulated score when step t decides (rows < t, as the
    policy held it), NaN where token j is not cached at step t (not yet arrived, or
    evicted before t). ``history`` is :func:`walk_through`'s score after each row."""
    n = history.shape[0]
    before = np.vstack([np.zeros((1, n)), history[:-1]])  # (n, n) scores from rows < t
    left = result.evicted_at[unit]  # (n,)
    steps = np.arange(n)[:, None]
    held = (np.arange(n)[None, :] <= steps) & ((left[None, :] < 0) | (left[None, :] >= steps))
    return np.where(held, before, np.nan)


def kept_tokens(result: ReplayResult, t: int, unit: int = 0) -> list[int]:
    """Positions held by ``unit`` when row t is served."""
    return np.flatnonzero(result.kept_at(t)[unit]).tolist()
