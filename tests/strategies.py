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
        # Values on a 0.25 grid: no subnormals, so float32 and float64 outputs compare.
        value_array = draw(
            arrays(
                np.float32,
                (layers, kv_heads, n, head_dim),
                elements=st.integers(-16, 16).map(lambda v: v / 4),
            )
        )
    layer_ids = sorted(draw(st.sets(st.integers(0, 40), min_size=layers, max_size=layers)))
    # Heads listed group by group or interleaved: the head map need not be sorted.
    head_map = [h // group for h in range(heads)]
    if draw(st.booleans()):
        head_map = [h % kv_heads for h in range(heads)]
    # key norms (for knorm) on a coarse grid: exact ties occur
    norms = draw(arrays(np.float32, (layers, kv_heads, n), elements=st.integers(1, 6).map(float)))
    return Trace.from_arrays(
        attention,
        head_map=head_map,
        prompt_length=draw(st.integers(1, n)),
        layers=layer_ids,
        values=value_array,
        metadata={"model": "hypothesis"},
        key_norms=dict(zip(layer_ids, norms, strict=True)),
    )


# --------------------------------------------------------------------------- oracles and theory
# Appended for the offline oracles (h2osim.oracles) and the theory package: small eviction
# problems, set functions by family, dynamic instances, replay configurations.


def _element(low: float, high: float):
    """Floats in [low, high], or a coarse grid there (exact ties and zeros)."""
    grid = st.integers(0, 4).map(lambda step: low + (high - low) * step / 4)
    return st.one_of(grid, st.floats(low, high, allow_nan=False, allow_infinity=False))


@st.composite
def weight_matrices(draw, max_n: int = 8, min_n: int = 1) -> np.ndarray:
    """A unit's ``(n, n)`` metric weights: lower triangular, rows summing to 1; sometimes
    sparse (exact zeros, as in quantized traces), sometimes with ties."""
    n = draw(st.integers(min_n, max_n))
    weights = softmax_rows(draw(attention_logits((n, n))))
    if draw(st.booleans()):
        zeros = draw(arrays(np.bool_, (n, n)))
        zeros[np.diag_indices(n)] = False  # keep every row non-empty
        weights = np.where(zeros, 0.0, weights)
        weights /= weights.sum(axis=1, keepdims=True)
    return weights


@st.composite
def eviction_problems(draw, max_n: int = 8) -> tuple[np.ndarray, np.ndarray]:
    """(weights, eviction counts) of one cache unit, stream or fully attended prompt."""
    from h2osim.oracles import eviction_counts

    weights = draw(weight_matrices(max_n))
    n = len(weights)
    counts = eviction_counts(n, draw(st.integers(1, n)), draw(st.integers(1, n)),
                             draw(st.sampled_from(("stream", "full"))))  # fmt: skip
    return weights, counts


@st.composite
def replay_configs(draw):
    """Any ReplayConfig the engine accepts (all layers)."""
    from h2osim.engine import GQA_MODES, OBSERVATIONS, PROMPT_MODES, ReplayConfig

    return ReplayConfig(aggregation=draw(st.sampled_from(GQA_MODES)),
                        prompt_mode=draw(st.sampled_from(PROMPT_MODES)),
                        observation=draw(st.sampled_from(OBSERVATIONS)))  # fmt: skip


def budgets():
    """A replay budget: a token count >= 2 or a fraction in (0, 1]."""
    return st.one_of(st.integers(2, 14), st.sampled_from((0.1, 0.25, 0.5, 0.75, 1.0)))


@st.composite
def monotone_submodular_functions(draw, max_size: int = 8, min_size: int = 1):
    """A function of a monotone submodular family (theory.functions) on <= max_size elements."""
    from theory import functions

    family = draw(st.sampled_from(("accumulated", "facility", "coverage", "coverage-trap",
                                   "log-sum-exp")))  # fmt: skip
    if family == "coverage-trap" and max_size >= 3:
        # Greedy's classic trap, perturbed: element 0 covers items 0-3, elements 1 and 2
        # cover {0, 1, 4} and {2, 3, 5}; greedy takes 0 first whenever its items weigh
        # more, and then misses one of items 4, 5. Extra random elements and items.
        extra, items = draw(st.integers(0, max_size - 3)), draw(st.integers(6, 9))
        covers = draw(arrays(np.bool_, (3 + extra, items)))
        covers[:3, :6] = [[1, 1, 1, 1, 0, 0], [1, 1, 0, 0, 1, 0], [0, 0, 1, 1, 0, 1]]
        covers[:3, 6:] = False
        weights = draw(arrays(np.float64, items, elements=_element(0.5, 1.5)))
        order = draw(st.permutations(range(3 + extra)))
        return functions.WeightedCoverage(covers[list(order)], weights)
    size = draw(st.integers(min_size, max_size))
    if family == "coverage-trap":
        family = "coverage"
    if family == "accumulated":
        scores = draw(arrays(np.float64, size, elements=_element(0.0, 10.0)))
        return functions.AccumulatedScore(scores, draw(st.sampled_from(functions.CONCAVE)))
    if family == "facility":
        clients = draw(st.integers(1, 6))
        return functions.FacilityLocation(
            draw(arrays(np.float64, (clients, size), elements=_element(0.0, 1.0)))
        )
    if family == "coverage":
        items = draw(st.integers(1, 8))
        return functions.WeightedCoverage(draw(arrays(np.bool_, (size, items))),
                                          draw(arrays(np.float64, items, elements=_element(0.1, 5.0))))  # fmt: skip
    queries, dim = draw(st.integers(1, 3)), draw(st.integers(1, 3))
    return functions.LogSumExp(draw(arrays(np.float64, (queries, dim), elements=_element(-2.0, 2.0))),
                               draw(arrays(np.float64, (size, dim), elements=_element(-2.0, 2.0))))  # fmt: skip


@st.composite
def non_submodular_functions(draw, max_size: int = 7):
    """Attention functions that violate diminishing returns by construction.

    RenormalisedValue: element 0 has value -a, element 1 value b > 0 and w_1 a > w_0 b, so
    adding 1 gains b alone but w_1 (a + b) / (w_0 + w_1) > b next to 0.
    OutputFidelity: elements 0 and 1 have equal weights and values m +- c u around the
    full output m (every other element comes in such pairs or sits at m) with c|u| >= |m|:
    each is far from m alone, together they are exact, so adding 1 gains more next to 0.
    """
    from theory import functions

    if draw(st.booleans()):
        size = draw(st.integers(2, max_size))
        weights = draw(arrays(np.float64, size, elements=st.floats(0.1, 1.0)))
        values = draw(arrays(np.float64, size, elements=st.floats(-3.0, 3.0)))
        values[1] = draw(st.floats(0.5, 3.0))
        values[0] = -weights[0] * values[1] / weights[1] * draw(st.floats(1.5, 4.0))
        return functions.RenormalisedValue(weights, values)
    dim = draw(st.integers(1, 3))
    center = draw(arrays(np.float64, dim, elements=st.floats(-2.0, 2.0)))
    center[0] = draw(st.sampled_from((-1.0, 1.0))) * draw(st.floats(0.5, 2.0))  # |m| >= 0.5
    pairs = draw(st.integers(1, max_size // 2))
    weights, values = [], []
    for pair in range(pairs):
        direction = draw(arrays(np.float64, dim, elements=st.floats(-1.0, 1.0)))
        direction[0] = 1.0  # |u| >= 1
        spread = (
            draw(st.floats(float(np.linalg.norm(center)), 4.0))
            if pair == 0
            else draw(st.floats(0.0, 2.0))
        )
        weight = draw(st.floats(0.1, 1.0))
        weights += [weight, weight]
        values += [center + spread * direction, center - spread * direction]
    if draw(st.booleans()):
        weights.append(draw(st.floats(0.1, 1.0)))
        values.append(center.copy())
    return functions.OutputFidelity(np.array(weights), np.array(values))


@st.composite
def dynamic_instances(draw, max_n: int = 7):
    """A dynamic selection problem: objectives f_0..f_{n-1} from an attention matrix
    (accumulated score with concave h, or facility location over the rows served so
    far), what the algorithm perceives (the truth, or the truth perturbed by <= eps),
    a budget k and whether the newest element is protected."""
    from theory.dynamic import PerturbedFunction, attention_objectives
    from theory.functions import CONCAVE

    attention = draw(weight_matrices(max_n, min_n=2))
    family = draw(st.sampled_from(("accumulated", "facility")))
    objectives = attention_objectives(attention, family, draw(st.sampled_from(CONCAVE)))
    eps = draw(st.sampled_from((0.0, 0.01, 0.1, 0.5)))
    seed = draw(st.integers(0, 2**16))
    perceived = [PerturbedFunction(f, eps, seed + i) for i, f in enumerate(objectives)]
    k = draw(st.integers(1, len(attention)))
    return objectives, perceived, k, draw(st.booleans())


@st.composite
def attention_set_functions(draw, max_size: int = 6):
    """RenormalisedValue or OutputFidelity with arbitrary weights and values: submodular or
    not, as it happens (for differential checks of the submodularity checker)."""
    from hypothesis import assume

    from theory import functions

    size = draw(st.integers(1, max_size))
    weights = draw(arrays(np.float64, size, elements=_element(0.1, 1.0)))
    if draw(st.booleans()):
        return functions.RenormalisedValue(
            weights, draw(arrays(np.float64, size, elements=_element(-2.0, 2.0)))
        )
    values = draw(arrays(np.float64, (size, draw(st.integers(1, 3))), elements=_element(-2.0, 2.0)))
    assume(np.linalg.norm(weights @ values) > 1e-3)  # the relative error needs a non-zero output
    return functions.OutputFidelity(weights, values)


@st.composite
def eviction_runs(draw, max_n: int = 8):
    """(weights, k): attention rows of one unit and a budget, for the paper's Algorithm 2."""
    weights = draw(weight_matrices(max_n, min_n=2))
    return weights, draw(st.integers(1, len(weights)))


@st.composite
def slow_drift_chains(draw, max_n: int = 7):
    """A PaperChain whose Thm D.32 hypotheses can hold: token t arrives with weight w_t
    (nothing accumulates on it later) and token 0 gains ``drift`` per step, so opt moves by
    ~drift a step; the paper's Algorithm 2 (newest evictable) picks the held sets."""
    from theory.paper import PaperChain, algorithm2_trajectory, chain_from_scores

    n = draw(st.integers(2, max_n))
    w = draw(arrays(np.float64, n, elements=_element(0.01, 1.0)))
    w[0] = 1.0  # the heaviest: with k = 1, opt then moves only by the drift
    drift = draw(st.sampled_from((0.0, 1e-5, 1e-4, 1e-3, 0.05)))
    rows = np.zeros((n, 1, n))
    for t in range(n):
        rows[t, 0, t] = w[t]
        if t:
            rows[t, 0, 0] += drift
    k = draw(st.one_of(st.just(1), st.integers(1, n)))
    held = algorithm2_trajectory(np.moveaxis(rows, 0, 1), k)
    arrays_ = chain_from_scores(rows, rows, held)
    return PaperChain(n=n, concave_name="identity", unit_labels=((0, 0),), arrays=arrays_)


@st.composite
def conditioned_functions(draw, max_size: int = 5):
    """(f, Z): an attention set function (submodular or not) and a cache Z within its ground set."""
    f = draw(attention_set_functions(max_size))
    z = np.array(draw(st.lists(st.booleans(), min_size=f.size, max_size=f.size)), dtype=bool)
    return f, z


@st.composite
def algorithm2_chains(draw):
    """A PaperChain of the paper's Algorithm 2 (exact scores, newest evictable): attention rows
    (hypotheses as D.30 uses D.28 seldom hold) or a slow drift (they often do)."""
    from theory.paper import PaperChain, algorithm2_trajectory, chain_from_scores

    if draw(st.booleans()):
        return draw(slow_drift_chains())
    weights, k = draw(eviction_runs())
    rows = weights[:, None, :]
    held = algorithm2_trajectory(weights[None], k)
    return PaperChain(n=len(weights), concave_name="identity", unit_labels=((0, 0),),
                      arrays=chain_from_scores(rows, rows, held))  # fmt: skip
