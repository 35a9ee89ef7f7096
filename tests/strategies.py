"""Hypothesis strategies shared by the property tests (one place, composite strategies).

Traces are drawn small (n <= 14, a few units) so brute-force references stay fast. Row
logits come either from a continuous range or from a small integer grid, so ties between
tokens (the engine breaks them towards the oldest) occur often enough to be exercised.
"""

from __future__ import annotations

import numpy as np
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays

from h2osim.trace import Trace, pack_lower


def softmax_rows(logits: np.ndarray) -> np.ndarray:
    """Causal softmax of ``(..., n, n)`` logits: row t over columns 0..t, zeros above."""
    n = logits.shape[-1]
    causal = np.tril(np.ones((n, n), dtype=bool))
    masked = np.where(causal, logits, -np.inf)
    masked = masked - masked.max(axis=-1, keepdims=True)
    weights = np.exp(masked)
    return weights / weights.sum(axis=-1, keepdims=True)


@st.composite
def attention_logits(draw, shape: tuple[int, ...]) -> np.ndarray:
    """Logits of the given shape: continuous in [-6, 6] or on an integer grid (ties)."""
    if draw(st.booleans()):
        elements = st.floats(-6.0, 6.0, allow_nan=False, width=32)
    else:
        elements = st.integers(-3, 3).map(float)
    return draw(arrays(np.float64, shape, elements=elements))


@st.composite
def traces(
    draw,
    max_n: int = 12,
    max_layers: int = 2,
    max_kv_heads: int = 2,
    max_group: int = 3,
    values: bool | None = None,
    min_n: int = 1,
) -> Trace:
    """A valid in-memory trace with GQA, a random prompt length and optional values."""
    n = draw(st.integers(min_n, max_n))
    layers = draw(st.integers(1, max_layers))
    kv_heads = draw(st.integers(1, max_kv_heads))
    group = draw(st.integers(1, max_group))
    heads = kv_heads * group
    logits = draw(attention_logits((layers, heads, n, n)))
    attention = pack_lower(softmax_rows(logits)).astype(np.float32)
    with_values = draw(st.booleans()) if values is None else values
    value_array = None
    if with_values:
        head_dim = draw(st.integers(1, 4))
        value_array = draw(
            arrays(np.float32, (layers, kv_heads, n, head_dim), elements=st.floats(-4, 4, width=32))
        )
    layer_ids = sorted(draw(st.sets(st.integers(0, 40), min_size=layers, max_size=layers)))
    # Heads listed group by group or interleaved: the head map need not be sorted.
    head_map = [h // group for h in range(heads)]
    if draw(st.booleans()):
        head_map = [h % kv_heads for h in range(heads)]
    return Trace.from_arrays(
        attention,
        head_map=head_map,
        prompt_length=draw(st.integers(1, n)),
        layers=layer_ids,
        values=value_array,
        metadata={"model": "hypothesis"},
    )
