"""Fuzzing the trace loader: structure, bytes, bombs and path kinds (issue 13).

Hypothesis draws damaged and hostile traces from valid ones at the zip, ``.npy`` and JSON
level (declared-shape and dtype lies, header noise, giant header lengths, truncated members,
nested JSON, pickled arrays, small files that claim or inflate to gigabytes, duplicate,
unknown, long-named, encrypted or oddly compressed members, CRC damage in memory-mapped
members, head_dim 0, quantized rows off by one level) and byte-level damage (truncation,
bit flips). Every case is loaded in a forked worker whose address space may grow by at most
``HEADROOM`` (1.5 GiB, ``resource.setrlimit``), so an allocation the loader should have
refused is a MemoryError there, reported as a crash. A sample runs the real CLI in a
subprocess under a 3 GiB address-space limit. Counts per test: ``CASES`` (at least 1000
in all, see README "Reliability").
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import time
import zipfile
from pathlib import Path

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from h2osim.files import printable
from tests import fuzz_support as fz

ROOT = Path(__file__).resolve().parents[1]
ENCODINGS = ("float32", "float16", "quantized", "sparse")
BASES = {encoding: fz.base_members(encoding) for encoding in ENCODINGS}
STRUCTURE_EXAMPLES = 700
BYTE_EXAMPLES = 300
SUBPROCESS_EXAMPLES = 24
CASES: dict[str, int] = {}  # test name -> cases run (checked by test_enough_cases_ran)


def fuzz(examples: int) -> settings:
    """Hypothesis settings of a fuzz test: a fixed number of cases, no deadline."""
    return settings(max_examples=examples, deadline=None, database=None,
                suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large,
                                       HealthCheck.function_scoped_fixture,
                                       HealthCheck.large_base_example])  # fmt: skip


KINDS = ("shape_lie", "dtype_lie", "header_noise", "header_claim", "truncate_member",
         "nested_json", "metadata_text", "pickle", "declared_bomb", "inflating_bomb",
         "consistent_giant", "duplicate", "unknown_member", "non_npy", "long_name", "method",
         "encrypted", "crc_stored", "crc_claim", "head_dim0", "quantized_row", "sparse_row",
         "zip_truncate", "bitflip")  # fmt: skip
MESSAGE = re.compile(r"^[^\n]+$")


@pytest.fixture(scope="module")
def pool():
    with fz.sandbox() as executor:
        executor.submit(int).result(timeout=60)  # start the worker (fork) once
        yield executor


def _entry(name: str, payload: bytes, compress: bool) -> fz.Entry:
    return fz.deflated(name, payload) if compress else fz.stored(name, payload)


def _descr(payload: bytes) -> tuple[str, tuple[int, ...]]:
    header, _ = fz.split_npy(payload)
    text = header[10:].decode("latin1")
    descr = re.search(r"'descr': '([^']*)'", text).group(1)
    shape = tuple(
        int(x) for x in re.search(r"'shape': \(([^)]*)\)", text).group(1).split(",") if x.strip()
    )
    return descr, shape


class Blob(bytes):
    """File bytes that Hypothesis reports by size, not content."""

    def __repr__(self) -> str:
        return f"<{len(self)} bytes>"


@st.composite
def structural_cases(draw) -> tuple[str, bytes, str]:
    """(kind, file bytes, expectation): expectation "fail" (must be a TraceError),
    "ok" (must load) or "either" (must not crash)."""
    kind = draw(st.sampled_from(KINDS))
    encoding = {"quantized_row": "quantized", "sparse_row": "sparse"}.get(kind) or draw(
        st.sampled_from(ENCODINGS)
    )
    compress = False if kind == "crc_stored" else draw(st.booleans())
    members = dict(BASES[encoding])
    names = sorted(members)
    entries: list[fz.Entry] | None = None
    expect = "fail"
    key = draw(st.sampled_from(names))
    header, data = fz.split_npy(members[key])
    descr, shape = _descr(members[key])
    if kind == "shape_lie":
        lie = tuple(draw(st.lists(st.integers(0, 10**13), max_size=3)))
        lie = lie if lie != shape else lie + (2,)
        members[key] = fz.npy_header(descr, lie) + data
    elif kind == "dtype_lie":
        lie = draw(st.sampled_from(["<f8", "<i4", "|u1", "<U5", "|b1", ">f4", ">i8", "|O",
                                    "<c16", "|V8", "<M8[s]", "<f2", "<U0", "|S3", "<u2"]))  # fmt: skip
        members[key] = fz.npy_header(lie, shape) + data
        expect = "either"
    elif kind == "header_noise":
        raw = bytearray(header)
        alphabet = b"()[]{}'\"\\#:,.-0123456789 \x00\x7f\xff\ntab"
        for _ in range(draw(st.integers(1, 6))):
            raw[draw(st.integers(10, len(raw) - 1))] = draw(st.sampled_from(alphabet))
        members[key] = bytes(raw) + data
        expect = "either"
    elif kind == "header_claim":
        version = draw(st.sampled_from([1, 2]))
        length = draw(st.integers(10_001, 65_535 if version == 1 else 2**32 - 1))
        width = "<H" if version == 1 else "<I"
        members[key] = (b"\x93NUMPY" + bytes([version, 0]) + np.array(length, width[1:]).astype(width).tobytes()
                        + header[10:] + data)  # fmt: skip
    elif kind == "truncate_member":
        members[key] = members[key][: draw(st.integers(0, len(members[key]) - 1))]
    elif kind == "nested_json":
        depth = draw(st.integers(1, 20_000))
        if draw(st.booleans()):
            text, levels = '{"a": ' * depth + "1" + "}" * depth, depth
        else:
            text, levels = '{"a": ' + "[" * depth + "]" * depth + "}", depth + 1
        members["metadata.npy"] = fz.npy_bytes(np.asarray(np.str_(text)))
        expect = "fail" if levels > 64 else "ok"
    elif kind == "metadata_text":
        model = draw(
            st.text(st.characters(codec="utf-8"), max_size=60) | st.just("\x1b[2J\x1b]0;pwned\x07")
        )
        members["metadata.npy"] = fz.npy_bytes(np.asarray(np.str_(json.dumps({"model": model}))))
        expect = "ok"
    elif kind == "pickle":
        target = draw(st.sampled_from([*names, "evil.npy"]))
        members[target] = fz.npy_bytes(np.array([fz.Pickled("MARKER")], dtype=object))
    elif kind in ("declared_bomb", "inflating_bomb"):
        target = draw(st.sampled_from([*names, "zz.npy"]))
        size = draw(
            st.integers(2**31, 2**40) if kind == "declared_bomb" else st.integers(2**20, 2**31)
        )
        bomb_header = fz.npy_header("|u1", (size,))
        if kind == "declared_bomb":
            stream = fz.deflated(target, b"\0" * 64).data
            entry = fz.Entry(target, stream, zipfile.ZIP_DEFLATED, 0, len(bomb_header) + size)
        else:
            stream, inflated = fz.zero_bomb(bomb_header, size)
            claim = draw(st.sampled_from(["exact", "small"]))
            entry = fz.Entry(target, stream, zipfile.ZIP_DEFLATED, 0,
                             inflated if claim == "exact" else len(members.get(target, data)))  # fmt: skip
        entries = [
            _entry(name, payload, compress) for name, payload in members.items() if name != target
        ]
        entries.insert(draw(st.integers(0, len(entries))), entry)
    elif kind == "consistent_giant":
        n = draw(st.integers(13, 10**7))
        heads, packed = 4, n * (n + 1) // 2
        small = n <= 70_000  # real data for the small members, so the budget check is reached
        giant = {
            "token_ids.npy": fz.npy_bytes(np.arange(n, dtype=np.int64)) if small else fz.npy_header("<i8", (n,)),
            "tokens.npy": fz.npy_bytes(np.asarray(["<t>"] * n)) if small else fz.npy_header("<U3", (n,)),
            "prompt_length.npy": fz.npy_bytes(np.asarray(np.int64(1))),
        }  # fmt: skip
        members.update(giant)
        entries = [_entry(name, payload, compress) for name, payload in members.items()
                   if name.startswith(("attention.", "values.")) is False or name in giant]  # fmt: skip
        item = {"float32": "<f4", "float16": "<f2", "quantized": "<u2", "sparse": None}[encoding]
        index = "<u2" if n <= 65_536 else "<u4"
        entries = [entry for entry in entries if not entry.name.startswith("attention_")]
        for layer in (0, 1):
            giants = [(f"attention.L{layer}.npy", (heads, packed), item)] if item else [
                (f"attention_offsets.L{layer}.npy", (heads * n + 1,), "<i8"),
                (f"attention_indices.L{layer}.npy", (heads * packed,), index),
                (f"attention_values.L{layer}.npy", (heads * packed,), "<f4"),
                (f"attention_dropped.L{layer}.npy", (n, heads), "<f4")]  # fmt: skip
            for name, head_shape, descr_ in giants + [(f"values.L{layer}.npy", (2, n, 3), "<f2")]:
                body = fz.npy_header(descr_, head_shape)
                nbytes = int(np.prod(head_shape)) * np.dtype(descr_).itemsize
                stream, _ = fz.zero_bomb(
                    body, 65_536
                )  # longer than a header read: no early CRC check
                entries.append(fz.Entry(name, stream, zipfile.ZIP_DEFLATED, 0, len(body) + nbytes))
    elif kind == "duplicate":
        entries = [_entry(name, payload, compress) for name, payload in members.items()]
        entries.append(_entry(key, members[key], compress))
    elif kind == "unknown_member":
        members[draw(st.sampled_from(["extra.npy", "attention.L9.npy", "norms.L0.npy", "values.npy"]))] = (
            fz.npy_bytes(np.zeros(3))
        )  # fmt: skip
    elif kind == "non_npy":
        members[draw(st.sampled_from(["readme.txt", "a/b.npy.bak", "", "\x1b[31m.txt"]))] = b"hello"
    elif kind == "long_name":
        members["x" * draw(st.integers(256, 3000)) + ".npy"] = fz.npy_bytes(np.zeros(2))
    elif kind in ("method", "encrypted", "crc_claim"):
        entries = [_entry(name, payload, compress) for name, payload in members.items()]
        victim = next(entry for entry in entries if entry.name == key)
        if kind == "method":
            victim.method = draw(st.sampled_from([1, 6, 9, 12, 14, 93, 98, 99]))
        elif kind == "encrypted":
            victim.flags |= 0x1
        else:
            victim.crc ^= draw(st.integers(1, 2**32 - 1))
    elif kind == "crc_stored":
        target = draw(
            st.sampled_from([name for name in names if len(fz.split_npy(members[name])[1])])
        )
        head, body = fz.split_npy(members[target])
        body = bytearray(body)
        body[draw(st.integers(0, len(body) - 1))] ^= draw(st.integers(1, 255))
        entries = [_entry(name, payload, False) for name, payload in members.items()]
        damaged = next(entry for entry in entries if entry.name == target)
        damaged.data = head + bytes(body)  # the CRC still describes the old bytes
    elif kind == "head_dim0":
        for layer in (0, 1):
            members[f"values.L{layer}.npy"] = fz.npy_bytes(np.zeros((2, 12, 0), np.float16))
    elif kind == "quantized_row":
        target = draw(st.sampled_from([name for name in names if name.startswith("attention.")]))
        codes = np.load(__import__("io").BytesIO(members[target])).copy()  # (H, P) uint16
        position = draw(st.integers(0, codes.size - 1))
        flat = codes.reshape(-1)
        flat[position] = (
            flat[position] + 1 if flat[position] == 0 or draw(st.booleans()) else flat[position] - 1
        )
        members[target] = fz.npy_bytes(codes)
    elif kind == "sparse_row":  # one CSR member made inconsistent (decoding would misindex)
        part = draw(st.sampled_from(["offsets", "indices", "dropped"]))
        target = f"attention_{part}.L{draw(st.sampled_from([0, 1]))}.npy"
        array = np.load(__import__("io").BytesIO(members[target])).copy()
        flat = array.reshape(-1)
        position = draw(st.integers(1 if part == "offsets" else 0, flat.size - 1))
        if part == "offsets":
            flat[position] += draw(st.sampled_from([-2, -1, 1, 2, 10**12]))
        elif part == "indices":
            flat[position] = draw(st.integers(12, 65_535))  # past every row (n = 12)
        else:
            flat[position] = draw(st.sampled_from([0.5, -1e-3, np.nan, np.inf]))
        members[target] = fz.npy_bytes(array)
    if entries is None:
        entries = [_entry(name, payload, compress) for name, payload in members.items()]
    blob = fz.zip_bytes(entries)
    if kind == "zip_truncate":
        blob = blob[: draw(st.integers(0, len(blob) - 1))]
    elif kind == "bitflip":
        raw = bytearray(blob)
        for _ in range(draw(st.integers(1, 4))):
            raw[draw(st.integers(0, len(raw) - 1))] ^= draw(st.integers(1, 255))
        blob, expect = bytes(raw), "either"
    return kind, Blob(blob), expect


def _check(outcome: str, detail: str, expect: str, kind: str) -> None:
    assert outcome != "crash", f"{kind}: {detail}"
    if expect == "fail":
        assert outcome == "trace_error", (kind, outcome, detail)
    if expect == "ok":
        assert outcome == "ok", (kind, detail)
    if outcome in ("trace_error", "ok"):  # one line, printable: safe for a terminal
        assert MESSAGE.match(detail) and printable(detail) == detail, (kind, detail)


def _run_case(pool, path: Path, limits: dict | None = None) -> tuple[str, str, int]:
    started = time.monotonic()
    result = pool.submit(fz.load_case, str(path), limits).result(timeout=60)
    assert time.monotonic() - started < 20, f"loading {path.name} took too long"
    return result


@fuzz(STRUCTURE_EXAMPLES)
@given(case=structural_cases())
def test_structural_damage_is_one_trace_error_in_bounded_memory(pool, tmp_path_factory, case):
    kind, blob, expect = case
    folder = tmp_path_factory.mktemp("case")
    path = folder / "case.npz"
    path.write_bytes(blob)
    outcome, detail, _ = _run_case(pool, path)  # the worker runs in `folder`
    _check(outcome, detail, expect, kind)
    assert not (folder / "MARKER").exists(), "a pickle was executed"
    CASES["structure"] = CASES.get("structure", 0) + 1


@pytest.fixture(scope="module")
def valid_files(tmp_path_factory) -> dict[tuple[str, bool], bytes]:
    files = {}
    for encoding in ENCODINGS:
        for compress in (True, False):
            entries = [_entry(name, payload, compress) for name, payload in BASES[encoding].items()]
            files[(encoding, compress)] = fz.zip_bytes(entries)
    return files


@fuzz(BYTE_EXAMPLES)
@given(encoding=st.sampled_from(ENCODINGS), compress=st.booleans(), cut=st.floats(0, 1),
       flips=st.lists(st.tuples(st.floats(0, 0.9999), st.integers(1, 255)), max_size=4))  # fmt: skip
def test_truncated_and_flipped_bytes_never_crash(
    pool, tmp_path, valid_files, encoding, compress, cut, flips
):
    data = bytearray(valid_files[(encoding, compress)])
    for where, mask in flips:
        data[int(where * len(data))] ^= mask
    data = data[: max(0, int(cut * len(data)))] if cut < 1 else data
    path = tmp_path / f"bytes-{len(data)}-{len(flips)}.npz"
    path.write_bytes(bytes(data))
    outcome, detail, _ = _run_case(pool, path)
    damaged = cut < 1 or any(mask for _, mask in flips)
    _check(outcome, detail, "either" if damaged else "ok", "bytes")
    if cut < 0.99:  # the central directory sits at the end: a real cut never loads
        assert outcome == "trace_error", detail
    CASES["bytes"] = CASES.get("bytes", 0) + 1


def _path_kinds(tmp: Path) -> dict[str, str]:
    fifo = tmp / "pipe.npz"
    os.mkfifo(fifo)
    loop = tmp / "loop.npz"
    loop.symlink_to(loop)
    return {"folder": str(tmp), "fifo": str(fifo), "dev_zero": "/dev/zero", "dev_null": "/dev/null",
            "long_name": str(tmp / ("n" * 300 + ".npz")), "long_path": "/" + "d/" * 3000 + "t.npz",
            "symlink_loop": str(loop), "not_a_folder": str(tmp / "pipe.npz" / "x.npz")}  # fmt: skip


def test_path_kinds_are_one_trace_error(pool, tmp_path):
    for kind, path in _path_kinds(tmp_path).items():
        outcome, detail, _ = _run_case(pool, Path(path))
        assert outcome == "trace_error", (kind, outcome, detail)
        assert MESSAGE.match(detail) and "give the path" in detail, (kind, detail)
        CASES["paths"] = CASES.get("paths", 0) + 1
    outcome, detail, _ = _run_case(pool, tmp_path / "missing.npz")
    assert outcome == "not_found" and "no trace file" in detail


def test_the_app_limits_are_stricter(pool, tmp_path):
    """The app's loader (APP_LIMITS) refuses a trace the default limits accept."""
    from h2osim.trace import APP_LIMITS

    members = dict(BASES["float16"])
    members["metadata.npy"] = fz.npy_bytes(
        np.asarray(np.str_(json.dumps({"notes": "x" * 300_000})))
    )
    path = tmp_path / "wordy.npz"
    path.write_bytes(
        fz.zip_bytes([_entry(name, payload, True) for name, payload in members.items()])
    )
    assert _run_case(pool, path)[0] == "ok"
    outcome, detail, _ = _run_case(
        pool, path, {"max_metadata_chars": APP_LIMITS.max_metadata_chars}
    )
    assert outcome == "trace_error" and "metadata" in detail


# --------------------------------------------------------------------------- real CLI
CLI_LIMIT = 3 * 2**30  # address space of each CLI subprocess


def _cli(path: str, *extra: str) -> subprocess.CompletedProcess:
    return subprocess.run([fz.PYTHON, "-m", "h2osim.replay", path, "--no-progress", *extra],
                          cwd=ROOT, capture_output=True, text=True, timeout=120,
                          env=fz.limited_subprocess_env(), preexec_fn=fz.address_limit(CLI_LIMIT))  # fmt: skip


def _one_clean_line(done: subprocess.CompletedProcess) -> str:
    assert "Traceback" not in done.stderr, done.stderr
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1, done.stderr
    return lines[0]


@fuzz(SUBPROCESS_EXAMPLES)
@given(case=structural_cases())
def test_cli_in_a_subprocess_under_an_address_limit(tmp_path_factory, case):
    kind, blob, expect = case
    path = tmp_path_factory.mktemp("cli") / "case.npz"
    path.write_bytes(blob)
    started = time.monotonic()
    done = _cli(str(path))
    assert time.monotonic() - started < 60
    if expect == "fail" or done.returncode != 0:
        assert done.returncode == 2, (kind, done.returncode, done.stderr[-2000:])
        assert "error:" in _one_clean_line(done)
    else:
        assert "mass" in done.stdout and done.stderr == ""
    CASES["cli"] = CASES.get("cli", 0) + 1


def test_cli_path_kinds_in_a_subprocess(tmp_path):
    for kind, path in _path_kinds(tmp_path).items():
        done = _cli(path)
        assert done.returncode == 2, (kind, done.stderr)
        assert "error:" in _one_clean_line(done), kind
        CASES["cli_paths"] = CASES.get("cli_paths", 0) + 1


def test_enough_cases_ran():
    """Each fuzz test above ran its full count (Hypothesis did not stop early)."""
    expected = {"structure": STRUCTURE_EXAMPLES, "bytes": BYTE_EXAMPLES, "cli": SUBPROCESS_EXAMPLES}
    for name, count in expected.items():
        assert CASES.get(name, 0) >= count, (name, CASES)
    print(f"fuzz cases run: {CASES}")


def test_the_sandbox_catches_an_allocation_the_budget_prevents(pool, tmp_path):
    """Negative control: with the budget lifted (LoadLimits(max_bytes=2**40, ...)), a 2 GiB
    deflate bomb in `token_ids` is inflated and the worker's address-space limit turns it
    into a MemoryError, reported as a crash; with the default budget it is a TraceError."""
    size = 2**31
    header = fz.npy_header("|u1", (size,))
    stream, _ = fz.zero_bomb(header, size)
    members = dict(BASES["float32"])
    entries = [
        _entry(name, payload, True) for name, payload in members.items() if name != "token_ids.npy"
    ]
    entries.append(fz.Entry("token_ids.npy", stream, zipfile.ZIP_DEFLATED, 0, len(header) + size))
    path = tmp_path / "bomb.npz"
    path.write_bytes(fz.zip_bytes(entries))
    assert path.stat().st_size < 20 * 2**20
    outcome, detail, _ = _run_case(pool, path)
    assert outcome == "trace_error" and "token_ids" in detail and "limit" in detail, detail
    lifted = {"max_bytes": 2**40, "max_tokens": 2**40}
    with fz.sandbox() as fresh:  # a worker of its own: the crash may leave it in a bad state
        outcome, detail, _ = fresh.submit(fz.load_case, str(path), lifted).result(timeout=120)
    assert outcome == "crash" and "MemoryError" in detail, (outcome, detail[-500:])


def test_a_consistent_giant_is_refused_by_the_total_budget(pool, tmp_path):
    """n=12000 declared consistently everywhere: each attention layer (576 MB) fits the
    sandbox's per-member limit (~768 MB), both together do not; refused before either is
    inflated, naming the n, layers and heads that make the total."""
    n = 12_000
    members = dict(BASES["float16"])
    members["token_ids.npy"] = fz.npy_bytes(np.arange(n, dtype=np.int64))
    members["tokens.npy"] = fz.npy_bytes(np.asarray(["<t>"] * n))
    entries = [_entry(name, payload, True) for name, payload in members.items()
               if not name.startswith(("attention.", "values."))]  # fmt: skip
    for layer in (0, 1):
        for name, shape in (
            (f"attention.L{layer}.npy", (4, n * (n + 1) // 2)),
            (f"values.L{layer}.npy", (2, n, 3)),
        ):
            body = fz.npy_header("<f2", shape)
            stream, _ = fz.zero_bomb(body, 65_536)
            entries.append(
                fz.Entry(name, stream, zipfile.ZIP_DEFLATED, 0, len(body) + 2 * int(np.prod(shape)))
            )
    path = tmp_path / "giant.npz"
    path.write_bytes(fz.zip_bytes(entries))
    outcome, detail, _ = _run_case(pool, path)
    assert outcome == "trace_error", detail
    assert (
        "n=12000, 2 layers and 4 heads make 1.07 GiB of arrays, over the loader's limit" in detail
    ), detail
