"""Trace format v1: packing, round trips for every encoding, lazy/memory-mapped access."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from h2osim.trace import (
    Trace,
    TraceError,
    pack_lower,
    packed_size,
    quantize_rows,
    row_start,
    unpack_lower,
)
from tests.strategies import softmax_rows, traces


def test_packing_known_answer():
    dense = np.array([[1.0, 0.0, 0.0], [2.0, 3.0, 0.0], [4.0, 5.0, 6.0]])
    packed = pack_lower(dense)
    assert packed.tolist() == [1, 2, 3, 4, 5, 6]
    assert packed_size(3) == 6 and [row_start(t) for t in range(4)] == [0, 1, 3, 6]
    np.testing.assert_array_equal(unpack_lower(packed, 3), dense)


def test_quantize_known_answer():
    # levels=10, row 2: cumsum [0.14, 0.28, 1.0] rounds to [1, 3, 10] -> codes [1, 2, 7]
    packed = np.concatenate([[1.0], [0.5, 0.5], [0.14, 0.14, 0.72]])
    codes = quantize_rows(packed, n=3, levels=10)
    assert codes.tolist() == [10, 5, 5, 1, 2, 7]


@given(traces(max_n=10), st.sampled_from([16, 256, 1024]))
def test_quantized_error_bound_and_exact_row_sums(trace, levels):
    for layer in trace.layers:
        packed = trace.layer_attention(int(layer)).astype(np.float64)
        codes = quantize_rows(packed, trace.n, levels)
        decoded = codes / levels
        assert np.abs(decoded - packed).max() <= 1.0 / levels + 1e-12
        sums = np.add.reduceat(
            codes.astype(np.int64), [row_start(t) for t in range(trace.n)], axis=1
        )
        assert np.all(sums == levels)


@pytest.mark.parametrize("encoding", ["float32", "float16", "quantized"])
@pytest.mark.parametrize("compress", [True, False])
def test_round_trip_every_encoding(tmp_path, synthetic_small, encoding, compress):
    path = tmp_path / "t.npz"
    synthetic_small.save(path, encoding=encoding, compress=compress)
    loaded = Trace.load(path)
    assert loaded.encoding == encoding
    assert loaded.n == synthetic_small.n and loaded.prompt_length == synthetic_small.prompt_length
    assert loaded.layers.tolist() == synthetic_small.layers.tolist()
    assert loaded.head_map.tolist() == synthetic_small.head_map.tolist()
    assert loaded.tokens == synthetic_small.tokens
    assert loaded.token_ids.tolist() == synthetic_small.token_ids.tolist()
    assert loaded.metadata == synthetic_small.metadata
    tolerance = {"float32": 0.0, "float16": 5e-4, "quantized": 1.0 / 1024}[encoding]
    for layer in loaded.layers:
        for head in range(loaded.num_heads):
            original = synthetic_small.head_matrix(int(layer), head)
            assert np.abs(loaded.head_matrix(int(layer), head) - original).max() <= tolerance + 1e-7
        np.testing.assert_array_equal(loaded.values(int(layer)), synthetic_small.values(int(layer)))


def test_uncompressed_members_are_memory_mapped(tmp_path, synthetic_small):
    path = tmp_path / "raw.npz"
    synthetic_small.save(path, compress=False)
    loaded = Trace.load(path)
    layer = int(loaded.layers[0])
    assert isinstance(loaded.layer_attention(layer), np.memmap)
    # the compressed file is read lazily, one layer at a time
    path_compressed = tmp_path / "deflated.npz"
    synthetic_small.save(path_compressed)
    lazy = Trace.load(path_compressed, validate=False)
    assert lazy._cache == {}
    lazy.row(layer, 0, 5)
    assert list(lazy._cache) == [f"attention.L{layer}"]


@given(traces(max_n=9))
def test_accessors_agree(trace):
    layer = int(trace.layers[-1])
    for t in range(trace.n):
        block = trace.rows(t)  # (L, H, t+1)
        assert block.shape == (len(trace.layers), trace.num_heads, t + 1)
        for head in range(trace.num_heads):
            np.testing.assert_array_equal(block[-1, head], trace.row(layer, head, t))
            np.testing.assert_array_equal(
                trace.head_matrix(layer, head)[t, : t + 1], trace.row(layer, head, t)
            )
    for kv in range(trace.num_kv_heads):
        heads = np.flatnonzero(trace.head_map == kv)
        stacked = np.stack([trace.head_matrix(layer, int(h)) for h in heads])
        np.testing.assert_allclose(trace.unit_matrix(layer, kv, "sum"), stacked.sum(0), rtol=1e-6)
        np.testing.assert_allclose(trace.unit_matrix(layer, kv, "max"), stacked.max(0))


def test_from_arrays_dense_equals_packed():
    dense = softmax_rows(np.random.default_rng(0).normal(size=(1, 2, 5, 5)))
    a = Trace.from_arrays(dense, head_map=[0, 0])
    b = Trace.from_arrays(pack_lower(dense), head_map=[0, 0])
    np.testing.assert_array_equal(a.head_matrix(0, 1), b.head_matrix(0, 1))
    assert a.prompt_length == 5 and a.group_size == 2 and a.num_kv_heads == 1


def test_save_is_atomic_on_failure(tmp_path, synthetic_small):
    path = tmp_path / "t.npz"
    synthetic_small.save(path)
    before = path.read_bytes()
    with pytest.raises(ValueError):
        synthetic_small.save(path, encoding="bogus")
    assert path.read_bytes() == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["t.npz"]


def test_missing_layer_is_a_clear_error(synthetic_small):
    with pytest.raises(KeyError, match="stored layers"):
        synthetic_small.row(99, 0, 0)
    with pytest.raises(TraceError, match="attention"):
        Trace.from_arrays(np.ones((1, 1, 4)), head_map=[0])  # 4 is not a triangle size
