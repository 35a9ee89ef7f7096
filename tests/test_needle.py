"""The needle study without the model: the task generator, scoring, token spans, tables,
the heatmap and the CLI's input checks (h2osim.studies.needle, h2osim.needle)."""

from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pytest

from h2osim.studies.needle import (
    INTRO,
    REPEAT_FILLER,
    TaskSpec,
    accuracy_table,
    char_span_tokens,
    confusion_table,
    depth_table,
    extract_answer,
    heatmap_figure,
    held_summary,
    make_task,
    score,
    to_csv,
    word_count,
)


# ----------------------------------------------------------------- the generator
@pytest.mark.parametrize(
    "spec",
    [TaskSpec(), TaskSpec(task="kv", needle="word", filler="pydoc", question="both", seed=3)],
)
def test_generator_is_deterministic_per_seed(spec):
    assert make_task(spec) == make_task(spec)
    other = make_task(TaskSpec(**{**spec.__dict__, "seed": spec.seed + 1}))
    assert other.answer != make_task(spec).answer or other.text != make_task(spec).text


def test_the_answer_depends_on_the_seed_alone():
    answers = {make_task(TaskSpec(length=length, depth=depth, seed=4)).answer
               for length in (128, 512, 2048) for depth in (0.0, 0.3, 1.0)}  # fmt: skip
    assert len(answers) == 1
    assert len({make_task(TaskSpec(seed=seed)).answer for seed in range(10)}) == 10


def test_passkey_layout_depth_zero_and_one():
    first = make_task(TaskSpec(length=200, depth=0.0, seed=0))
    assert first.text.startswith(INTRO + f" The pass key is {first.answer}. Remember it. ")
    assert first.text.endswith("\nWhat is the pass key? The pass key is")
    last = make_task(TaskSpec(length=200, depth=1.0, seed=0))
    assert last.text.endswith(f"The pass key is {last.answer}. Remember it.\n"
                              "What is the pass key? The pass key is")  # fmt: skip
    middle = make_task(TaskSpec(length=200, depth=0.5, seed=0))
    start = middle.sentence_span[0] / len(middle.text)
    assert 0.4 < start < 0.6


@pytest.mark.parametrize("length", [128, 300, 1000, 4096])
def test_length_is_met_within_one_sentence(length):
    task = make_task(TaskSpec(length=length))
    longest = max(word_count(s) for s in REPEAT_FILLER)
    assert length - longest <= word_count(task.text) <= length


def test_spans_point_at_the_answer_and_its_sentence():
    for spec in (TaskSpec(needle="word", seed=2), TaskSpec(task="kv", keys=5, seed=1, depth=0.7),
                 TaskSpec(filler="pydoc", length=900, seed=5)):  # fmt: skip
        task = make_task(spec)
        start, stop = task.needle_span
        assert task.text[start:stop] == task.answer
        sentence = task.text[slice(*task.sentence_span)]
        assert task.answer in sentence and sentence.startswith("The ")


def test_kv_distractors_differ_and_the_question_names_the_key():
    task = make_task(TaskSpec(task="kv", keys=4, seed=6, length=400))
    values = [task.text[slice(*span)] for span in task.distractor_spans]
    assert len(values) == 3 and task.answer not in values and len(set(values)) == 3
    assert task.text.endswith(f"What is the code for {task.key}? The code for {task.key} is")
    assert task.text.count(f"The code for {task.key} is") == 2  # the entry and the cue


def test_pydoc_filler_is_real_prose_and_question_both_asks_twice():
    task = make_task(TaskSpec(filler="pydoc", question="both", length=400, seed=1))
    assert "statement" in task.text or "Python" in task.text
    assert task.text.count("What is the pass key?") == 2
    assert REPEAT_FILLER[0] not in task.text


@pytest.mark.parametrize(
    "changes",
    [{"length": 100}, {"length": 5000}, {"depth": 1.5}, {"task": "sum"}, {"filler": "lorem"},
     {"needle": "emoji"}, {"question": "middle"}, {"seed": -1}, {"task": "kv", "keys": 1}],
)  # fmt: skip
def test_bad_specs_are_refused(changes):
    with pytest.raises(ValueError):
        TaskSpec(**changes)


# ----------------------------------------------------------------- scoring
@pytest.mark.parametrize(
    ("output", "needle", "expected"),
    [(" 41190. Remember", "digits", "41190"), (' "Orange".', "word", "orange"),
     (" the pass key. The pass key is", "digits", None), (" 4119.", "digits", "4119"),
     ("\n\n", "word", None), (" 411900", "digits", "411900")],
)  # fmt: skip
def test_extract_answer_known_answers(output, needle, expected):
    assert extract_answer(output, needle) == expected


def test_score_is_exact_match():
    task = make_task(TaskSpec(seed=0))
    assert score(task, f" {task.answer}. Remember it.")
    assert not score(task, f" {task.answer[:-1]}.")  # a prefix is wrong
    assert not score(task, f" {task.answer}0")  # so is a longer number
    assert not score(task, " the pass key is")
    word = make_task(TaskSpec(needle="word", seed=0))
    assert score(word, f' "{word.answer.upper()}"') and not score(word, ' "xyz"')


def test_char_span_tokens_and_held_summary_examples():
    offsets = [(0, 3), (3, 4), (4, 9), (9, 9)]
    assert char_span_tokens(offsets, (3, 9)).tolist() == [1, 2]
    assert char_span_tokens(offsets, (9, 12)).tolist() == []  # an empty token never overlaps
    summary = held_summary(np.array([[True, True], [True, False]]))
    assert summary == {"needle_held": 0.75, "units_whole_needle": 0.5}


# ----------------------------------------------------------------- tables and figure
def _records():
    rows = []
    for length in (256, 512):
        for depth in (0.0, 1.0):
            base = {"length": length, "depth": depth, "seed": 0}
            rows.append(base | {"policy": "full", "budget_requested": 1.0, "prompt_mode": "-",
                                "correct": True, "same_as_full": True, "needle_held": 1.0})  # fmt: skip
            for policy, correct in (
                ("h2o", depth == 1.0),
                ("window", depth == 1.0 and length == 256),
            ):
                rows.append(base | {"policy": policy, "budget_requested": 0.2, "prompt_mode": "full",
                                    "correct": correct, "same_as_full": correct,
                                    "needle_held": float(depth == 1.0),
                                    "replay_predicts": depth == 1.0})  # fmt: skip
    return rows


def test_accuracy_and_depth_tables():
    table = accuracy_table(_records())
    assert [row["policy"] for row in table] == ["full", "h2o", "window"]
    assert table[0]["accuracy"] == 1.0 and table[0]["trials"] == 4
    h2o, window = table[1], table[2]
    assert h2o["acc@256"] == 0.5 and h2o["acc@512"] == 0.5
    assert window["acc@256"] == 0.5 and window["acc@512"] == 0.0 and window["accuracy"] == 0.25
    depths = {row["policy"]: row for row in depth_table(_records())}
    assert depths["h2o"]["d=0"] == 0.0 and depths["h2o"]["d=1"] == 1.0
    assert depths["window"]["d=1"] == 0.5


def test_confusion_table_counts():
    rows = {row["policy"]: row for row in confusion_table(_records())}
    assert "full" not in rows  # no replay prediction for the ceiling
    h2o, window = rows["h2o"], rows["window"]
    assert (h2o["held_correct"], h2o["held_wrong"], h2o["lost_correct"], h2o["lost_wrong"]) == (
        2,
        0,
        0,
        2,
    )
    assert h2o["replay_right"] == 1.0
    assert (window["held_correct"], window["held_wrong"]) == (1, 1)
    assert window["replay_right"] == 0.75
    for row in rows.values():
        total = row["held_correct"] + row["held_wrong"] + row["lost_correct"] + row["lost_wrong"]
        assert total == row["trials"]


def test_csv_has_every_key_and_row():
    text = to_csv(_records())
    lines = text.strip().splitlines()
    assert len(lines) == 1 + len(_records())
    assert "replay_predicts" in lines[0] and "policy" in lines[0]


def test_heatmap_has_one_panel_per_policy_and_budget():
    records = _records() + [
        r | {"budget_requested": 0.5} for r in _records() if r["policy"] != "full"
    ]
    figure = heatmap_figure(records, "full")
    images = [axis for axis in figure.axes if axis.images]
    assert len(images) == 1 + 2 * 2  # the ceiling, then 2 policies x 2 budgets
    full = images[0].images[0].get_array()
    assert np.allclose(full, 1.0) and full.shape == (2, 2)  # depths x lengths
    titles = [axis.get_title() for axis in images]
    assert titles[0] == "full cache (ceiling)" and "window, 0.5 of prompt" in titles


# ----------------------------------------------------------------- the CLI's input checks
@pytest.mark.parametrize(
    ("args", "message"),
    [(["--lengths", "64"], "context length must be in 128..4096"),
     (["--depths", "0,2"], "needle depth must be in 0..1"),
     (["--policy", "opt"], "offline"),
     (["--budgets", "0"], "budget must be in (0, 1]"),
     (["--seeds", "0"], "--seeds must be >= 1"),
     (["--lengths", "a,b"], "comma-separated numbers"),
     (["--workers", "0"], "--workers must be >= 1")],
)  # fmt: skip
def test_cli_bad_input_is_one_line_exit_2(args, message):
    done = subprocess.run([sys.executable, "-m", "h2osim.needle", *args], capture_output=True,
                          text=True, timeout=120)  # fmt: skip
    assert done.returncode == 2, done.stderr
    assert message in done.stderr and "Traceback" not in done.stderr
    errors = [line for line in done.stderr.splitlines() if "error:" in line]
    assert len(errors) == 1 and message in errors[0]  # one line (argparse adds its usage above)


def test_quick_grid_is_small():
    from h2osim.needle import build_parser, grid_from_args

    grid = grid_from_args(build_parser().parse_args(["--quick"]))
    assert len(grid.specs()) == 3 and grid.policies == ("h2o", "window")
    wider = grid_from_args(build_parser().parse_args(["--quick", "--lengths", "256,512"]))
    assert len(wider.specs()) == 6
    assert json.dumps(wider.budgets) == "[0.2]"


def test_dask_flags_make_the_workers_model_options():
    from h2osim.needle import build_parser, grid_from_args, model_options, on_dask
    from h2osim.studies.needle import ModelOptions

    args = build_parser().parse_args(["--quick"])
    grid_from_args(args)
    assert not on_dask(args) and model_options(args) == ModelOptions()  # in process by default
    args = build_parser().parse_args(["--quick", "--workers", "2", "--dtype", "bfloat16",
                                      "--threads", "2", "--no-cache"])  # fmt: skip
    assert on_dask(args)
    assert model_options(args) == ModelOptions(dtype="bfloat16", threads=2, use_cache=False)
    remote = build_parser().parse_args(["--scheduler", "tcp://127.0.0.1:8786"])
    assert on_dask(remote) and remote.workers == 1


def test_run_study_without_a_model_or_options_says_what_it_needs():
    from h2osim.studies.needle import QUICK_GRID, run_study

    with pytest.raises(ValueError, match="needs the loaded model"):
        run_study(None, QUICK_GRID)
    with pytest.raises(ValueError, match="needs ModelOptions"):
        run_study(None, QUICK_GRID, client=object())
