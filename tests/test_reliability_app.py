"""The app's upload path uses the loader with the stricter APP_LIMITS and reports a bad
upload (including a small file that claims gigabytes) as a message, never an exception."""

from __future__ import annotations

import json
import sys
import zipfile
from pathlib import Path

import numpy as np
import pytest
from streamlit.testing.v1 import AppTest

from h2osim.synthetic import synthetic_trace
from h2osim.trace import APP_LIMITS, Trace
from tests import fuzz_support as fz

REPO_ROOT = Path(__file__).resolve().parents[1]
MAIN = str(REPO_ROOT / "app" / "main.py")
sys.path.insert(0, str(REPO_ROOT / "app"))


@pytest.fixture
def app(tmp_path, monkeypatch) -> AppTest:
    synthetic_trace(24, layers=1, heads=2, kv_heads=1, head_dim=4, seed=1).save(tmp_path / "a.npz")
    monkeypatch.setenv("H2OSIM_TRACE_DIR", str(tmp_path))
    app = AppTest.from_file(MAIN, default_timeout=60)
    app.run()
    app.switch_page("views/trace_explorer.py").run()  # the first page (by hand) has no upload
    assert not app.exception
    return app


def _upload(app: AppTest, name: str, data: bytes) -> str:
    app.sidebar.get("file_uploader")[0].set_value((name, data, "application/octet-stream"))
    app.run()
    assert not app.exception, app.exception
    assert not app.session_state["uploaded_traces"]
    return app.sidebar.error[0].value


def test_an_upload_within_the_default_limits_but_over_the_app_limits_is_refused(app, tmp_path):
    trace = synthetic_trace(24, layers=1, heads=2, kv_heads=1, head_dim=4, seed=1)
    trace.metadata["notes"] = "x" * (APP_LIMITS.max_metadata_chars + 1)
    trace.save(tmp_path / "wordy.npz")
    assert Trace.load(tmp_path / "wordy.npz").n == 24  # the CLI's default limits accept it
    message = _upload(app, "wordy.npz", (tmp_path / "wordy.npz").read_bytes())
    assert (
        "wordy.npz is not a valid h2osim trace: metadata:" in message
        and "over the loader's limit" in message
    )


def test_an_upload_claiming_gigabytes_is_a_message(app):
    members = fz.base_members("float16")
    entries = [fz.deflated(name, payload) for name, payload in members.items()]
    header = fz.npy_header("<i8", (2**30,))  # token_ids: 8 GiB declared in a few KB
    entries = [entry for entry in entries if entry.name != "token_ids.npy"]
    entries.append(fz.Entry("token_ids.npy", fz.deflated("x", header).data, zipfile.ZIP_DEFLATED,
                            0, len(header) + 8 * 2**30))  # fmt: skip
    data = fz.zip_bytes(entries)
    assert len(data) < 20_000
    message = _upload(app, "bomb.npz", data)
    assert "bomb.npz is not a valid h2osim trace: token_ids:" in message


def test_an_upload_with_escape_codes_in_its_metadata_loads(app, tmp_path):
    trace = synthetic_trace(24, layers=1, heads=2, kv_heads=1, head_dim=4, seed=1)
    trace.metadata["model"] = "\x1b[31mred"
    trace.save(tmp_path / "ansi.npz")
    app.sidebar.get("file_uploader")[0].set_value(
        ("ansi.npz", (tmp_path / "ansi.npz").read_bytes(), "x")
    )
    app.run()
    assert not app.exception
    assert (
        "\x1b" not in app.sidebar.success[0].value
        and "\\x1b[31mred" in app.sidebar.success[0].value
    )
    assert json.loads(json.dumps(trace.metadata))["model"] == "\x1b[31mred"
    assert np.isfinite(Trace.load(tmp_path / "ansi.npz").head_matrix(0, 0)).all()
