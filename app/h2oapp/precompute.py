"""Race results of the shipped traces, computed once at setup and read by the app.

``make setup`` runs ``python app/h2oapp/precompute.py --if-stale``: every policy of the
classroom set (and any others asked for) at every budget of the Policy race, with the
attention-output error, computed by the grid engine of ``python -m h2osim.sweep`` into the
results store (:mod:`h2osim.store`, Parquet, in ``.cache/app-race/results``). A small JSON
payload per trace (pickle-free, written atomically), named by the trace file's SHA-256,
holds the explorer's showcase head and the store keys of its race cells; beside it, the
pages' cold-run results (:mod:`h2oapp.prepared`: the Eviction dynamics page's opening
replays and the explorer's opening heatmap). Store keys and
payloads carry :func:`h2osim.code_version`, so a changed trace or a changed library
simply misses and is replayed live. The app's cached race cell
(:func:`h2oapp.cached.race_record`) looks here first.

Simplification: only each policy's default parameters and the default replay options
(sum aggregation, streamed prompt, renormalised observation) are stored; anything else
is replayed on demand (and then kept by Streamlit's cache).

    python app/h2oapp/precompute.py                 # shipped traces, classroom policies
    python app/h2oapp/precompute.py --all-policies  # every registered policy (slower)
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

REPO_ROOT = Path(__file__).resolve().parents[2]
for folder in (REPO_ROOT, REPO_ROOT / "app"):  # run as a script from anywhere
    if str(folder) not in sys.path:
        sys.path.insert(0, str(folder))

import h2osim  # noqa: E402
from h2osim.files import write_json  # noqa: E402
from h2osim.grid import Grid, PolicySpec, RunConfig, trace_ref  # noqa: E402
from h2osim.grid import file_hash as file_sha256  # noqa: E402  (one definition)
from h2osim.policies import make_policy, policy_names  # noqa: E402
from h2osim.store import ResultStore, record_of  # noqa: E402
from h2osim.sweep import ensure  # noqa: E402
from h2osim.trace import Trace  # noqa: E402

FORMAT = "h2osim-app-race/1"
BUDGET_GRID = (0.05, 0.1, 0.15, 0.2, 0.25, 0.3, 0.4, 0.5, 0.6, 0.8, 1.0)  # the race's pills
CLASSROOM = ("full", "window", "sink", "heavy", "h2o", "opt")  # the default policy set
from h2oapp import prepared  # noqa: E402

DEFAULT_OPTIONS = prepared.DEFAULT_OPTIONS  # ("sum", "stream", "renormalized")


def store_folder() -> Path:
    """``$H2OSIM_APP_CACHE`` or ``.cache/app-race`` in the repository (git-ignored)."""
    return Path(os.environ.get("H2OSIM_APP_CACHE", REPO_ROOT / ".cache" / "app-race"))


def store_path(sha256: str) -> Path:
    return store_folder() / f"{sha256[:24]}.json"


def cell_key(policy: str, budget: float | None) -> str:
    """The key of one cell; a policy that sets its own budget (``full``, ``h2o-mask``) has
    one cell whatever the race's budget. Example: ("h2o", 0.2) -> "h2o@0.2";
    ("full", None) -> "full@fixed"."""
    return f"{policy}@fixed" if budget is None else f"{policy}@{float(budget):g}"


_ENGINE = h2osim.code_version()  # stored results are read only by the code that made them


def results_store() -> ResultStore:
    """The results store (:mod:`h2osim.store`) the race cells live in, beside the payloads."""
    return ResultStore(store_folder() / "results")


def read_payload(sha256: str) -> dict[str, Any]:
    """What was stored for the trace with this SHA-256 (empty when none or unreadable):
    ``records`` (race cells by :func:`cell_key`, read from the results store) and
    ``showcase`` (the explorer's head)."""
    path = store_path(sha256)
    try:
        payload = json.loads(path.read_text())
    except (OSError, ValueError):
        return {}
    if payload.get("format") != FORMAT or payload.get("trace_sha256") != sha256:
        return {}
    if payload.get("engine") != _ENGINE:
        return {}  # made by other code: replay instead
    rows = results_store().lookup(payload.get("cells", {}).values())
    if len(rows) != len(payload.get("cells", {})):
        return {}  # the store lost rows: replay instead
    # a fixed-budget cell serves every race budget: the app sets budget_requested per use
    payload["records"] = {cell: record_of(rows[key], 0.0) for cell, key in payload["cells"].items()}
    return payload


def read_store(sha256: str) -> dict[str, dict[str, Any]]:
    """The stored race cells of the trace with this SHA-256 (empty when none)."""
    return read_payload(sha256).get("records", {})


def precompute(
    trace_path: Path, policies: Sequence[str], budgets: Sequence[float] = BUDGET_GRID
) -> Path:
    """Replay ``policies`` x ``budgets`` on one trace (with the output error) into the
    results store - the grid engine of ``python -m h2osim.sweep``, computing only missing
    rows - and write the payload that names this trace's race cells."""
    trace = Trace.load(trace_path)
    sha = file_sha256(trace_path)
    aggregation, prompt_mode, observation = DEFAULT_OPTIONS
    config = RunConfig(aggregation=aggregation, prompt_mode=prompt_mode,
                       observation=observation, output_error=True)  # fmt: skip
    specs = [PolicySpec.of(make_policy(name)) for name in policies]
    grid = Grid([trace_ref(trace_path, trace)], specs, list(budgets), [config])
    cells = [cell for cell in grid.cells() if not cell.bound]
    ensure(results_store(), grid)
    path = store_path(sha)
    path.parent.mkdir(parents=True, exist_ok=True)
    from h2oapp.analysis import showcase_head

    showcase = showcase_head(trace)
    write_json(path, {"format": FORMAT, "trace": trace_path.name, "trace_sha256": sha,
                      "engine": _ENGINE, "options": DEFAULT_OPTIONS, "showcase": showcase,
                      "cells": {cell_key(cell.policy.name, cell.budget): cell.key
                                for cell in cells}})  # fmt: skip
    prepared.write(store_folder(), trace, sha, showcase)
    return path


def prepare_views(trace_path: Path) -> Path:
    """Only the pages' cold-run results (:mod:`h2oapp.prepared`) of one trace, for a
    trace whose race cells are current (``--if-stale`` after an app-only change)."""
    from h2oapp.analysis import showcase_head

    trace = Trace.load(trace_path)
    return prepared.write(store_folder(), trace, file_sha256(trace_path), showcase_head(trace))


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("traces", nargs="*", type=Path,
                        help="trace files (default: every *.npz in traces/)")  # fmt: skip
    parser.add_argument("--all-policies", action="store_true",
                        help="every registered policy, not only the classroom set")  # fmt: skip
    parser.add_argument("--if-stale", action="store_true",
                        help="skip traces whose stored results this code made (setup's default)")  # fmt: skip
    args = parser.parse_args(argv)
    from h2osim.cli import limit_threads

    limit_threads()
    traces = args.traces or sorted(
        Path(os.environ.get("H2OSIM_TRACE_DIR", REPO_ROOT / "traces")).glob("*.npz")
    )
    names = policy_names() if args.all_policies else [n for n in CLASSROOM if n in policy_names()]
    if not (args.if_stale and prepared.read_by_hand(store_folder())):
        print(f"Algorithm 1 by hand, opening example -> {prepared.write_by_hand(store_folder())}")
    for path in traces:
        sha = file_sha256(path)
        if args.if_stale and read_payload(sha):
            if prepared.read(store_folder(), sha):
                print(f"{path.name}: stored results are current")
            else:
                print(
                    f"{path.name}: race cells current; pages' opening views -> {prepare_views(path)}"
                )
            continue
        started = time.perf_counter()
        written = precompute(path, names)
        print(f"{path.name}: {len(names)} policies x {len(BUDGET_GRID)} budgets -> {written} "
              f"({time.perf_counter() - started:.1f} s)")  # fmt: skip
    return 0


if __name__ == "__main__":
    sys.exit(main())
