"""Benchmark: how long the app takes to rerun after each interaction (issue #5: <= 1 s).

Drives the app with ``streamlit.testing.v1.AppTest`` (the script runs in this process,
no browser) on each shipped trace, one fresh session per trace, and times every rerun:
the first visit of each page (replays not yet cached), then widget changes. Each row
says how many new replays it needed, since a replay is what costs: the rest of a rerun
is reading caches and building charts. The browser's own drawing is not included.

    python bench/bench_app.py                       # every trace in traces/
    python bench/bench_app.py --trace traces/synthetic-demo.npz
    python bench/bench_app.py --skip-output-error   # leave out the slowest, opt-in metric

Prints one table per trace and, last, the slowest interaction and its time.
"""

from __future__ import annotations

import argparse
import sys
import time
from collections.abc import Callable
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO_ROOT))
sys.path.insert(0, str(REPO_ROOT / "app"))

from h2oapp.cached import shipped_traces  # noqa: E402
from streamlit.testing.v1 import AppTest  # noqa: E402

from h2osim.trace import Trace  # noqa: E402

LIMIT_SECONDS = 1.0
MAIN = str(REPO_ROOT / "app" / "main.py")


def interactions(
    trace: Trace, output_error: bool
) -> list[tuple[str, str, int, Callable[[AppTest], object]]]:
    """(page, what the user does, new replays it needs, how AppTest does it)."""
    layers = trace.layers.tolist()

    def next_unit(at: AppTest) -> object:
        picker = at.selectbox(key="dyn_unit")
        return picker.set_value((picker.value + 1) % len(picker.options))

    other_layer = layers[0] if len(layers) > 1 else layers[-1]
    steps = [
        ("trace explorer", "open the page", lambda at: at),
        ("trace explorer", "change layer", lambda at: at.selectbox(key="te_layer").set_value(other_layer)),
        ("trace explorer", "change query head", lambda at: at.selectbox(key="te_head").set_value(trace.num_heads - 1)),
        ("trace explorer", "linear colour scale", lambda at: at.radio(key="te_scale").set_value("linear")),
        ("trace explorer", "score per row seen", lambda at: at.radio(key="te_score").set_value("per row seen")),
        ("eviction dynamics", "open the page (h2o vs window)", lambda at: at.switch_page("views/eviction_dynamics.py")),
        ("eviction dynamics", "move the step slider", lambda at: at.slider(key="dyn_step").set_value(trace.n // 2)),
        ("eviction dynamics", "press play (one frame)", lambda at: at.button(key="dyn_play").click()),
        ("eviction dynamics", "one animation frame", lambda at: at),
        ("eviction dynamics", "press pause", lambda at: at.button(key="dyn_play").click()),
        ("eviction dynamics", "step back", lambda at: at.button(key="dyn_back").click()),
        ("eviction dynamics", "change budget to 0.3", lambda at: at.slider(key="dyn_budget").set_value(0.3)),
        ("eviction dynamics", "right policy: sink", lambda at: at.selectbox(key="dyn_policy_b").set_value("sink")),
        ("eviction dynamics", "watch another cache unit", next_unit),
        ("eviction dynamics", "budget back to 0.2", lambda at: at.slider(key="dyn_budget").set_value(0.2)),
    ]  # fmt: skip
    if output_error and trace.has_values:
        steps.append(("eviction dynamics", "measure output error", lambda at: at.checkbox(key="dyn_output_error").check()))  # fmt: skip
    steps += [
        ("policy race", "open the page (defaults)", lambda at: at.switch_page("views/policy_race.py")),
        ("policy race", "add budget 0.4", lambda at: at.pills(key="race_budgets").select(0.4)),
        ("policy race", "remove budget 0.4 (cached)", lambda at: at.pills(key="race_budgets").unselect(0.4)),
        ("policy race", "add policy tova", lambda at: at.multiselect(key="race_policies").select("tova")),
        ("policy race", "retained mass over decode steps", lambda at: at.radio(key="race_mass_metric").set_value("retained_mass_decode")),
    ]  # fmt: skip
    if output_error and trace.has_values:
        steps.append(("policy race", "second chart: output error", lambda at: at.radio(key="race_second").set_value("output_error")))  # fmt: skip
    steps += [
        ("theory lab", "open the page", lambda at: at.switch_page("views/theory_lab.py")),
        ("theory lab", "budget k = 5", lambda at: at.slider(key="th_k").set_value(5)),
        ("theory lab", "set function: output fidelity", lambda at: at.selectbox(key="th_family").set_value("output-fidelity")),
        ("theory lab", "elements n = 14", lambda at: at.slider(key="th_size").set_value(14)),
        ("theory lab", "dynamic bound at budget 0.3", lambda at: at.slider(key="th_budget").set_value(0.3)),
    ]  # fmt: skip
    steps.append(("trace explorer", "back to page 1 (cached)", lambda at: at.switch_page("views/trace_explorer.py")))  # fmt: skip
    return steps


def replay_jobs(app: AppTest, page: str) -> set[tuple]:
    """The (policy, budget, output error) replays the page shows after a run."""
    state = app.session_state
    if page == "eviction dynamics":
        error = state["dyn_output_error"]
        return {(state["dyn_policy_a"], state["dyn_budget"], error),
                (state["dyn_policy_b"], state["dyn_budget"], error)}  # fmt: skip
    if page == "theory lab":
        return {("bound report", state["th_policy"], state["th_budget"])}  # replays inside
    if page == "policy race":
        error = state["race_second"] == "output_error"
        return {(policy, budget, error) for policy in state["race_policies"]
                for budget in state["race_budgets"]}  # fmt: skip
    return set()


def bench_trace(path: Path, output_error: bool) -> list[tuple[str, str, int, float]]:
    """Rows (page, interaction, new replays it needed, seconds of the rerun)."""
    trace = Trace.load(path)
    app = AppTest.from_file(MAIN, default_timeout=600)
    app.session_state["trace"] = str(path)
    rows = []
    replayed: set[tuple] = set()
    for page, action, act in interactions(trace, output_error):
        started = time.perf_counter()
        act(app)
        app.run()
        seconds = time.perf_counter() - started
        if app.exception:
            raise RuntimeError(f"{page} / {action}: {app.exception[0].message}")
        jobs = replay_jobs(app, page)
        rows.append((page, action, len(jobs - replayed), seconds))
        replayed |= jobs
    return rows


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--trace", action="append", type=Path,
                        help="trace to drive the app on (repeatable; default: every shipped trace)")  # fmt: skip
    parser.add_argument("--skip-output-error", action="store_true",
                        help="leave out the opt-in output-error interactions (3x slower replays)")  # fmt: skip
    args = parser.parse_args(argv)
    traces = args.trace or shipped_traces()
    slowest: tuple[float, str] = (0.0, "")
    over = 0
    total = 0
    for path in traces:
        rows = bench_trace(path.resolve(), not args.skip_output_error)
        print(f"\n{path.name}: {Trace.load(path).describe()}")
        print(f"{'page':<18} {'interaction':<40} {'new replays':>11} {'seconds':>8}")
        for page, action, replays, seconds in rows:
            flag = "  > 1 s" if seconds > LIMIT_SECONDS else ""
            print(f"{page:<18} {action:<40} {replays:>11} {seconds:>8.3f}{flag}")
            total += 1
            over += seconds > LIMIT_SECONDS
            if seconds > slowest[0]:
                slowest = (seconds, f"{path.name}: {page} / {action} ({replays} new replays)")
    print(f"\n{over} of {total} interactions took more than {LIMIT_SECONDS:.0f} s")
    print(f"slowest interaction: {slowest[1]}: {slowest[0]:.3f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
