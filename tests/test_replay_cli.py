"""``python -m h2osim.replay``: tables, files, plots, sweeps, and one-line errors."""

from __future__ import annotations

import csv
import json
import subprocess
import sys
from pathlib import Path

import pytest

from h2osim.policies import policy_names
from h2osim.replay import main, parse_sweep
from h2osim.trace import Trace

ROOT = Path(__file__).resolve().parents[1]
DEMO = ROOT / "traces" / "synthetic-demo.npz"


@pytest.fixture(scope="module")
def small_trace(tmp_path_factory) -> Path:
    from h2osim.synthetic import synthetic_trace

    path = tmp_path_factory.mktemp("cli") / "small.npz"
    synthetic_trace(48, layers=2, heads=4, kv_heads=2, head_dim=4, seed=5).save(path)
    return path


def run(capsys, *argv) -> tuple[int, str, str]:
    code = main([str(a) for a in argv] + ["--no-progress"])
    out = capsys.readouterr()
    return code, out.out, out.err


def test_policy_all_prints_a_ranked_table(capsys, small_trace):
    code, out, _ = run(capsys, small_trace, "--policy", "all", "--budget", "0.25", "--json", "-")
    assert code == 0
    table = out[: out.index("{")]
    lines = [line for line in table.splitlines() if line[:1].isdigit()]
    # every registered policy, but knorm without key norms in the trace (noted on stderr)
    assert len(lines) == len(policy_names()) - (not Trace.load(small_trace).has_key_norms)
    records = json.loads(out[out.index("{") :])["results"]
    assert [r["rank"] for r in records] == list(range(1, len(records) + 1))
    mixed = len({r["prompt_mode"] for r in records}) > 1
    key = "retained_mass_decode" if mixed else "retained_mass"
    assert [r[key] for r in records] == sorted((r[key] for r in records), reverse=True)
    assert records[0][key] == pytest.approx(1.0)  # nothing beats keeping everything
    assert ("ranked by mass(decode)" in table) == mixed


def test_json_and_csv_outputs(capsys, tmp_path, small_trace):
    out_csv = tmp_path / "r.csv"
    code, out, _ = run(capsys, small_trace, "--policy", "h2o,window", "--budget", "12", "--json", "-",
                       "--csv", out_csv)  # fmt: skip
    assert code == 0
    payload = json.loads(out[out.index("{") :])
    assert [r["policy"] for r in payload["results"]] == ["h2o", "window"]
    assert all(r["budget"] == 12 for r in payload["results"])
    rows = list(csv.DictReader(out_csv.open()))
    assert {row["policy"] for row in rows} == {"h2o", "window"}
    assert float(rows[0]["retained_mass"]) == pytest.approx(payload["results"][0]["retained_mass"])


def test_policy_parameters_reach_the_policy(capsys, small_trace):
    _, out_a, _ = run(capsys, small_trace, "--policy", "h2o", "--heavy-ratio", "0.1", "--json", "-")
    _, out_b, _ = run(capsys, small_trace, "--policy", "h2o", "--heavy-ratio", "0.9", "--json", "-")
    a = json.loads(out_a[out_a.index("{") :])["results"][0]
    b = json.loads(out_b[out_b.index("{") :])["results"][0]
    assert "heavy_ratio=0.1" in a["description"] and "heavy_ratio=0.9" in b["description"]
    assert a["retained_mass"] != b["retained_mass"]


def test_plot_and_sweep(capsys, tmp_path, small_trace):
    png = tmp_path / "mass.png"
    code, _, _ = run(capsys, small_trace, "--policy", "h2o", "--policy", "window", "--plot", png)
    assert code == 0 and png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    curves = tmp_path / "curves.png"
    code, out, _ = run(capsys, small_trace, "--policy", "h2o,window,full", "--sweep", "0.1:0.3:0.1",
                       "--plot", curves, "--json", tmp_path / "s.json")  # fmt: skip
    assert code == 0 and curves.read_bytes()[:4] == b"\x89PNG"
    records = json.loads((tmp_path / "s.json").read_text())["results"]
    by_policy = {}
    for record in records:
        by_policy.setdefault(record["policy"], []).append(record["retained_mass"])
    assert len(by_policy["h2o"]) == 3 and len(by_policy["full"]) == 1
    assert by_policy["h2o"] == sorted(by_policy["h2o"])  # more budget, more mass
    assert "mean retained attention mass by budget" in out


def test_parse_sweep():
    assert parse_sweep("0.1:0.3:0.1") == [0.1, 0.2, 0.3]
    assert parse_sweep("0.05,0.5") == [0.05, 0.5]
    with pytest.raises(ValueError):
        parse_sweep("0.5:0.1:0.1")


@pytest.mark.parametrize(
    ("argv", "needle"),
    [
        (["--policy", "nope"], "unknown policy"),
        (["--budget", "0"], "budget"),
        (["--budget", "2.5"], "whole"),
        (["--layers", "7"], "layer 7"),
        (["--layers", "x"], "--layers"),
        (["--sweep", "1:0:1"], "--sweep"),
        (["--heavy-ratio", "3"], "heavy_ratio"),
    ],
)
def test_bad_input_is_one_line_and_exit_2(capsys, small_trace, argv, needle):
    code, _, err = run(capsys, small_trace, *argv)
    assert code == 2
    assert err.strip().count("\n") == 0 and needle in err


def test_missing_file_and_help_in_a_real_process(tmp_path):
    done = subprocess.run([sys.executable, "-m", "h2osim.replay", str(tmp_path / "none.npz")],
                          cwd=ROOT, capture_output=True, text=True, timeout=120)  # fmt: skip
    assert (
        done.returncode == 2 and "no trace file" in done.stderr and "Traceback" not in done.stderr
    )
    helped = subprocess.run([sys.executable, "-m", "h2osim.replay", "--help"], cwd=ROOT,
                            capture_output=True, text=True, timeout=120)  # fmt: skip
    assert helped.returncode == 0
    for name in policy_names():
        assert name in helped.stdout


def test_shipped_demo_trace_replays(capsys):
    code, out, _ = run(capsys, DEMO, "--policy", "all", "--budget", "0.2")
    assert code == 0 and "h2o" in out and "window" in out
