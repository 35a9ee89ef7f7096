"""Prefill compression against NVIDIA kvpress 0.5.5, on the bundled SmolLM2.

tests/data/kvpress-prefill.npz holds what kvpress itself kept and predicted (CPU float32,
eager attention): the first 384 tokens of the pydoc topics ``naming`` and ``with``
compressed once after prefill to int(384 (1 - cr)) tokens per (layer, KV head) by each
press, then 64 tokens teacher-forced. Here the same run in our live engine, prompt mode
``prefill``:

- kept sets: the compression is decided at step 384 from the prompt rows alone, so a run
  of 385 tokens (the prefill plus one step) shows every press's choice - 4 short runs for
  2 texts x 2 ratios x 5 presses. sink / tova / observed / snapkv must match exactly.
  knorm may differ only where two keys of layer 0 hold the same token: their pre-RoPE
  keys are identical, so the norms tie exactly and float rounding after RoPE decides, in
  kvpress as here;
- the teacher-forced NLL of every continuation row within 1e-3 of kvpress's, through the
  CLI's JSON (``perplexity`` = rows 384..447).
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from h2osim.live import main
from h2osim.model.live import LiveConfig, teacher_forced
from h2osim.policies import make_policy
from tests.conftest_model import smollm2

ROOT = Path(__file__).resolve().parent.parent
GOLDEN = np.load(ROOT / "tests/data/kvpress-prefill.npz", allow_pickle=False)
META = json.loads(bytes(GOLDEN["meta.json"]).decode())
PROMPT = 384
PRESSES = {"streamingllm": "sink", "tova": "tova", "observed": "observed", "snapkv": "snapkv",
           "knorm": "knorm"}  # fmt: skip


def test_the_golden_file_says_what_we_assume():
    assert META["kvpress"] == "0.5.5" and META["prompt_tokens"] == PROMPT
    assert META["presses"]["streamingllm"] == "StreamingLLMPress(n_sink=4)"
    assert META["presses"]["snapkv"] == "SnapKVPress(window_size=64, kernel_size=5)"
    for text in ("naming", "with"):
        assert GOLDEN[f"{text}/token_ids"].shape == (PROMPT + 65,)
        for press in PRESSES:
            for cr, n_kept in (("0.5", 192), ("0.8", 76)):  # int(384 (1 - cr)), as kvpress counts
                assert (GOLDEN[f"{text}/{press}/{cr}/kept"].sum(-1) == n_kept).all()


@pytest.fixture(scope="module")
def loaded():
    return smollm2()


def kept_sets(model, ids, ratio: float) -> dict[str, np.ndarray]:
    """Every press's kept prompt positions ``(30, 3, 384)`` after prefill compression."""
    policies = [make_policy(name) for name in PRESSES.values()]
    config = LiveConfig(prompt_mode="prefill", compression_ratio=ratio, prefill_chunk=PROMPT)
    report = teacher_forced(model, ids[: PROMPT + 1], policies, prompt_length=PROMPT, config=config)
    kept = {}
    for result in report.results:
        prompt_kept = result.evicted_at[:, :PROMPT] < 0  # (units, 384)
        if result.unit_labels[0][1] == -1:  # layer units: one set shared by the KV heads
            prompt_kept = np.repeat(prompt_kept[:, None], 3, axis=1)
        kept[result.policy] = prompt_kept.reshape(30, 3, PROMPT)
    return kept


@pytest.mark.model
@pytest.mark.parametrize("text", ["naming", "with"])
def test_prefill_kept_sets_equal_kvpress(loaded, text):
    ids = GOLDEN[f"{text}/token_ids"].tolist()
    for cr in ("0.5", "0.8"):
        ours = kept_sets(loaded[0], ids, float(cr))
        for press, name in PRESSES.items():
            theirs = GOLDEN[f"{text}/{press}/{cr}/kept"]
            differ = np.argwhere(~(ours[name] == theirs).all(axis=-1))  # (layer, KV head)
            if name != "knorm":
                assert len(differ) == 0, f"{press} {text} cr={cr}: {len(differ)} units differ"
                continue
            for layer, kv in differ:  # knorm: only exact ties between repeated tokens of layer 0
                ours_only = np.flatnonzero(ours[name][layer, kv] & ~theirs[layer, kv])
                theirs_only = np.flatnonzero(theirs[layer, kv] & ~ours[name][layer, kv])
                assert layer == 0, (text, cr, layer, kv)
                assert sorted(np.take(ids, ours_only)) == sorted(np.take(ids, theirs_only))
            assert len(differ) <= 3, f"knorm {text} cr={cr}: {len(differ)} units differ"


@pytest.mark.model
def test_cli_prefill_perplexity_and_every_nll_equal_kvpress(loaded, tmp_path, capsys):
    out = tmp_path / "live.json"
    code = main(["--pydoc-topic", "naming", "--truncate", "449", "--prompt-length", "384",
                 "--prompt-mode", "prefill", "--compression-ratio", "0.5", "--policy", "sink",
                 "--device", "cpu", "--no-progress", "--json", str(out)])  # fmt: skip
    assert code == 0
    records = {record["policy"]: record for record in json.loads(out.read_text())["results"]}
    for policy, case in (("sink", "streamingllm|0.5|naming"), ("full", "full|naming")):
        want = META["cases"][case]["perplexity"]
        assert records[policy]["perplexity"] == pytest.approx(want, rel=1e-3), policy
        assert records[policy]["scored_rows"] == "384..447"
    # row by row: the NLL of each continuation token (rows 384..447)
    ids = GOLDEN["naming/token_ids"].tolist()
    config = LiveConfig(prompt_mode="prefill", compression_ratio=0.5)
    report = teacher_forced(loaded[0], ids, ["sink"], prompt_length=PROMPT, config=config)
    nll = -report.results[0].logprob[PROMPT:]
    np.testing.assert_allclose(nll, GOLDEN["naming/streamingllm/0.5/nll"], atol=1e-3)
    np.testing.assert_allclose(
        -report.reference.logprob[PROMPT:], GOLDEN["naming/full/nll"], atol=1e-3
    )
    assert np.abs(nll - GOLDEN["naming/full/nll"]).max() > 0.05  # teeth: compression shows
