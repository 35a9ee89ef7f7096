"""Race results of the shipped traces, computed once at setup and read by the app.

``make setup`` (scripts/setup.sh) runs ``python app/h2oapp/precompute.py``: every policy of
the classroom set (and any others asked for) at every budget of the Policy race, with the
attention-output error, replayed through :func:`h2osim.engine.sweep` on each shipped
trace. The records go to one JSON file per trace (pickle-free, written atomically by
:func:`h2osim.files.write_json`), named by the trace file's SHA-256, so a changed trace
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
import hashlib
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

from h2osim.engine import ReplayConfig, sweep  # noqa: E402
from h2osim.files import write_json  # noqa: E402
from h2osim.policies import make_policy, policy_names  # noqa: E402
from h2osim.trace import Trace  # noqa: E402

FORMAT = "h2osim-app-race/1"
BUDGET_GRID = (0.05, 0.1, 0.15, 0.2, 0.25, 0.3, 0.4, 0.5, 0.6, 0.8, 1.0)  # the race's pills
CLASSROOM = ("full", "window", "sink", "heavy", "h2o", "opt")  # the default policy set
DEFAULT_OPTIONS = ("sum", "stream", "renormalized")


def store_folder() -> Path:
    """``$H2OSIM_APP_CACHE`` or ``.cache/app-race`` in the repository (git-ignored)."""
    return Path(os.environ.get("H2OSIM_APP_CACHE", REPO_ROOT / ".cache" / "app-race"))


def file_sha256(path: str | os.PathLike[str]) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def engine_fingerprint() -> str:
    """SHA-256 of the library's source (every ``h2osim/**/*.py``): stored results are read
    only by the code that made them, so a changed engine or policy never shows stale numbers."""
    digest = hashlib.sha256()
    for path in sorted((REPO_ROOT / "h2osim").rglob("*.py")):
        digest.update(path.relative_to(REPO_ROOT).as_posix().encode())
        digest.update(path.read_bytes())
    return digest.hexdigest()


def store_path(sha256: str) -> Path:
    return store_folder() / f"{sha256[:24]}.json"


def cell_key(policy: str, budget: float | None) -> str:
    """The key of one cell; a policy that sets its own budget (``full``, ``h2o-mask``) has
    one cell whatever the race's budget. Example: ("h2o", 0.2) -> "h2o@0.2";
    ("full", None) -> "full@fixed"."""
    return f"{policy}@fixed" if budget is None else f"{policy}@{float(budget):g}"


_ENGINE = engine_fingerprint()  # the running code's fingerprint, computed once per process


def read_payload(sha256: str) -> dict[str, Any]:
    """What was stored for the trace with this SHA-256 (empty when none or unreadable):
    ``records`` (race cells by :func:`cell_key`) and ``showcase`` (the explorer's head)."""
    path = store_path(sha256)
    try:
        payload = json.loads(path.read_text())
    except (OSError, ValueError):
        return {}
    if payload.get("format") != FORMAT or payload.get("trace_sha256") != sha256:
        return {}
    if payload.get("engine") != _ENGINE:
        return {}  # made by other code: replay instead
    return payload


def read_store(sha256: str) -> dict[str, dict[str, Any]]:
    """The stored race cells of the trace with this SHA-256 (empty when none)."""
    return read_payload(sha256).get("records", {})


def precompute(
    trace_path: Path, policies: Sequence[str], budgets: Sequence[float] = BUDGET_GRID
) -> Path:
    """Replay ``policies`` x ``budgets`` on one trace (with the output error) and store them."""
    trace = Trace.load(trace_path)
    sha = file_sha256(trace_path)
    config = ReplayConfig(*DEFAULT_OPTIONS, output_error=True)
    records: dict[str, dict[str, Any]] = {}
    for name in policies:
        policy = make_policy(name)
        fixed = policy.fixed_budget(trace.n, trace.prompt_length) is not None
        for record in sweep(trace, [policy], list(budgets), config=config):
            records[cell_key(name, None if fixed else record["budget_requested"])] = record
    path = store_path(sha)
    path.parent.mkdir(parents=True, exist_ok=True)
    from h2oapp.analysis import showcase_head

    write_json(path, {"format": FORMAT, "trace": trace_path.name, "trace_sha256": sha,
                      "engine": _ENGINE, "options": DEFAULT_OPTIONS, "showcase": showcase_head(trace),
                      "records": records})  # fmt: skip
    return path


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
    for path in traces:
        if args.if_stale and read_payload(file_sha256(path)):
            print(f"{path.name}: stored results are current")
            continue
        started = time.perf_counter()
        written = precompute(path, names)
        print(f"{path.name}: {len(names)} policies x {len(BUDGET_GRID)} budgets -> {written} "
              f"({time.perf_counter() - started:.1f} s)")  # fmt: skip
    return 0


if __name__ == "__main__":
    sys.exit(main())
