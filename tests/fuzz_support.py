"""Helpers of the fuzz suite (tests/test_fuzz_*.py): a zip writer that can lie, deflate
bombs built without deflating, valid base traces, and a memory-limited forked sandbox.

The zip writer exists because ``zipfile`` cannot write what a damaged or hostile file
holds: sizes, CRCs, methods and flags that disagree with the data, or zip64 entries that
claim gigabytes. Layout follows the PKWARE APPNOTE (local header, data, central
directory, end record; zip64 extra field 0x0001 when a size is >= 4 GiB).
"""

from __future__ import annotations

import contextlib
import io
import json
import multiprocessing
import os
import resource
import struct
import sys
import traceback
import zipfile
import zlib
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass

import numpy as np

HEADROOM = 1536 * 2**20  # address space the sandbox may add to what it has mapped at fork


@dataclass
class Entry:
    """One zip member as written: ``data`` is the stored (possibly compressed) bytes."""

    name: str
    data: bytes
    method: int = zipfile.ZIP_STORED
    crc: int = 0
    size: int = 0  # uncompressed size claimed in the headers
    flags: int = 0


def stored(name: str, payload: bytes) -> Entry:
    return Entry(name, payload, zipfile.ZIP_STORED, zlib.crc32(payload), len(payload))


def deflated(name: str, payload: bytes) -> Entry:
    packer = zlib.compressobj(6, zlib.DEFLATED, -15)
    data = packer.compress(payload) + packer.flush()
    return Entry(name, data, zipfile.ZIP_DEFLATED, zlib.crc32(payload), len(payload))


def zip_bytes(entries: list[Entry]) -> bytes:
    """A zip archive of ``entries`` exactly as given (sizes and CRCs are not recomputed)."""
    out, central = io.BytesIO(), []
    for entry in entries:
        name = entry.name.encode("utf-8")
        offset = out.tell()
        big = entry.size >= 0xFFFFFFFF or len(entry.data) >= 0xFFFFFFFF
        extra = struct.pack("<HHQQ", 1, 16, entry.size, len(entry.data)) if big else b""
        sizes = (0xFFFFFFFF, 0xFFFFFFFF) if big else (len(entry.data), entry.size)
        flags = entry.flags | 0x800  # names are UTF-8
        out.write(struct.pack("<IHHHHHIIIHH", 0x04034B50, 45, flags, entry.method, 0, 0x21,
                              entry.crc & 0xFFFFFFFF, *sizes, len(name), len(extra)))  # fmt: skip
        out.write(name + extra + entry.data)
        central.append((entry, name, extra, sizes, flags, offset))
    start = out.tell()
    for entry, name, extra, sizes, flags, offset in central:
        out.write(struct.pack("<IHHHHHHIIIHHHHHII", 0x02014B50, 45, 45, flags, entry.method, 0,
                              0x21, entry.crc & 0xFFFFFFFF, *sizes, len(name), len(extra), 0, 0,
                              0, 0, offset))  # fmt: skip
        out.write(name + extra)
    size = out.tell() - start
    out.write(
        struct.pack("<IHHHHIIH", 0x06054B50, 0, 0, len(central), len(central), size, start, 0)
    )
    return out.getvalue()


def npy_bytes(array: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    np.save(buffer, array, allow_pickle=array.dtype.hasobject)
    return buffer.getvalue()


def npy_header(descr: str, shape: tuple[int, ...], fortran: bool = False) -> bytes:
    """A version 1.0 ``.npy`` header as numpy writes it (padded to 64 bytes, ending in \\n)."""
    text = f"{{'descr': '{descr}', 'fortran_order': {fortran}, 'shape': {shape!r}, }}"
    raw = text.encode("latin1")
    pad = -(10 + len(raw) + 1) % 64
    raw += b" " * pad + b"\n"
    return b"\x93NUMPY\x01\x00" + struct.pack("<H", len(raw)) + raw


def split_npy(payload: bytes) -> tuple[bytes, bytes]:
    """(header, array data) of a version 1.0 ``.npy`` member."""
    length = struct.unpack("<H", payload[8:10])[0]
    return payload[: 10 + length], payload[10 + length :]


class _Bits:
    def __init__(self):
        self.value, self.count = 0, 0

    def put(self, value: int, width: int, msb_first: bool = False) -> None:
        if msb_first:  # Huffman codes are packed starting from their most significant bit
            value = int(f"{value:0{width}b}"[::-1], 2)
        self.value |= value << self.count
        self.count += width

    def bytes(self) -> bytes:
        return self.value.to_bytes((self.count + 7) // 8, "little")


def _literal(bits: _Bits, byte: int) -> None:
    if byte < 144:
        bits.put(0x30 + byte, 8, msb_first=True)
    else:
        bits.put(0x190 + byte - 144, 9, msb_first=True)


def zero_bomb(prefix: bytes, zeros_at_least: int) -> tuple[bytes, int]:
    """A raw deflate stream of ``prefix`` then at least ``zeros_at_least`` zero bytes.

    Built without deflating anything: one fixed-Huffman block of the prefix literals, a
    literal 0, then (length 258, distance 1) copies; 8 copies are 13 whole bytes, so the
    periodic middle is repeated as bytes. 5 GiB of zeros take ~270 MB of stream and no
    time. Returns (stream, inflated length). Example: zero_bomb(b"", 10**6) inflates to
    1 + 258 * k >= 10**6 zero bytes.
    """
    bits = _Bits()
    bits.put(1, 1)  # BFINAL
    bits.put(1, 2)  # BTYPE 01: fixed Huffman
    for byte in prefix:
        _literal(bits, byte)
    _literal(bits, 0)
    start = bits.count
    for _ in range(16):
        bits.put(0xC5, 8, msb_first=True)  # length code 285: 258 bytes
        bits.put(0, 5, msb_first=True)  # distance code 0: distance 1
    bits.put(0, 7)  # end of block (code 256)
    base = bits.bytes()
    cut = (start + 7) // 8  # first byte boundary inside the periodic copies
    periods = max(0, -(-(zeros_at_least - 1 - 16 * 258) // (8 * 258)))
    stream = base[:cut] + base[cut : cut + 13] * periods + base[cut:]
    return stream, len(prefix) + 1 + 258 * (16 + 8 * periods)


# --------------------------------------------------------------------------- base traces
def base_members(encoding: str = "float32", values: bool = True) -> dict[str, bytes]:
    """The ``.npy`` payload of every member of a small valid trace (n=12, 2 layers, 4 heads)
    in ``encoding`` (a dense one, format v1, or "sparse", format v2 at epsilon 1e-2)."""
    from h2osim.synthetic import synthetic_trace
    from h2osim.trace import quantize_rows

    trace = synthetic_trace(12, layers=2, heads=4, kv_heads=2, head_dim=3, seed=3, values=values)
    arrays = {
        "format_version": np.int64(1), "layers": trace.layers, "head_map": trace.head_map,
        "prompt_length": np.int64(trace.prompt_length), "token_ids": trace.token_ids,
        "tokens": np.asarray(trace.tokens), "metadata": np.str_(json.dumps(trace.metadata)),
        "attention_encoding": np.str_(encoding),
    }  # fmt: skip
    if encoding == "quantized":
        arrays["attention_levels"] = np.int64(1024)
    if encoding == "sparse":  # format v2: four CSR members a layer (h2osim.trace.SparseRows)
        from h2osim.trace import sparsify_packed

        arrays["format_version"] = np.int64(2)
        arrays["attention_epsilon"] = np.float64(1e-2)
    for layer in trace.layers:
        packed = np.asarray(trace.layer_attention(int(layer)), dtype=np.float32)
        if encoding == "sparse":
            rows = sparsify_packed(packed, trace.n, 1e-2)
            for part in ("offsets", "indices", "values", "dropped"):
                arrays[f"attention_{part}.L{layer}"] = np.asarray(getattr(rows, part))
            if values:
                arrays[f"values.L{layer}"] = np.asarray(trace.values(int(layer)), dtype=np.float16)
            continue
        if encoding == "quantized":
            packed = quantize_rows(packed, trace.n, 1024)
        arrays[f"attention.L{layer}"] = packed.astype(
            encoding if encoding != "quantized" else np.uint16
        )
        if values:
            arrays[f"values.L{layer}"] = np.asarray(trace.values(int(layer)), dtype=np.float16)
    return {f"{key}.npy": npy_bytes(np.asarray(value)) for key, value in arrays.items()}


class Pickled:
    """Unpickling this creates the file ``marker``: proof that a loader unpickled."""

    def __init__(self, marker: str):
        self.marker = marker

    def __reduce__(self):
        return (open, (self.marker, "w"))


# --------------------------------------------------------------------------- sandbox
def mapped_bytes() -> int:
    with open("/proc/self/statm") as handle:
        return int(handle.read().split()[0]) * os.sysconf("SC_PAGE_SIZE")


def _limit_memory(headroom: int) -> None:
    """Pool initializer: cap the worker's address space at what it maps now + headroom."""
    limit = mapped_bytes() + headroom
    resource.setrlimit(resource.RLIMIT_AS, (limit, resource.getrlimit(resource.RLIMIT_AS)[1]))


@contextlib.contextmanager
def sandbox(headroom: int = HEADROOM):
    """A forked one-process pool whose address space may grow by at most ``headroom``."""
    context = multiprocessing.get_context("fork")
    with ProcessPoolExecutor(1, mp_context=context, initializer=_limit_memory,
                             initargs=(headroom,)) as pool:  # fmt: skip
        yield pool


def peak_rss() -> int:
    """Peak resident memory of this process so far, bytes."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


def load_case(path: str, limits: dict | None = None) -> tuple[str, str, int]:
    """In the sandbox: load ``path`` and read every array; (outcome, detail, peak RSS).

    outcome: "ok", "trace_error", "not_found" or "crash" (detail: the traceback).
    """
    from h2osim.trace import Trace, TraceError

    with contextlib.suppress(OSError):
        os.chdir(os.path.dirname(path) or ".")  # where a pickle that ran would write its marker
    try:
        if limits:
            from h2osim.trace import LoadLimits

            trace = Trace.load(path, limits=LoadLimits(**limits))
        else:
            trace = Trace.load(path)
        for layer in trace.layers:
            trace.head_matrix(int(layer), 0)
            trace.values(int(layer))
        return "ok", trace.describe(), peak_rss()
    except TraceError as exc:
        return "trace_error", str(exc), peak_rss()
    except FileNotFoundError as exc:
        return "not_found", str(exc), peak_rss()
    except BaseException:  # noqa: BLE001 - the point is to report anything else
        return "crash", traceback.format_exc(), peak_rss()


def cli_case(module: str, argv: list[str]) -> tuple[str, int, str, str]:
    """In the sandbox: run ``module.main(argv)``; ("returned"/"exit"/"crash", code, out, err)."""
    import importlib
    from contextlib import redirect_stderr, redirect_stdout

    out, err = io.StringIO(), io.StringIO()
    try:
        with redirect_stdout(out), redirect_stderr(err):
            code = importlib.import_module(module).main(argv)
        return "returned", code, out.getvalue(), err.getvalue()
    except SystemExit as exc:
        return "exit", exc.code if isinstance(exc.code, int) else 1, out.getvalue(), err.getvalue()
    except BaseException:  # noqa: BLE001
        return "crash", -1, out.getvalue(), err.getvalue() + traceback.format_exc()


def limited_subprocess_env() -> dict[str, str]:
    """Environment of CLI subprocesses: one BLAS thread, no user site, repo on the path."""
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    env = dict(os.environ, H2OSIM_THREADS="1", OPENBLAS_NUM_THREADS="1", OMP_NUM_THREADS="1",
               MKL_NUM_THREADS="1", PYTHONPATH=root)  # fmt: skip
    env.pop("PYTHONSTARTUP", None)
    return env


def address_limit(limit_bytes: int):
    """preexec_fn for subprocess: RLIMIT_AS = ``limit_bytes`` in the child."""

    def apply() -> None:
        resource.setrlimit(resource.RLIMIT_AS, (limit_bytes, limit_bytes))

    return apply


PYTHON = sys.executable
