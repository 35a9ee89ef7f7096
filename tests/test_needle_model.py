"""The needle study in the real SmolLM2 (known answers; a few seconds each).

The full cache answers the seeded default prompts; a budget of at least the whole
sequence is the full cache exactly, in both prompt modes; the negative control (window,
a tiny budget, the needle at depth 0) must fail and must have lost the needle; for
policies that never read attention (window, sink) open-loop replay and the live run
evict the same tokens, so replay's "needle held" equals the live one exactly.
"""

from __future__ import annotations

import csv
import json

import numpy as np
import pytest

from h2osim.needle import main
from h2osim.studies.needle import TaskSpec, encode_task, make_task, run_trial, token_counter
from tests.conftest_model import smollm2

# (spec, the answer the seed gives, SmolLM2's full-cache output): pinned known answers
DEFAULT_SET = [(TaskSpec(length=192, depth=depth, seed=0), "56994") for depth in (0.0, 0.5, 1.0)]


@pytest.fixture(scope="module")
def loaded():
    return smollm2()


@pytest.fixture(scope="module")
def counter(loaded):
    return token_counter(loaded[1])


@pytest.mark.model
@pytest.mark.parametrize(("spec", "answer"), DEFAULT_SET)
def test_full_cache_solves_the_seeded_default_set(loaded, counter, spec, answer):
    task = make_task(spec, counter)
    assert task.answer == answer
    encoded = encode_task(loaded[1], task)
    assert 180 <= encoded.n <= 192
    pieces = [loaded[1].decode([encoded.ids[i]]) for i in encoded.needle_tokens]
    assert "".join(pieces).strip() == answer  # the needle's tokens are found by offsets
    full = run_trial(loaded, encoded, [], []).records[0]
    assert full["policy"] == "full" and full["correct"], full["output"]
    assert full["output"].lstrip().startswith(answer)


@pytest.mark.model
def test_budget_of_the_whole_sequence_is_the_full_cache_exactly(loaded, counter):
    task = make_task(TaskSpec(length=160, depth=0.3, seed=1), counter)
    trial = run_trial(loaded, task, ["h2o", "tova", "window", "snapkv"], [4096],
                      ["stream", "full", "prefill"], replay=True)  # fmt: skip
    full, *runs = trial.records
    assert len(runs) == 12
    assert {r["prompt_mode"] for r in runs} == {"stream", "full", "prefill"}
    for record in runs:
        assert record["budget"] == full["budget"]  # k = n: nothing is ever evicted
        assert record["output"] == full["output"] and record["same_as_full"]
        assert record["correct"] == full["correct"] and record["needle_held"] == 1.0
        assert record["needle_held_last"] == 1.0 and record["replay_needle_held"] == 1.0


@pytest.fixture(scope="module")
def control(loaded, counter):
    """The needle first, window at 5% of a 256-token prompt: the answer must be lost."""
    task = make_task(TaskSpec(length=256, depth=0.0, seed=2), counter)
    return run_trial(loaded, task, ["window", "sink", "h2o"], [0.05], ["full"], replay=True)


@pytest.mark.model
def test_negative_control_window_at_a_tiny_budget_fails(control):
    by_policy = {record["policy"]: record for record in control.records}
    assert by_policy["full"]["correct"]  # the task is solvable ...
    window = by_policy["window"]
    assert window["budget"] <= 14 and window["needle_held"] == 0.0  # ... the needle is gone ...
    assert not window["correct"], window["output"]  # ... so the answer must be wrong
    assert window["replay_predicts"] is False


@pytest.mark.model
def test_replay_holds_what_live_holds_for_attention_blind_policies(control):
    for record in control.records[1:]:
        assert 0.0 <= record["replay_needle_held"] <= 1.0
        if record["policy"] in ("window", "sink"):  # decisions never read a row
            assert record["replay_needle_held"] == record["needle_held"]
            assert record["replay_units_whole_needle"] == record["units_whole_needle"]
    held = control.kept[("window", control.records[1]["budget"], "full")]
    assert held.shape == (90, len(control.encoded.needle_tokens)) and not held.any()


@pytest.mark.model
def test_cli_writes_tables_and_heatmap(tmp_path, capsys):
    out = tmp_path / "needle"
    code = main(["--lengths", "160", "--depths", "1", "--seeds", "1", "--policy", "window",
                 "--budgets", "0.3", "--out", str(out), "--no-progress"])  # fmt: skip
    assert code == 0
    printed = capsys.readouterr().out
    assert "acc@160" in printed and "full" in printed
    payload = json.loads((out / "needle.json").read_text())
    full = next(row for row in payload["accuracy"] if row["policy"] == "full")
    assert full["accuracy"] == 1.0 and full["trials"] == 1
    window = next(r for r in payload["records"] if r["policy"] == "window")
    assert window["correct"]  # depth 1: the needle sits in the recent window
    with (out / "needle.csv").open(newline="") as handle:
        rows = list(csv.DictReader(handle))
    assert [row["policy"] for row in rows] == ["full", "window"]
    assert (out / "needle-full.png").stat().st_size > 5000
    assert np.isclose(window["budget_requested"], 0.3)
    # a second run resumes from needle-trials.jsonl instead of recomputing
    assert main(["--lengths", "160", "--depths", "1", "--seeds", "1", "--policy", "window",
                 "--budgets", "0.3", "--out", str(out), "--no-progress"]) == 0  # fmt: skip
    assert len((out / "needle-trials.jsonl").read_text().splitlines()) == 1


# ----------------------------------------------------------------- prompt mode prefill
@pytest.fixture(scope="module")
def prefill(loaded, counter):
    """One 256-token prompt, the needle first, 30% of the prompt: full vs prefill, replayed."""
    task = make_task(TaskSpec(length=256, depth=0.0, seed=0), counter)
    trial = run_trial(loaded, task, ["h2o", "tova", "snapkv", "window"], [0.3],
                      ["full", "prefill"], replay=True)  # fmt: skip
    return trial, {(r["policy"], r["prompt_mode"]): r for r in trial.records}


@pytest.mark.model
def test_prefill_compresses_once_and_replay_sees_the_same_cache(prefill):
    trial, by = prefill
    n = trial.encoded.n
    assert by[("full", "-")]["correct"]
    for policy in ("h2o", "tova", "snapkv", "window"):
        record = by[(policy, "prefill")]
        assert record["budget"] == round(0.3 * n) == by[(policy, "full")]["budget"]
        # prefill never evicts after the prompt: what row P holds, the last row holds
        assert record["needle_held_last"] == record["needle_held"]
        # open and closed loop share every row before P, so the compression at P is the same
        # decision (float16 trace rows aside; window reads no row and must match exactly)
        tolerance = 0.0 if policy == "window" else 0.05
        assert abs(record["replay_needle_held"] - record["needle_held"]) <= tolerance, policy
        # full mode evicts one more token per answer token: it can only lose more
        assert by[(policy, "full")]["needle_held_last"] <= by[(policy, "full")]["needle_held"]


@pytest.mark.model
def test_prefill_known_outcome_tova_keeps_the_first_needle(prefill):
    """Pinned (SmolLM2, float32 CPU): with the needle right after the instruction, TOVA's
    last-row attention keeps enough of it to answer in both modes; h2o and snapkv do not,
    and window (the negative control) holds none of it."""
    _, by = prefill
    for mode in ("full", "prefill"):
        assert by[("tova", mode)]["correct"], by[("tova", mode)]["output"]
        assert by[("tova", mode)]["output"].startswith(" 56994")
        for policy in ("h2o", "snapkv", "window"):
            assert not by[(policy, mode)]["correct"], (policy, mode)
        assert by[("window", mode)]["needle_held"] == 0.0
        assert by[("window", mode)]["replay_predicts"] is False
    assert by[("tova", "prefill")]["replay_predicts"] is False  # 0.46 held: replay says lost
