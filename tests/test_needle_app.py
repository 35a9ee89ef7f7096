"""The Needle lab page (app/views/needle_lab.py) with ``streamlit.testing.v1.AppTest``."""

from __future__ import annotations

from pathlib import Path

import pytest
from streamlit.testing.v1 import AppTest

REPO_ROOT = Path(__file__).resolve().parents[1]
MAIN = str(REPO_ROOT / "app" / "main.py")
NEEDLE_LAB = "views/needle_lab.py"


@pytest.fixture
def app() -> AppTest:
    app = AppTest.from_file(MAIN, default_timeout=180)
    app.run()
    app.switch_page(NEEDLE_LAB).run()
    assert not app.exception, app.exception
    return app


def test_needle_lab_opens_and_waits_for_the_button(app):
    assert app.title[0].value == "Needle lab"
    assert "Run" in app.info[0].value  # nothing runs (no model load) before the button
    assert app.multiselect(key="needle_policies").value == ["h2o", "tova", "window", "sink"]


def test_own_text_without_its_answer_is_refused(app):
    app.radio(key="needle_source").set_value("own")
    app.text_area(key="needle_text").set_value("The pass key is 123. What is the pass key?")
    app.text_input(key="needle_answer").set_value("999")
    app.button(key="needle_run").click().run()
    assert not app.exception
    assert "occurs in it" in app.error[0].value


@pytest.mark.model
def test_needle_lab_answers_and_shows_the_held_needle_tokens(app):
    app.multiselect(key="needle_policies").set_value(["window", "h2o"])
    app.slider(key="needle_length").set_value(128)
    app.slider(key="needle_depth").set_value(0.0)
    app.slider(key="needle_budget").set_value(0.1)
    app.button(key="needle_run").click().run()
    assert not app.exception, app.exception
    assert len(app.code) == 3  # full, window, h2o answers
    answer = app.subheader[0].value.split("'")[1]
    assert app.code[0].value.strip().startswith(answer)  # the full cache retrieves it
    assert [m.label for m in app.metric] == ["Needle held"] * 3
    assert app.metric[0].value == "100%" and app.metric[1].value == "0%"  # window lost it
    table = app.dataframe[0].value
    assert list(table.index) == ["window", "h2o"]
    assert (table.loc["window"] == 0).all()
    # own text: the answer is located in it and the held table follows the new needle
    app.radio(key="needle_source").set_value("own")
    app.text_area(key="needle_text").set_value(
        "The pass key is 4711. Remember it. The grass is green. What is the pass key? The pass key is"
    )
    app.text_input(key="needle_answer").set_value("4711")
    app.button(key="needle_run").click().run()
    assert not app.exception, app.exception
    assert "'4711'" in app.subheader[0].value
    table = app.dataframe[0].value
    assert len(table.columns) == len(app.session_state["needle_result"]["positions"]) >= 1
