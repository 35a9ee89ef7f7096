"""Attention traces: the ``.npz`` file formats v1 (dense) and v2 (sparse), their validation,
and lazy access.

A trace holds the attention probabilities of a full-cache model run, per stored layer
and query head, for causal rows t = 0..n-1 (row t has t+1 entries). Rows 0..P-1 come
from the prompt (prefill), the rest from decoding. See docs/trace-format.md for the
byte-level contract; in short, an ``.npz`` (zip of ``.npy``) with these members:

=======================  ========================  =====================================
key                      dtype / shape             meaning
=======================  ========================  =====================================
format_version           int64 ()                  1 (dense encodings) or 2 (sparse)
layers                   int64 (L,)                model layer index of each stored layer
head_map                 int64 (H,)                query head -> KV head (GQA groups)
prompt_length            int64 ()                  P, rows 0..P-1 are prefill rows
token_ids                int64 (n,)                the token ids
tokens                   unicode (n,)              their text pieces
metadata                 unicode ()                JSON object: model, source hash, ...
attention_encoding       unicode ()                "float32" | "float16" | "quantized" | "sparse"
attention_levels         int64 ()                  only for "quantized": levels per unit
attention.L{l}           (H, n(n+1)/2)             dense: packed lower triangle, row t at t(t+1)/2
attention_epsilon        float64 ()                only for "sparse": dropped mass per row
attention_offsets.L{l}   int64 (n*H+1,)            sparse: row (t, h) = r = t*H+h keeps
attention_indices.L{l}   uint16 (nnz,)             entries offsets[r]:offsets[r+1]: key
attention_values.L{l}    float32/16 (nnz,)         indices (increasing), probabilities,
attention_dropped.L{l}   float32 (n, H)            and the mass the row left out
values.L{l}              float16/32 (KVH, n, d)    optional value vectors
key_norms.L{l}           float32 (KVH, n)          optional L2 norms of the cached keys
=======================  ========================  =====================================

The "quantized" encoding is lossy but keeps every row sum exact: it stores the integer
differences of the rounded cumulative row sums, ``d_j = round(L c_j) - round(L c_{j-1})``
with ``c_j`` the cumulative sum of the row and L the levels (default 1024), so each
probability is off by at most 1/L (< 1e-3 for L = 1024) and the row still sums to 1.
Mostly-zero integers compress far better than float16.

The "sparse" encoding (issue #16) keeps, per row, the largest entries until the dropped
mass is <= epsilon x the row total (:func:`sparsify_rows`); kept entries are stored exactly
(float32, or float16 from a float16 trace), so for any fixed eviction schedule the retained
mass of every row differs from the dense row's by at most epsilon (docs/trace-format.md).
A sparse row reads as the dense row with the dropped keys set to 0.

Loading never unpickles (no pickle-capable dtype gets past the strict ``.npy`` header
parser). Members stored uncompressed are memory-mapped after a CRC-32 check; compressed
members are decompressed one layer at a time on first use, in bounded chunks. Nothing is
allocated before its declared size is checked against :class:`LoadLimits` (the budget the
trace's own n, layers and heads imply, capped by the memory this process can use).
Every problem is reported as :class:`TraceError` naming the key and what is wrong.
"""

from __future__ import annotations

import contextlib
import functools
import json
import math
import os
import re
import stat
import struct
import zipfile
import zlib
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path
from typing import Any

import numpy as np

from h2osim.errors import TraceError
from h2osim.files import atomic_write, printable

FORMAT_VERSION = 1  # files with a dense encoding (every v1 file reads exactly as before)
SPARSE_FORMAT_VERSION = 2  # files with the sparse encoding (v2 = v1 + "sparse")
FORMAT_VERSIONS = (FORMAT_VERSION, SPARSE_FORMAT_VERSION)
ENCODINGS = ("float32", "float16", "quantized")  # the dense (v1) encodings
SPARSE = "sparse"
ALL_ENCODINGS = ENCODINGS + (SPARSE,)
DEFAULT_LEVELS = 1024
DEFAULT_EPSILON = 1e-4  # the sparse encoding's default dropped mass per row
MAX_EPSILON = 0.5
SPARSE_VALUE_DTYPES = ("float32", "float16")
AGGREGATIONS = ("sum", "mean", "max")

# Row-sum tolerance per encoding: fp32 softmax rows sum to 1 within ~1e-6; fp16 rounds
# each probability to a relative 2**-11, so a row sum is off by at most ~5e-4.
ROW_SUM_TOLERANCE = {"float32": 1e-4, "float16": 2e-3}
# A sparse row's stored dropped mass may exceed epsilon x its total by float32 rounding only.
DROPPED_SLACK = (1e-5, 1e-12)  # (relative, absolute)
_SPARSIFY_ELEMENTS = 2**20  # dense entries sparsified at once (bounds its float64 temporaries)

_SPARSE_PARTS = ("attention_offsets", "attention_indices", "attention_values", "attention_dropped")
_SCALAR_KEYS = ("format_version", "prompt_length", "metadata", "attention_encoding")
_REQUIRED_KEYS = ("format_version", "layers", "head_map", "prompt_length", "token_ids",
                  "tokens", "metadata", "attention_encoding")  # fmt: skip


# What reading a damaged zip/npy can raise; all become TraceError.
_READ_ERRORS = (zipfile.BadZipFile, zlib.error, OSError, EOFError, ValueError, SyntaxError,
                struct.error, OverflowError, NotImplementedError, RuntimeError, LookupError,
                TypeError, UnicodeError)  # fmt: skip


def aggregate_heads(scores: np.ndarray, aggregation: str, axis: int) -> np.ndarray:
    """Combine a KV group's query heads along ``axis``: the one GQA rule of h2osim.

    Replay, live eviction and the oracles all call it, so a unit's score means the same
    everywhere. Example: heads [[0.5, 0.5], [0.9, 0.1]] along axis 0 -> sum [1.4, 0.6],
    mean [0.7, 0.3], max [0.9, 0.5].
    """
    if aggregation == "sum":
        return scores.sum(axis=axis)
    if aggregation == "mean":
        return scores.mean(axis=axis)
    if aggregation == "max":
        return scores.max(axis=axis)
    raise ValueError(f"aggregation must be one of {AGGREGATIONS}, got {aggregation!r}")


def packed_size(n: int) -> int:
    """Entries in the packed lower triangle of an n x n matrix. Example: n=3 -> 6."""
    return n * (n + 1) // 2


def row_start(t: int) -> int:
    """Offset of row t in a packed lower triangle. Example: t=3 -> 6 (rows 0,1,2 hold 1+2+3)."""
    return t * (t + 1) // 2


@functools.lru_cache(maxsize=8)
def _tril_indices(n: int) -> tuple[np.ndarray, np.ndarray]:
    """``np.tril_indices(n)``, computed once per n (it is the packed order of a row)."""
    rows, cols = np.tril_indices(n)
    rows.flags.writeable = False
    cols.flags.writeable = False
    return rows, cols


def pack_lower(dense: np.ndarray) -> np.ndarray:
    """Pack the lower triangles of ``(..., n, n)`` matrices into ``(..., n(n+1)/2)``.

    Example: [[1, 0], [2, 3]] -> [1, 2, 3].
    """
    n = dense.shape[-1]
    if dense.shape[-2] != n:
        raise ValueError(f"pack_lower needs square matrices, got shape {dense.shape}")
    rows, cols = _tril_indices(n)
    return dense[..., rows, cols]


def unpack_lower(packed: np.ndarray, n: int) -> np.ndarray:
    """Inverse of :func:`pack_lower`; the upper triangle is zero. ``(..., P) -> (..., n, n)``."""
    rows, cols = _tril_indices(n)
    dense = np.zeros(packed.shape[:-1] + (n, n), dtype=packed.dtype)
    dense[..., rows, cols] = packed
    return dense


def quantize_rows(packed: np.ndarray, n: int, levels: int = DEFAULT_LEVELS) -> np.ndarray:
    """Encode packed probability rows as uint16 differences of rounded cumulative sums.

    Each decoded probability (``code / levels``) is within 1/levels of the input and each
    row sums to exactly ``levels`` (a row whose sum is off 1 is closed on its last key). Example, levels=10: row [0.14, 0.14, 0.72]
    -> cumsum [0.14, 0.28, 1.0] -> rounded [1, 3, 10] -> codes [1, 2, 7].
    """
    if not 1 <= levels <= np.iinfo(np.uint16).max:
        raise ValueError(f"levels must be in [1, 65535], got {levels}")
    starts = np.array([row_start(t) for t in range(n)], dtype=np.int64)
    values = np.asarray(packed, dtype=np.float64)
    running = np.cumsum(values, axis=-1)  # (..., P), cumulative over all rows
    before_row = np.concatenate([np.zeros(values.shape[:-1] + (1,)), running], axis=-1)
    offsets = np.repeat(before_row[..., starts], np.arange(1, n + 1), axis=-1)
    rounded = np.rint((running - offsets) * levels).astype(np.int64)  # per-row cumsum
    # Close every row at exactly `levels` (the format promises exact row sums): a row whose
    # sum is off 1 (fp16 rounding) changes only its last code(s).
    ends = starts + np.arange(1, n + 1) - 1
    rounded = np.minimum(rounded, levels)
    rounded[..., ends] = levels
    codes = np.diff(rounded, axis=-1, prepend=0)
    codes[..., starts] = rounded[..., starts]  # each row restarts its cumulative sum
    return codes.astype(np.uint16)


def sparse_index_dtype(n: int) -> np.dtype:
    """Index dtype of the sparse encoding: uint16 while every key index fits (n <= 65,536,
    the loader's default token limit), else uint32. Example: n=4096 -> uint16."""
    return np.dtype(np.uint16 if n <= 2**16 else np.uint32)


@dataclass(frozen=True)
class SparseRows:
    """One layer's attention in the sparse encoding: a CSR layout of flat arrays, rows in
    time-major order (row ``r = t * H + h`` is query t of query head h).

    ``offsets`` ``(n*H + 1,)`` int64: row r keeps entries ``offsets[r]:offsets[r+1]``;
    ``indices`` ``(nnz,)`` uint16/uint32: their key positions, strictly increasing in a row;
    ``values`` ``(nnz,)`` float32/float16: their probabilities, exactly as in the dense row;
    ``dropped`` ``(n, H)`` float32: the mass of the entries the row left out.
    Example (H=1, n=2, rows [1.0] and [0.99995, 0.00005], epsilon 1e-4): offsets [0, 1, 2],
    indices [0, 0], values [1.0, 0.99995], dropped [[0], [0.00005]].
    """

    offsets: np.ndarray
    indices: np.ndarray
    values: np.ndarray
    dropped: np.ndarray

    @property
    def nnz(self) -> int:
        return int(self.offsets[-1])

    @classmethod
    def concatenate(cls, pieces: Sequence[tuple[np.ndarray, ...]], index_dtype) -> SparseRows:
        """Join consecutive row blocks from :func:`sparsify_rows` (in row order)."""
        counts = np.concatenate([piece[0].reshape(-1) for piece in pieces])
        offsets = np.zeros(counts.size + 1, dtype=np.int64)
        np.cumsum(counts, out=offsets[1:])
        return cls(offsets, np.concatenate([piece[1] for piece in pieces]).astype(index_dtype),
                   np.concatenate([piece[2] for piece in pieces]),
                   np.concatenate([piece[3] for piece in pieces]).astype(np.float32))  # fmt: skip


def sparsify_rows(
    block: np.ndarray, first_row: int, epsilon: float, dtype="float32"
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Keep, per row, the largest entries until the dropped mass is <= ``epsilon`` x the row total.

    ``block`` ``(H, T, W)``: rows ``first_row .. first_row+T-1`` of H heads over keys
    ``0..W-1`` (keys after a row's own position are ignored). The entries are first rounded
    to ``dtype`` (the stored value type); the dropped set is the longest run of the
    smallest entries whose float64 sum stays <= epsilon x the float64 row total (ties: the
    earlier key is dropped first); the largest entry is always kept. Returns time-major
    ``(counts (T, H), indices (nnz,) int64, values (nnz,) dtype, dropped (T, H) float64)``.
    Example: one row [0.5, 0.00004, 0.49996], epsilon 1e-4 -> counts [[2]], indices
    [0, 2], values [0.5, 0.49996], dropped [[0.00004]].
    """
    stored = np.asarray(block).astype(dtype, copy=False)
    heads, count, width = stored.shape
    by_row = np.moveaxis(stored, 0, 1)  # (T, H, W)
    rows = by_row.astype(np.float64)
    t = first_row + np.arange(count)
    future = np.broadcast_to((np.arange(width)[None, :] > t[:, None])[:, None, :], rows.shape)
    rows[future] = 0.0
    order = np.argsort(np.where(future, -1.0, rows), axis=2, kind="stable")  # future keys first
    cumulative = np.cumsum(np.take_along_axis(rows, order, axis=2), axis=2)  # ascending
    totals = cumulative[:, :, -1]
    drop = np.count_nonzero(cumulative <= epsilon * totals[:, :, None], axis=2)  # a prefix
    drop = np.minimum(drop, width - 1)  # the largest entry stays
    last_dropped = np.take_along_axis(cumulative, np.maximum(drop - 1, 0)[:, :, None], axis=2)
    dropped = np.where(drop > 0, last_dropped[:, :, 0], 0.0)
    keep_sorted = np.broadcast_to(np.arange(width) >= drop[:, :, None], rows.shape)
    kept = np.empty(rows.shape, dtype=bool)
    np.put_along_axis(kept, order, keep_sorted, axis=2)
    kept &= ~future
    where_t, where_h, where_j = np.nonzero(kept)  # C order: (t, h, key), the file's order
    return kept.sum(axis=2), where_j, by_row[where_t, where_h, where_j], dropped


def sparse_block_rows(first_row: int, heads: int, n: int) -> int:
    """Rows T of the next block so that T x heads x (first_row + T) <= _SPARSIFY_ELEMENTS."""
    budget = _SPARSIFY_ELEMENTS / heads
    rows = int((-first_row + math.sqrt(first_row * first_row + 4 * budget)) / 2)
    return max(1, min(n - first_row, rows))


def sparsify_packed(
    packed: np.ndarray, n: int, epsilon: float, dtype="float32", decode=None
) -> SparseRows:
    """The sparse encoding of one layer's packed rows ``(H, n(n+1)/2)`` (see :func:`sparsify_rows`),
    a block of rows at a time. ``decode`` maps stored rows to floats (for quantized codes).
    Example: sparsify_packed(trace.layer_attention(0), trace.n, 1e-4).
    """
    decode = decode or (lambda raw: raw)
    heads = packed.shape[0]
    pieces, first = [], 0
    while first < n:
        count = sparse_block_rows(first, heads, n)
        t = np.arange(first, first + count)
        width = first + count
        gather = row_start(t)[:, None] + np.minimum(np.arange(width)[None, :], t[:, None])
        block = decode(np.asarray(packed[:, row_start(first) : row_start(first + count)]))
        pieces.append(sparsify_rows(block[:, gather - row_start(first)], first, epsilon, dtype))
        first += count
    return SparseRows.concatenate(pieces, sparse_index_dtype(n))


@dataclass(frozen=True)
class _Member:
    """Where one ``.npy`` member of the zip lives, read from its header only."""

    name: str
    shape: tuple[int, ...]
    dtype: np.dtype
    fortran: bool
    data_offset: int | None  # absolute file offset of the array data, if stored raw
    info: zipfile.ZipInfo | None = None  # its zip entry (None for in-memory arrays)
    header_bytes: int = 0  # length of its .npy header


@dataclass(frozen=True)
class LoadLimits:
    """What a trace file may declare before the loader reads or allocates anything.

    The budget of a trace is derived from its own small members: once ``token_ids``,
    ``layers`` and ``head_map`` are read (each capped here), every attention and value
    member's declared shape must be exactly the one n, L and H imply, and the sum of all
    declared sizes must stay within ``max_bytes``. Each member is checked from its header
    before its data is inflated or mapped, and inflation stops at the declared size.
    The byte budget defaults to :func:`memory_ceiling` (what this process can hold); the
    app passes stricter limits (:data:`APP_LIMITS`). Example: ``Trace.load(path, limits=LoadLimits(max_tokens=4096))``.
    """

    max_tokens: int = 65_536  # n
    max_layers: int = 4_096  # stored layers
    max_heads: int = 4_096  # query heads
    max_head_dim: int = 16_384  # d of stored values
    max_bytes: int | None = None  # all members as declared (inflated); None: memory_ceiling()
    max_members: int = 6 * 4_096 + 16  # sparse: 4 attention members + values + norms a layer
    max_header_bytes: int = 10_000  # one .npy header (numpy's own default limit)
    max_metadata_chars: int = 1_000_000
    max_token_chars: int = 256  # longest text piece of one token
    max_json_depth: int = 64

    @property
    def byte_limit(self) -> int:
        """``max_bytes``, or when unset :func:`memory_ceiling`."""
        return memory_ceiling() if self.max_bytes is None else self.max_bytes


def memory_ceiling() -> int:
    """The default byte budget of a trace: 32 GiB, at most half the machine's RAM and half
    of what the process's address-space limit (``ulimit -v``) leaves free, whichever is
    smallest. Example: under ``ulimit -v 4000000`` with 600 MB mapped -> about 1.6 GiB."""
    ceilings = [32 * 2**30]
    with contextlib.suppress(ValueError, OSError, AttributeError):
        ceilings.append(os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") // 2)
    with contextlib.suppress(ImportError, ValueError, OSError, IndexError):
        import resource

        soft = resource.getrlimit(resource.RLIMIT_AS)[0]
        if soft != resource.RLIM_INFINITY:
            mapped = 0
            with (
                contextlib.suppress(OSError, ValueError, IndexError),
                open("/proc/self/statm") as handle,
            ):
                mapped = int(handle.read().split()[0]) * os.sysconf("SC_PAGE_SIZE")
            ceilings.append(max(soft - mapped, 0) // 2)
    return min(ceilings)


APP_LIMITS = LoadLimits(max_tokens=8_192, max_layers=256, max_heads=256, max_head_dim=1_024,
                        max_bytes=2**30, max_metadata_chars=200_000)  # fmt: skip

_CHUNK = 16 * 2**20  # inflate / checksum members this many bytes at a time
_NPY_MAGIC = b"\x93NUMPY"
_DAMAGED = (
    "the file is damaged or not an h2osim trace; re-create it (python -m h2osim.dump / synth)"
)
_VALUE = r"""('[^'\\]{0,32}'|True|False|\(\s*\)|\(\s*\d{1,19}\s*,\s*(?:\d{1,19}\s*,\s*)*(?:\d{1,19}\s*)?\))"""
_ENTRY = r"'(descr|fortran_order|shape)'\s*:\s*" + _VALUE
_NPY_HEADER = re.compile(r"\{\s*" + r"\s*,\s*".join([_ENTRY] * 3) + r"\s*,?\s*\}\s*")
_DESCR = re.compile(r"[<>|=]?[biufU]\d{1,7}")


def _parse_npy_header(text: str) -> tuple[tuple[int, ...], bool, np.dtype]:
    """Parse the dict of a ``.npy`` header strictly (no ``eval``, no tokenizer).

    Only ``{'descr': '<f4', 'fortran_order': False, 'shape': (3, 4), }`` in any key order
    is accepted, with a simple numeric or unicode dtype. Example: the header numpy writes
    for ``np.zeros((2, 3), np.float16)`` -> ((2, 3), False, dtype('float16')).
    """
    match = _NPY_HEADER.fullmatch(text)
    if match is None:
        raise ValueError("the .npy header is not a plain {'descr', 'fortran_order', 'shape'} dict")
    entries = dict(zip(match.groups()[0::2], match.groups()[1::2], strict=True))
    if sorted(entries) != ["descr", "fortran_order", "shape"]:
        raise ValueError(f"the .npy header has keys {sorted(entries)}")
    descr, fortran, shape_text = entries["descr"], entries["fortran_order"], entries["shape"]
    if not (descr.startswith("'") and _DESCR.fullmatch(descr[1:-1])):
        raise ValueError(f"the .npy dtype {descr} is not a plain number or unicode type")
    if fortran not in ("True", "False"):
        raise ValueError(f"fortran_order must be True or False, got {fortran}")
    if not shape_text.startswith("("):
        raise ValueError(f"the .npy shape must be a tuple, got {shape_text}")
    shape = tuple(int(part) for part in shape_text.strip("()").split(",") if part.strip())
    dtype = np.dtype(descr[1:-1])
    if dtype.itemsize == 0:
        raise ValueError(f"the .npy dtype {descr} has size 0")
    return shape, fortran == "True", dtype


def _read_npy_header(
    handle, max_bytes: int = 10_000
) -> tuple[tuple[int, ...], bool, np.dtype, int]:
    """(shape, fortran, dtype, header length in bytes) of the ``.npy`` stream at ``handle``.

    Reads at most ``max_bytes`` of header: a header claiming more is refused unread.
    """
    magic = handle.read(8)
    if len(magic) < 8 or magic[:6] != _NPY_MAGIC:
        raise ValueError("not a .npy array (bad magic bytes)")
    version = (magic[6], magic[7])
    if version not in ((1, 0), (2, 0), (3, 0)):
        raise ValueError(f"unsupported .npy version {version}")
    width = 2 if version == (1, 0) else 4
    raw_length = handle.read(width)
    if len(raw_length) < width:
        raise ValueError("the .npy header is truncated")
    length = int.from_bytes(raw_length, "little")
    if length > max_bytes:
        raise ValueError(f"the .npy header claims {length} bytes, over the limit of {max_bytes}")
    raw = handle.read(length)
    if len(raw) < length:
        raise ValueError("the .npy header is truncated")
    text = raw.decode("utf-8" if version == (3, 0) else "latin1")
    shape, fortran, dtype = _parse_npy_header(text)
    return shape, fortran, dtype, 8 + width + length


def _check_path(path: Path) -> int:
    """Size of the regular file at ``path``; folders, FIFOs, devices, bad names -> TraceError."""
    try:
        info = os.stat(path)
    except FileNotFoundError:
        raise FileNotFoundError(f"no trace file at {path}") from None
    except (OSError, ValueError) as exc:  # name too long, not a folder, NUL byte, ...
        reason = exc.strerror if isinstance(exc, OSError) and exc.strerror else str(exc)
        raise TraceError(
            f"{path}: cannot open this path ({reason}); give the path of a trace .npz"
        ) from None
    if stat.S_ISDIR(info.st_mode):
        raise TraceError(f"{path}: is a folder, not a trace file; give the path of a .npz file")
    if not stat.S_ISREG(info.st_mode):
        raise TraceError(
            f"{path}: is not a regular file (a FIFO, socket or device); give the path of a .npz file"
        )
    return info.st_size


def _member_error(key: str, problem: str) -> TraceError:
    return TraceError(f"{key}: {problem}; {_DAMAGED}")


class _NpzReader:
    """Reads an ``.npz`` member by member: headers without data, memmaps where stored.

    Every member's header is parsed strictly and its declared size checked against the
    zip directory and ``limits`` before any of its data is read; compressed data is
    inflated in ``_CHUNK`` pieces up to the declared size, stored data is CRC-checked
    before it is memory-mapped.
    """

    def __init__(self, path: Path, limits: LoadLimits | None = None):
        self.path = path
        self.limits = limits or LoadLimits()
        self._byte_limit = self.limits.byte_limit
        self.size = _check_path(path)
        if self.size > self._byte_limit + 2**20:
            raise TraceError(f"{path}: the file is {self.size / 2**30:.1f} GiB, over the loader's "
                             f"limit of {self._byte_limit / 2**30:.1f} GiB (LoadLimits.max_bytes; by default half the memory this process can use)")  # fmt: skip
        try:
            self._zip = zipfile.ZipFile(path)
        except _READ_ERRORS as exc:
            raise TraceError(
                f"{path}: not a readable .npz file ({exc}); truncated or not a trace"
            ) from exc
        try:
            self._read_directory()
        except BaseException:
            self._zip.close()
            raise

    def _read_directory(self) -> None:
        infos = self._zip.infolist()
        if len(infos) > self.limits.max_members:
            raise TraceError(f"{self.path}: {len(infos)} members, over the limit of "
                             f"{self.limits.max_members}; {_DAMAGED}")  # fmt: skip
        self.members: dict[str, _Member] = {}
        for info in infos:
            name = printable(info.filename[:200])
            if not info.filename.endswith(".npy"):
                raise TraceError(f"{self.path}: member {name!r} is not a .npy array; {_DAMAGED}")
            key = info.filename[: -len(".npy")]
            if key in self.members:
                raise _member_error(name[:-4], "appears twice in the zip")
            if info.flag_bits & 0x1:
                raise _member_error(name[:-4], "is encrypted")
            if info.compress_type not in (zipfile.ZIP_STORED, zipfile.ZIP_DEFLATED):
                raise _member_error(name[:-4], f"uses zip compression method {info.compress_type}, "
                                    "not stored or deflate")  # fmt: skip
            if info.header_offset + info.compress_size > self.size:
                raise _member_error(name[:-4], "runs past the end of the file (truncated)")
            try:
                with self._zip.open(info) as handle:
                    shape, fortran, dtype, header_bytes = _read_npy_header(
                        handle, self.limits.max_header_bytes
                    )
            except _READ_ERRORS as exc:
                raise _member_error(name[:-4], f"unreadable array header ({exc})") from exc
            count = math.prod(shape)
            declared = count * dtype.itemsize
            if declared > self._byte_limit:
                raise TraceError(f"{name[:-4]}: header declares shape {shape} {dtype} "
                                 f"({declared / 2**30:.3g} GiB), over the loader's limit of "
                                 f"{self._byte_limit / 2**30:.3g} GiB (LoadLimits.max_bytes; by default half the memory this process can use)")  # fmt: skip
            if info.file_size != header_bytes + declared:
                raise TraceError(
                    f"{name[:-4]}: header declares shape {shape} {dtype} ({declared} bytes) "
                    f"but the member holds {info.file_size - header_bytes} bytes; {_DAMAGED}"
                )
            offset = None
            if info.compress_type == zipfile.ZIP_STORED:
                if info.compress_size != info.file_size:
                    raise _member_error(name[:-4], "stored member with two different sizes")
                offset = self._raw_offset(info, header_bytes)
            self.members[key] = _Member(key, shape, dtype, fortran, offset, info, header_bytes)

    def _raw_offset(self, info: zipfile.ZipInfo, header_bytes: int) -> int:
        """File offset of a stored member's array data (after zip and npy headers)."""
        with open(self.path, "rb") as raw:
            raw.seek(info.header_offset)
            local = raw.read(30)
            if len(local) < 30 or local[:4] != b"PK\x03\x04":
                raise _member_error(info.filename[:-4], "bad local zip header")
            name_len, extra_len = struct.unpack("<HH", local[26:30])
            start = info.header_offset + 30 + name_len + extra_len
        if start + info.file_size > self.size:
            raise _member_error(
                info.filename[:-4], "array data runs past the end of the file (truncated)"
            )
        return start + header_bytes

    def _check_crc(self, member: _Member) -> None:
        """The zip CRC-32 of a stored member, computed in chunks (memmaps skip zipfile's check)."""
        crc, left = 0, member.info.file_size
        with open(self.path, "rb") as raw:
            raw.seek(member.data_offset - member.header_bytes)
            while left > 0:
                chunk = raw.read(min(_CHUNK, left))
                if not chunk:
                    raise _member_error(
                        member.name, "file is truncated (array data runs past the end)"
                    )
                crc = zlib.crc32(chunk, crc)
                left -= len(chunk)
        if crc != member.info.CRC:
            raise _member_error(member.name, f"CRC-32 mismatch (stored {member.info.CRC:08x}, "
                                f"data {crc:08x}): the bytes changed after writing")  # fmt: skip

    def array(self, key: str) -> np.ndarray:
        member = self.members[key]
        nbytes = math.prod(member.shape) * member.dtype.itemsize
        order = "F" if member.fortran else "C"
        if member.data_offset is not None:
            self._check_crc(member)
            if nbytes == 0:
                return np.zeros(member.shape, dtype=member.dtype)
            return np.memmap(self.path, dtype=member.dtype, mode="r", offset=member.data_offset,
                             shape=member.shape, order=order)  # fmt: skip
        buffer = bytearray(nbytes)
        view = memoryview(buffer)
        try:
            with self._zip.open(member.info) as handle:
                handle.read(member.header_bytes)
                filled = 0
                while filled < nbytes:
                    chunk = handle.read(min(_CHUNK, nbytes - filled))
                    if not chunk:
                        raise _member_error(key, "array data ends early (truncated)")
                    view[filled : filled + len(chunk)] = chunk
                    filled += len(chunk)
                if handle.read(1):
                    raise _member_error(key, "holds more data than its header declares")
        except TraceError:
            raise
        except _READ_ERRORS as exc:
            raise _member_error(key, f"unreadable array data ({exc})") from exc
        return np.frombuffer(buffer, dtype=member.dtype).reshape(member.shape, order=order)

    def close(self) -> None:
        self._zip.close()


def _as_int(value: np.ndarray, key: str) -> int:
    array = np.asarray(value)
    if array.shape != () or array.dtype.kind not in "iu":
        raise TraceError(
            f"{key}: expected an integer scalar, got dtype {array.dtype} shape {array.shape}"
        )
    return int(array)


def _as_float(value: np.ndarray, key: str) -> float:
    array = np.asarray(value)
    if array.shape != () or array.dtype.kind != "f":
        raise TraceError(
            f"{key}: expected a float scalar, got dtype {array.dtype} shape {array.shape}"
        )
    return float(array)


def _as_str(value: np.ndarray, key: str) -> str:
    array = np.asarray(value)
    if array.shape != () or array.dtype.kind != "U":
        raise TraceError(
            f"{key}: expected a unicode string scalar, got dtype {array.dtype} shape {array.shape}"
        )
    return str(array)


_HEADER_BYTES = {  # most bytes a small member may declare, from the limits
    "format_version": lambda limits: 64, "prompt_length": lambda limits: 64,
    "attention_levels": lambda limits: 64, "attention_encoding": lambda limits: 256,
    "attention_epsilon": lambda limits: 64,
    "metadata": lambda limits: 4 * limits.max_metadata_chars,
    "layers": lambda limits: 8 * limits.max_layers, "head_map": lambda limits: 8 * limits.max_heads,
    "token_ids": lambda limits: 8 * limits.max_tokens,
    "tokens": lambda limits: 4 * limits.max_token_chars * limits.max_tokens,
}  # fmt: skip


def _check_header_member(member: _Member, limits: LoadLimits) -> None:
    """Refuse a small member (scalars, layers, head map, tokens) that declares too much."""
    nbytes = math.prod(member.shape) * member.dtype.itemsize
    if nbytes > _HEADER_BYTES[member.name](limits):
        raise TraceError(f"{member.name}: header declares shape {member.shape} {member.dtype} "
                         f"({nbytes} bytes), over the loader's limit of "
                         f"{_HEADER_BYTES[member.name](limits)} bytes for this member (LoadLimits)")  # fmt: skip
    if member.name == "tokens" and member.dtype.kind == "U":
        chars = member.dtype.itemsize // 4
        if chars > limits.max_token_chars:
            raise TraceError(f"tokens: a token piece of up to {chars} characters, over the "
                             f"limit of {limits.max_token_chars} (LoadLimits.max_token_chars); {_DAMAGED}")  # fmt: skip
    if member.name == "token_ids" and math.prod(member.shape) > limits.max_tokens:
        raise TraceError(f"token_ids: n={math.prod(member.shape)} tokens, over the limit of "
                         f"{limits.max_tokens} (LoadLimits.max_tokens)")  # fmt: skip


def _check_budget(trace: Trace, members: Mapping[str, _Member], limits: LoadLimits) -> None:
    """The budget derived from the trace's own n, layers and heads, before any layer is read.

    Every attention/value member's shape was checked against n, L, H (and d) by the header
    parse; here the dimensions themselves and the total they imply are capped.
    """
    for name, value, cap in (("layers", len(trace.layers), limits.max_layers),
                             ("head_map", trace.num_heads, limits.max_heads),
                             ("values", trace.head_dim, limits.max_head_dim)):  # fmt: skip
        if value > cap:
            raise TraceError(f"{name}: {value} is over the loader's limit of {cap} (LoadLimits)")
    total = sum(math.prod(member.shape) * member.dtype.itemsize for member in members.values())
    if total > limits.byte_limit:
        raise TraceError(f"{trace.path}: n={trace.n}, {len(trace.layers)} layers and "
                         f"{trace.num_heads} heads make {total / 2**30:.3g} GiB of arrays, over the "
                         f"loader's limit of {limits.byte_limit / 2**30:.3g} GiB (LoadLimits.max_bytes; "
                         "by default half the memory this process may use)")  # fmt: skip


def _terminal_safe(read):
    """``read(key)`` whose TraceErrors have control characters escaped (see files.printable)."""

    def safe(key: str) -> np.ndarray:
        try:
            return read(key)
        except TraceError as exc:
            raise TraceError(printable(str(exc))) from exc.__cause__

    return safe


def _parse_json_object(text: str, key: str, limits: LoadLimits) -> dict[str, Any]:
    """A JSON object with at most ``max_metadata_chars`` characters and ``max_json_depth``
    levels of nesting (checked before parsing, so deep input cannot exhaust the stack).

    Example: '{"model": "x"}' -> {"model": "x"}; '[[[...]]]' 1000 deep -> TraceError.
    """
    if len(text) > limits.max_metadata_chars:
        raise TraceError(
            f"{key}: {len(text)} characters, over the limit of {limits.max_metadata_chars}"
        )
    bare = re.sub(r'"(?:[^"\\]|\\.)*"', "", text)  # strings cannot nest
    brackets = np.frombuffer(re.sub(r"[^\[\]{}]", "", bare).encode("ascii"), dtype=np.uint8)
    steps = np.where((brackets == ord("[")) | (brackets == ord("{")), 1, -1)
    depth = int(np.cumsum(steps).max()) if steps.size else 0
    if depth > limits.max_json_depth:
        raise TraceError(f"{key}: JSON nested {depth} levels deep, over the limit of "
                         f"{limits.max_json_depth}; {_DAMAGED}")  # fmt: skip
    try:
        value = json.loads(text)
    except (json.JSONDecodeError, RecursionError, ValueError) as exc:
        raise TraceError(f"{key}: not valid JSON ({exc})") from exc
    if not isinstance(value, dict):
        raise TraceError(f"{key}: must be a JSON object, got {type(value).__name__}")
    return value


class Trace:
    """One attention trace, from a file (:meth:`load`) or arrays (:meth:`from_arrays`).

    Layers are addressed by their model layer index (``trace.layers``); heads by query
    head index. Attention arrays are read lazily per layer and returned as float32.
    """

    def __init__(self, header: Mapping[str, np.ndarray], layer_source, path: Path | None = None,
                 limits: LoadLimits | None = None):  # fmt: skip
        # layer_source(key) -> array for "attention.L{l}" / "values.L{l}"; header holds the rest.
        self.path = path
        self._limits = limits or LoadLimits()
        self._source = layer_source
        self._cache: dict[str, np.ndarray] = {}
        self._outputs: dict[tuple[int, int], np.ndarray] = {}
        self._row_stats: dict[int, tuple[np.ndarray, ...]] = {}
        self._sparse: dict[int, SparseRows] = {}  # layer -> structure-checked sparse rows
        self._parse_header(header)

    # ----------------------------------------------------------------- construction
    @classmethod
    def load(
        cls, path: str | os.PathLike[str], validate: bool = True, limits: LoadLimits | None = None
    ) -> Trace:
        """Open a trace file; with ``validate`` (default) check every array once.

        ``limits`` caps what the file may declare (default :class:`LoadLimits`); nothing
        is allocated or inflated before its declared size is checked against them.
        Raises :class:`TraceError` for anything that breaks the contract or the limits
        and ``FileNotFoundError`` when there is no such file.
        """
        file_path = Path(path)
        limits = limits or LoadLimits()
        reader = None
        try:
            reader = _NpzReader(file_path, limits)
            header = {}
            for key in _REQUIRED_KEYS + ("attention_levels", "attention_epsilon"):
                if key in reader.members:
                    _check_header_member(reader.members[key], limits)
                    header[key] = reader.array(key)
            header["_members"] = reader.members
            trace = cls(header, _terminal_safe(reader.array), file_path, limits)
            _check_budget(trace, reader.members, limits)
            if validate:
                trace.validate()
        except TraceError as exc:  # messages quote the file: make them safe to print
            if reader is not None:
                reader.close()
            raise TraceError(printable(str(exc))) from exc.__cause__
        except BaseException:
            if reader is not None:
                reader.close()
            raise
        return trace

    @classmethod
    def from_arrays(
        cls,
        attention: Mapping[int, np.ndarray] | np.ndarray,
        *,
        head_map: Sequence[int],
        token_ids: Sequence[int] | None = None,
        tokens: Sequence[str] | None = None,
        prompt_length: int | None = None,
        layers: Sequence[int] | None = None,
        values: Mapping[int, np.ndarray] | np.ndarray | None = None,
        metadata: Mapping[str, Any] | None = None,
        validate: bool = True,
        key_norms: Mapping[int, np.ndarray] | None = None,
        epsilon: float | None = None,
    ) -> Trace:
        """Build an in-memory trace from float attention.

        ``attention`` is ``{layer: (H, n(n+1)/2) packed}``, or an array ``(L, H, P)``
        packed or ``(L, H, n, n)`` dense (lower triangle used), or ``{layer: SparseRows}``
        (the sparse encoding; then ``epsilon`` says what they were made with). ``values`` likewise
        ``{layer: (KVH, n, d)}`` or ``(L, KVH, n, d)``. Missing token ids/texts default to
        positions; ``prompt_length`` defaults to n (all prefill).
        """
        if isinstance(attention, Mapping):
            layer_ids = list(attention) if layers is None else list(layers)
            per_layer = [attention[layer] if isinstance(attention[layer], SparseRows)
                         else np.asarray(attention[layer]) for layer in layer_ids]  # fmt: skip
        else:
            stacked = np.asarray(attention)
            if stacked.ndim == 4:
                stacked = pack_lower(stacked)
            if stacked.ndim != 3:
                raise TraceError(
                    f"attention: expected (L, H, P) or (L, H, n, n), got shape {stacked.shape}"
                )
            layer_ids = list(range(stacked.shape[0])) if layers is None else list(layers)
            per_layer = list(stacked)
        if not per_layer:
            raise TraceError("attention: no layers given")
        arrays: dict[str, np.ndarray] = {}
        if isinstance(per_layer[0], SparseRows):
            if epsilon is None:
                raise TraceError(
                    "attention_epsilon: sparse rows need the epsilon they were made with"
                )
            encoding = SPARSE
            n = (len(per_layer[0].offsets) - 1) // max(len(head_map), 1)
            for layer, rows in zip(layer_ids, per_layer, strict=True):
                for part, array in zip(_SPARSE_PARTS, (rows.offsets, rows.indices, rows.values,
                                                       rows.dropped), strict=True):  # fmt: skip
                    arrays[f"{part}.L{layer}"] = np.ascontiguousarray(array)
        else:
            n = _n_from_packed(per_layer[0].shape[-1])
            encoding = "float16" if per_layer[0].dtype == np.float16 else "float32"
            for layer, packed in zip(layer_ids, per_layer, strict=True):
                dtype = np.float16 if encoding == "float16" else np.float32
                arrays[f"attention.L{layer}"] = np.ascontiguousarray(packed, dtype=dtype)
        if values is not None:
            value_list = (
                [values[layer] for layer in layer_ids]
                if isinstance(values, Mapping)
                else list(values)
            )
            for layer, layer_values in zip(layer_ids, value_list, strict=True):
                arrays[f"values.L{layer}"] = np.ascontiguousarray(layer_values)
        for layer, norms in (key_norms or {}).items():  # optional: (KVH, n) per layer
            arrays[f"key_norms.L{layer}"] = np.ascontiguousarray(norms, dtype=np.float32)
        header = {
            "format_version": np.int64(
                SPARSE_FORMAT_VERSION if encoding == SPARSE else FORMAT_VERSION
            ),
            "layers": np.asarray(layer_ids, dtype=np.int64),
            "head_map": np.asarray(head_map, dtype=np.int64),
            "prompt_length": np.int64(n if prompt_length is None else prompt_length),
            "token_ids": np.asarray(range(n) if token_ids is None else token_ids, dtype=np.int64),
            "tokens": np.asarray(
                [f"<{i}>" for i in range(n)] if tokens is None else list(tokens), dtype=str
            ),
            "metadata": np.str_(json.dumps(dict(metadata or {}))),
            "attention_encoding": np.str_(encoding),
        }
        if encoding == SPARSE:
            header["attention_epsilon"] = np.float64(epsilon)
        header["_members"] = {
            key: _Member(key, a.shape, a.dtype, False, None) for key, a in arrays.items()
        }
        for key, value in header.items():
            if key != "_members":
                header["_members"][key] = _Member(
                    key, np.shape(value), np.asarray(value).dtype, False, None
                )
        trace = cls(header, arrays.__getitem__)
        if validate:
            trace.validate()
        return trace

    def _parse_header(self, header: Mapping[str, Any]) -> None:
        members: dict[str, _Member] = header["_members"]
        missing = [key for key in _REQUIRED_KEYS if key not in header]
        if missing:
            raise TraceError(
                f"{missing[0]}: required key is missing (keys present: {sorted(members)})"
            )
        version = _as_int(header["format_version"], "format_version")
        if version not in FORMAT_VERSIONS:
            raise TraceError(f"format_version: this reader knows versions {FORMAT_VERSIONS}, "
                             f"the file says {version}")  # fmt: skip
        self.encoding = _as_str(header["attention_encoding"], "attention_encoding")
        if self.encoding not in ALL_ENCODINGS:
            raise TraceError(
                f"attention_encoding: must be one of {ALL_ENCODINGS}, got {self.encoding!r}"
            )
        wanted = SPARSE_FORMAT_VERSION if self.encoding == SPARSE else FORMAT_VERSION
        if version != wanted:
            raise TraceError(f"format_version: the file says {version} with encoding "
                             f"{self.encoding!r}; the sparse encoding is version "
                             f"{SPARSE_FORMAT_VERSION}, the dense ones version {FORMAT_VERSION}")  # fmt: skip
        self.format_version = version
        self.epsilon: float | None = None
        if self.encoding == SPARSE:
            if "attention_epsilon" not in header:
                raise TraceError(
                    "attention_epsilon: required key is missing for the sparse encoding"
                )
            self.epsilon = _as_float(header["attention_epsilon"], "attention_epsilon")
            if not 0 <= self.epsilon <= MAX_EPSILON:  # NaN fails too
                raise TraceError(
                    f"attention_epsilon: must be in [0, {MAX_EPSILON}], got {self.epsilon}"
                )
        self.levels = DEFAULT_LEVELS
        if self.encoding == "quantized":
            if "attention_levels" not in header:
                raise TraceError(
                    "attention_levels: required key is missing for the quantized encoding"
                )
            self.levels = _as_int(header["attention_levels"], "attention_levels")
            if not 1 <= self.levels <= 65535:
                raise TraceError(f"attention_levels: must be in [1, 65535], got {self.levels}")

        self.layers = self._int_vector(header["layers"], "layers")
        if len(self.layers) == 0 or np.any(self.layers < 0) or np.any(np.diff(self.layers) <= 0):
            raise TraceError(
                f"layers: must be non-empty, non-negative and strictly increasing, got {self.layers.tolist()}"
            )
        self.head_map = self._int_vector(header["head_map"], "head_map")
        if (
            len(self.head_map) == 0
            or self.head_map.min() < 0
            or self.head_map.max() >= len(self.head_map)
        ):
            raise TraceError(
                "head_map: must be non-empty with KV head indices in [0, query heads), "
                f"got {self.head_map.tolist()}"
            )
        self.num_heads = len(self.head_map)
        self.num_kv_heads = int(self.head_map.max()) + 1
        group_sizes = np.bincount(self.head_map, minlength=self.num_kv_heads)
        if np.any(group_sizes != group_sizes[0]):
            raise TraceError(
                f"head_map: every KV head needs the same number of query heads, got group sizes {group_sizes.tolist()}"
            )
        self.group_size = int(group_sizes[0])

        self.token_ids = self._int_vector(header["token_ids"], "token_ids")
        self.n = len(self.token_ids)
        if self.n == 0:
            raise TraceError("token_ids: a trace needs at least one token")
        tokens = np.asarray(header["tokens"])
        if tokens.dtype.kind != "U" or tokens.shape != (self.n,):
            raise TraceError(
                f"tokens: expected unicode strings of shape ({self.n},), got dtype {tokens.dtype} shape {tokens.shape}"
            )
        self.tokens = [str(piece) for piece in tokens]
        self.prompt_length = _as_int(header["prompt_length"], "prompt_length")
        if not 1 <= self.prompt_length <= self.n:
            raise TraceError(f"prompt_length: must be in [1, n={self.n}], got {self.prompt_length}")
        self.metadata: dict[str, Any] = _parse_json_object(
            _as_str(header["metadata"], "metadata"), "metadata", self._limits
        )

        if self.encoding == SPARSE:
            expected = set(_REQUIRED_KEYS) | {"attention_epsilon"}
            expected |= {f"{part}.L{layer}" for layer in self.layers for part in _SPARSE_PARTS}
        else:
            expected = set(_REQUIRED_KEYS) | {f"attention.L{layer}" for layer in self.layers}
        if self.encoding == "quantized":
            expected.add("attention_levels")
        value_keys = {f"values.L{layer}" for layer in self.layers}
        present_values = value_keys & set(members)
        if present_values and present_values != value_keys:
            raise TraceError(
                f"{sorted(value_keys - present_values)[0]}: values must be stored for every layer or none"
            )
        self.has_values = bool(present_values)
        norm_keys = {f"key_norms.L{layer}" for layer in self.layers}
        present_norms = norm_keys & set(members)
        if present_norms and present_norms != norm_keys:
            raise TraceError(f"{sorted(norm_keys - present_norms)[0]}: key norms must be stored "
                             "for every layer or none")  # fmt: skip
        for key in sorted(present_norms):
            if members[key].shape != (self.num_kv_heads, self.n):
                raise TraceError(
                    f"{key}: expected shape ({self.num_kv_heads}, {self.n}), got {members[key].shape}"
                )
        self.has_key_norms = bool(present_norms)
        missing_arrays = sorted(expected - set(members))
        if missing_arrays:
            raise TraceError(f"{missing_arrays[0]}: required key is missing")
        unknown = sorted(set(members) - expected - value_keys - norm_keys)
        if unknown:
            raise TraceError(f"{unknown[0]}: unknown key for format version {version} "
                             f"with encoding {self.encoding!r}")  # fmt: skip

        self.sparse_dtype: np.dtype | None = None
        if self.encoding == SPARSE:
            self._check_sparse_headers(members)
        want_dtype = {"float32": np.float32, "float16": np.float16, "quantized": np.uint16,
                      SPARSE: None}[self.encoding]  # fmt: skip
        for layer in self.layers if want_dtype is not None else ():
            member = members[f"attention.L{layer}"]
            if member.shape != (self.num_heads, packed_size(self.n)):
                raise TraceError(f"{member.name}: expected shape ({self.num_heads}, {packed_size(self.n)}) "
                                 f"for {self.num_heads} query heads (head_map length) and n={self.n} (token_ids length), got {member.shape}")  # fmt: skip
            if member.dtype != want_dtype:
                raise TraceError(f"{member.name}: expected dtype {np.dtype(want_dtype)} for encoding "
                                 f"{self.encoding!r}, got {member.dtype}")  # fmt: skip
        self.head_dim = 0
        for key in sorted(present_values):
            member = members[key]
            if len(member.shape) != 3 or member.shape[:2] != (self.num_kv_heads, self.n):
                raise TraceError(
                    f"{key}: expected shape ({self.num_kv_heads}, {self.n}, head_dim), got {member.shape}"
                )
            if member.dtype not in (np.float16, np.float32):
                raise TraceError(f"{key}: expected dtype float16 or float32, got {member.dtype}")
            if member.shape[2] < 1:
                raise TraceError(
                    f"{key}: head_dim is 0; store values with at least one dimension or none"
                )
            if self.head_dim and member.shape[2] != self.head_dim:
                raise TraceError(
                    f"{key}: head_dim {member.shape[2]} differs from other layers ({self.head_dim})"
                )
            self.head_dim = member.shape[2]

    def _check_sparse_headers(self, members: Mapping[str, _Member]) -> None:
        """Shapes and dtypes of every sparse member, from the headers (before any data)."""
        rows, index_dtype = self.n * self.num_heads, sparse_index_dtype(self.n)
        dense = self.num_heads * packed_size(self.n)
        for layer in self.layers:
            offsets, indices, values, dropped = (
                members[f"{part}.L{layer}"] for part in _SPARSE_PARTS
            )
            for member, shape, dtype in ((offsets, (rows + 1,), np.dtype(np.int64)),
                                         (dropped, (self.n, self.num_heads), np.dtype(np.float32))):  # fmt: skip
                if member.shape != shape or member.dtype != dtype:
                    raise TraceError(f"{member.name}: expected shape {shape} {dtype} for n={self.n} "
                                     f"and {self.num_heads} query heads, got {member.shape} {member.dtype}")  # fmt: skip
            if len(indices.shape) != 1 or indices.dtype != index_dtype:
                raise TraceError(f"{indices.name}: expected a 1-d {index_dtype} array for n={self.n}, "
                                 f"got {indices.shape} {indices.dtype}")  # fmt: skip
            if indices.shape[0] > dense:
                raise TraceError(f"{indices.name}: {indices.shape[0]} entries, more than the "
                                 f"{dense} of the dense rows (H x n(n+1)/2); {_DAMAGED}")  # fmt: skip
            if values.shape != indices.shape:
                raise TraceError(f"{values.name}: expected shape {indices.shape} (one value per "
                                 f"index), got {values.shape}")  # fmt: skip
            if values.dtype.name not in SPARSE_VALUE_DTYPES:
                raise TraceError(
                    f"{values.name}: expected dtype float32 or float16, got {values.dtype}"
                )
            if self.sparse_dtype is not None and values.dtype != self.sparse_dtype:
                raise TraceError(f"{values.name}: dtype {values.dtype} differs from other layers "
                                 f"({self.sparse_dtype})")  # fmt: skip
            self.sparse_dtype = values.dtype

    @staticmethod
    def _int_vector(value: Any, key: str) -> np.ndarray:
        array = np.asarray(value)
        if array.ndim != 1 or array.dtype.kind not in "iu":
            raise TraceError(
                f"{key}: expected a 1-d integer array, got dtype {array.dtype} shape {array.shape}"
            )
        return np.array(array, dtype=np.int64)

    # ----------------------------------------------------------------- validation
    def validate(self) -> None:
        """Check every stored array: finite, non-negative, rows summing to 1, values finite.

        Reads each layer once; raises :class:`TraceError` at the first problem.
        """
        for layer in self.layers:
            self.validate_layer(int(layer))

    def validate_layer(self, layer: int) -> None:
        """:meth:`validate` for one layer (its attention and values)."""
        self._check_layer(layer)
        if self.encoding == SPARSE:
            self._validate_sparse(layer)
            self._validate_values(layer)
        else:
            self._validate_dense(layer)

    def _validate_dense(self, layer: int) -> None:
        starts = np.array([row_start(t) for t in range(self.n)], dtype=np.int64)
        key = f"attention.L{layer}"
        raw = self._raw(key)
        for head in range(self.num_heads):
            packed = np.asarray(raw[head])
            if self.encoding == "quantized":
                sums = np.add.reduceat(packed.astype(np.int64), starts)
                bad = np.flatnonzero(sums != self.levels)  # exact: the format says so
                if bad.size:
                    t = int(bad[0])
                    raise TraceError(
                        f"{key}: row {t} of head {head} sums to {sums[t]} levels, expected {self.levels}"
                    )
                continue
            values = packed.astype(np.float32)
            if not np.all(np.isfinite(values)):
                where = int(np.flatnonzero(~np.isfinite(values))[0])
                raise TraceError(
                    f"{key}: head {head} has a non-finite probability (NaN or inf) in row {_row_of(where)}"
                )
            if values.min() < 0:
                where = int(np.argmin(values))
                raise TraceError(
                    f"{key}: head {head} has a negative probability {values[where]:.3g} in row {_row_of(where)}"
                )
            sums = np.add.reduceat(values.astype(np.float64), starts)
            tolerance = ROW_SUM_TOLERANCE[self.encoding]
            bad = np.flatnonzero(np.abs(sums - 1.0) > tolerance)
            if bad.size:
                t = int(bad[0])
                raise TraceError(
                    f"{key}: row {t} of head {head} sums to {sums[t]:.6g}, expected 1 within {tolerance}"
                )
        self._validate_values(int(layer))

    def _validate_values(self, layer: int) -> None:
        if self.has_values:
            values_key = f"values.L{layer}"
            if not np.all(np.isfinite(self._raw(values_key))):
                raise TraceError(f"{values_key}: has non-finite entries (NaN or inf)")

    def _validate_sparse(self, layer: int) -> None:
        """Values finite and non-negative; dropped mass in [0, epsilon x row total] (up to
        float32 rounding, :data:`DROPPED_SLACK`); kept + dropped = 1 within the row-sum
        tolerance of the value dtype. The structure is checked by :meth:`sparse_layer`."""
        rows = self.sparse_layer(layer)
        values_key, dropped_key = f"attention_values.L{layer}", f"attention_dropped.L{layer}"
        heads = self.num_heads
        values = np.asarray(rows.values, dtype=np.float64)
        bad = np.flatnonzero(~np.isfinite(values) | (values < 0))
        if bad.size:
            row = int(np.searchsorted(rows.offsets, bad[0], side="right")) - 1
            raise TraceError(f"{values_key}: row {row // heads} of head {row % heads} has a "
                             f"negative or non-finite probability {values[bad[0]]:.3g}")  # fmt: skip
        dropped = np.asarray(rows.dropped, dtype=np.float64).reshape(-1)  # (n*H,) time-major
        kept = np.add.reduceat(values, np.asarray(rows.offsets[:-1]))  # every row keeps >= 1
        totals = kept + dropped
        relative, absolute = DROPPED_SLACK
        limit = self.epsilon * totals * (1 + relative) + absolute
        bad = np.flatnonzero(~np.isfinite(dropped) | (dropped < 0) | (dropped > limit))
        if bad.size:
            row = int(bad[0])
            raise TraceError(f"{dropped_key}: row {row // heads} of head {row % heads} dropped "
                             f"mass {dropped[row]:.3g}, expected in [0, epsilon {self.epsilon:g} x "
                             f"row total {totals[row]:.6g}]")  # fmt: skip
        tolerance = ROW_SUM_TOLERANCE[self.sparse_dtype.name]
        bad = np.flatnonzero(np.abs(totals - 1.0) > tolerance)
        if bad.size:
            row = int(bad[0])
            raise TraceError(f"{values_key}: row {row // heads} of head {row % heads} sums to "
                             f"{totals[row]:.6g} (kept {kept[row]:.6g} + dropped {dropped[row]:.3g}), "
                             f"expected 1 within {tolerance}")  # fmt: skip

    # ----------------------------------------------------------------- access
    def _raw(self, key: str) -> np.ndarray:
        if key not in self._cache:
            self._cache[key] = self._source(key)
        return self._cache[key]

    def _decode(self, raw: np.ndarray, dtype=np.float32) -> np.ndarray:
        if self.encoding == "quantized":
            return raw.astype(dtype) * dtype(1.0 / self.levels)
        return raw.astype(dtype, copy=False)

    def sparse_layer(self, layer: int) -> SparseRows:
        """One layer's :class:`SparseRows` (sparse encoding only), its structure checked on
        first use whether or not the trace was validated: offsets start at 0, end at the
        number of entries and give every row 1..t+1 entries; indices in a row strictly
        increase and stay <= t. So decoding never indexes outside a row."""
        self._check_layer(layer)
        if self.encoding != SPARSE:
            raise ValueError(f"this trace is {self.encoding!r}, not sparse")
        if layer not in self._sparse:
            rows = SparseRows(*(self._raw(f"{part}.L{layer}") for part in _SPARSE_PARTS))
            self._check_sparse_structure(layer, rows)
            self._sparse[layer] = rows
        return self._sparse[layer]

    def _check_sparse_structure(self, layer: int, rows: SparseRows) -> None:
        heads, n = self.num_heads, self.n
        offsets_key, indices_key = f"attention_offsets.L{layer}", f"attention_indices.L{layer}"
        offsets = np.asarray(rows.offsets)
        nnz = rows.indices.shape[0]
        if offsets[0] != 0 or offsets[-1] != nnz:
            raise TraceError(f"{offsets_key}: must start at 0 and end at the number of entries "
                             f"{nnz}, got {offsets[0]} .. {offsets[-1]}; {_DAMAGED}")  # fmt: skip
        counts = np.diff(offsets)  # (n*H,)
        row_t = np.arange(n * heads) // heads
        bad = np.flatnonzero((counts < 1) | (counts > row_t + 1))
        if bad.size:
            row = int(bad[0])
            raise TraceError(f"{offsets_key}: row {row // heads} of head {row % heads} keeps "
                             f"{counts[row]} entries, expected 1..{row // heads + 1} (offsets must "
                             f"increase); {_DAMAGED}")  # fmt: skip
        first_row = 0
        while first_row < n:  # blocks of rows: bounded temporaries
            stop_row = min(n, first_row + sparse_block_rows(first_row, heads, n))
            lo, hi = first_row * heads, stop_row * heads
            begin, end = int(offsets[lo]), int(offsets[hi])
            indices = np.asarray(rows.indices[begin:end], dtype=np.int64)
            entry_t = np.repeat(row_t[lo:hi], counts[lo:hi])
            row_begins = np.zeros(indices.size, dtype=bool)
            row_begins[offsets[lo:hi] - begin] = True
            rising = np.diff(indices, prepend=-1) > 0
            bad = np.flatnonzero((indices > entry_t) | ~(row_begins | rising))
            if bad.size:
                entry = begin + int(bad[0])
                row = int(np.searchsorted(offsets, entry, side="right")) - 1
                raise TraceError(f"{indices_key}: row {row // heads} of head {row % heads} has key "
                                 f"index {indices[bad[0]]} out of order or past the row's "
                                 f"{row // heads + 1} keys (indices must increase and stay <= t); "
                                 f"{_DAMAGED}")  # fmt: skip
            first_row = stop_row

    def dropped_mass(self, layer: int) -> np.ndarray:
        """Dropped mass of every row of one layer, ``(H, n)`` float64: 0 in dense encodings,
        in the sparse one the stored mass a row left out (<= epsilon x the row total)."""
        self._check_layer(layer)
        if self.encoding != SPARSE:
            return np.zeros((self.num_heads, self.n))
        return np.asarray(self.sparse_layer(layer).dropped, dtype=np.float64).T

    def _sparse_head_packed(self, layer: int, head: int, dtype=np.float32) -> np.ndarray:
        """One head's decoded packed rows ``(n(n+1)/2,)`` from the sparse encoding."""
        rows = self.sparse_layer(layer)
        offsets = np.asarray(rows.offsets)
        starts, stops = offsets[head : -1 : self.num_heads], offsets[head + 1 :: self.num_heads]
        lengths = stops - starts  # (n,)
        before = np.cumsum(lengths) - lengths
        entries = np.arange(int(lengths.sum())) + np.repeat(starts - before, lengths)
        where = np.repeat(row_start(np.arange(self.n)), lengths) + rows.indices[entries]
        packed = np.zeros(packed_size(self.n), dtype=dtype)
        packed[where] = rows.values[entries]
        return packed

    def _head_packed(self, layer: int, head: int, dtype=np.float32) -> np.ndarray:
        """One head's decoded packed rows ``(n(n+1)/2,)``, any encoding."""
        if self.encoding == SPARSE:
            return self._sparse_head_packed(layer, head, dtype)
        return self._decode(np.asarray(self.layer_attention(layer)[head]), dtype)

    def _sparse_rows(self, t: int, layers: Sequence[int], dtype) -> np.ndarray:
        """Row t of the chosen layers' heads decoded from the sparse encoding, ``(L, H, t+1)``."""
        heads = self.num_heads
        block = np.zeros((len(layers), heads, t + 1), dtype=dtype)
        for position, layer in enumerate(layers):
            rows = self.sparse_layer(int(layer))
            offsets = np.asarray(rows.offsets[t * heads : (t + 1) * heads + 1])
            begin, end = int(offsets[0]), int(offsets[-1])
            which = np.repeat(np.arange(heads), np.diff(offsets))
            block[position, which, rows.indices[begin:end]] = rows.values[begin:end]
        return block

    def _check_layer(self, layer: int) -> None:
        if layer not in self.layer_positions:
            raise KeyError(
                f"layer {layer} is not stored in this trace; stored layers: {self.layers.tolist()}"
            )

    @cached_property
    def layer_positions(self) -> dict[int, int]:
        """Model layer index -> position among the stored layers."""
        return {int(layer): position for position, layer in enumerate(self.layers)}

    def layer_attention(self, layer: int) -> np.ndarray:
        """The stored packed array of one layer, ``(H, n(n+1)/2)``, undecoded (memmap or array).

        The sparse encoding stores no packed array: there it is the decoded float32 rows,
        built on each call (``H x n(n+1)/2 x 4`` bytes); prefer :meth:`sparse_layer`.
        """
        self._check_layer(layer)
        if self.encoding == SPARSE:
            return np.stack([self._sparse_head_packed(layer, h) for h in range(self.num_heads)])
        return self._raw(f"attention.L{layer}")

    def row(self, layer: int, head: int, t: int) -> np.ndarray:
        """Row t of one query head: attention of query t over keys 0..t, ``(t+1,)`` float32."""
        if not 0 <= t < self.n:
            raise IndexError(f"row {t} out of range for n={self.n}")
        if self.encoding == SPARSE:
            self._check_layer(layer)
            return self._sparse_rows(t, [layer], np.float32)[0, head]
        return self._decode(self.layer_attention(layer)[head, row_start(t) : row_start(t + 1)])

    def rows(self, t: int, layers: Sequence[int] | None = None, dtype=np.float32) -> np.ndarray:
        """Row t of every stored (or chosen) layer and query head, ``(L, H, t+1)``.

        ``dtype`` float32 (default) or float64; the stored values convert exactly to both.
        A sparse row is zero at the keys it dropped.
        """
        chosen = self.layers if layers is None else layers
        if self.encoding == SPARSE:
            return self._sparse_rows(t, chosen, dtype)
        start, stop = row_start(t), row_start(t + 1)
        block = np.stack([self.layer_attention(int(layer))[:, start:stop] for layer in chosen])
        return self._decode(block, dtype)

    def head_matrix(self, layer: int, head: int) -> np.ndarray:
        """Dense ``(n, n)`` float32 attention matrix of one query head (zeros above the diagonal)."""
        self._check_layer(layer)
        return unpack_lower(self._head_packed(layer, head), self.n)

    def unit_matrix(self, layer: int, kv_head: int, aggregation: str = "sum") -> np.ndarray:
        """Dense ``(n, n)`` matrix of one cache unit: its query heads' rows aggregated."""
        heads = np.flatnonzero(self.head_map == kv_head)
        if heads.size == 0:
            raise KeyError(f"KV head {kv_head} out of range (this trace has {self.num_kv_heads})")
        stacked = np.stack([self.head_matrix(layer, int(head)) for head in heads])  # (G, n, n)
        return aggregate_heads(stacked, aggregation, axis=0)

    def row_stats(self, layer: int, compute: bool = True) -> tuple[np.ndarray, ...] | None:
        """Sum, maximum and significant-key count of every row of one layer, each ``(H, n)``
        (see :func:`h2osim.metrics.row_statistics`); cached, since every replay needs them.

        With ``compute=False`` only a cached result is returned (else None): the replay
        engine measures them on the fly during a trace's first replay and stores them with
        :meth:`set_row_stats`, which saves a second decoding pass over the attention.
        """
        if layer not in self._row_stats and compute:
            from h2osim.metrics import row_statistics

            self._check_layer(layer)
            stats = [row_statistics(self._head_packed(layer, head), self.n)
                     for head in range(self.num_heads)]  # one head at a time bounds the memory  # fmt: skip
            self._row_stats[layer] = tuple(np.stack(column) for column in zip(*stats, strict=True))
        return self._row_stats.get(layer)

    def set_row_stats(self, layer: int, stats: tuple[np.ndarray, ...]) -> None:
        """Cache :meth:`row_stats` of one layer measured elsewhere (three ``(H, n)`` arrays)."""
        if len(stats) != 3 or any(np.shape(part) != (self.num_heads, self.n) for part in stats):
            raise ValueError(f"row statistics must be three ({self.num_heads}, {self.n}) arrays")
        self._row_stats[layer] = tuple(stats)

    def head_output(self, layer: int, head: int) -> np.ndarray | None:
        """Full-cache attention output of one query head per row, ``(n, d)``; cached.

        None without stored values. Used by the output-error metric of every replay.
        """
        if not self.has_values:
            return None
        key = (layer, head)
        if key not in self._outputs:
            from h2osim.metrics import full_output

            values = self.values(layer)[self.head_map[head]]  # (n, d)
            self._outputs[key] = full_output(self.head_matrix(layer, head), values)
        return self._outputs[key]

    def values(self, layer: int) -> np.ndarray | None:
        """Value vectors ``(KVH, n, d)`` float32 of one layer, or None when not stored."""
        self._check_layer(layer)
        if not self.has_values:
            return None
        return self._raw(f"values.L{layer}").astype(np.float32, copy=False)

    def key_norms(self, layer: int) -> np.ndarray | None:
        """L2 norms ``(KVH, n)`` float32 of one layer's cached keys, or None when not stored."""
        self._check_layer(layer)
        if not self.has_key_norms:
            return None
        return self._raw(f"key_norms.L{layer}").astype(np.float32, copy=False)

    @property
    def decode_steps(self) -> int:
        return self.n - self.prompt_length

    def describe(self) -> str:
        """One line for humans: model, n, prompt, layers, heads (terminal-safe: control
        characters from the file are shown escaped, e.g. ESC as \\x1b)."""
        model = printable(str(self.metadata.get("model", "unknown model"))[:200])
        sparse = (
            f" (epsilon {self.epsilon:g}, {self.sparse_dtype})" if self.encoding == SPARSE else ""
        )
        return (f"{model}: n={self.n} (prompt {self.prompt_length}, decode {self.decode_steps}), "
                f"{len(self.layers)} layers, {self.num_heads} query heads -> {self.num_kv_heads} KV heads, "
                f"{self.encoding}{sparse}{', values' if self.has_values else ''}")  # fmt: skip

    # ----------------------------------------------------------------- writing
    def save(self, path: str | os.PathLike[str], *, encoding: str | None = None,
             levels: int = DEFAULT_LEVELS, compress: bool = True,
             values_dtype: str | None = None, epsilon: float | None = None,
             sparse_dtype: str | None = None, validate_source: bool = False) -> None:  # fmt: skip
        """Write this trace as an ``.npz`` atomically (see :mod:`h2osim.files`): format v1
        for the dense encodings, v2 for the sparse one.

        ``encoding`` re-encodes the attention ("float32", "float16", "quantized",
        "sparse"); ``compress`` deflates members (smaller; uncompressed members are
        memory-mapped on load). ``values_dtype`` ("float16"/"float32") re-encodes stored
        values. ``epsilon`` (default 1e-4) and ``sparse_dtype`` (the kept values' type:
        default float16 from a float16 trace, else float32) choose the sparse encoding
        (:func:`sparsify_rows`). Members are written one layer at a time, and a layer
        read only for saving is released after it, so converting a long trace holds one
        layer (and its encoded form) at a time; ``validate_source`` checks each layer
        (:meth:`validate_layer`) just before encoding it, for a trace loaded with
        ``validate=False``. A sparse trace saves only as itself.
        Example: ``Trace.load("long.npz").save("long-sparse.npz", encoding="sparse")``.
        """
        encoding = encoding or self.encoding
        if encoding not in ALL_ENCODINGS:
            raise ValueError(f"encoding must be one of {ALL_ENCODINGS}, got {encoding!r}")
        if self.encoding == SPARSE and encoding != SPARSE:
            raise ValueError("a sparse trace saves only as sparse (the dropped entries are gone); "
                             "re-encode the dense original instead")  # fmt: skip
        if encoding == SPARSE:
            epsilon, sparse_dtype = self._sparse_target(epsilon, sparse_dtype)
        header: dict[str, np.ndarray] = {
            "format_version": np.int64(
                SPARSE_FORMAT_VERSION if encoding == SPARSE else FORMAT_VERSION
            ),
            "layers": self.layers,
            "head_map": self.head_map,
            "prompt_length": np.int64(self.prompt_length),
            "token_ids": self.token_ids,
            "tokens": np.asarray(self.tokens, dtype=str),
            "metadata": np.str_(json.dumps(self.metadata, sort_keys=True)),
            "attention_encoding": np.str_(encoding),
        }
        if encoding == "quantized":
            header["attention_levels"] = np.int64(levels)
        if encoding == SPARSE:
            header["attention_epsilon"] = np.float64(epsilon)

        def members():  # one layer at a time: a layer read for saving is let go after it
            yield from header.items()
            for layer in (int(layer) for layer in self.layers):
                cached, checked = set(self._cache), layer in self._sparse
                if validate_source:
                    self.validate_layer(layer)
                if encoding == SPARSE:
                    yield from self._sparse_members(layer, epsilon, sparse_dtype)
                else:
                    raw = self.layer_attention(layer)
                    same = encoding == self.encoding and (
                        encoding != "quantized" or levels == self.levels
                    )
                    if same:
                        encoded = np.asarray(raw)
                    elif encoding == "quantized":
                        encoded = quantize_rows(self._decode(np.asarray(raw)), self.n, levels)
                    else:
                        encoded = self._decode(np.asarray(raw)).astype(encoding)
                    yield f"attention.L{layer}", encoded
                    del raw, encoded
                if self.has_values:
                    stored = np.asarray(self._raw(f"values.L{layer}"))
                    yield (
                        f"values.L{layer}",
                        stored.astype(values_dtype) if values_dtype else stored,
                    )
                if self.has_key_norms:
                    yield f"key_norms.L{layer}", np.asarray(self._raw(f"key_norms.L{layer}"))
                for key in set(self._cache) - cached:
                    del self._cache[key]
                if not checked:
                    self._sparse.pop(layer, None)

        with atomic_write(path) as handle:
            write_npz(handle, members(), compress)

    def _sparse_target(self, epsilon: float | None, dtype: str | None) -> tuple[float, str]:
        """The epsilon and value dtype of a sparse save: given, or this trace's own (a
        sparse trace), or the defaults (1e-4; float16 from a float16 trace, else float32)."""
        if self.encoding == SPARSE:
            own = (self.epsilon, self.sparse_dtype.name)
            if (epsilon is not None and epsilon != own[0]) or (
                dtype is not None and dtype != own[1]
            ):
                raise ValueError(f"this trace is already sparse (epsilon {own[0]:g}, {own[1]}); "
                                 "re-encode the dense original to change either")  # fmt: skip
            return own
        epsilon = DEFAULT_EPSILON if epsilon is None else float(epsilon)
        if not 0 <= epsilon <= MAX_EPSILON:
            raise ValueError(f"epsilon must be in [0, {MAX_EPSILON}], got {epsilon}")
        dtype = dtype or ("float16" if self.encoding == "float16" else "float32")
        if dtype not in SPARSE_VALUE_DTYPES:
            raise ValueError(f"sparse values must be one of {SPARSE_VALUE_DTYPES}, got {dtype!r}")
        return epsilon, dtype

    def _sparse_members(self, layer: int, epsilon: float, dtype: str):
        """(key, array) of one layer's sparse members: copied from a sparse trace, else made."""
        if self.encoding == SPARSE:
            rows = self.sparse_layer(layer)
        else:
            raw = self.layer_attention(layer)
            decode = self._decode if self.encoding == "quantized" else None
            rows = sparsify_packed(raw, self.n, epsilon, dtype, decode)
        for part, array in zip(_SPARSE_PARTS, (rows.offsets, rows.indices, rows.values, rows.dropped),
                               strict=True):  # fmt: skip
            yield f"{part}.L{layer}", np.asarray(array)


def write_npz(handle, members, compress: bool = True) -> None:
    """Write ``(key, array)`` pairs as an ``.npz`` to an open binary file, one member at a
    time (what ``np.savez`` writes - zip64 ``.npy`` members, never pickles - without
    holding every array at once). Example: write_npz(f, [("a", np.zeros(3))])."""
    method = zipfile.ZIP_DEFLATED if compress else zipfile.ZIP_STORED
    with zipfile.ZipFile(handle, mode="w", compression=method, allowZip64=True) as archive:
        for key, array in members:
            with archive.open(f"{key}.npy", "w", force_zip64=True) as member:
                np.lib.format.write_array(member, np.asanyarray(array), allow_pickle=False)


def _n_from_packed(size: int) -> int:
    n = int((np.sqrt(8 * size + 1) - 1) // 2)
    if packed_size(n) != size:
        raise TraceError(f"attention: last axis {size} is not a packed triangle size n(n+1)/2")
    return n


def _row_of(flat_index: int) -> int:
    """Row of a flat packed index. Example: index 4 -> row 2 (row 2 holds indices 3..5)."""
    return int((np.sqrt(8 * flat_index + 1) - 1) // 2)


def load(path: str | os.PathLike[str], validate: bool = True) -> Trace:
    """Shorthand for :meth:`Trace.load`."""
    return Trace.load(path, validate=validate)
