"""The Theory lab's section 2 (the paper's chain and our certificate), with AppTest.

The page runs on a small synthetic trace (``$H2OSIM_TRACE_DIR``). The regression: ticking
"Charge score errors to beta" made the certificate go to -8.6 or -30 of opt while the
chart's y-domain stayed [0, 1.02], so the chart collapsed (title and axis vanished).
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest
from streamlit.testing.v1 import AppTest

from h2osim.synthetic import synthetic_trace

REPO_ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO_ROOT / "app"))

from h2oapp import figures  # noqa: E402

THEORY_LAB = "views/theory_lab.py"


@pytest.fixture(scope="module")
def trace_folder(tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("theory-traces")
    synthetic_trace(48, layers=2, heads=6, kv_heads=3, head_dim=8, seed=3).save(
        folder / "a-tiny.npz"
    )
    return folder


@pytest.fixture
def app(trace_folder, monkeypatch) -> AppTest:
    monkeypatch.setenv("H2OSIM_TRACE_DIR", str(trace_folder))
    app = AppTest.from_file(str(REPO_ROOT / "app" / "main.py"), default_timeout=90)
    app.run()
    app.switch_page(THEORY_LAB).run()
    assert not app.exception, app.exception
    return app


def specs(app: AppTest) -> dict[str, dict]:
    """Chart title -> spec, for the page's Vega-Lite charts; datasets decoded from Arrow."""
    import pyarrow as pa

    out = {}
    for element in app.get("vega_lite_chart"):
        spec = json.loads(element.proto.spec)
        spec["datasets"] = {
            named.name: pa.ipc.open_stream(named.data.data).read_all().to_pylist()
            for named in element.proto.datasets
        }
        out[spec.get("title", "")] = spec
    return out


def certificate_domain(spec: dict) -> list[float]:
    return spec["layer"][0]["encoding"]["y"]["scale"]["domain"]


def test_section_2_shows_the_papers_chain_and_the_certificate(app):
    labels = [m.label for m in app.metric][4:]
    assert labels[:4] == ["Thm D.32's hypotheses", "α they need", "Largest γ_i (as D.30 uses it)",
                          "Largest ε₀_i"]  # fmt: skip
    assert app.metric[4].value == "fail"  # synthetic attention accumulates: gamma ~ 1/(i+2)
    assert any("guarantees nothing" in w.value for w in app.warning)
    titles = list(specs(app))
    assert any("hypotheses vs alpha" in t for t in titles)
    assert any("Lemma D.30" in t for t in titles)
    assert any("a-posteriori certificate" in t for t in titles)
    counterexamples = app.dataframe[-2].value
    assert len(counterexamples) == 4 and counterexamples["observed"].all()
    text = " ".join(m.value for m in app.markdown)
    assert "not the theorem" in text or "not the paper's theorem" in text


def test_charging_score_errors_keeps_the_chart_readable(app):
    """The bug: the bound fell far below 0 while the domain was fixed at [0, 1.02]."""
    app.selectbox(key="th_policy").set_value("h2o").run()
    app.checkbox(key="th_charge").check().run()
    assert not app.exception, app.exception
    chart = next(s for t, s in specs(app).items() if "a-posteriori certificate" in t)
    low, high = certificate_domain(chart)
    drawn = [row["share of opt_i"] for row in chart["datasets"]["lines"]]
    assert low <= min(drawn) and high >= 1.0  # every drawn point is inside the domain
    assert chart["title"]  # the title survives
    raw = [row["value"] for row in chart["datasets"]["lines"]]
    assert min(raw) < -1  # charged, the certificate goes far below 0 here (the bug's setting)
    assert low == figures.VACUOUS_FLOOR and min(drawn) == figures.VACUOUS_FLOOR
    assert any("vacuous" in w.value for w in app.warning)


def test_share_domain_follows_negative_bounds():
    assert figures._share_domain([0.5, 0.9]) == [0.0, 1.02]
    assert figures._share_domain([0.5, -0.42]) == [-0.5, 1.02]
    assert figures._share_domain([0.5, -8.6]) == [figures.VACUOUS_FLOOR, 1.02]
