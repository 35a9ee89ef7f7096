"""``python -m h2osim.observe TRACE``: the H2O paper's Section 3 observations on a trace.

The command line over :mod:`h2osim.studies.observe`: a table per layer (sparsity, sink,
concentration, power law, early-token bias) and PNGs.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from pathlib import Path

from h2osim.cli import check_output_folder, check_outputs, parse_layers, run_cli
from h2osim.files import write_json
from h2osim.studies.observe import format_table, legend, observe, save_figures
from h2osim.trace import Trace


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m h2osim.observe",
        description="Reproduce the H2O paper's Section 3 observations on a trace: attention "
        "sparsity per layer, attention sink, concentration in the top keys, power law of "
        "accumulated attention, early-token bias. Prints a table and writes PNGs.",
        epilog="Example: python -m h2osim.observe traces/smollm2-pydoc.npz --out-dir obs/",
    )
    parser.add_argument("trace", help="trace file (.npz, format v1)")
    parser.add_argument("--layers", default="all", metavar="SPEC",
                        help="stored layers to observe: 'all' (default) or e.g. 0,7,15-17")  # fmt: skip
    parser.add_argument("--out-dir", metavar="DIR",
                        help="folder for the PNGs (default: observe-<trace name>/)")  # fmt: skip
    parser.add_argument("--no-plots", action="store_true", help="print the table only")
    parser.add_argument(
        "--json", metavar="PATH", help="also write the numbers as JSON ('-' = stdout)"
    )
    parser.add_argument("--no-progress", action="store_true", help="hide the progress bar")
    return parser


def run(args: argparse.Namespace) -> int:
    check_outputs({"--json": args.json}, inputs=[args.trace], stdout_ok={"--json"})
    folder = Path(args.out_dir or f"observe-{Path(args.trace).stem}")
    if not args.no_plots:
        check_output_folder("--out-dir", str(folder))
    trace = Trace.load(args.trace)
    layers = parse_layers(args.layers, stored=trace.layers)
    observations = observe(trace, layers, progress=not args.no_progress)
    print(trace.describe())
    print(format_table(observations))
    print(legend(observations))
    if args.json:
        write_json(args.json, observations.record())
    if not args.no_plots:
        written = save_figures(observations, folder, title=Path(args.trace).stem)
        print(f"wrote {len(written)} PNGs to {folder}/: " + ", ".join(p.name for p in written))
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    return run_cli(build_parser, run, argv)


if __name__ == "__main__":
    sys.exit(main())
