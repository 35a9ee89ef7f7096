"""Benchmark: the classroom app in a real browser (issue: cold page <= 2 s, interaction p95 <= 1 s).

Starts ``streamlit run app/main.py`` on a free port of 127.0.0.1 (fresh process: cold
Streamlit caches; the race results precomputed at setup, ``app/h2oapp/precompute.py``,
are read from disk as a student's server would), then drives headless Debian chromium
through Playwright (``executable_path=/usr/bin/chromium``):

1. **single session**: for every shipped trace (``?trace=NAME`` in the URL), every page
   opened cold (a new browser tab = a new Streamlit session), then the scripted
   interactions of that page. A time runs from the action until the app's script has
   finished (``data-test-script-state`` back to ``notRunning``) and the page's main
   visual is drawn. A session's tabs share one browser context (its HTTP cache holds the
   front end after the first tab); ``--fresh-cache`` gives every tab an empty cache.
2. **concurrent**: N sessions (default 10) at once, each opening the Policy race on
   another trace cold and doing its interactions; bounded by ``--concurrent-timeout``.

Prints p50 / p95 / max (and n) per page and per interaction, then the concurrent figures.

    python bench/bench_app.py                       # every trace in traces/, 10 sessions
    python bench/bench_app.py --trace traces/smollm2-chat.npz --sessions 3
"""

from __future__ import annotations

import argparse
import asyncio
import os
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections.abc import Awaitable, Callable
from pathlib import Path

import numpy as np

REPO_ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO_ROOT / "app"))

from h2oapp.cached import shipped_traces  # noqa: E402

CHROMIUM = "/usr/bin/chromium"
ARGS = ["--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
        "--disable-background-networking", "--disable-component-update"]  # fmt: skip
STATE = """() => { const app = document.querySelector('[data-testid="stApp"]');
                   return app ? app.getAttribute('data-test-script-state') : null }"""
DRAWN = {  # the page's main visual, drawn
    "by_hand": '[data-testid="stHtml"]',
    "trace_explorer": '[data-testid="stVegaLiteChart"] canvas',
    "eviction_dynamics": '[data-testid="stVegaLiteChart"] svg',
    "policy_race": '[data-testid="stVegaLiteChart"] svg',
    "live_lab": '[data-testid="stForm"]',
    "needle_lab": '[data-testid="stForm"]',
    "theory_lab": '[data-testid="stVegaLiteChart"] svg',  # not in the default --pages
}
LIMITS = {"cold page": 2.0, "interaction p95": 1.0}


OBSERVE = """() => { if (window.__h2oRuns) return;
    window.__h2oRuns = [];  // [time, state] at every change of the script state
    const app = document.querySelector('[data-testid="stApp"]');
    new MutationObserver(() => window.__h2oRuns.push(
        [performance.now(), app.getAttribute('data-test-script-state')]))
      .observe(app, {attributes: true, attributeFilter: ['data-test-script-state']}); }"""
RUNS = "() => window.__h2oRuns.length"
ENDED_AFTER = """(start) => { const runs = window.__h2oRuns.slice(start);
    const began = runs.findIndex(([, state]) => state === 'running');
    return began >= 0 && runs.slice(began).some(([, state]) => state === 'notRunning') }"""


async def settle(page, mark: int, timeout: float = 120.0, start_within: float = 0.5) -> None:
    """Wait until the run an action started (after change number ``mark`` of the script
    state, recorded by a MutationObserver, so no run is missed) has finished; an action
    that starts no run within ``start_within`` s (a fragment-only or a no-op change) ends
    when its frame has been drawn."""
    deadline = time.monotonic() + timeout
    started = time.monotonic()
    while time.monotonic() < deadline:
        if await page.evaluate(ENDED_AFTER, mark) and await page.evaluate(STATE) == "notRunning":
            return
        if time.monotonic() - started > start_within and await page.evaluate(RUNS) == mark:
            return  # nothing ran
        await asyncio.sleep(0.01)
    raise TimeoutError("the app was still running")


async def act_and_settle(page, act) -> float:
    """Seconds from the action until its run has finished."""
    mark = await page.evaluate(RUNS)
    started = time.perf_counter()
    await act(page)
    await settle(page, mark)
    return time.perf_counter() - started


async def click(page, selector: str, nth: int = 0) -> None:
    await page.locator(selector).nth(nth).click()


def interactions(page_name: str) -> list[tuple[str, Callable[[object], Awaitable[None]]]]:
    """(what the user does, how) for each page; widgets are found by their keys
    (Streamlit gives each keyed element the class ``st-key-KEY``)."""
    if page_name == "by_hand":
        return [
            ("step forward", lambda p: click(p, ".st-key-bh_forward button")),
            ("step back", lambda p: click(p, ".st-key-bh_back button")),
            ("press play", lambda p: click(p, ".st-key-bh_play button")),
            ("press pause", lambda p: click(p, ".st-key-bh_play button")),
            ("recent r: one more", lambda p: _slider_key(p, "bh_recent", "ArrowRight")),
        ]
    if page_name == "trace_explorer":
        return [
            ("linear colour scale", lambda p: click(p, '.st-key-te_scale label:has-text("linear")')),
            ("score per row seen", lambda p: click(p, '.st-key-te_score label:has-text("per row seen")')),
            ("log colour scale", lambda p: click(p, '.st-key-te_scale label:has-text("log")')),
        ]  # fmt: skip
    if page_name == "eviction_dynamics":
        return [
            ("step forward", lambda p: click(p, ".st-key-dyn_forward button")),
            ("press play", lambda p: click(p, ".st-key-dyn_play button")),
            ("press pause", lambda p: click(p, ".st-key-dyn_play button")),
            ("budget +0.05 (new replays)", lambda p: _slider_key(p, "dyn_budget", "ArrowRight")),
            ("measure output error", lambda p: click(p, ".st-key-dyn_output_error label")),
        ]
    if page_name == "policy_race":
        return [
            ("add budget 0.4", lambda p: click(p, '.st-key-race_budgets button:has-text("0.4")')),
            ("remove budget 0.4", lambda p: click(p, '.st-key-race_budgets button:has-text("0.4")')),
            ("retained mass over decode steps", lambda p: click(p, '.st-key-race_mass_metric label:has-text("decode steps only")')),
            ("second chart: output error", lambda p: click(p, '.st-key-race_second label:has-text("attention-output error")')),
        ]  # fmt: skip
    return []


async def _slider_key(page, key: str, press: str) -> None:
    thumb = page.locator(f'.st-key-{key} input[type="range"]').first
    await thumb.focus()
    await thumb.press(press)


async def open_page(browser, url: str, name: str) -> tuple[object, float]:
    """A new tab (a new session) on ``url``: seconds until the run ended and it drew."""
    page = await browser.new_page()  # a Browser or a BrowserContext
    await page.set_viewport_size({"width": 1280, "height": 720})
    started = time.perf_counter()
    await page.goto(url, wait_until="domcontentloaded", timeout=120_000)
    await page.wait_for_selector('[data-testid="stMainBlockContainer"] h1', timeout=120_000)
    while await page.evaluate(STATE) != "notRunning":
        await asyncio.sleep(0.01)
    await page.wait_for_selector(DRAWN[name], timeout=120_000)
    seconds = time.perf_counter() - started
    await page.evaluate(OBSERVE)
    return page, seconds


async def session(browser, base: str, trace: str, pages: list[str], rows: list,
                  fresh_cache: bool = False) -> None:  # fmt: skip
    """One student: each page cold (a new tab, so a new Streamlit session), then its
    interactions; rows get (kind, what, seconds). The tabs share one browser context (its
    HTTP cache holds Streamlit's front end after the first tab, as a student's browser
    would) unless ``fresh_cache``, where every tab starts with an empty cache."""
    context = None if fresh_cache else await browser.new_context()
    for name in pages:
        path = "" if name == "by_hand" else name  # the default page lives at the root
        page, seconds = await open_page(context or browser, f"{base}/{path}?trace={trace}", name)
        rows.append(("cold page", name, seconds))
        for what, act in interactions(name):
            try:
                rows.append(("interaction", f"{name}: {what}", await act_and_settle(page, act)))
            except TimeoutError as exc:
                raise TimeoutError(f"{name}: {what} on {trace}: {exc}") from exc
        await page.close()
    if context is not None:
        await context.close()


def summary(rows: list[tuple[str, str, float]]) -> list[str]:
    lines = [f"{'kind':<12} {'page / interaction':<58} {'n':>3} {'p50':>7} {'p95':>7} {'max':>7}"]
    groups: dict[tuple[str, str], list[float]] = {}
    for kind, what, seconds in rows:
        groups.setdefault((kind, what), []).append(seconds)
    for (kind, what), values in groups.items():
        v = np.asarray(values)
        lines.append(f"{kind:<12} {what:<58} {v.size:>3} {np.median(v):>7.2f} "
                     f"{np.percentile(v, 95):>7.2f} {v.max():>7.2f}")  # fmt: skip
    return lines


def totals(rows: list[tuple[str, str, float]], label: str) -> str:
    cold = np.asarray([s for k, _, s in rows if k == "cold page"])
    acts = np.asarray([s for k, _, s in rows if k == "interaction"])
    text = f"{label}: cold page p50 {np.median(cold):.2f} s, p95 {np.percentile(cold, 95):.2f} s, max {cold.max():.2f} s (n={cold.size})"
    if acts.size:
        text += (f"; interactions p50 {np.median(acts):.2f} s, p95 {np.percentile(acts, 95):.2f} s, "
                 f"max {acts.max():.2f} s (n={acts.size})")  # fmt: skip
    return text


def script_times(traces: list[Path], pages: list[str]) -> list[tuple[str, str, float]]:
    """The Python side alone: each page's first script run per trace in a fresh
    ``AppTest`` session of this process (no browser, no websocket), in a separate process
    from the server above so its caches start cold too."""
    from streamlit.testing.v1 import AppTest

    rows = []
    for trace in traces:
        app = AppTest.from_file(str(REPO_ROOT / "app" / "main.py"), default_timeout=600)
        app.session_state["trace"] = str(trace)
        for name in pages:
            started = time.perf_counter()
            (app.run() if name == "by_hand" else app.switch_page(f"views/{name}.py").run())
            rows.append(("script run", name, time.perf_counter() - started))
            if app.exception:
                raise RuntimeError(f"{name}: {app.exception[0].message}")
    return rows


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def start_server(port: int, log: Path) -> subprocess.Popen:
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(filter(None, [str(REPO_ROOT), os.environ.get("PYTHONPATH")])))  # fmt: skip
    server = subprocess.Popen(
        [sys.executable, "-m", "streamlit", "run", "app/main.py", "--server.port", str(port),
         "--server.address", "127.0.0.1", "--server.fileWatcherType", "none"],
        cwd=REPO_ROOT, env=env, stdout=log.open("w"), stderr=subprocess.STDOUT,
    )  # fmt: skip
    deadline = time.monotonic() + 90
    while time.monotonic() < deadline:
        if server.poll() is not None:
            raise RuntimeError(f"streamlit exited with code {server.returncode}; see {log}")
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/_stcore/health", timeout=2):
                return server
        except OSError:
            time.sleep(0.3)
    server.terminate()
    raise TimeoutError("streamlit did not start within 90 s")


def ensure_precomputed(paths: list[Path]) -> str:
    """``make setup``'s step (``precompute.py --if-stale``) for these traces, so the pages
    read the stored race cells and opening views as a set-up server does (both are keyed on
    the code version: any change to h2osim/ or app/ makes them stale; the step redoes only
    what is stale). Says what it did."""
    from h2oapp import precompute

    stale = [p for p in paths if not precompute.read_payload(precompute.file_sha256(p))]
    started = time.perf_counter()
    subprocess.run([sys.executable, str(REPO_ROOT / "app" / "h2oapp" / "precompute.py"),
                    "--if-stale", *map(str, paths)], check=True, stdout=subprocess.DEVNULL)  # fmt: skip
    return (f"precompute.py --if-stale: race cells were stale for {len(stale)} of {len(paths)} "
            f"traces; {time.perf_counter() - started:.0f} s (as make setup does; "
            f"{precompute.store_folder()})")  # fmt: skip


def load() -> str:
    """The machine's load average, printed beside every figure (the machine is shared)."""
    one, five, fifteen = os.getloadavg()
    return f"load average {one:.1f} / {five:.1f} / {fifteen:.1f} on {os.cpu_count()} CPUs"


async def run(args: argparse.Namespace) -> int:
    from playwright.async_api import async_playwright

    paths = [Path(t).resolve() for t in (args.trace or shipped_traces())]
    traces = [p.name for p in paths]
    pages = args.pages.split(",")
    if args.precompute:
        print(ensure_precomputed(paths))
    print(f"start: {load()}")
    port = free_port()
    log = Path(tempfile.gettempdir()) / f"bench-app-{port}.log"
    server = start_server(port, log)
    base = f"http://127.0.0.1:{port}"
    try:
        async with async_playwright() as playwright:
            browser = await playwright.chromium.launch(executable_path=CHROMIUM, args=ARGS)
            rows: list[tuple[str, str, float]] = []
            for trace in traces:
                await session(browser, base, trace, pages, rows, args.fresh_cache)
            print(f"single session, {len(traces)} traces ({', '.join(traces)}), 1280x720")
            print("\n".join(summary(rows)))
            print(totals(rows, "single session"))
            print(f"after the single session: {load()}")
            if args.sessions:
                concurrent: list[tuple[str, str, float]] = []
                started = time.perf_counter()
                tasks = [session(browser, base, traces[i % len(traces)], ["policy_race"], concurrent,
                                 args.fresh_cache) for i in range(args.sessions)]  # fmt: skip
                await asyncio.wait_for(asyncio.gather(*tasks), timeout=args.concurrent_timeout)
                wall = time.perf_counter() - started
                print(f"\n{args.sessions} concurrent sessions on 127.0.0.1 (Policy race cold + "
                      f"{len(interactions('policy_race'))} interactions each), wall {wall:.1f} s")  # fmt: skip
                print("\n".join(summary(concurrent)))
                print(totals(concurrent, f"{args.sessions} sessions"))
                print(f"after the concurrent sessions: {load()}")
            await browser.close()
        if args.script_times:
            paths = [Path(t) for t in (args.trace or shipped_traces())]
            rows = script_times([p.resolve() for p in paths], pages)
            print(
                "\nthe Python side alone (AppTest, a new session per trace, first run of each page)"
            )
            print("\n".join(summary(rows)))
    finally:
        server.terminate()
        try:
            server.wait(timeout=15)
        except subprocess.TimeoutExpired:
            server.kill()
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--trace", action="append", type=Path,
                        help="trace to open the pages on (repeatable; default: every shipped trace)")  # fmt: skip
    parser.add_argument("--pages", default="by_hand,trace_explorer,eviction_dynamics,policy_race,live_lab,needle_lab",
                        help="comma list of pages (url paths)")  # fmt: skip
    parser.add_argument("--sessions", type=int, default=10,
                        help="concurrent sessions for the second part (0 = skip)")  # fmt: skip
    parser.add_argument("--concurrent-timeout", type=float, default=600.0,
                        help="seconds the concurrent part may take at most")  # fmt: skip
    parser.add_argument("--fresh-cache", action="store_true",
                        help="every tab with an empty browser cache (a first visit)")  # fmt: skip
    parser.add_argument("--no-precompute", dest="precompute", action="store_false",
                        help="leave a stale race store stale (default: refresh it first, as "
                        "make setup does)")  # fmt: skip
    parser.add_argument("--script-times", action="store_true",
                        help="also time each page's script alone (AppTest, no browser)")  # fmt: skip
    args = parser.parse_args(argv)
    if not 0 <= args.sessions <= 20:
        parser.error("--sessions must be between 0 and 20 (a bounded load on 127.0.0.1)")
    return asyncio.run(run(args))


if __name__ == "__main__":
    sys.exit(main())
