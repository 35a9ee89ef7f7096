"""Seeded synthetic attention traces that look like an LLM's.

Each query head's logits over keys j <= t are a sum of the patterns the H2O paper
(Section 3) and StreamingLLM report in real models:

- an attention sink: a large bonus on token 0;
- recency: a penalty growing with log(1 + t - j);
- persistent heavy hitters: a per-layer salience drawn from a power law (Pareto), so a
  few tokens attract attention from every later query (the accumulated-attention
  distribution is heavy-tailed);
- noise: Gaussian jitter per (t, j).

Rows are the softmax of those logits, so they sum to 1 exactly. Values are Gaussian.
This is a stand-in for real traces in tests and demos, not a model of any real network.
"""

from __future__ import annotations

import numpy as np

from h2osim.trace import Trace, pack_lower

_WORDS = ("the", "cache", "token", "attention", "heavy", "hitter", "model", "key", "value",
          "query", "budget", "evict", "layer", "head", "score", "sum", ",", ".", "of", "and")  # fmt: skip


def synthetic_trace(
    n: int = 256,
    *,
    layers: int = 4,
    heads: int = 9,
    kv_heads: int = 3,
    head_dim: int = 16,
    prompt_length: int | None = None,
    heavy_share: float = 0.08,
    pareto_shape: float = 1.2,
    noise: float = 0.6,
    values: bool = True,
    dtype: str = "float32",
    seed: int = 0,
) -> Trace:
    """A trace of ``n`` tokens with ``layers`` x ``heads`` query heads (GQA to ``kv_heads``).

    ``heavy_share`` of the tokens get a power-law salience (``pareto_shape`` is the Pareto
    tail index; smaller = heavier tail). ``prompt_length`` defaults to 3n/4.
    Same ``seed`` -> identical trace.
    """
    if n < 1 or layers < 1 or heads < 1 or kv_heads < 1 or head_dim < 1:
        raise ValueError("n, layers, heads, kv_heads and head_dim must all be >= 1")
    if heads % kv_heads:
        raise ValueError(f"heads ({heads}) must be a multiple of kv_heads ({kv_heads})")
    if not 0 <= heavy_share <= 1:
        raise ValueError(f"heavy_share must be in [0, 1], got {heavy_share}")
    if dtype not in ("float32", "float16"):
        raise ValueError(f"dtype must be float32 or float16, got {dtype!r}")
    prompt = max(1, (3 * n) // 4) if prompt_length is None else prompt_length
    if not 1 <= prompt <= n:
        raise ValueError(f"prompt_length must be in [1, {n}], got {prompt}")
    rng = np.random.default_rng(seed)
    positions = np.arange(n)
    distance = positions[:, None] - positions[None, :]  # (n, n), t - j
    causal = distance >= 0
    log_distance = np.log1p(np.maximum(distance, 0)).astype(np.float32)

    attention = np.empty((layers, heads, n * (n + 1) // 2), dtype=np.float32)
    for layer in range(layers):
        salience = np.zeros(n, dtype=np.float32)  # (n,)
        heavy = rng.random(n) < heavy_share
        salience[heavy] = np.log(rng.pareto(pareto_shape, heavy.sum()) + 1.0) * 2.0
        for head in range(heads):
            sink = rng.uniform(1.5, 5.0)
            recency = rng.uniform(0.3, 1.6)
            heavy_weight = rng.uniform(0.4, 1.6)
            logits = heavy_weight * salience[None, :] - recency * log_distance  # (n, n)
            logits[:, 0] += sink
            logits += rng.normal(0.0, noise, size=(n, n)).astype(np.float32)
            logits = np.where(causal, logits, -np.inf)
            logits -= logits.max(axis=1, keepdims=True)
            probabilities = np.exp(logits)
            probabilities /= probabilities.sum(axis=1, keepdims=True)
            attention[layer, head] = pack_lower(probabilities)
    value_array = None
    if values:
        value_array = rng.normal(0.0, 1.0, size=(layers, kv_heads, n, head_dim)).astype(dtype)
    group = heads // kv_heads
    words = rng.choice(len(_WORDS), size=n)
    return Trace.from_arrays(
        attention.astype(dtype),
        head_map=[head // group for head in range(heads)],
        token_ids=words,
        tokens=[("<s>" if i == 0 else " " + _WORDS[w]) for i, w in enumerate(words)],
        prompt_length=prompt,
        values=value_array,
        metadata={
            "model": "synthetic",
            "generator": "h2osim.synthetic",
            "seed": seed,
            "heavy_share": heavy_share,
            "pareto_shape": pareto_shape,
            "noise": noise,
        },  # fmt: skip
    )
