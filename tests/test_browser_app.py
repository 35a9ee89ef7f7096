"""The app in a real browser: a ``streamlit run`` server and headless Debian chromium.

Checks that every page renders in the browser (the Trace explorer's heatmap image is
drawn with a non-zero size, charts draw) and saves a screenshot of each page. The
screenshots go to pytest's tmp folder, or to ``$H2OSIM_SCREENSHOTS`` when set:

    H2OSIM_SCREENSHOTS=docs/screenshots .venv/bin/python -m pytest -m browser tests/test_browser_app.py

Needs /usr/bin/chromium (``make setup`` installs Debian's package); Playwright drives
it through ``executable_path`` (no ``playwright install``, no network).
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parents[1]
CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
                 "--disable-background-networking", "--disable-component-update",
                 "--disable-sync", "--no-first-run", "--disable-default-apps"]  # fmt: skip
PAGES = [  # (url path, screenshot name, what proves it rendered)
    ("", "trace-explorer", "heatmap"),
    ("eviction_dynamics", "eviction-dynamics", "chart"),
    ("policy_race", "policy-race", "chart"),
    ("theory_lab", "theory-lab", "chart"),
    ("live_lab", "live-lab", "text"),
]
# The heatmap is a PNG inside a Vega-Lite image mark: an <image> in the chart's SVG.
HEATMAP_DRAWN = """() => [...document.querySelectorAll('[data-testid="stVegaLiteChart"] svg image')].some(
    (img) => img.getBoundingClientRect().width > 100 && img.getBoundingClientRect().height > 100)"""
CHART_DRAWN = """() => [...document.querySelectorAll('[data-testid="stVegaLiteChart"] :is(svg, canvas)')]
    .some((node) => node.getBoundingClientRect().width > 100)"""
CONTENT_HEIGHT = (
    """() => document.querySelector('[data-testid="stMainBlockContainer"]').scrollHeight"""
)
RUNNING = """() => !!document.querySelector('[data-testid="stStatusWidget"]')"""

pytestmark = pytest.mark.browser


def _wait_until_idle(page, quiet_seconds: float = 2.0, timeout: float = 120.0) -> None:
    """Wait until the script has not been running for ``quiet_seconds`` in a row (the
    running indicator appears with a delay, so one look is not enough)."""
    deadline = time.monotonic() + timeout
    quiet_since = time.monotonic()
    while time.monotonic() < deadline:
        if page.evaluate(RUNNING):
            quiet_since = time.monotonic()
        elif time.monotonic() - quiet_since >= quiet_seconds:
            return
        page.wait_for_timeout(200)
    raise TimeoutError(f"the app was still running after {timeout:.0f} s")


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def _wait_until_serving(url: str, server: subprocess.Popen, timeout: float = 90.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if server.poll() is not None:
            raise RuntimeError(f"streamlit exited with code {server.returncode} before serving")
        try:
            with urllib.request.urlopen(f"{url}/_stcore/health", timeout=2) as response:
                if response.read().strip() == b"ok":
                    return
        except OSError:
            time.sleep(0.3)
    raise TimeoutError(f"streamlit did not answer at {url} within {timeout:.0f} s")


@pytest.fixture(scope="module")
def app_url(tmp_path_factory):
    """A ``streamlit run app/main.py`` server on a free port, stopped in all cases."""
    port = _free_port()
    log = (tmp_path_factory.mktemp("streamlit") / "server.log").open("w")
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(filter(None, [str(REPO_ROOT), os.environ.get("PYTHONPATH")])))  # fmt: skip
    server = subprocess.Popen(
        [sys.executable, "-m", "streamlit", "run", "app/main.py", "--server.port", str(port),
         "--server.address", "127.0.0.1", "--server.headless", "true",
         "--server.fileWatcherType", "none", "--browser.gatherUsageStats", "false",
         "--client.toolbarMode", "viewer"],
        cwd=REPO_ROOT, env=env, stdout=log, stderr=subprocess.STDOUT,
    )  # fmt: skip
    url = f"http://127.0.0.1:{port}"
    try:
        _wait_until_serving(url, server)
        yield url
    finally:
        server.terminate()
        try:
            server.wait(timeout=15)
        except subprocess.TimeoutExpired:
            server.kill()
            server.wait()
        log.close()


@pytest.fixture(scope="module")
def browser():
    from playwright.sync_api import sync_playwright

    if not Path(CHROMIUM).exists():
        raise FileNotFoundError(
            f"{CHROMIUM} is missing: run `make setup` (apt-get install chromium)"
        )
    with sync_playwright() as playwright:
        instance = playwright.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        try:
            yield instance
        finally:
            instance.close()


@pytest.fixture(scope="module")
def screenshot_folder(tmp_path_factory) -> Path:
    chosen = os.environ.get("H2OSIM_SCREENSHOTS")
    folder = Path(chosen) if chosen else tmp_path_factory.mktemp("screenshots")
    folder.mkdir(parents=True, exist_ok=True)
    return folder


@pytest.mark.parametrize(("path", "name", "proof"), PAGES, ids=[page[1] for page in PAGES])
def test_page_renders_in_chromium(app_url, browser, screenshot_folder, path, name, proof):
    page = browser.new_page(viewport={"width": 1400, "height": 1000})
    errors: list[str] = []
    page.on("pageerror", lambda exc: errors.append(str(exc)))
    try:
        page.goto(f"{app_url}/{path}", wait_until="domcontentloaded", timeout=60_000)
        page.wait_for_selector('[data-testid="stMainBlockContainer"] h1', timeout=60_000)
        if proof == "heatmap":
            page.wait_for_function(HEATMAP_DRAWN, timeout=60_000)
        if proof in ("heatmap", "chart"):
            page.wait_for_function(CHART_DRAWN, timeout=60_000)
        _wait_until_idle(page)
        assert page.locator('[data-testid="stException"]').count() == 0
        # Streamlit scrolls inside its main block: grow the window to the content instead.
        height = page.evaluate(CONTENT_HEIGHT)
        page.set_viewport_size({"width": 1400, "height": min(max(height + 60, 900), 4000)})
        page.wait_for_timeout(1000)  # charts re-lay out to the new size
        page.screenshot(path=str(screenshot_folder / f"{name}.png"))
    finally:
        page.close()
    assert not errors, f"JavaScript errors on {name}: {errors}"
    assert (screenshot_folder / f"{name}.png").stat().st_size > 10_000
