"""The app in a real browser: a ``streamlit run`` server and headless Debian chromium.

Checks that every page renders in the browser (the Trace explorer's heatmap image is
drawn with a non-zero size, charts draw) with no JavaScript or console error and no
request to any host but 127.0.0.1 (the app is offline by default: .streamlit/config.toml,
a local page icon); in presenter mode at 1280x720 each page's main visual is inside the
viewport; tooltips carry token text; the chart toolbar does not cover the metric row.
It saves a screenshot of each page, to pytest's tmp folder or to ``$H2OSIM_SCREENSHOTS``:

    H2OSIM_SCREENSHOTS=docs/screenshots .venv/bin/python -m pytest -m browser tests/test_browser_app.py

Needs /usr/bin/chromium (``make setup`` installs Debian's package); Playwright drives
it through ``executable_path`` (no ``playwright install``, no network).
"""

from __future__ import annotations

import os
import re
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
    ("", "by-hand", "text"),
    ("trace_explorer", "trace-explorer", "heatmap"),
    ("eviction_dynamics", "eviction-dynamics", "chart"),
    ("policy_race", "policy-race", "chart"),
    ("theory_lab", "theory-lab", "chart"),
    ("live_lab", "live-lab", "text"),
    ("needle_lab", "needle-lab", "text"),
]
# The heatmap is a PNG inside a Vega-Lite image mark: an <image> in the chart's SVG.
# Vega draws it on a canvas (many hover cells) or as an SVG <image>.
HEATMAP_DRAWN = """() => [...document.querySelectorAll('[data-testid="stVegaLiteChart"] :is(canvas, svg image)')].some(
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
         "--server.address", "127.0.0.1", "--server.fileWatcherType", "none"],  # the rest:
        # .streamlit/config.toml (usage statistics off, no web fonts), as a user runs it
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


LOCAL = ("http://127.0.0.1", "ws://127.0.0.1", "data:", "blob:", "about:")
# Streamlit probes <page>/_stcore/health and host-config before the server root when a page
# is opened by its own URL; those 404s (and their console lines) are Streamlit's, not ours.
BASE_PATH_PROBE = re.compile(r"^http://127\.0\.0\.1:\d+/\w+/_stcore/(health|host-config)$")
MAIN_VISUAL = {  # presenter mode: what must be inside the 1280x720 viewport
    "by-hand": '[data-testid="stHtml"]',
    "trace-explorer": '[data-testid="stVegaLiteChart"]',
    "eviction-dynamics": '[data-testid="stVegaLiteChart"]',
    "policy-race": '[data-testid="stVegaLiteChart"]',
    "live-lab": '[data-testid="stForm"]',
    "needle-lab": '[data-testid="stForm"]',
}


class Watch:
    """Everything a page asks of the network and says on the console."""

    def __init__(self, page) -> None:
        self.requests: list[str] = []
        self.failed: list[str] = []
        self.console: list[str] = []
        self.errors: list[str] = []
        page.on("request", lambda request: self.requests.append(request.url))
        page.on("response", lambda r: self.failed.append(r.url) if r.status >= 400 else None)
        page.on("console", lambda m: self.console.append(m.text) if m.type == "error" else None)
        page.on("pageerror", lambda exc: self.errors.append(str(exc)))

    def check(self, name: str) -> None:
        assert not self.errors, f"JavaScript errors on {name}: {self.errors}"
        outside = [url for url in self.requests if not url.startswith(LOCAL)]
        assert not outside, f"{name} asked another host: {outside}"
        failed = [url for url in self.failed if not BASE_PATH_PROBE.match(url)]
        assert not failed, f"{name}: failed requests {failed}"
        ours = [m for m in self.console if not (m.startswith("Failed to load resource: the "
                "server responded with a status of 404") and self.failed)]  # fmt: skip
        assert not ours, f"console errors on {name}: {ours}"


def _open(page, url: str, proof: str) -> None:
    page.goto(url, wait_until="domcontentloaded", timeout=60_000)
    page.wait_for_selector('[data-testid="stMainBlockContainer"] h1', timeout=60_000)
    if proof == "heatmap":
        page.wait_for_function(HEATMAP_DRAWN, timeout=60_000)
    if proof in ("heatmap", "chart"):
        page.wait_for_function(CHART_DRAWN, timeout=60_000)
    _wait_until_idle(page)
    assert page.locator('[data-testid="stException"]').count() == 0


@pytest.mark.parametrize(("path", "name", "proof"), PAGES, ids=[page[1] for page in PAGES])
def test_page_renders_in_chromium(app_url, browser, screenshot_folder, path, name, proof):
    page = browser.new_page(viewport={"width": 1400, "height": 1000})
    watch = Watch(page)
    try:
        _open(page, f"{app_url}/{path}", proof)
        # Streamlit scrolls inside its main block: grow the window to the content instead.
        height = page.evaluate(CONTENT_HEIGHT)
        page.set_viewport_size({"width": 1400, "height": min(max(height + 60, 900), 4000)})
        page.wait_for_timeout(1000)  # charts re-lay out to the new size
        page.screenshot(path=str(screenshot_folder / f"{name}.png"))
    finally:
        page.close()
    watch.check(name)
    assert (screenshot_folder / f"{name}.png").stat().st_size > 10_000


@pytest.mark.parametrize(("path", "name", "proof"), [p for p in PAGES if p[1] in MAIN_VISUAL],
                         ids=[p[1] for p in PAGES if p[1] in MAIN_VISUAL])  # fmt: skip
def test_presenter_mode_puts_the_main_visual_above_the_fold(
    app_url, browser, screenshot_folder, path, name, proof
):
    page = browser.new_page(viewport={"width": 1280, "height": 720})
    watch = Watch(page)
    try:
        _open(page, f"{app_url}/{path}?presenter=1", proof)
        assert page.locator('[data-testid="stSidebar"] [role="switch"]').first.is_checked()
        visual = page.locator(f'[data-testid="stMainBlockContainer"] {MAIN_VISUAL[name]}').first
        box = visual.bounding_box()
        assert box is not None and box["height"] > 20, name
        assert box["y"] >= 0 and box["y"] + min(box["height"], 300) <= 720, (name, box)
        page.screenshot(path=str(screenshot_folder / f"presenter-{name}.png"))
    finally:
        page.close()
    watch.check(name)


def _tooltip(page) -> str:
    return page.evaluate(
        "() => { const t = document.querySelector('#vg-tooltip-element');"
        " return t && t.classList.contains('visible') ? t.innerText : '' }"
    )


def test_heatmap_tooltip_names_tokens_and_the_toolbar_stays_off_the_metrics(app_url, browser):
    page = browser.new_page(viewport={"width": 1400, "height": 900})
    try:
        _open(page, f"{app_url}/trace_explorer", "heatmap")
        chart = page.locator('[data-testid="stVegaLiteChart"]').first
        box = chart.bounding_box()
        page.mouse.move(box["x"] + 150, box["y"] + 300)  # inside the lower triangle
        page.wait_for_timeout(800)
        text = _tooltip(page)
        assert "query" in text and "t = " in text and "j = " in text and "'" in text, text
        assert "data:image" not in text and len(text) < 400, text
        toolbar = page.locator('[data-testid="stElementToolbar"]').first.bounding_box()
        for metric in page.locator('[data-testid="stMetric"]').all():
            cell = metric.bounding_box()
            overlap = not (toolbar["y"] >= cell["y"] + cell["height"] or toolbar["y"] + toolbar["height"] <= cell["y"]
                           or toolbar["x"] >= cell["x"] + cell["width"] or toolbar["x"] + toolbar["width"] <= cell["x"])  # fmt: skip
            assert not overlap, ("the chart toolbar covers a metric", toolbar, cell)
    finally:
        page.close()


def test_token_strip_tooltip_carries_token_text(app_url, browser):
    page = browser.new_page(viewport={"width": 1400, "height": 900})
    try:
        _open(page, f"{app_url}/eviction_dynamics?step=40", "chart")
        strip = page.locator('[data-testid="stVegaLiteChart"]').first
        mark = strip.locator(".mark-rect path").nth(3)  # one token's rectangle in the strip
        mark.scroll_into_view_if_needed()
        page.wait_for_timeout(300)
        box = mark.bounding_box()
        page.mouse.move(box["x"] + box["width"] / 2, box["y"] + box["height"] / 2)
        page.wait_for_timeout(800)
        text = _tooltip(page)
        assert "(token " in text and "rank" in text, text
    finally:
        page.close()


@pytest.mark.model
@pytest.mark.parametrize("presenting", [False, True], ids=["normal", "presenter"])
def test_needle_lab_answers_in_chromium(app_url, browser, screenshot_folder, presenting):
    """A real run on the server's one model (the second one hits the cache): the answers
    chart in the policy colours and the needle-token map are drawn, a 1280x720 screenshot
    of each mode (presenter mode: the answers at the top of the screen)."""
    page = browser.new_page(viewport={"width": 1280, "height": 720})
    watch = Watch(page)
    query = "?policies=h2o,window,sink&budget=0.2" + ("&presenter=1" if presenting else "")
    try:
        _open(page, f"{app_url}/needle_lab{query}", "text")
        page.locator(".st-key-needle_run button").click()
        page.wait_for_selector('[data-testid="stVegaLiteChart"]', timeout=300_000)
        page.wait_for_function(CHART_DRAWN, timeout=60_000)
        _wait_until_idle(page, timeout=300.0)
        page.wait_for_timeout(800)  # the charts' final layout
        text = page.locator('[data-testid="stMainBlockContainer"]').inner_text()
        assert "Answers (the needle is" in text and "Needle held" in text
        assert page.locator('[data-testid="stVegaLiteChart"]').count() == 2
        heading = page.get_by_text("Answers (the needle is")
        if presenting:  # the answers start inside the screen, above the settings
            title = page.locator('[data-testid="stMainBlockContainer"] h1').first
            title.evaluate("(node) => node.scrollIntoView({block: 'start'})")  # the page top
            page.wait_for_timeout(300)
            box = page.locator('[data-testid="stVegaLiteChart"]').first.bounding_box()
            assert box is not None and 0 <= box["y"] <= 720 - 100, box
        else:  # below the settings: scrolled to, as a reader would
            heading.evaluate("(node) => node.scrollIntoView({block: 'start'})")
            page.wait_for_timeout(300)
        name = "presenter-needle-lab-answers" if presenting else "needle-lab-answers"
        page.screenshot(path=str(screenshot_folder / f"{name}.png"))
    finally:
        page.close()
    watch.check("needle-lab")
