"""``python -m h2osim.claims``: regenerate the claims table (docs/claims.md and the README block).

The command line over :mod:`h2osim.studies.claims`: one ``Claim`` object per row
(:mod:`h2osim.studies.claims.rows`), the shared measurements they read
(:mod:`h2osim.studies.claims.measurements`) and the files they are written to
(:mod:`h2osim.studies.claims.report`).
"""

from __future__ import annotations

import argparse
import dataclasses
import shlex
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from h2osim.cli import run_cli
from h2osim.studies.claims import (
    FULL,
    QUICK,
    TRACE_FILES,
    build_payload,
    load_payload,
    measure,
    needed_measurements,
    rejudge,
    write_outputs,
)
from h2osim.studies.claims.measurements import LONG_DIR, LONG_JSON, Measurements, measure_long

STORE = ".cache/claims/store"  # the default results store, under --root


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m h2osim.claims",
        description="Regenerate the claims table: the H2O paper's claims (sparsity, power law, "
        "20% budget vs the full cache and the local window, the heavy/recent ablation, 5x KV "
        "memory), A2SF's early-token bias, and our findings (gap to the exact optimum, Belady, "
        "the official code paths, concave scores), measured on the shipped SmolLM2 traces and "
        "live inside SmolLM2. Verdicts come from stated rules (docs/claims.md).",
        epilog="Examples:  python -m h2osim.claims  (full, ~7-10 min on 2 cores; writes docs/ and the README "
        "block)  |  python -m h2osim.claims --quick  (smoke run, < 1 min, writes claims-quick/)  |  "
        "python -m h2osim.claims --from-json docs/claims.json  (re-render after editing numbers)",
    )
    parser.add_argument("--quick", action="store_true",
                        help="smoke setting: 160-token prefixes of two traces, 3 layers, budgets 0.1 "
                             "and 0.2, a 64-token live run; writes to claims-quick/ by default")  # fmt: skip
    parser.add_argument("--no-live", action="store_true",
                        help="skip the live runs (no model needed); live rows read 'not measured'")  # fmt: skip
    parser.add_argument("--live-n", type=int, metavar="N",
                        help="tokens per live run (default 384; --quick: 64)")  # fmt: skip
    parser.add_argument("--out-dir", metavar="DIR",
                        help="folder for claims.json, claims.md and the PNGs (default docs/; --quick: claims-quick/)")  # fmt: skip
    parser.add_argument("--readme", metavar="PATH",
                        help="README whose claims block to rewrite (default README.md; --quick: none)")  # fmt: skip
    parser.add_argument("--no-readme", action="store_true", help="leave the README alone")
    parser.add_argument("--no-plots", action="store_true", help="skip the PNGs")
    parser.add_argument("--from-json", metavar="PATH",
                        help="measure nothing: re-judge the numbers in a claims.json and rewrite it, "
                             "its claims.md and the README block")  # fmt: skip
    parser.add_argument("--root", default=".", metavar="DIR",
                        help="repository root holding traces/ (default: the current folder)")  # fmt: skip
    parser.add_argument("--store", metavar="PATH",
                        help=f"results store (h2osim.store) the sweep's replays are read from and "
                             f"written to: a second run replays only what is missing (default "
                             f"ROOT/{STORE})")  # fmt: skip
    parser.add_argument("--no-store", action="store_true",
                        help="replay the sweep in this process and keep nothing")  # fmt: skip
    parser.add_argument("--long", action="store_true",
                        help=f"re-measure the long-context rows (n = 4096: observe, bias, h2o/belady/opt "
                             f"at 20%%; ~15 min) from the traces in --long-dir and rewrite {LONG_JSON}; "
                             f"without it those rows read {LONG_JSON}. With --from-json: only that, "
                             "then re-render")  # fmt: skip
    parser.add_argument("--long-dir", default=LONG_DIR, metavar="DIR",
                        help=f"folder of prose-4096.npz and code-4096.npz, relative to --root (default "
                             f"{LONG_DIR}; docs/long-context.md dumps them)")  # fmt: skip
    parser.add_argument("--no-progress", action="store_true", help="hide the progress bar")
    return parser


def run(args: argparse.Namespace, command: str = "python -m h2osim.claims") -> int:
    settings = QUICK if args.quick else FULL
    if args.live_n is not None:
        settings = dataclasses.replace(settings, live_n=args.live_n)
    readme = None
    if not args.no_readme and (args.readme or not args.quick):
        readme = Path(args.readme or Path(args.root) / "README.md")
    if args.store and args.no_store:
        raise ValueError("--store and --no-store exclude each other")
    store = None
    if not args.no_store and not (args.from_json and not args.long):
        from h2osim.store import ResultStore

        store = ResultStore(args.store or Path(args.root) / STORE)
    options = {"long": args.long, "long_dir": args.long_dir, "long_command": command}
    if args.from_json:
        source = Path(args.from_json)
        payload = load_payload(source)
        if args.long:
            _remeasure_long(payload, settings, store, Path(args.root), options)
        out_dir = Path(args.out_dir) if args.out_dir else source.parent
        for line in write_outputs(payload, out_dir, readme):
            print(line)
        print(_console_table(payload))
        return 0
    out_dir = Path(args.out_dir or ("claims-quick" if args.quick else Path(args.root) / "docs"))
    if not (Path(args.root) / TRACE_FILES[settings.traces[0]]).is_file():
        raise FileNotFoundError(f"no {TRACE_FILES[settings.traces[0]]} under {Path(args.root).resolve()}; "
                                "run from the repository root or give --root")  # fmt: skip
    started = time.perf_counter()
    measured = measure(settings, live=not args.no_live, progress=not args.no_progress,
                       root=Path(args.root), needs=needed_measurements(), store=store,
                       **options)  # fmt: skip
    payload = build_payload(measured, command, time.perf_counter() - started)
    grid = measured.grid
    where = f"store {store.path}" if store is not None else "no store"
    print(f"sweep: {grid['cells']} grid cells, {grid['computed']} computed, {grid['reused']} read "
          f"({where})", file=sys.stderr)  # fmt: skip
    out_dir.mkdir(parents=True, exist_ok=True)
    if not args.no_plots:
        from h2osim.studies.claims.plots import plot_all

        figures = [row["figure"] for row in payload["claims"] if row["figure"]]
        written = {path.name for path in plot_all(measured, figures, out_dir)}
    else:
        written = set()
    for row in payload["claims"]:  # link only the figures this run wrote
        if row["figure"] not in written:
            row["figure"] = None
    for line in write_outputs(payload, out_dir, readme):
        print(line)
    print(_console_table(payload))
    return 0


def _remeasure_long(payload: dict[str, Any], settings, store, root: Path, options: dict) -> None:
    """Re-measure the long-context rows of a stored claims payload (``--from-json --long``)."""
    from h2osim.studies.claims.measurements import Progress, Run
    from h2osim.studies.claims.rows import CLAIMS, claim_numbers

    measured = Measurements(settings=settings)
    run = Run(measured, None, Progress(1, False), store=store, root=root, options=options)
    measure_long({}, run)
    numbers = claim_numbers(measured)
    for claim in CLAIMS:
        if claim.needs == ("long",):
            row = next((r for r in payload["claims"] if r["id"] == claim.id), None)
            if row is not None:
                row["numbers"] = numbers[claim.id]
    payload.setdefault("details", {})["long"] = measured.long
    rejudge(payload)


def _console_table(payload: dict[str, Any]) -> str:
    lines = [f"claims ({payload.get('mode')}, {payload.get('seconds', 0):.0f} s):"]
    for i, row in enumerate(payload["claims"], 1):
        lines.append(f"{i:2d}. [{row['verdict']}] {row['claim']}\n      ours: {row['ours']}"
                     + (f"\n      why: {row['reason']}" if row.get("reason") else ""))  # fmt: skip
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point; user errors print one line to stderr and exit 2."""
    arguments = list(sys.argv[1:] if argv is None else argv)
    command = "python -m h2osim.claims" + (" " + shlex.join(arguments) if arguments else "")
    return run_cli(build_parser, lambda args: run(args, command), arguments)


if __name__ == "__main__":
    sys.exit(main())
