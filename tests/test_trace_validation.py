"""Malformed traces: every corruption is rejected with one clear TraceError, nothing unpickles.

Corruptions are drawn by Hypothesis from a valid file: byte-level (truncation, flipped
bytes) and array-level (missing/unknown keys, wrong dtypes and shapes, NaN/inf, negative
probabilities, broken row sums, object arrays, wrong version, bad metadata, bad head map).
"""

from __future__ import annotations

import io
import json
import subprocess
import sys
import zipfile
from contextlib import redirect_stderr
from pathlib import Path

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from h2osim.replay import main as replay_main
from h2osim.synthetic import synthetic_trace
from h2osim.trace import Trace, TraceError

ROOT = Path(__file__).resolve().parents[1]


def _valid_arrays() -> dict[str, np.ndarray]:
    return _arrays_of(synthetic_trace(12, layers=2, heads=4, kv_heads=2, head_dim=3, seed=3))


def _arrays_of(trace: Trace) -> dict[str, np.ndarray]:
    arrays = {
        "format_version": np.int64(1),
        "layers": trace.layers,
        "head_map": trace.head_map,
        "prompt_length": np.int64(trace.prompt_length),
        "token_ids": trace.token_ids,
        "tokens": np.asarray(trace.tokens),
        "metadata": np.str_(json.dumps(trace.metadata)),
        "attention_encoding": np.str_("float32"),
    }
    for layer in trace.layers:
        arrays[f"attention.L{layer}"] = np.asarray(trace.layer_attention(int(layer)))
        arrays[f"values.L{layer}"] = np.asarray(trace.values(int(layer)))
    return arrays


VALID = _valid_arrays()
ATTENTION_KEYS = [key for key in VALID if key.startswith("attention.L")]


class _Pickled:
    """Unpickling this creates ``marker``: proof that a loader unpickled."""

    def __init__(self, marker: str):
        self.marker = marker

    def __reduce__(self):
        return (open, (self.marker, "w"))


def _write(path: Path, arrays: dict[str, np.ndarray], compress: bool) -> None:
    (np.savez_compressed if compress else np.savez)(path, **arrays)


@st.composite
def array_corruptions(draw):
    """(description, arrays, key the error must name)."""
    arrays = dict(VALID)
    kind = draw(
        st.sampled_from(
            ["missing", "unknown", "dtype", "shape", "nan", "inf", "negative", "row_sum",
             "object", "version", "metadata", "head_map", "prompt", "tokens", "values_missing",
             "values_nan", "encoding"]
        )
    )  # fmt: skip
    key = draw(st.sampled_from(ATTENTION_KEYS))
    attention = np.array(arrays[key])
    position = draw(st.integers(0, attention.size - 1))
    if kind == "missing":
        key = draw(st.sampled_from(sorted(arrays)))
        del arrays[key]
        if key.startswith("values."):
            key = "values"
    elif kind == "unknown":
        key = "extra_key"
        arrays[key] = np.zeros(3)
    elif kind == "dtype":
        arrays[key] = attention.astype(draw(st.sampled_from([np.float64, np.int32, np.float16])))
    elif kind == "shape":
        arrays[key] = attention[:, : draw(st.integers(0, attention.shape[1] - 1))]
    elif kind in ("nan", "inf", "negative"):
        value = {"nan": np.nan, "inf": np.inf, "negative": -draw(st.floats(1e-6, 1.0))}[kind]
        attention.reshape(-1)[position] = value
        arrays[key] = attention
    elif kind == "row_sum":
        attention.reshape(-1)[position] += draw(st.floats(0.01, 5.0))
        arrays[key] = attention
    elif kind == "object":
        key = draw(st.sampled_from(sorted(arrays)))
        arrays[key] = np.array([_Pickled(str(draw(st.just("MARKER"))))], dtype=object)
    elif kind == "version":
        key = "format_version"
        arrays[key] = np.int64(draw(st.integers(2, 10) | st.integers(-5, 0)))
    elif kind == "metadata":
        key = "metadata"
        arrays[key] = np.str_(draw(st.sampled_from(["{not json", "[1, 2]", "42"])))
    elif kind == "head_map":
        key = "head_map"
        arrays[key] = np.asarray(
            draw(st.sampled_from([[0, 0, 0, 1], [0, 1, 2, 3, 4], [-1, 0, 0, 1], [0, 9, 0, 9]]))
        )
    elif kind == "prompt":
        key = "prompt_length"
        arrays[key] = np.int64(draw(st.sampled_from([0, -1, 13, 1000])))
    elif kind == "tokens":
        key = "tokens"
        arrays[key] = np.asarray(["a"] * draw(st.sampled_from([0, 5, 13])))
    elif kind == "values_missing":
        key = "values"
        del arrays[draw(st.sampled_from([k for k in arrays if k.startswith("values.L")]))]
    elif kind == "values_nan":
        key = draw(st.sampled_from([k for k in arrays if k.startswith("values.L")]))
        values = np.array(arrays[key])
        values.reshape(-1)[draw(st.integers(0, values.size - 1))] = np.nan
        arrays[key] = values
    elif kind == "encoding":
        key = "attention_encoding"
        arrays[key] = np.str_(draw(st.sampled_from(["float64", "bfloat16", ""])))
    return kind, arrays, key


@settings(suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(corruption=array_corruptions(), compress=st.booleans())
def test_array_corruptions_are_rejected_by_name(tmp_path, monkeypatch, corruption, compress):
    kind, arrays, key = corruption
    monkeypatch.chdir(tmp_path)
    path = tmp_path / "bad.npz"
    _write(path, arrays, compress)
    with pytest.raises(TraceError) as error:
        Trace.load(path)
    assert key in str(error.value), (kind, str(error.value))
    assert not (tmp_path / "MARKER").exists(), "a pickle was executed"
    stderr = io.StringIO()
    with redirect_stderr(stderr):
        assert replay_main([str(path), "--no-progress"]) == 2
    lines = stderr.getvalue().strip().splitlines()
    assert len(lines) == 1 and "error:" in lines[0] and "Traceback" not in stderr.getvalue()


@pytest.fixture(scope="module")
def valid_bytes(tmp_path_factory) -> dict[bool, bytes]:
    result = {}
    for compress in (True, False):
        path = tmp_path_factory.mktemp("valid") / "valid.npz"
        _write(path, VALID, compress)
        Trace.load(path)  # the base file really is valid
        result[compress] = path.read_bytes()
    return result


@settings(suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(compress=st.booleans(), cut=st.floats(0.0, 0.999))
def test_truncated_files_are_rejected(tmp_path, valid_bytes, compress, cut):
    data = valid_bytes[compress]
    path = tmp_path / "cut.npz"
    path.write_bytes(data[: int(cut * len(data))])
    with pytest.raises(TraceError, match="cut.npz"):
        Trace.load(path)


@settings(suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    compress=st.booleans(),
    flips=st.lists(st.tuples(st.floats(0, 0.9999), st.integers(1, 255)), min_size=1, max_size=4),
)
def test_flipped_bytes_never_crash(tmp_path, valid_bytes, compress, flips):
    data = bytearray(valid_bytes[compress])
    for where, mask in flips:
        data[int(where * len(data))] ^= mask
    path = tmp_path / "flipped.npz"
    path.write_bytes(bytes(data))
    try:
        trace = Trace.load(path)
    except TraceError as error:  # the only exception type a damaged file may raise
        assert str(error)
    else:  # a flip that leaves a valid trace (e.g. a low mantissa bit) must still read back
        for layer in trace.layers:
            assert np.isfinite(trace.head_matrix(int(layer), 0)).all()


def test_not_a_zip_and_non_npy_member(tmp_path):
    text = tmp_path / "notes.npz"
    text.write_text("hello")
    with pytest.raises(TraceError, match="not a readable .npz"):
        Trace.load(text)
    odd = tmp_path / "odd.npz"
    with zipfile.ZipFile(odd, "w") as archive:
        archive.writestr("readme.txt", "hi")
    with pytest.raises(TraceError, match="readme.txt"):
        Trace.load(odd)
    with pytest.raises(FileNotFoundError):
        Trace.load(tmp_path / "missing.npz")


def test_cli_exit_2_without_traceback_in_a_real_process(tmp_path):
    arrays = dict(VALID)
    arrays[ATTENTION_KEYS[0]] = np.array(arrays[ATTENTION_KEYS[0]]) * 2  # rows sum to 2
    path = tmp_path / "bad.npz"
    _write(path, arrays, True)
    done = subprocess.run([sys.executable, "-m", "h2osim.replay", str(path)], cwd=ROOT,
                          capture_output=True, text=True, timeout=120)  # fmt: skip
    assert done.returncode == 2
    assert "Traceback" not in done.stderr
    assert done.stderr.strip().count("\n") == 0 and ATTENTION_KEYS[0] in done.stderr


# --------------------------------------------------------------------------- sparse (v2)
def _sparse_arrays() -> dict[str, np.ndarray]:
    """A valid sparse (format v2) trace's members: the v1 base re-encoded at epsilon 1e-2."""
    from h2osim.trace import sparsify_packed

    trace = synthetic_trace(12, layers=2, heads=4, kv_heads=2, head_dim=3, seed=3)
    arrays = {
        key: value for key, value in _arrays_of(trace).items() if not key.startswith("attention.")
    }
    arrays.update(format_version=np.int64(2), attention_encoding=np.str_("sparse"),
                  attention_epsilon=np.float64(1e-2))  # fmt: skip
    for layer in trace.layers:
        rows = sparsify_packed(trace.layer_attention(int(layer)), trace.n, 1e-2)
        for part in ("offsets", "indices", "values", "dropped"):
            arrays[f"attention_{part}.L{layer}"] = np.asarray(getattr(rows, part))
    return arrays


SPARSE_VALID = _sparse_arrays()
SPARSE_KINDS = ("offsets_start", "offsets_end", "offsets_order", "offsets_count", "index_range",
                "index_order", "index_dtype", "index_budget", "values_nan", "values_negative",
                "values_dtype", "values_shape", "values_mixed", "row_sum", "dropped_over",
                "dropped_negative", "dropped_nan", "dropped_shape", "epsilon_missing",
                "epsilon_range", "epsilon_dtype", "version", "dense_member", "missing")  # fmt: skip


@st.composite
def sparse_corruptions(draw):
    """(kind, arrays, the key the error must name) from the valid sparse trace."""
    arrays = {key: np.array(value) for key, value in SPARSE_VALID.items()}
    kind = draw(st.sampled_from(SPARSE_KINDS))
    layer = draw(st.sampled_from([0, 1]))
    part = lambda name: f"attention_{name}.L{layer}"  # noqa: E731
    offsets, indices = arrays[part("offsets")], arrays[part("indices")]
    values, dropped = arrays[part("values")], arrays[part("dropped")]
    heads = 4
    counts = np.diff(offsets)
    row = draw(st.integers(0, counts.size - 1))
    if kind == "offsets_start":
        key = part("offsets")
        arrays[key] = offsets + draw(st.integers(1, 3))
    elif kind == "offsets_end":
        key = part("offsets")
        offsets[-1] -= draw(st.integers(1, 2))
    elif kind == "offsets_order":  # one inner offset moves past its neighbour
        key = part("offsets")
        inner = draw(st.integers(1, offsets.size - 2))
        offsets[inner] = offsets[inner + 1] + draw(st.integers(0, 2))
    elif kind == "offsets_count":  # row 0 of a head claims two entries (it has one key)
        key = part("offsets")
        offsets[1:] += 1
        arrays[part("indices")] = np.insert(indices, 0, 0)
        arrays[part("values")] = np.insert(values, 0, np.float32(0.0))
    elif kind in ("index_range", "index_order"):
        key = part("indices")
        wide = np.flatnonzero(counts >= 2)
        row = int(draw(st.sampled_from(wide.tolist())))
        begin = offsets[row]
        if kind == "index_range":  # a key after the row's own position
            indices[offsets[row + 1] - 1] = row // heads + draw(st.integers(1, 100))
        else:  # two keys swapped, or one repeated
            if draw(st.booleans()):
                indices[begin], indices[begin + 1] = indices[begin + 1], indices[begin]
            else:
                indices[begin + 1] = indices[begin]
    elif kind == "index_dtype":
        key = part("indices")
        arrays[key] = indices.astype(
            draw(st.sampled_from([np.uint32, np.int64, np.int16, np.float32]))
        )
    elif kind == "index_budget":  # more entries than the dense rows have
        key = part("indices")
        extra = 4 * 78 + 1 - indices.size
        arrays[key] = np.concatenate([indices, np.zeros(extra, indices.dtype)])
        arrays[part("values")] = np.concatenate([values, np.zeros(extra, values.dtype)])
        offsets[-1] += extra
    elif kind in ("values_nan", "values_negative"):
        key = part("values")
        values[draw(st.integers(0, values.size - 1))] = np.nan if kind == "values_nan" else -0.25
    elif kind == "values_dtype":
        key = part("values")
        arrays[key] = values.astype(draw(st.sampled_from([np.float64, np.uint16, np.int32])))
    elif kind == "values_shape":
        key = part("values")
        arrays[key] = values[: draw(st.integers(0, values.size - 1))]
    elif kind == "values_mixed":  # float16 in one layer, float32 in the other
        key = "attention_values.L1"
        arrays[key] = arrays[key].astype(np.float16)
    elif kind == "row_sum":
        key = part("values")
        values[draw(st.integers(0, values.size - 1))] += draw(st.floats(0.01, 2.0))
    elif kind in ("dropped_over", "dropped_negative", "dropped_nan"):
        key = part("dropped")
        flat = dropped.reshape(-1)
        position = draw(st.integers(0, flat.size - 1))
        flat[position] = {"dropped_over": draw(st.floats(0.0102, 0.5)), "dropped_negative": -1e-3,
                          "dropped_nan": np.nan}[kind]  # fmt: skip
    elif kind == "dropped_shape":
        key = part("dropped")
        arrays[key] = dropped.T.copy()
    elif kind == "epsilon_missing":
        key = "attention_epsilon"
        del arrays[key]
    elif kind == "epsilon_range":
        key = "attention_epsilon"
        arrays[key] = np.float64(draw(st.sampled_from([-1e-3, 0.51, np.nan, np.inf])))
    elif kind == "epsilon_dtype":
        key = "attention_epsilon"
        arrays[key] = draw(st.sampled_from([np.int64(0), np.array([1e-4]), np.str_("1e-4")]))
    elif kind == "version":  # sparse needs version 2, and version 2 is sparse only
        key = "format_version"
        arrays[key] = np.int64(draw(st.sampled_from([1, 3])))
    elif kind == "dense_member":
        key = "attention.L0"
        arrays[key] = VALID["attention.L0"]
    else:  # missing
        key = draw(st.sampled_from([f"attention_{name}.L{layer}"
                                    for name in ("offsets", "indices", "values", "dropped")]))  # fmt: skip
        del arrays[key]
    return kind, arrays, key


def test_the_sparse_base_is_valid(tmp_path):
    path = tmp_path / "sparse.npz"
    _write(path, SPARSE_VALID, True)
    trace = Trace.load(path)
    assert trace.encoding == "sparse" and trace.format_version == 2
    assert trace.dropped_mass(0).max() > 0  # the base drops mass: dropped_over is a real lie


@settings(max_examples=120, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(corruption=sparse_corruptions(), compress=st.booleans())
def test_sparse_corruptions_are_rejected_by_name(tmp_path, monkeypatch, corruption, compress):
    kind, arrays, key = corruption
    monkeypatch.chdir(tmp_path)
    path = tmp_path / "bad.npz"
    _write(path, arrays, compress)
    with pytest.raises(TraceError) as error:
        trace = Trace.load(path, validate=kind not in ("index_range", "index_order"))
        trace.head_matrix(0, 0), trace.head_matrix(1, 0)  # structure: checked even unvalidated
    assert key in str(error.value), (kind, str(error.value))
    assert "\n" not in str(error.value)
    stderr = io.StringIO()
    with redirect_stderr(stderr):
        assert replay_main([str(path), "--no-progress"]) == 2
    lines = stderr.getvalue().strip().splitlines()
    assert len(lines) == 1 and "error:" in lines[0] and "Traceback" not in stderr.getvalue()
