"""Live eviction inside the real SmolLM2 (30 layers, 9 query -> 3 KV heads), a few dozen tokens.

The same known answers as tests/test_live.py (tiny random llama), on the real model:
budget >= n reproduces the full cache's logits; a live h2o run equals one masked forward
pass at positions 0..n-1 built from its evictions (and a run whose RoPE positions come
from the shrunken cache length does not); the cache never holds more than the budget;
the CLI runs both modes. The model loads once per session (tests/conftest_model.py).
"""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from h2osim.live import main
from h2osim.model.live import LiveConfig, model_shape, teacher_forced
from h2osim.policies import make_policy
from tests.conftest_model import smollm2
from tests.test_live import ShrunkenPositions, live_logits, masked_reference

TEXT = "The for statement is used to iterate over the elements of a sequence (such as a string, tuple or list)."


@pytest.fixture(scope="module")
def loaded():
    return smollm2()


@pytest.fixture(scope="module")
def text_ids(loaded):
    from h2osim.model import encode_text

    ids = encode_text(loaded[1], TEXT)
    assert 20 <= len(ids) <= 40
    return ids


@pytest.fixture(scope="module")
def h2o_run(loaded, text_ids):
    """Live h2o at k = 10 tokens per (layer, KV head), and its masked one-shot reference."""
    model = loaded[0]
    run, logits = live_logits(
        model, make_policy("h2o"), 10, text_ids, config=LiveConfig(prefill_chunk=4)
    )
    reference, full_cache = masked_reference(model, text_ids, run.controller.evicted_at[0])
    return run, logits, reference, full_cache


@pytest.mark.model
def test_budget_at_least_n_reproduces_the_full_cache_logits(loaded, text_ids):
    model = loaded[0]
    with torch.inference_mode():
        full = model(torch.tensor([text_ids])).logits[0].float()
    run, logits = live_logits(model, make_policy("h2o"), len(text_ids), text_ids)
    assert (run.controller.evicted_at < 0).all()
    assert (logits - full).abs().max() <= 1e-4


@pytest.mark.model
def test_live_h2o_equals_the_masked_one_shot_forward(loaded, h2o_run):
    run, logits, reference, full_cache = h2o_run
    assert (logits - reference).abs().max() <= 5e-4  # float32 summation order only
    layers, _, kv_heads = model_shape(loaded[0])
    slot_positions = run.controller.slot_positions[0]
    for layer in (0, 14, 29):  # every kept key is the token's own key at its true position
        for kv in range(kv_heads):
            positions = torch.from_numpy(slot_positions[layer * kv_heads + kv])
            expected = full_cache.layers[layer].keys[0, kv, positions]
            assert torch.allclose(run.cache.layers[layer].keys[0, kv], expected, atol=1e-4)


@pytest.mark.model
def test_rope_positions_from_the_shrunken_cache_length_would_fail(loaded, text_ids, h2o_run):
    _, _, reference, _ = h2o_run
    model = loaded[0]
    _, wrong = live_logits(ShrunkenPositions(model), make_policy("h2o"), 10, text_ids,
                           config=LiveConfig(prefill_chunk=4))  # fmt: skip
    assert (wrong - reference).abs().max() > 1.0


@pytest.mark.model
def test_cache_holds_the_budget_and_evicted_tokens_never_return(h2o_run, text_ids):
    run = h2o_run[0]
    n = len(text_ids)
    evicted_at = run.controller.evicted_at[0]  # (90 units, n)
    assert evicted_at.shape == (90, n)
    assert run.max_held == 10 and (run.controller.held_at <= 10).all()
    assert (
        run.cache.kv_bytes() == 2 * 30 * 3 * 10 * 64 * 4
    )  # K+V x layers x KV heads x k x d x fp32
    for unit in range(90):
        assert (
            sorted(run.controller.slot_positions[0, unit])
            == np.nonzero(evicted_at[unit] < 0)[0].tolist()
        )
    assert ((evicted_at < 0).sum(axis=1) == 10).all()  # each unit evicted n - k tokens, once each


@pytest.mark.model
def test_teacher_forced_report_against_the_full_cache(loaded, text_ids):
    report = teacher_forced(loaded[0], text_ids, ["h2o", "window"], 0.5)
    full = report.reference.summary
    assert full["kl"] == 0 and full["top1"] == 1 and full["kv_fraction"] == 1
    for result in report.results:
        summary = result.summary
        assert summary["kv_fraction"] == pytest.approx(result.budget / len(text_ids))
        assert summary["evicted_steps"] == len(text_ids) - 1 - result.budget  # rows k..n-2 predict
        assert summary["kl"] > 0 and summary["perplexity"] > 1
    window = next(r for r in report.results if r.policy == "window")
    assert window.summary["perplexity"] > full["perplexity"]


@pytest.mark.model
def test_cli_teacher_forced_json(loaded, tmp_path, capsys):
    target = tmp_path / "live.json"
    code = main(["--policy", "sink,h2o", "--budget", "0.5", "--prompt", TEXT, "--json", str(target),
                 "--no-progress"])  # fmt: skip
    out = capsys.readouterr().out
    assert code == 0 and "full-cache perplexity" in out and "sink" in out
    payload = json.loads(target.read_text())
    assert payload["mode"] == "teacher-forced" and payload["command"].startswith(
        "python -m h2osim.live"
    )
    assert [r["policy"] for r in payload["results"]] == ["full", "sink", "h2o"]
    assert payload["results"][1]["kv_fraction"] == pytest.approx(0.5, abs=0.05)


@pytest.mark.model
def test_cli_generate_prints_continuations_side_by_side(loaded, capsys):
    code = main(["--generate", "6", "--policy", "window", "--budget", "8", "--prompt", TEXT,
                 "--no-progress"])  # fmt: skip
    out = capsys.readouterr().out
    assert code == 0 and "[full k=" in out and "[window k=8]" in out and "same first" in out
