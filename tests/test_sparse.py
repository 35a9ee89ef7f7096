"""The sparse trace encoding (format v2, issue #16 item 2): what it keeps, what it reads back,
and the bound it promises.

The bound (docs/trace-format.md, "What epsilon bounds"): for a fixed eviction schedule, the
retained mass of every row computed from the sparse rows differs from the one computed from
the dense rows by at most the row's dropped share, <= epsilon (plus float32 rounding of the
engine's per-row metric), hence the replay summary (a mean of rows) by at most epsilon too.
Tested on random attention (Hypothesis), on a synthetic LLM-like trace and on the shipped
SmolLM2 traces; a bound ten times tighter must fail on the same inputs.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from h2osim.engine import ReplayConfig, replay
from h2osim.policies.base import Policy
from h2osim.synthetic import synthetic_trace
from h2osim.trace import (
    SPARSE,
    Trace,
    TraceError,
    pack_lower,
    row_start,
    sparsify_packed,
    sparsify_rows,
)
from tests.strategies import softmax_rows, traces

ROOT = Path(__file__).resolve().parents[1]
ROUNDING = 2.0**-22  # the engine stores per-row retained mass as float32: 2 ulps at 1
REAL_TRACES = sorted((ROOT / "traces").glob("smollm2-*.npz"))


class FixedSchedule(Policy):
    """Replays a given schedule: at step t each unit evicts the tokens ``evicted_at == t``."""

    name = "fixed-schedule"

    def __init__(self, evicted_at: np.ndarray) -> None:
        self.evicted_at = evicted_at  # (units, n), -1 = never

    def evict(self, t: int, kept: np.ndarray, count: int) -> np.ndarray:
        return np.stack([np.flatnonzero(row == t) for row in self.evicted_at])


def sparse_copy(trace: Trace, tmp_path: Path, epsilon: float, **save) -> Trace:
    path = tmp_path / f"sparse-{epsilon:g}.npz"
    trace.save(path, encoding=SPARSE, epsilon=epsilon, **save)
    return Trace.load(path)


def retained_differences(dense: Trace, sparse: Trace, policy: str, budget=0.2, config=None):
    """(per-row |difference| (n, units), |summary difference|, share of eviction decisions
    that differ when the policy runs on each) for one policy's schedule on the dense trace."""
    config = config or ReplayConfig(output_error=False)
    exact = replay(dense, policy, budget, config=config)
    fixed = replay(sparse, FixedSchedule(exact.evicted_at), budget, config=config)
    assert np.array_equal(fixed.evicted_at, exact.evicted_at)  # the same schedule
    rows = np.abs(fixed.retained_mass.astype(np.float64) - exact.retained_mass)
    summary = abs(fixed.summary["retained_mass"] - exact.summary["retained_mass"])
    own = replay(sparse, policy, budget, config=config)
    return rows, summary, float(np.mean(own.evicted_at != exact.evicted_at))


def dropped_share(sparse: Trace) -> float:
    """The largest dropped share of a row in the trace (what bounds the difference)."""
    worst = 0.0
    for layer in sparse.layers:
        rows = sparse.sparse_layer(int(layer))
        kept = np.add.reduceat(rows.values.astype(np.float64), rows.offsets[:-1])
        dropped = rows.dropped.reshape(-1).astype(np.float64)
        worst = max(worst, float((dropped / (kept + dropped)).max()))
    return worst


# --------------------------------------------------------------------------- what is kept
def test_sparsify_known_answers():
    # the docstring's example: 0.00004 <= 1e-4 x 1 is dropped, the rest stays
    counts, indices, values, dropped = sparsify_rows(np.array([[[0.5, 0.00004, 0.49996]]]), 2, 1e-4)
    assert counts.tolist() == [[2]] and indices.tolist() == [0, 2]
    assert values.tolist() == pytest.approx([0.5, 0.49996]) and dropped[0, 0] == pytest.approx(4e-5)
    # the smallest first, while the sum stays <= epsilon: 3e-5 + 5e-5 = 8e-5 <= 1e-4, + 6e-5 is not
    row = np.array([[[0.99986, 5e-5, 6e-5, 3e-5]]])
    counts, indices, _, dropped = sparsify_rows(row, 3, 1e-4)
    assert indices.tolist() == [0, 2] and dropped[0, 0] == pytest.approx(8e-5)
    # ties: the earlier key goes first; keys after the row's own position never count
    counts, indices, _, _ = sparsify_rows(np.array([[[0.5, 0.25, 0.25, 7.0]]]), 2, 0.25)
    assert indices.tolist() == [0, 2]
    # epsilon 0 drops exact zeros only; the largest entry stays even when all could go
    counts, indices, _, dropped = sparsify_rows(np.array([[[0.0, 1.0, 0.0]]]), 2, 0.0)
    assert indices.tolist() == [1] and dropped[0, 0] == 0
    _, indices, _, _ = sparsify_rows(np.array([[[0.3, 0.7]]]), 1, 0.5)
    assert indices.tolist() == [1]


@settings(max_examples=40, deadline=None)
@given(traces(max_n=12), st.sampled_from([0.0, 1e-4, 1e-2, 0.2]))
def test_the_dropped_entries_are_the_smallest_and_as_many_as_epsilon_allows(trace, epsilon):
    for layer in trace.layers:
        rows = sparsify_packed(trace.layer_attention(int(layer)), trace.n, epsilon)
        for t in range(trace.n):
            for head in range(trace.num_heads):
                dense = trace.row(int(layer), head, t).astype(np.float64)
                r = t * trace.num_heads + head
                keep = np.asarray(rows.indices[rows.offsets[r] : rows.offsets[r + 1]], dtype=int)
                gone = np.setdiff1d(np.arange(t + 1), keep)
                assert np.array_equal(
                    rows.values[rows.offsets[r] : rows.offsets[r + 1]], dense[keep]
                )
                assert rows.dropped[t, head] == pytest.approx(
                    dense[gone].sum(), rel=1e-6, abs=1e-12
                )
                assert dense[gone].sum() <= epsilon * dense.sum() + 1e-15
                if gone.size:  # every dropped entry is <= every kept one
                    assert dense[gone].max() <= dense[keep].min()
                if keep.size > 1:  # maximal: dropping the smallest kept entry too breaks the bound
                    assert dense[gone].sum() + dense[keep].min() > epsilon * dense.sum()


# --------------------------------------------------------------------------- reading back
@pytest.mark.parametrize("compress", [True, False])
def test_round_trip_reads_the_dense_rows_with_dropped_keys_zero(
    tmp_path, synthetic_small, compress
):
    sparse = sparse_copy(synthetic_small, tmp_path, 1e-3, compress=compress)
    assert sparse.format_version == 2 and sparse.encoding == SPARSE and sparse.epsilon == 1e-3
    assert sparse.sparse_dtype == np.float32
    assert sparse.describe().endswith("sparse (epsilon 0.001, float32), values")
    for layer in synthetic_small.layers:
        layer = int(layer)
        dense_packed = synthetic_small.layer_attention(layer)
        packed = sparse.layer_attention(layer)  # decoded (H, P)
        assert np.all((packed == 0) | (packed == dense_packed))
        lost = (dense_packed - packed).astype(np.float64)
        for head in range(synthetic_small.num_heads):
            per_row = np.add.reduceat(lost[head], [row_start(t) for t in range(sparse.n)])
            np.testing.assert_allclose(per_row, sparse.dropped_mass(layer)[head], atol=1e-8)
            np.testing.assert_array_equal(
                sparse.head_matrix(layer, head)[5, :6], packed[head, 15:21]
            )
        for t in (0, 1, sparse.n - 1):
            block = sparse.rows(t, [layer], np.float64)[0]
            np.testing.assert_array_equal(block, packed[:, row_start(t) : row_start(t + 1)])
            np.testing.assert_array_equal(sparse.row(layer, 2, t), block[2])
        np.testing.assert_array_equal(sparse.values(layer), synthetic_small.values(layer))
    dense_unit = synthetic_small.unit_matrix(int(synthetic_small.layers[0]), 1, "max")
    assert np.abs(sparse.unit_matrix(int(sparse.layers[0]), 1, "max") - dense_unit).max() <= 1e-3
    if not compress:  # uncompressed members are memory-mapped, as in v1
        assert isinstance(sparse.sparse_layer(int(sparse.layers[0])).indices, np.memmap)


def test_a_sparse_trace_saves_as_itself_and_only_as_itself(tmp_path, synthetic_small):
    sparse = sparse_copy(synthetic_small, tmp_path, 1e-3)
    again = tmp_path / "again.npz"
    sparse.save(again)
    copy = Trace.load(again)
    assert copy.epsilon == 1e-3 and copy.sparse_dtype == np.float32
    for part in ("offsets", "indices", "values", "dropped"):
        assert np.array_equal(
            getattr(copy.sparse_layer(0), part), getattr(sparse.sparse_layer(0), part)
        )
    with pytest.raises(ValueError, match="saves only as sparse"):
        sparse.save(tmp_path / "dense.npz", encoding="float16")
    with pytest.raises(ValueError, match="already sparse"):
        sparse.save(tmp_path / "other.npz", encoding=SPARSE, epsilon=1e-2)


def test_float16_traces_keep_float16_values_and_dense_files_stay_v1(tmp_path, synthetic_small):
    half = tmp_path / "half.npz"
    synthetic_small.save(half, encoding="float16")
    dense = Trace.load(half)
    assert dense.format_version == 1  # dense encodings are written as v1, exactly as before
    sparse = sparse_copy(dense, tmp_path, 1e-4)
    assert sparse.sparse_dtype == np.float16
    packed = sparse.layer_attention(0)
    assert np.all((packed == 0) | (packed == dense.layer_attention(0).astype(np.float32)))
    quantized = tmp_path / "q.npz"
    synthetic_small.save(quantized, encoding="quantized")
    codes = Trace.load(quantized)
    from_codes = sparse_copy(codes, tmp_path, 0.0)  # only the zero codes are dropped
    for head in range(codes.num_heads):
        np.testing.assert_array_equal(from_codes.head_matrix(0, head), codes.head_matrix(0, head))
    assert all(from_codes.dropped_mass(int(layer)).max() == 0 for layer in from_codes.layers)


def test_the_index_dtype_follows_n():
    from h2osim.trace import sparse_index_dtype

    assert sparse_index_dtype(4096) == np.uint16 and sparse_index_dtype(65_536) == np.uint16
    assert sparse_index_dtype(65_537) == np.uint32


def test_from_arrays_builds_a_sparse_trace_and_needs_epsilon(synthetic_small):
    layer = int(synthetic_small.layers[0])
    rows = sparsify_packed(synthetic_small.layer_attention(layer), synthetic_small.n, 1e-4)
    built = Trace.from_arrays({layer: rows}, head_map=synthetic_small.head_map, epsilon=1e-4)
    assert built.encoding == SPARSE and built.n == synthetic_small.n
    with pytest.raises(TraceError, match="attention_epsilon"):
        Trace.from_arrays({layer: rows}, head_map=synthetic_small.head_map)


# --------------------------------------------------------------------------- the bound
@settings(max_examples=30, deadline=None)
@given(traces(max_n=14, min_n=2), st.sampled_from([0.0, 1e-4, 1e-2, 0.1]),
       st.sampled_from(["h2o", "lru", "tova", "random"]), st.sampled_from([0.3, 0.6]))  # fmt: skip
def test_the_retained_mass_bound_on_random_attention(
    tmp_path_factory, trace, epsilon, policy, budget
):
    sparse = sparse_copy(trace, tmp_path_factory.mktemp("bound"), epsilon)
    rows, summary, _ = retained_differences(trace, sparse, policy, budget)
    assert rows.max() <= epsilon + ROUNDING
    assert summary <= epsilon + ROUNDING
    if epsilon == 0:
        assert rows.max() == 0  # nothing but exact zeros was dropped


@pytest.fixture(scope="module")
def llm_like(tmp_path_factory):
    """A synthetic LLM-like float32 trace (n=160) and its sparse copies at 1e-4 and 1e-2."""
    dense = synthetic_trace(160, layers=2, heads=6, kv_heads=3, head_dim=4, seed=11, values=False)
    folder = tmp_path_factory.mktemp("llm")
    return dense, {epsilon: sparse_copy(dense, folder, epsilon) for epsilon in (1e-4, 1e-2)}


@pytest.mark.parametrize("epsilon", [1e-4, 1e-2])
def test_the_bound_holds_and_a_ten_times_tighter_one_fails(llm_like, epsilon):
    dense, sparse = llm_like
    worst = 0.0
    for policy in ("h2o", "lru", "window"):
        rows, summary, _ = retained_differences(dense, sparse[epsilon], policy)
        assert rows.max() <= epsilon + ROUNDING and summary <= epsilon + ROUNDING
        worst = max(worst, rows.max())
    assert worst <= dropped_share(sparse[epsilon]) + ROUNDING  # the sharper, per-trace form
    assert worst > epsilon / 10 + ROUNDING, (
        "a bound of epsilon/10 would have passed: too weak a test"
    )


@pytest.fixture(scope="module", params=[path.name for path in REAL_TRACES])
def real(request, tmp_path_factory):
    """A shipped SmolLM2 trace (two of its layers, to stay fast) and sparse copies."""
    trace = Trace.load(ROOT / "traces" / request.param)
    layers = [int(layer) for layer in trace.layers[[0, -1]]]
    folder = tmp_path_factory.mktemp("real")
    return trace, layers, {epsilon: sparse_copy(trace, folder, epsilon) for epsilon in (1e-4, 3e-3)}


def test_the_bound_on_the_shipped_smollm2_traces(real):
    """The shipped traces are quantized (multiples of 1/1024): at 1e-4 only zero codes go
    (difference exactly 0); at 3e-3 up to 3 codes per row do."""
    trace, layers, sparse = real
    config = ReplayConfig(output_error=False, layers=tuple(layers))
    rows, summary, _ = retained_differences(trace, sparse[1e-4], "h2o", config=config)
    assert rows.max() == 0 and summary == 0
    worst = 0.0
    for policy in ("h2o", "lru"):
        rows, summary, _ = retained_differences(trace, sparse[3e-3], policy, config=config)
        assert rows.max() <= 3e-3 + ROUNDING and summary <= 3e-3 + ROUNDING
        worst = max(worst, rows.max())
    assert worst > 3e-4 + ROUNDING, "epsilon/10 would have passed on this real trace"


def test_a_real_shipped_trace_converts_through_the_cli(tmp_path, capsys):
    from h2osim.dump import main

    target = tmp_path / "chat-sparse.npz"
    assert main(["--convert", str(REAL_TRACES[0]), "-o", str(target), "--epsilon", "1e-3"]) == 0
    out = capsys.readouterr().out
    assert "sparse (epsilon 0.001, float32)" in out and "kept " in out
    loaded = Trace.load(target)
    assert loaded.encoding == SPARSE and loaded.n == Trace.load(REAL_TRACES[0]).n


@pytest.mark.parametrize(
    ("argv", "message"),
    [(["--encoding", "float16", "--epsilon", "1e-3"], "--epsilon applies to --encoding sparse"),
     (["--epsilon", "0.9"], "--epsilon"), (["--epsilon", "nan"], "--epsilon"),
     (["--sparse-dtype", "float16", "--encoding", "quantized"], "--sparse-dtype applies")],
)  # fmt: skip
def test_convert_refuses_bad_flags_in_one_line(tmp_path, capsys, synthetic_small, argv, message):
    from h2osim.dump import main

    source = tmp_path / "in.npz"
    synthetic_small.save(source)
    assert main(["--convert", str(source), "-o", str(tmp_path / "out.npz"), *argv]) == 2
    err = capsys.readouterr().err.strip()
    assert "\n" not in err and message in err and "Traceback" not in err
    assert not (tmp_path / "out.npz").exists()


def test_convert_a_sparse_trace_to_dense_is_one_clear_line(tmp_path, capsys, synthetic_small):
    from h2osim.dump import main

    sparse = tmp_path / "s.npz"
    synthetic_small.save(sparse, encoding=SPARSE)
    assert (
        main(["--convert", str(sparse), "-o", str(tmp_path / "d.npz"), "--encoding", "float16"])
        == 2
    )
    assert "saves only as sparse" in capsys.readouterr().err
    assert main(["--convert", str(tmp_path / "missing.npz"), "-o", str(tmp_path / "d.npz")]) == 2


def test_the_sparse_dense_packed_softmax_known_answer():
    """A hand-made row block: causal softmax rows of known logits, sparsified."""
    logits = np.log(np.array([[[1, 1, 1], [1, 1, 1], [1000, 1, 1]]], dtype=np.float64))
    packed = pack_lower(softmax_rows(logits)).astype(np.float32)  # (1, 6)
    rows = sparsify_packed(packed, 3, 2.5e-3)
    # row 2 is [1000, 1, 1] / 1002: one 1/1002 (~1e-3) fits, two (~2e-3) fit too
    assert rows.offsets.tolist() == [0, 1, 3, 4] and rows.indices.tolist() == [0, 0, 1, 0]
    assert rows.dropped[2, 0] == pytest.approx(2 / 1002, rel=1e-6)
