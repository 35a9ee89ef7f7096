"""A dump killed mid-write (SIGINT, SIGTERM, SIGKILL) never leaves a partial trace file.

Each case runs the real ``python -m h2osim.dump`` on the bundled SmolLM2 in a child
process. To make the signal land *during* the write, the child is started through a
small wrapper (test code only, nothing in h2osim) that pauses numpy's ``write_array``
after the first attention and value members are in the temporary file; the test checks
that file is really half written (not yet a readable zip), sends the signal, and checks
that the target path holds nothing or the previous complete file, byte for byte.
The three children start together (about 10-20 s on a shared 2-core box).
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import zipfile
from pathlib import Path

import pytest

from h2osim.synthetic import synthetic_trace
from h2osim.trace import Trace

REPO = Path(__file__).resolve().parents[1]
PAUSE_AFTER_MEMBERS = 10  # 8 header members, attention.L0, values.L0 -> then pause
WRAPPER = textwrap.dedent(f"""
    import signal, sys, time
    import numpy.lib.format as npy_format

    # A shell without job control (CI, nohup ... &) starts children with SIGINT ignored,
    # and Python then never raises KeyboardInterrupt; behave as under a terminal.
    signal.signal(signal.SIGINT, signal.default_int_handler)

    original = npy_format.write_array
    written = 0

    def write_then_pause(*args, **kwargs):
        global written
        original(*args, **kwargs)
        written += 1
        if written == {PAUSE_AFTER_MEMBERS}:
            print("MID-WRITE", flush=True)
            time.sleep(600)

    npy_format.write_array = write_then_pause
    from h2osim.dump import main
    sys.exit(main(sys.argv[1:]))
""")
CASES = {  # name: (signal, is there a previous file at the target?)
    "sigint-none": (signal.SIGINT, False),
    "sigterm-previous": (signal.SIGTERM, True),
    "sigkill-previous": (signal.SIGKILL, True),
}


@pytest.fixture(scope="module")
def interrupted(tmp_path_factory):
    """Start every case's dump at once, signal each mid-write, report what was left."""
    env = os.environ | {"PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1"}
    runs = {}
    for name, (_, previous) in CASES.items():
        folder = tmp_path_factory.mktemp(name)
        target = folder / "trace.npz"
        if previous:
            synthetic_trace(12, layers=1, heads=2, kv_heads=1, head_dim=2, seed=1).save(target)
        before = target.read_bytes() if previous else None
        argv = [sys.executable, "-c", WRAPPER, "--prompt", "Context managers wrap a block.",
                "--max-new-tokens", "2", "--layers", "0,1", "-o", str(target), "--no-progress"]  # fmt: skip
        process = subprocess.Popen(argv, cwd=REPO, env=env, stdout=subprocess.PIPE,
                                   stderr=subprocess.PIPE, text=True)  # fmt: skip
        runs[name] = {"process": process, "target": target, "before": before}
    for name, run in runs.items():
        process = run["process"]
        try:
            line = process.stdout.readline()
            assert line.strip() == "MID-WRITE", f"{name}: child never reached the write: " + (
                process.stderr.read() if process.poll() is not None else line
            )
            temporaries = list(run["target"].parent.glob(".trace.npz.*.tmp"))
            run["temporary_during"] = [
                (p.stat().st_size, zipfile.is_zipfile(p)) for p in temporaries
            ]
            run["target_during"] = run["target"].read_bytes() if run["target"].exists() else None
            process.send_signal(CASES[name][0])
            _, run["stderr"] = process.communicate(timeout=60)
        finally:
            if process.poll() is None:
                process.kill()
                process.wait()
        run["returncode"] = process.returncode
        run["target_after"] = run["target"].read_bytes() if run["target"].exists() else None
        run["temporary_after"] = list(run["target"].parent.glob(".trace.npz.*.tmp"))
    return runs


@pytest.mark.model
@pytest.mark.parametrize("case", list(CASES))
def test_interrupted_dump_leaves_nothing_or_the_previous_file(interrupted, case):
    run = interrupted[case]
    sent, previous = CASES[case]
    # The kill landed mid-write: one temporary file, non-empty, not yet a complete zip.
    assert len(run["temporary_during"]) == 1
    size, complete = run["temporary_during"][0]
    assert size > 0 and not complete
    assert run["target_during"] == run["before"]
    # Afterwards: exactly the previous complete file, or nothing at all.
    assert run["target_after"] == run["before"]
    if previous:
        assert Trace.load(run["target"]).n == 12  # still the complete synthetic trace
    if sent == signal.SIGKILL:
        assert run["returncode"] == -signal.SIGKILL  # may leave the hidden temporary file
    else:  # Ctrl-C and SIGTERM exit cleanly: one line, exit 130, temporary file removed
        assert run["returncode"] == 130
        assert run["stderr"].strip().splitlines()[-1] == "python -m h2osim.dump: interrupted"
        assert run["temporary_after"] == []
