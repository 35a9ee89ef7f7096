"""Prompt mode ``prefill`` (kvpress's semantics) in replay: the prompt is compressed once,
after prefill, to int(P (1 - cr)) tokens; decode tokens are appended and never evicted."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from h2osim.engine import ReplayConfig, replay
from h2osim.oracles import topk_bound
from h2osim.replay import main
from h2osim.schedule import CacheSchedule, compressed_size
from h2osim.trace import Trace

ROOT = Path(__file__).resolve().parent.parent
TRACE = ROOT / "traces/smollm2-chat.npz"  # n=435, P=48


def test_compressed_size_counts_as_kvpress():
    assert compressed_size(384, 0.5) == 192 and compressed_size(384, 0.8) == 76
    assert compressed_size(10, 0.99) == 1  # max(1, ...)
    with pytest.raises(ValueError, match=r"\[0, 1\)"):
        compressed_size(10, 1.0)
    assert CacheSchedule(2, 3, "prefill").counts(6).tolist() == [0, 0, 0, 1, 0, 0]
    assert CacheSchedule(2, 3, "prefill").held_limit(6) == 5


def test_prefill_mode_compresses_once_then_appends():
    trace = Trace.load(TRACE)
    config = ReplayConfig(prompt_mode="prefill", compression_ratio=0.5, layers=(3,))
    result = replay(trace, "sink", config=config)
    prompt, kept = trace.prompt_length, compressed_size(trace.prompt_length, 0.5)
    assert result.budget == kept == 24
    for t in range(trace.n):
        held = np.flatnonzero(result.kept_at(t)[0]).tolist()
        if t < prompt:
            assert held == list(range(t + 1))
        else:  # 4 sinks + the newest 20 prompt tokens, then every decode token
            assert held == [0, 1, 2, 3] + list(range(prompt - 20, t + 1))
    evicted = result.evicted_at[result.evicted_at >= 0]
    assert set(evicted.tolist()) == {prompt}  # everything that left, left at step P


def test_prefill_mode_oracles_bound_the_presses():
    trace = Trace.load(TRACE)
    config = ReplayConfig(
        prompt_mode="prefill", compression_ratio=0.8, layers=(3,), output_error=False
    )
    opt = replay(trace, "opt", config=config)
    bound = topk_bound(trace, config=config)
    for name in ("sink", "tova-kv", "observed", "snapkv", "h2o"):
        mass = replay(trace, name, config=config).retained_mass.sum(0)
        assert np.all(opt.retained_mass.sum(0) >= mass - 1e-5), name
    assert np.all(bound.retained_mass.sum(0) >= opt.retained_mass.sum(0) - 1e-5)


def test_replay_cli_compression_ratio(capsys):
    assert main([str(TRACE), "--policy", "sink,snapkv", "--prompt-mode", "prefill",
                 "--compression-ratio", "0.5", "--layers", "3", "--no-progress"]) == 0  # fmt: skip
    out = capsys.readouterr().out
    assert " 24 " in out and "snapkv" in out
    assert main([str(TRACE), "--compression-ratio", "0.5", "--no-progress"]) == 2
    assert "--prompt-mode prefill" in capsys.readouterr().err
    assert main([str(TRACE), "--prompt-mode", "prefill", "--compression-ratio", "0.5",
                 "--sweep", "0.1:0.2:0.1", "--no-progress"]) == 2  # fmt: skip
    assert "give one" in capsys.readouterr().err
    assert main([str(TRACE), "--policy", "h2o-mask,sink", "--prompt-mode", "prefill", "--sweep",
                 "0.1:0.2:0.1", "--layers", "3", "--no-progress"]) == 0  # fmt: skip


def test_key_norms_are_an_optional_trace_member(tmp_path):
    """knorm's input: ``key_norms.L{l}`` (KVH, n) float32, for every layer or none."""
    from h2osim.errors import TraceError

    trace = Trace.load(TRACE)
    assert not trace.has_key_norms and trace.key_norms(3) is None
    rows = np.tril(np.ones((4, 4), dtype=np.float32))
    rows /= rows.sum(axis=1, keepdims=True)  # uniform causal rows
    dense = np.stack([rows, rows])[None]  # (1 layer, 2 heads, 4, 4)
    norms = {0: np.array([[1.0, 2.0, 3.0, 4.0]], dtype=np.float32)}
    small = Trace.from_arrays(dense, head_map=[0, 0], key_norms=norms)
    small.save(tmp_path / "n.npz")
    loaded = Trace.load(tmp_path / "n.npz")
    np.testing.assert_array_equal(loaded.key_norms(0), norms[0])
    with pytest.raises(TraceError, match="key_norms.L0: expected shape"):
        Trace.from_arrays(dense, head_map=[0, 0], key_norms={0: np.ones((1, 3), np.float32)})
