"""Bad arguments: one line on stderr and exit 2, before any allocation or model run (issue 13).

Each reproduction of issue 13 is pinned here (sweeps, layer ranges, thread counts, policy
windows, table rows, synth sizes, NaN parameters, budgets, output paths, text sizes), and
Hypothesis fuzzes every numeric flag of the trace CLIs with finite, non-finite, huge,
negative and malformed values. The CLIs run in a forked worker with at most 1.5 GiB of
extra address space (tests/fuzz_support.py), so a flag that reached an allocation it
should not have shows as a crash; a sample runs as real subprocesses under a 3 GiB limit.
"""

from __future__ import annotations

import argparse
import json
import math
import subprocess
from pathlib import Path

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from h2osim.cli import budget_value, check_outputs, limit_threads, number, parse_layers
from h2osim.files import printable
from h2osim.synthetic import synthetic_trace
from h2osim.trace import Trace, TraceError, _parse_npy_header, memory_ceiling
from tests import fuzz_support as fz

ROOT = Path(__file__).resolve().parents[1]
FLAG_EXAMPLES = 250
MODEL_FLAG_EXAMPLES = 120
CASES: dict[str, int] = {}


@pytest.fixture(scope="module")
def folder(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("cli")
    synthetic_trace(12, layers=2, heads=4, kv_heads=2, head_dim=3, seed=3).save(path / "t.npz")
    (path / "a-file").write_text("x")
    return path


@pytest.fixture(scope="module")
def pool():
    with fz.sandbox() as executor:
        executor.submit(int).result(timeout=60)
        yield executor


def _run(pool, module: str, argv: list[str]) -> tuple[str, int, str, str]:
    return pool.submit(fz.cli_case, module, argv).result(timeout=120)


def _refused(result, needle: str = "") -> str:
    how, code, _, err = result
    assert how in ("returned", "exit") and code == 2, result
    lines = err.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in err, err
    assert needle in lines[0], (needle, lines[0])
    return lines[0]


# --------------------------------------------------------------------------- issue 13, pinned
def _issue_cases(folder: Path) -> list[tuple[str, list[str], str]]:
    trace, long_name = str(folder / "t.npz"), str(folder / ("j" * 300 + ".json"))
    replay = "h2osim.replay"
    return [
        (replay, [trace, "--sweep", "0:inf:0.1"], "finite"),
        (replay, [trace, "--sweep", "0.1:1e9:1"], "at most 200"),
        (replay, [trace, "--sweep", "0.1:0.5:1e-12"], "at most 200"),
        (replay, [trace, "--sweep", ",,,"], "at least one budget"),
        (replay, [trace, "--sweep", "0.1,nan"], "budget must be"),
        (replay, [trace, "--layers", "0-99999999999"], "not stored"),
        ("h2osim.observe", [trace, "--layers", "0-99999999999", "--no-plots"], "not stored"),
        ("theory.check", [trace, "--layers", "0-99999999999", "--no-plot"], "not stored"),
        (replay, [trace, "--policy", "scissorhands", "--history", "10000000000"], "history"),
        (replay, [trace, "--policy", "scissorhands", "--history", "13"], "n=12"),
        ("theory.check", [trace, "--rows", "1000000000", "--no-plot"], "--rows"),
        ("h2osim.synth", ["--n", "100000", "-o", str(folder / "s.npz")], "--n"),
        ("h2osim.synth", ["--n", "20000", "--layers", "1", "-o", str(folder / "s.npz")], "GiB"),
        (
            "h2osim.synth",
            ["--layers", "4096", "--heads", "4096", "-o", str(folder / "s.npz")],
            "heads",
        ),
        (replay, [trace, "--json", long_name], "file name is at most"),
        (replay, [trace, "--json", ""], "empty"),
        (replay, [trace, "--json", trace], "input file"),
        (replay, [trace, "--json", str(folder / "F"), "--csv", str(folder / "F")], "same file"),
        (replay, [trace, "--json", "-", "--csv", "-"], "stdout"),
        (replay, [trace, "--json", "/dev/null"], "device"),
        (replay, [trace, "--json", "/sys/x.json"], "cannot write"),
        (replay, [trace, "--plot", str(folder / "no" / "x.png")], "does not exist"),
        (replay, [trace, "--plot", str(folder / "x.xyz")], "a figure is one of"),
        ("h2osim.observe", [trace, "--out-dir", str(folder / "a-file")], "not a folder"),
        ("theory.check", [trace, "--plot", trace], "input file"),
        ("h2osim.synth", ["-o", "/sys/x.npz"], "cannot write"),
        (replay, [trace, "--budget", "-inf"], "expected one argument"),
        (replay, [trace, "--budget=-inf"], "budget must be"),
        (replay, [trace, "--budget", "nan"], "budget must be"),
        (replay, [trace, "--budget", "1e308"], "budget counts stop"),
        (replay, [trace, "--seed", "abc"], "seed"),
        (replay, [trace, "--forgetting", "nan"], "forgetting"),
        (replay, [trace, "--threshold", "nan"], "threshold"),
        (replay, [trace, "--heavy-ratio", "inf"], "heavy_ratio"),
        (replay, [str(folder / "missing.npz")], "no trace file"),
        (replay, [], "required"),
        (replay, [trace, "--layers=--"], "needs a value"),
        (replay, [trace, "--policy=--"], "needs a value"),
        (replay, [trace, "--no-such-flag"], "unrecognized"),
    ]


def test_every_reproduction_of_issue_13_is_one_line_and_exit_2(pool, folder):
    for module, argv, needle in _issue_cases(folder):
        line = _refused(_run(pool, module, argv), needle)
        assert printable(line) == line
    assert not (folder / "F").exists() and Trace.load(folder / "t.npz").n == 12  # input intact


def test_usage_errors_say_see_help_in_one_line(pool, folder):
    line = _refused(_run(pool, "h2osim.replay", ["--budget"]))
    assert line.endswith("(see --help)") and line.startswith("python -m h2osim.replay: error:")


def test_h2osim_threads_is_validated(monkeypatch):
    for raw in ("99999999999999999999", "0", "-3", "abc", "", "1e3", "2000"):
        monkeypatch.setenv("H2OSIM_THREADS", raw)
        with pytest.raises(ValueError, match="H2OSIM_THREADS must be a whole number in 1..1024"):
            limit_threads()
    monkeypatch.setenv("H2OSIM_THREADS", "2")
    assert limit_threads() == 2
    monkeypatch.setenv("H2OSIM_THREADS", "1")
    assert limit_threads() == 1


def test_legitimate_values_still_run(pool, folder):
    trace = str(folder / "t.npz")
    how, code, out, err = _run(pool, "h2osim.replay", [trace, "--sweep", "0.25,0.5", "--no-progress",
                                                       "--json", str(folder / "r.json"), "--csv", "-"])  # fmt: skip
    assert (how, code, err) == ("returned", 0, ""), err
    assert "mean retained attention mass by budget" in out
    assert len(json.loads((folder / "r.json").read_text())["results"]) == 2
    how, code, out, err = _run(pool, "h2osim.replay", [trace, "--budget", "1e9", "--no-progress"])
    assert code == 0 and " 1000000000 " in out  # a count above n is allowed and printed as given
    how, code, out, err = _run(
        pool, "theory.check", [trace, "--rows", "10000", "--no-plot", "--no-progress"]
    )
    assert code == 0 and "certificate holds" in out  # rows above n: every step shown once


@pytest.mark.parametrize(
    ("spec", "expected"),
    [("0-3", [0, 1, 2, 3]), ("1,1,0", [0, 1]), ("all", None)],
)
def test_parse_layers_known_answers(spec, expected):
    assert parse_layers(spec) == expected


def test_parse_layers_caps_ranges_before_expanding():
    with pytest.raises(ValueError, match="indices stop at 10000"):
        parse_layers("0-99999999999")
    with pytest.raises(ValueError, match="not stored"):
        parse_layers("0-5", stored=[0, 7])
    with pytest.raises(ValueError, match="layer 1 is not stored"):
        parse_layers("0-1", stored=[0, 7])
    with pytest.raises(ValueError, match="this model has layers 0..29"):
        parse_layers("0-99999999999", 30)
    assert parse_layers("0,7", stored=[0, 7, 9]) == [0, 7]


def test_number_refuses_nan_for_every_range():
    """NaN passes every comparison; a check written as `value < low or value > high` lets it
    through. `number` must refuse it whatever the bounds (the old check did not)."""
    for parse in (
        number(float, 0, 1),
        number(float),
        number(float, 0, low_open=True),
        number(int, 1),
    ):
        for text in ("nan", "NaN", "inf", "-inf", "1e999"):
            with pytest.raises(argparse.ArgumentTypeError):
                parse(text)
    assert number(float, 0, 1)("1") == 1.0 and number(int, 1)("7") == 7
    with pytest.raises(argparse.ArgumentTypeError):
        number(int, 0)("9" * 5000)  # no 4300-digit int conversion error


@given(st.floats(allow_nan=True, allow_infinity=True) | st.integers(-(10**400), 10**400))
def test_budget_value_accepts_exactly_the_valid_budgets(value):
    text = repr(value) if isinstance(value, float) else str(value)
    finite = isinstance(value, int) or math.isfinite(value)
    valid = finite and 0 < value <= 1e9 and (value <= 1 or float(value) == int(value))
    if len(text) > 40:
        valid = False
    try:
        assert budget_value(text) == text
        accepted = True
    except argparse.ArgumentTypeError:
        accepted = False
    assert accepted == valid, text


# --------------------------------------------------------------------------- fuzzing the flags
TRACE_FLAGS = {
    "h2osim.replay": ["--budget", "--sweep", "--layers", "--heavy-ratio", "--forgetting",
                      "--threshold", "--history", "--sinks", "--seed", "--recent-ratio",
                      "--heavy-size", "--recent-size"],
    "h2osim.observe": ["--layers"],
    "theory.check": ["--rows", "--budget", "--layers", "--d4"],
    "h2osim.synth": ["--n", "--layers", "--heads", "--kv-heads", "--head-dim", "--prompt-length",
                     "--heavy-share", "--pareto-shape", "--noise", "--seed"],
}  # fmt: skip
VALUES = (
    st.sampled_from(
        [
            "nan",
            "-nan",
            "inf",
            "-inf",
            "1e308",
            "-1e308",
            "1e-320",
            "0",
            "-0",
            "-1",
            "1",
            "2",
            "0.5",
            "abc",
            "",
            " ",
            "0x10",
            "1_0",
            "99999999999999999999",
            "0-99999999999",
            "0:inf:0.1",
            "0.1:1e9:1",
            ",,,",
            "1,2,",
            "5-2",
            "--",
            "\x1b[2J",
            "9" * 5000,
            "1e9",
            "3",
            "12",
            "13",
        ]
    )  # fmt: skip
    | st.floats(allow_nan=True, allow_infinity=True).map(repr)
    | st.integers(-(10**30), 10**30).map(str)
    | st.text(max_size=12)
)


@settings(max_examples=FLAG_EXAMPLES, deadline=None, database=None,
          suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture])  # fmt: skip
@given(data=st.data())
def test_numeric_flags_fuzzed(pool, folder, data):
    module = data.draw(st.sampled_from(sorted(TRACE_FLAGS)))
    flag = data.draw(st.sampled_from(TRACE_FLAGS[module]))
    value = data.draw(VALUES)
    trace = str(folder / "t.npz")
    base = {"h2osim.replay": [trace, "--no-progress", "--policy", "h2o,a2sf,lru,scissorhands,sink,random"],
            "h2osim.observe": [trace, "--no-plots", "--no-progress"],
            "theory.check": [trace, "--no-plot", "--no-progress"],
            "h2osim.synth": ["-o", str(folder / "fuzz.npz"), "--layers", "1", "--heads", "2", "--kv-heads", "1",
                             "--n", "24"]}[module]  # fmt: skip
    how, code, out, err = _run(pool, module, [*base, f"{flag}={value}"])
    assert how != "crash", err
    assert code in (0, 1, 2), (how, code, err)  # theory.check: 1 = the bound failed (never seen)
    if code == 2:
        lines = err.strip().splitlines()
        assert len(lines) == 1 and "Traceback" not in err and printable(lines[0]) == lines[0], err
    else:
        assert "Traceback" not in err
    CASES["flags"] = CASES.get("flags", 0) + 1


def test_numeric_flags_in_subprocesses_under_an_address_limit(folder):
    trace = str(folder / "t.npz")
    cases = [("h2osim.replay", [trace, "--sweep", "0.1:1e9:1"]),
             ("h2osim.replay", [trace, "--layers", "0-99999999999"]),
             ("h2osim.replay", [trace, "--policy", "scissorhands", "--history", "10000000000"]),
             ("theory.check", [trace, "--rows", "1000000000", "--no-plot"]),
             ("h2osim.observe", [trace, "--out-dir", str(folder / "a-file")]),
             ("h2osim.synth", ["--n", "100000", "-o", str(folder / "x.npz")]),
             ("h2osim.replay", [trace, "--budget", "-inf"])]  # fmt: skip
    for module, argv in cases:
        done = subprocess.run([fz.PYTHON, "-m", module, *argv], cwd=ROOT, capture_output=True,
                              text=True, timeout=120, env=fz.limited_subprocess_env(),
                              preexec_fn=fz.address_limit(3 * 2**30))  # fmt: skip
        assert done.returncode == 2 and "Traceback" not in done.stderr, (argv, done.stderr)
        assert len(done.stderr.strip().splitlines()) == 1, done.stderr
        CASES["subprocess"] = CASES.get("subprocess", 0) + 1
    env = dict(fz.limited_subprocess_env(), H2OSIM_THREADS="99999999999999999999")
    done = subprocess.run([fz.PYTHON, "-m", "h2osim.replay", trace], cwd=ROOT, capture_output=True,
                          text=True, timeout=120, env=env)  # fmt: skip
    assert done.returncode == 2 and "H2OSIM_THREADS" in done.stderr and done.stderr.count("\n") == 1


# --------------------------------------------------------------------------- outputs, text
def test_check_outputs_resolves_symlinks(tmp_path):
    trace = tmp_path / "data" / "t.npz"
    trace.parent.mkdir()
    trace.write_bytes(b"x")
    (tmp_path / "link").symlink_to(trace.parent)
    with pytest.raises(ValueError, match="input file"):
        check_outputs({"--json": str(tmp_path / "link" / "t.npz")}, inputs=[trace])
    with pytest.raises(ValueError, match="same file"):
        check_outputs({"--json": str(tmp_path / "link" / "o"), "--csv": str(trace.parent / "o")})
    check_outputs(
        {"--json": str(tmp_path / "o.json"), "--csv": "-"}, inputs=[trace], stdout_ok={"--csv"}
    )
    with pytest.raises(ValueError, match="file path"):
        check_outputs({"--output": ""})
    check_outputs(
        {"--output": str(tmp_path / "-")}
    )  # "-" is a file name where stdout is not offered


def _no_model(monkeypatch):
    import h2osim.model

    def refuse(*args, **kwargs):
        raise AssertionError("the model was loaded before the arguments were checked")

    monkeypatch.setattr(h2osim.model, "load_model_from_args", refuse)


@pytest.mark.parametrize(
    ("argv", "needle"),
    [
        (["--levels", "0", "-o", "{tmp}/x.npz"], "--levels"),
        (["-o", "/sys/x.npz"], "cannot write"),
        (["-o", "/dev/null"], "device"),
        (["-o", "{tmp}"], "folder"),
        (["-o", "{tmp}/x.npz", "--temperature", "nan", "--seed", "1"], "--temperature"),
        (["-o", "{tmp}/x.npz", "--max-new-tokens", "1e9"], "--max-new-tokens"),
        (["-o", "{tmp}/x.npz", "--text-file", "{tmp}/big.txt"], "bytes, over the"),
        (["-o", "{tmp}/x.npz", "--text-file", "/dev/zero"], "not a regular file"),
        (["-o", "{tmp}/big.txt", "--text-file", "{tmp}/big.txt"], "input file"),
        (["-o", "{tmp}/x.npz", "--prompt", "word " * 200_000], "characters, over the"),
    ],
)
def test_dump_refuses_before_the_model_loads(tmp_path, monkeypatch, capsys, argv, needle):
    from h2osim.dump import main

    (tmp_path / "big.txt").write_text("lorem ipsum " * 560_000)  # 6.7 MB
    _no_model(monkeypatch)
    code = main([arg.replace("{tmp}", str(tmp_path)) for arg in argv] + ["--no-progress"])
    err = capsys.readouterr().err
    assert code == 2 and len(err.strip().splitlines()) == 1 and needle in err, err


@pytest.mark.parametrize(
    ("argv", "needle"),
    [
        (["--json", "/sys/x.json"], "cannot write"),
        (["--json", ""], "empty"),
        (["--text-file", "/dev/zero"], "not a regular file"),
        (["--prompt-length", "nan"], "--prompt-length"),
        (["--budget", "nan"], "budget must be"),
        (["--forgetting", "nan", "--policy", "a2sf"], "forgetting"),
    ],
)
def test_live_refuses_before_the_model_loads(monkeypatch, capsys, argv, needle):
    from h2osim.live import main

    _no_model(monkeypatch)
    code = main(argv + ["--no-progress"])
    err = capsys.readouterr().err
    assert code == 2 and len(err.strip().splitlines()) == 1 and needle in err, err


# --------------------------------------------------------------------------- the loader's parts
@given(shape=st.lists(st.integers(0, 10**6), max_size=4).map(tuple), fortran=st.booleans(),
       dtype=st.sampled_from(["<f4", "<f2", ">f8", "<i8", "|u1", "<u2", "|b1", "<U7", "<i4"]))  # fmt: skip
def test_strict_header_parser_reads_what_numpy_writes(shape, fortran, dtype):
    header = np.lib.format.header_data_from_array_1_0(np.zeros((0,), dtype))
    header.update(shape=shape, fortran_order=fortran)
    import io

    buffer = io.BytesIO()
    np.lib.format.write_array_header_1_0(buffer, header)
    text = buffer.getvalue()[10:].decode("latin1")
    assert _parse_npy_header(text) == (shape, fortran, np.dtype(dtype))


@pytest.mark.parametrize(
    "text",
    ["{'descr': '<f4', 'fortran_order': False, 'shape': (3,), } (",
     "{'descr': '<f4', 'fortran_order': False, 'shape': (3,), '(': 1}",
     "{'descr': '|O', 'fortran_order': False, 'shape': (3,), }",
     "{'descr': [('a', '<f4')], 'fortran_order': False, 'shape': (3,), }",
     "{'descr': '<f4', 'fortran_order': 0, 'shape': (3,), }",
     "{'descr': '<f4', 'fortran_order': False, 'shape': (3), }",
     "{'descr': '<f4', 'descr': '<f4', 'shape': (3,), }",
     "{'descr': '<U0', 'fortran_order': False, 'shape': (3,), }",
     "(" * 5000],
)  # fmt: skip
def test_strict_header_parser_refuses_anything_else(text):
    with pytest.raises(ValueError):
        _parse_npy_header(text)


def test_describe_escapes_terminal_control_characters(tmp_path):
    trace = synthetic_trace(8, layers=1, heads=2, kv_heads=1, head_dim=2, seed=1)
    trace.metadata["model"] = "\x1b[2J\x1b]0;pwned\x07evil\u202e"
    trace.save(tmp_path / "t.npz")
    line = Trace.load(tmp_path / "t.npz").describe()
    assert "\x1b" not in line and "\x07" not in line and "\u202e" not in line
    assert line.startswith("\\x1b[2J\\x1b]0;pwned\\x07evil\\u202e:")


def test_quantized_rows_must_sum_to_exactly_the_levels(tmp_path):
    """1023 of 1024 levels is invalid per docs/trace-format.md (the old check allowed +-1)."""
    trace = synthetic_trace(8, layers=1, heads=2, kv_heads=1, head_dim=2, seed=1, dtype="float16")
    trace.save(tmp_path / "q.npz", encoding="quantized")  # fp16 rows: the writer closes each row
    loaded = Trace.load(tmp_path / "q.npz")
    arrays = dict(np.load(tmp_path / "q.npz"))
    codes = arrays["attention.L0"].copy()
    codes[0, 2] -= 1 if codes[0, 2] else -1  # row 1 now sums to 1023 or 1025
    arrays["attention.L0"] = codes
    np.savez(tmp_path / "off.npz", **arrays)
    with pytest.raises(TraceError, match="row 1 of head 0 sums to 10(23|25) levels, expected 1024"):
        Trace.load(tmp_path / "off.npz")
    assert loaded.n == 8


def test_memory_ceiling_follows_the_address_space_limit(pool):
    free = pool.submit(memory_ceiling).result(timeout=30)
    assert free <= fz.HEADROOM // 2 + 2**20 and free > 2**20


# --------------------------------------------------------------------------- issue 13, loader
def _members_of(path: Path) -> dict[str, bytes]:
    import zipfile

    with zipfile.ZipFile(path) as archive:
        return {info.filename: archive.read(info) for info in archive.infolist()}


def _loader_cases(tmp: Path) -> list[tuple[str, Path | str, str]]:
    trace = synthetic_trace(64, layers=2, heads=4, kv_heads=2, head_dim=16, seed=2)
    trace.save(tmp / "raw.npz", compress=False)
    trace.save(tmp / "zip.npz")
    members = _members_of(tmp / "zip.npz")

    def variant(name: str, **changes: bytes) -> Path:
        path = tmp / name
        merged = {**members, **{f"{key}.npy": value for key, value in changes.items()}}
        path.write_bytes(fz.zip_bytes([fz.deflated(key, value) for key, value in merged.items()]))
        return path

    nested = variant(
        "nested.npz", metadata=fz.npy_bytes(np.asarray(np.str_("[" * 1000 + "]" * 1000)))
    )
    header, data = fz.split_npy(members["layers.npy"])
    paren = variant("paren.npz", layers=header[:-3] + b"(" + header[-2:] + data)
    huge = variant("huge.npz", token_ids=fz.npy_header("<i8", (10**12,)) + b"\0" * 2_000_000)
    head_dim0 = variant("hd0.npz", **{f"values.L{layer}": fz.npy_bytes(np.zeros((2, 64, 0), np.float16))
                                      for layer in (0, 1)})  # fmt: skip
    raw = bytearray((tmp / "raw.npz").read_bytes())  # 200 scaled values in a memory-mapped member
    import zipfile

    info = zipfile.ZipFile(tmp / "raw.npz").getinfo("values.L0.npy")
    local = (
        info.header_offset
        + 30
        + int.from_bytes(raw[info.header_offset + 26 : info.header_offset + 28], "little")
    )
    local += int.from_bytes(raw[info.header_offset + 28 : info.header_offset + 30], "little")
    start = (
        local + 10 + int.from_bytes(raw[local + 8 : local + 10], "little")
    )  # after the .npy header
    scaled = np.frombuffer(bytes(raw[start : start + 800]), np.float32) * np.float32(1.5)  # (200,)
    raw[start : start + 800] = scaled.tobytes()
    (tmp / "scaled.npz").write_bytes(bytes(raw))
    return [
        ("nested JSON", nested, "metadata: JSON nested 1000 levels deep"),
        ("stray ( in header", paren, "layers: unreadable array header"),
        ("10^12 elements", huge, "token_ids: header declares shape (1000000000000,)"),
        ("head_dim 0", head_dim0, "values.L0: head_dim is 0"),
        ("scaled memory-mapped values", tmp / "scaled.npz", "values.L0: CRC-32 mismatch"),
        ("300-char name", tmp / ("x" * 300 + ".npz"), "File name too long"),
        ("folder", tmp, "is a folder"),
        ("/dev/zero", "/dev/zero", "not a regular file"),
    ]


def test_every_loader_reproduction_of_issue_13_is_a_trace_error(pool, tmp_path):
    for what, path, needle in _loader_cases(tmp_path):
        outcome, detail, _ = pool.submit(fz.load_case, str(path)).result(timeout=60)
        assert outcome == "trace_error" and needle in detail, (what, outcome, detail[-800:])
        how, code, _, err = _run(pool, "h2osim.replay", [str(path), "--no-progress"])
        assert code == 2 and err.count("\n") == 1 and needle in err, (what, err)
    assert Trace.load(tmp_path / "raw.npz").n == 64  # the undamaged memory-mapped trace loads


def test_the_policy_range_check_alone_lets_nan_through():
    """Why the CLI refuses NaN itself: `value < low or value > high` is False for NaN."""
    from h2osim.policies import all_parameters
    from h2osim.policies.base import check_parameter

    check_parameter(all_parameters()["forgetting"], float("nan"))  # no error raised
    with pytest.raises(argparse.ArgumentTypeError, match="forgetting"):
        number(float, 0, 1, low_open=True, name="forgetting")("nan")


class ReachedModel(Exception):
    """The arguments passed every check and the model would load now."""


MODEL_FLAGS = {
    "h2osim.dump": ["--max-new-tokens", "--seed", "--temperature", "--max-tokens", "--prefill-chunk",
                    "--levels", "--truncate", "--layers", "--epsilon"],
    "h2osim.live": ["--budget", "--generate", "--prompt-length", "--prefill-chunk", "--batch",
                    "--max-tokens", "--truncate", "--heavy-ratio", "--forgetting", "--history"],
}  # fmt: skip


@settings(max_examples=MODEL_FLAG_EXAMPLES, deadline=None, database=None,
          suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture])  # fmt: skip
@given(data=st.data())
def test_model_cli_flags_fuzzed_never_reach_the_model_with_a_bad_value(tmp_path, monkeypatch, data):
    """dump/live: a value is refused in one line before the model loads, or it is valid (the
    fake loader then raises ReachedModel); never a traceback."""
    import importlib
    import io
    from contextlib import redirect_stderr

    import h2osim.model

    def reached(*args, **kwargs):
        raise ReachedModel

    monkeypatch.setattr(h2osim.model, "load_model_from_args", reached)
    module = data.draw(st.sampled_from(sorted(MODEL_FLAGS)))
    flag = data.draw(st.sampled_from(MODEL_FLAGS[module]))
    value = data.draw(VALUES)
    argv = [f"{flag}={value}", "--no-progress"] + (
        ["-o", str(tmp_path / "x.npz")] if module.endswith("dump") else []
    )
    if flag in ("--temperature",):
        argv += ["--seed", "1"]
    err = io.StringIO()
    try:
        with redirect_stderr(err):
            code = importlib.import_module(module).main(argv)
    except ReachedModel:
        return_code = None
    except SystemExit as exc:
        return_code = exc.code
    else:
        return_code = code
    if return_code is not None:
        assert return_code == 2, (argv, err.getvalue())
        lines = err.getvalue().strip().splitlines()
        assert len(lines) == 1 and "Traceback" not in err.getvalue(), err.getvalue()
    CASES["model_flags"] = CASES.get("model_flags", 0) + 1


def test_enough_flag_cases_ran():
    """The flag fuzz tests above ran their full counts (Hypothesis did not stop early)."""
    assert (
        CASES.get("flags", 0) >= FLAG_EXAMPLES
        and CASES.get("model_flags", 0) >= MODEL_FLAG_EXAMPLES
    ), CASES
    print(f"flag fuzz cases run: {CASES}")
