"""Section 3 observations (h2osim.observe): known answers on hand-made traces, the CLI,
and the shipped real traces in traces/ (sizes, metadata, observations run)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from h2osim.observe import main
from h2osim.studies.observe import (
    observe,
    power_law_fit,
    sparsity,
    top_mass,
    uniform_early_share,
)
from h2osim.synthetic import synthetic_trace
from h2osim.trace import Trace

REPO = Path(__file__).resolve().parents[1]
SHIPPED = sorted((REPO / "traces").glob("smollm2-*.npz"))


def _trace(dense: np.ndarray, prompt_length: int | None = None) -> Trace:
    """One layer, one head (per KV head) from a dense (H, n, n) lower-triangular array."""
    return Trace.from_arrays(dense[None], head_map=range(dense.shape[0]),
                             prompt_length=prompt_length)  # fmt: skip


def _uniform(n: int) -> np.ndarray:
    """Row t spreads 1/(t+1) over keys 0..t. ``(1, n, n)``."""
    rows = np.tril(np.ones((n, n))) / np.arange(1, n + 1)[:, None]
    return rows[None]


def test_sparsity_known_answer():
    dense = np.array([[[1, 0, 0], [0.5, 0.5, 0], [0.98, 0.0, 0.02]]])
    assert sparsity(dense) == pytest.approx(1 / 6)
    assert sparsity(dense, rows=slice(2, 3)) == pytest.approx(1 / 3)


def test_top_mass_known_answer():
    row = np.zeros((1, 4, 4))
    row[0, 3] = [0.7, 0.1, 0.1, 0.1]
    row[0, :3, :3] = np.tril(np.ones((3, 3))) / np.arange(1, 4)[:, None]
    # Rows with >= 4 keys: only row 3. 25% of 4 keys = 1 key -> 0.7; 50% -> 2 keys -> 0.8.
    assert top_mass(row, shares=(0.25, 0.5), min_keys=4) == pytest.approx({"25%": 0.7, "50%": 0.8})


def test_power_law_fit_recovers_the_exponent():
    ranks = np.arange(1, 1001)
    alpha, r2_power, r2_exponential = power_law_fit(3.0 * ranks**-1.5)
    assert alpha == pytest.approx(1.5) and r2_power == pytest.approx(1.0)
    assert r2_exponential < 0.9
    alpha, r2_power, r2_exponential = power_law_fit(np.exp(-ranks / 50.0))
    assert r2_exponential == pytest.approx(1.0) and r2_power < r2_exponential


def test_uniform_attention_known_answers():
    n = 50
    observed = observe(_trace(_uniform(n))).layers[0]
    assert observed.sparsity == 0.0  # every entry is the row max
    assert observed.sink_mass == pytest.approx(np.mean(1 / np.arange(2, n + 1)))
    assert observed.early_share == pytest.approx(uniform_early_share(n))
    # n=10: token 1 collects H_10 - H_1 of the 10 - H_10 held by tokens 1..9.
    harmonic_10 = np.sum(1 / np.arange(1, 11))
    assert uniform_early_share(10) == pytest.approx((harmonic_10 - 1) / (10 - harmonic_10))
    assert observed.top_mass["10%"] == pytest.approx(
        np.mean([np.ceil(0.1 * k - 1e-9) / k for k in range(20, n + 1)])
    )


def test_a_pure_sink_is_fully_sparse_apart_from_token_0():
    n = 30
    dense = np.zeros((2, n, n))
    dense[:, :, 0] = 1.0
    observed = observe(_trace(dense, prompt_length=20)).layers[0]
    causal = n * (n + 1) / 2
    assert observed.sparsity == pytest.approx((causal - n) / causal)
    decode_entries = sum(t + 1 for t in range(20, n))
    assert observed.sparsity_decode == pytest.approx((decode_entries - 10) / decode_entries)
    assert observed.sink_mass == 1.0 and observed.heavy_hitter_share == 1.0
    assert all(value == pytest.approx(1.0) for value in observed.top_mass.values())


def test_quantized_traces_observe_like_float_ones(tmp_path):
    trace = synthetic_trace(64, layers=2, heads=3, kv_heads=1, head_dim=4, seed=3)
    trace.save(tmp_path / "q.npz", encoding="quantized")
    exact = observe(trace)
    quantized = observe(Trace.load(tmp_path / "q.npz"))
    for a, b in zip(exact.layers, quantized.layers, strict=True):
        assert b.sparsity == pytest.approx(a.sparsity, abs=0.01)  # entries near 1% of the max move
        assert b.sink_mass == pytest.approx(a.sink_mass, abs=2e-3)
        assert b.top_mass["10%"] == pytest.approx(a.top_mass["10%"], abs=2e-3)


def test_cli_prints_the_table_and_writes_pngs(tmp_path, capsys):
    path = tmp_path / "s.npz"
    synthetic_trace(48, layers=3, heads=4, kv_heads=2, head_dim=4, seed=1).save(path)
    out = tmp_path / "obs"
    code = main([str(path), "--out-dir", str(out), "--json", str(tmp_path / "o.json"),
                 "--no-progress"])  # fmt: skip
    assert code == 0
    printed = capsys.readouterr().out
    assert "sparsity" in printed and "\n mean" in printed and "paper, OPT: > 95%" in printed
    assert sorted(p.name for p in out.iterdir()) == [
        "accumulated_vs_position.png", "concentration.png", "power_law.png", "sparsity.png"
    ]  # fmt: skip
    record = json.loads((tmp_path / "o.json").read_text())
    assert len(record["layers"]) == 3 and 0 <= record["mean"]["sparsity"] <= 1


@pytest.mark.parametrize(
    ("argv", "message"),
    [(["missing.npz"], "no trace file"), (["{trace}", "--layers", "7"], "layer 7 is not stored")],
)
def test_cli_errors_are_one_line(tmp_path, capsys, argv, message):
    path = tmp_path / "s.npz"
    synthetic_trace(16, layers=1, heads=2, kv_heads=1, head_dim=2, seed=0).save(path)
    code = main([arg.format(trace=path) for arg in argv] + ["--no-plots", "--no-progress"])
    assert code == 2
    lines = capsys.readouterr().err.strip().splitlines()
    assert len(lines) == 1 and message in lines[0]


# --------------------------------------------------------------------------- shipped traces
def test_three_real_traces_are_shipped():
    assert [p.name for p in SHIPPED] == [
        "smollm2-chat.npz", "smollm2-code.npz", "smollm2-pydoc.npz"
    ]  # fmt: skip


@pytest.mark.parametrize("path", SHIPPED, ids=[p.stem for p in SHIPPED])
def test_shipped_trace_is_small_valid_and_documented(path):
    assert path.stat().st_size <= 8 * 1024 * 1024
    trace = Trace.load(path)
    assert trace.metadata["model"].startswith("SmolLM2-135M-Instruct")
    assert trace.head_map.tolist() == [0, 0, 0, 1, 1, 1, 2, 2, 2] and trace.has_values
    assert trace.n <= 512 and trace.metadata["command"].startswith("python -m h2osim.dump")
    readme = (REPO / "traces" / "README.md").read_text()
    assert (
        f"-o traces/{path.name}" in readme and f"-o traces/{path.name}" in trace.metadata["command"]
    )
    observations = observe(trace)
    assert 0.5 < observations.mean("sparsity") < 1
    if path.stem.endswith("chat"):
        assert trace.decode_steps >= 100  # a generated answer, not just a prompt
