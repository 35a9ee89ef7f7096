"""``python -m h2osim.replay``: replay a trace through policies and print how they compare.

The command line over the engine (:mod:`h2osim.engine`): it parses the options, runs
:func:`~h2osim.engine.replay` (or :func:`~h2osim.engine.sweep` with ``--sweep``), adds the
``topk`` bound and each policy's gap to ``opt`` when ``opt`` is replayed, and prints a
table (optionally JSON, CSV and a plot). Example:

    python -m h2osim.replay traces/smollm2-pydoc.npz --policy all --budget 0.2
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from h2osim.cli import (
    add_policy_arguments,
    add_replay_arguments,
    check_counts,
    check_outputs,
    format_table,
    policy_parameters,
    replay_config_from_args,
    requested_policies,
    run_cli,
)
from h2osim.engine import add_gap_to_opt, replay
from h2osim.files import write_json, write_output
from h2osim.policies import make_policy, policy_class, policy_names
from h2osim.trace import Trace


def parse_sweep(text: str) -> list[float]:
    """``"start:stop:step"`` (inclusive) or a comma list. Example: "0.1:0.3:0.1" -> [0.1, 0.2, 0.3].

    Every budget is checked like ``--budget`` and at most :data:`h2osim.grid.MAX_BUDGETS` are
    allowed (see :func:`h2osim.grid.parse_budgets`, which ``python -m h2osim.sweep`` shares).
    """
    from h2osim.grid import parse_budgets

    return parse_budgets(text, "--sweep")


# --------------------------------------------------------------------------- CLI
def _label(name: str) -> str:
    """``name [offline] [mask]`` for the help text."""
    policy = make_policy(name)
    tags = ([] if policy.online else ["offline"]) + (["mask"] if policy.kind == "mask" else [])
    return name + "".join(f" [{tag}]" for tag in tags)


def build_parser() -> argparse.ArgumentParser:
    names = policy_names()
    parser = argparse.ArgumentParser(
        prog="python -m h2osim.replay",
        description="Replay an attention trace through KV-cache eviction policies and compare them.",
        epilog="policies: " + "; ".join(_label(name) for name in names)
        + ".  Example: python -m h2osim.replay traces/synthetic-demo.npz --policy all --budget 0.2",
    )  # fmt: skip
    parser.add_argument("trace", help="trace file (.npz, format v1; see docs/trace-format.md)")
    parser.add_argument("--policy", action="append", metavar="NAME",
                        help=f"policy to replay, repeatable, or 'all' (default: h2o). One of: {', '.join(names)}. "
                        "With opt, the table adds the topk bound and each policy's gap to opt")  # fmt: skip
    add_replay_arguments(parser)
    parser.add_argument("--sweep", metavar="A:B:STEP",
                        help="replay each policy at budgets A..B (inclusive) instead of --budget, e.g. 0.05:0.5:0.05")  # fmt: skip
    parser.add_argument(
        "--no-output-error",
        action="store_true",
        help="skip the attention-output error (faster; it needs stored values anyway)",
    )
    parser.add_argument(
        "--json", metavar="PATH", help="write results as JSON to PATH ('-' for stdout)"
    )
    parser.add_argument(
        "--csv", metavar="PATH", help="write results as CSV to PATH ('-' for stdout)"
    )
    parser.add_argument(
        "--plot",
        metavar="PNG",
        help="plot retained mass over steps (or budget curves with --sweep); with opt, the gap to opt is shaded",
    )
    parser.add_argument("--no-progress", action="store_true", help="hide progress bars")
    add_policy_arguments(parser)
    return parser


RESULT_COLUMNS = (
    ("rank", "#", "d"), ("policy", "policy", "s"), ("budget", "k", "d"),
    ("retained_mass", "mass", ".4f"), ("retained_mass_decode", "mass(decode)", ".4f"),
    ("worst_unit_mass", "worst unit", ".4f"), ("hit_rate", "hit rate", ".4f"),
    ("output_error", "out err", ".4f"), ("seconds", "sec", ".2f"),
)  # fmt: skip


def _csv_text(records: list[dict[str, Any]]) -> str:
    from h2osim.sweep import csv_text

    return csv_text(records)


def run(args: argparse.Namespace) -> int:
    check_outputs({"--json": args.json, "--csv": args.csv, "--plot": args.plot},
                  inputs=[args.trace], stdout_ok={"--json", "--csv"})  # fmt: skip
    budgets = parse_sweep(args.sweep) if args.sweep is not None else None
    names = requested_policies(args.policy, policy_names())
    trace = Trace.load(args.trace)
    check_counts(policy_parameters(args), trace.n)
    config = replay_config_from_args(args, trace, output_error=not args.no_output_error)
    if not trace.has_key_norms and "all" in ",".join(args.policy or []).split(","):
        skipped = [name for name in names if policy_class(name).needs_key_norms]
        names = [name for name in names if name not in skipped]
        if skipped:
            print(f"note: {', '.join(skipped)} skipped: this trace stores no key norms",
                  file=sys.stderr)  # fmt: skip
    policies = [make_policy(name, **policy_parameters(args)) for name in names]
    progress = not args.no_progress
    print(f"trace {args.trace}: {trace.describe()}")
    bound_records: list[dict[str, Any]] = []  # the topk bound (with opt): not a policy
    if budgets is not None:  # a one-trace, one-config grid of h2osim.sweep, run in this process
        from h2osim.grid import Grid, PolicySpec, RunConfig, check_budgets, trace_ref
        from h2osim.sweep import group_records, print_sweep, run_grid

        if config.compression_ratio is not None:
            raise ValueError("--sweep varies the budget and --compression-ratio fixes it; give one")
        fields = {key: value for key, value in vars(config).items() if key != "compression_ratio"}
        run_config = RunConfig(**fields, budget_of=args.budget_of)
        grid = Grid([trace_ref(args.trace, trace)], [PolicySpec.of(policy) for policy in policies],
                    budgets, [run_config])  # fmt: skip
        check_budgets(grid)
        swept = run_grid(grid, progress=progress)
        records, bound_records = group_records(swept, grid, grid.traces[0], run_config)
        print_sweep(records + bound_records, budgets)
        if args.plot:
            from h2osim.plots import plot_budget_curves

            plot_budget_curves(records + bound_records, args.plot, title=Path(args.trace).name)
    else:
        results = []
        for policy in policies:
            results.append(replay(trace, policy, args.budget, budget_of=args.budget_of,
                                  config=config, progress=progress))  # fmt: skip
        bound = None  # with opt: the topk bound, shown unranked (it is not a policy)
        if any(result.policy == "opt" for result in results):
            from h2osim.oracles import topk_bound

            bound = topk_bound(trace, args.budget, budget_of=args.budget_of, config=config)
        # Policies that attend the prompt in full score 1 on every prompt row; when modes
        # differ, only the decode rows compare like with like.
        mixed_modes = len({result.config.prompt_mode for result in results}) > 1
        masks = any(result.kind == "mask" for result in results)
        rank_by = "retained_mass_decode" if mixed_modes else "retained_mass"
        results.sort(key=lambda result: -result.summary[rank_by])
        records = [{"rank": i + 1, **result.record()} for i, result in enumerate(results)]
        if masks:  # the oracle hierarchy: which bound holds for which row
            from h2osim.oracles import topk_at_sizes

            for record, result in zip(records, results, strict=True):
                own = topk_at_sizes(trace, result).mean()
                record["kind"] = result.kind
                record["bounded_by"] = "topk" if result.kind == "mask" else "opt, topk"
                record["topk_gap"] = float(own - result.summary["retained_mass"])
        has_error = records[0]["output_error"] is not None
        columns = [c for c in RESULT_COLUMNS if c[0] != "output_error" or has_error]
        bound_records = [] if bound is None else [{"rank": None, **bound.record()}]
        if add_gap_to_opt(records + bound_records):
            columns.insert(columns.index(("worst_unit_mass", "worst unit", ".4f")),
                           ("gap_to_opt", "gap to opt", ".4f"))  # fmt: skip
        if mixed_modes:
            columns.insert(3, ("prompt_mode", "prompt", "s"))
        if masks:
            columns.insert(3, ("kind", "kind", "s"))
            columns.insert(
                columns.index(("hit_rate", "hit rate", ".4f")), ("bounded_by", "bounded by", "s")
            )
            columns.insert(
                columns.index(("hit_rate", "hit rate", ".4f")), ("topk_gap", "topk gap", ".4f")
            )
        print(format_table(bound_records + records, columns))
        if mixed_modes:
            print("ranked by mass(decode): some policies attend the prompt in full (prompt = full)")
        if masks:
            print("kind mask: the row's attended set is chosen anew each row (re-admission), as the "
                  "official H2O masking code does; opt (permanent eviction) does not bound it, topk "
                  "at the policy's own row sizes does (topk gap >= 0 for every row)")  # fmt: skip
        if bound is not None:
            print("topk: per-step upper bound (best tokens of each row, re-admission allowed), "
                  "not a policy; gap to opt = opt's retained mass minus the row's")  # fmt: skip
        if args.plot:
            from h2osim.plots import plot_retained_mass

            shown = results if bound is None else [bound, *results]
            plot_retained_mass(shown, args.plot, title=Path(args.trace).name)
    if args.json:
        payload = {"trace": str(args.trace), "config": vars(config), "results": records}
        if bound_records:
            payload["bound"] = bound_records
        write_json(args.json, payload)
    if args.csv:
        write_output(args.csv, _csv_text(records))
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point; user errors print one line to stderr and exit 2."""
    return run_cli(build_parser, run, argv)


if __name__ == "__main__":
    sys.exit(main())
