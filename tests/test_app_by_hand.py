"""The "Algorithm 1 by hand" page: the worked example pinned by numbers written down by hand.

The default sentence "Children laughed and played in the sunny park" in toy mode: one
token per word, weights 4 1 1 3 1 1 2 2, row t giving token j <= t the share
w_j / sum(w_0..w_t), renormalised over the cached tokens (H2O's Algorithm 1), k = 4 with
2 recent + 2 heavy. Worked by hand (scores from rows 0..t-1):

- steps 0-3 fill the cache (Children, laughed, and, played);
- step 4, "in" arrives: protected played, in; Children 2.911, laughed 0.478, and 0.278
  -> evict "and" (row 4 over Children, laughed, played, in: W = 9);
- step 5, "the": protected in, the; Children 3.356, laughed 0.589, played 0.667 -> "laughed";
- step 6, "sunny": protected the, sunny; Children 3.800, played 1.000, in 0.222 -> "in";
- step 7, "park": protected sunny, park; Children 4.200, played 1.300, the 0.211 -> "the".

h2o ends with Children, played, sunny, park; window (the 4 newest) with in, the, sunny, park.
"""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pytest
from streamlit.testing.v1 import AppTest

REPO_ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO_ROOT / "app"))

from h2oapp import by_hand  # noqa: E402

MAIN = str(REPO_ROOT / "app" / "main.py")
HAND_EVICTIONS = [(4, "and"), (5, "laughed"), (6, "in"), (7, "the")]
HAND_PROTECTED = ["played, in", "in, the", "the, sunny", "sunny, park"]
HAND_CANDIDATES = [
    "Children 2.911, laughed 0.478, and 0.278",
    "Children 3.356, laughed 0.589, played 0.667",
    "Children 3.800, played 1.000, in 0.222",
    "Children 4.200, played 1.300, the 0.211",
]


@pytest.fixture
def app() -> AppTest:
    at = AppTest.from_file(MAIN, default_timeout=60)
    at.run()
    assert not at.exception, at.exception
    return at


def test_default_sentence_table_is_the_hand_worked_example(app):
    assert app.title[0].value == "Algorithm 1 by hand"
    table = app.dataframe[0].value
    assert list(zip(table["step t"], table["evicted"], strict=True)) == HAND_EVICTIONS
    assert list(table["protected (recent)"]) == HAND_PROTECTED
    assert list(table["candidates (accumulated score)"]) == HAND_CANDIDATES
    assert list(table["arrives"]) == ["in", "the", "sunny", "park"]
    assert table["why"][0] == "lowest score of the 3 candidates (0.278 < 'laughed' 0.478)"
    summary = app.dataframe[-1].value.set_index("policy")
    assert summary.loc["h2o", "kept at the end"] == "Children, played, sunny, park"
    assert summary.loc["window", "kept at the end"] == "in, the, sunny, park"
    mass = summary["retained mass (mean over steps)"]
    assert mass["opt"] >= mass["h2o"] > mass["window"]  # opt is the bar; h2o beats window here


def test_step_view_says_what_happens(app):
    app.slider(key="bh_step").set_value(4).run()
    text = " ".join(m.value for m in app.markdown)
    assert "**Step 4**: 'in' arrives" in text and "Evicted: **and**" in text
    table = app.dataframe[0].value
    assert table.loc[table["now"] == "▶", "step t"].tolist() == [4]  # this step's row, marked
    app.button(key="bh_back").click().run()
    assert "nothing is evicted" in " ".join(m.value for m in app.markdown)


def test_editing_a_toy_weight_changes_the_evictions(app):
    """Weight 5 on "and": at step 4 Children 2.508, laughed 0.377, and 0.885 -> "laughed"."""
    app.number_input(key="bh_w2").set_value(5.0).run()
    table = app.dataframe[0].value
    assert table["evicted"][0] == "laughed"
    assert table["candidates (accumulated score)"][0] == "Children 2.508, laughed 0.377, and 0.885"


def test_budget_and_recent_split(app):
    app.slider(key="bh_k").set_value(3).run()
    app.slider(key="bh_recent").set_value(1).run()
    table = app.dataframe[0].value
    assert list(table["step t"]) == [3, 4, 5, 6, 7]  # k = 3: the cache fills one step sooner
    assert all(len(p.split(", ")) == 1 for p in table["protected (recent)"])
    assert not app.exception


def test_walk_through_records_what_the_engine_did():
    tokens = by_hand.words(by_hand.DEFAULT_SENTENCE)
    trace = by_hand.toy_trace(tokens, by_hand.default_weights(tokens))
    result, decisions, history = by_hand.walk_through(trace, 4, 2)
    for decision in decisions:  # the recorded victims are the replay's evictions
        assert np.flatnonzero(result.evicted_at[0] == decision.t).tolist() == decision.evicted
    scores = by_hand.score_matrix(result, history)
    assert scores[4, 2] == pytest.approx(1 / 6 + 1 / 9)  # "and": rows 2 and 3
    assert np.isnan(scores[5, 2])  # evicted at step 4


def test_toy_weights_must_be_positive():
    with pytest.raises(ValueError, match="positive"):
        by_hand.toy_trace(["a", " b"], [1.0, 0.0])


@pytest.mark.model
def test_real_attention_mode_runs_the_model_on_the_sentence(app):
    app.radio(key="bh_mode").set_value("real").run(timeout=300)
    assert not app.exception, app.exception
    table = app.dataframe[0].value
    assert len(table) > 0 and all(table["evicted"])  # the cache filled and h2o evicted
    first = table.iloc[0]
    assert first["evicted"] not in first["protected (recent)"].split(", ")


def test_another_sentence_gets_its_own_weights_and_table(app):
    app.text_input(key="bh_sentence").input("The quick brown fox jumps over the lazy dog").run()
    assert not app.exception
    assert app.number_input(key="bh_w0").value == 3.0  # sink-like first word, the rest 1
    assert app.number_input(key="bh_w8").value == 1.0
    table = app.dataframe[0].value
    assert list(table["step t"]) == [4, 5, 6, 7, 8]  # k = 4: one eviction per new word
    app.text_input(key="bh_sentence").input("two words").run()
    assert "at least three words" in app.warning[0].value
