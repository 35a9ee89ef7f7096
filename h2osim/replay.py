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

import numpy as np

from h2osim.cli import (
    ArgumentValueError,
    add_policy_arguments,
    add_replay_arguments,
    budget_value,
    check_counts,
    check_outputs,
    format_table,
    policy_parameters,
    replay_config_from_args,
    requested_policies,
    run_cli,
)
from h2osim.engine import add_gap_to_opt, replay, resolve_budget, sweep
from h2osim.files import printable, write_json, write_output
from h2osim.policies import make_policy, policy_names
from h2osim.trace import Trace

MAX_SWEEP_BUDGETS = 200  # budgets one --sweep may ask for (each is a replay of every policy)


def parse_sweep(text: str) -> list[float]:
    """``"start:stop:step"`` (inclusive) or a comma list. Example: "0.1:0.3:0.1" -> [0.1, 0.2, 0.3].

    Every budget is checked like ``--budget`` (finite, a fraction in (0, 1] or a whole
    count) and at most :data:`MAX_SWEEP_BUDGETS` are allowed, counted before any list is
    built: "0.1:0.5:1e-12" and "0:inf:0.1" are refused, not expanded.
    """
    if len(text) > 10_000:
        raise ValueError(
            f"--sweep is {len(text)} characters long; give at most {MAX_SWEEP_BUDGETS} budgets"
        )
    if ":" in text:
        parts = text.split(":")
        if len(parts) != 3:
            raise ValueError(f"--sweep takes start:stop:step, got {printable(text[:80])!r}")
        try:
            start, stop, step = (float(part) for part in parts)
        except ValueError:
            raise ValueError(
                f"--sweep takes numbers start:stop:step, got {printable(text[:80])!r}"
            ) from None
        if not all(np.isfinite([start, stop, step])) or step <= 0 or stop < start:
            raise ValueError(
                f"--sweep needs finite numbers, step > 0 and stop >= start, got {printable(text[:80])!r}"
            )
        points = (stop - start) / step + 1e-9
        if not points < MAX_SWEEP_BUDGETS:
            raise ValueError(f"--sweep {printable(text[:80])} asks for {points + 1:.3g} budgets; "
                             f"at most {MAX_SWEEP_BUDGETS} (use a larger step)")  # fmt: skip
        budgets = [round(start + i * step, 10) for i in range(int(np.floor(points)) + 1)]
    else:
        parts = [part.strip() for part in text.split(",") if part.strip()]
        if not parts:
            raise ValueError(f"--sweep needs at least one budget, got {printable(text[:80])!r}")
        if len(parts) > MAX_SWEEP_BUDGETS:
            raise ValueError(f"--sweep lists {len(parts)} budgets; at most {MAX_SWEEP_BUDGETS}")
        budgets = []
        for part in parts:
            try:
                budgets.append(float(part))
            except ValueError:
                raise ValueError(f"--sweep: {printable(part[:40])!r} is not a number") from None
    for budget in budgets:
        try:
            budget_value(str(budget))
        except ArgumentValueError as exc:
            raise ValueError(f"--sweep: {exc}") from None
    return budgets


# --------------------------------------------------------------------------- CLI
def build_parser() -> argparse.ArgumentParser:
    names = policy_names()
    parser = argparse.ArgumentParser(
        prog="python -m h2osim.replay",
        description="Replay an attention trace through KV-cache eviction policies and compare them.",
        epilog="policies: " + "; ".join(f"{name}{'' if make_policy(name).online else ' [offline]'}"
                                        for name in names)
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
    import csv
    import io

    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=list(records[0]))
    writer.writeheader()
    writer.writerows(records)
    return buffer.getvalue()


def run(args: argparse.Namespace) -> int:
    check_outputs({"--json": args.json, "--csv": args.csv, "--plot": args.plot},
                  inputs=[args.trace], stdout_ok={"--json", "--csv"})  # fmt: skip
    budgets = parse_sweep(args.sweep) if args.sweep is not None else None
    names = requested_policies(args.policy, policy_names())
    trace = Trace.load(args.trace)
    check_counts(policy_parameters(args), trace.n)
    config = replay_config_from_args(args, trace, output_error=not args.no_output_error)
    policies = [make_policy(name, **policy_parameters(args)) for name in names]
    progress = not args.no_progress
    print(f"trace {args.trace}: {trace.describe()}")
    bound_records: list[dict[str, Any]] = []  # the topk bound (with opt): not a policy
    if budgets is not None:
        for budget in budgets:
            resolve_budget(budget, trace.n, trace.prompt_length, args.budget_of)
        records = sweep(
            trace, policies, budgets, budget_of=args.budget_of, config=config, progress=progress
        )
        if any(record["policy"] == "opt" for record in records):
            from h2osim.oracles import topk_bound

            for budget in budgets:
                bound = topk_bound(trace, budget, budget_of=args.budget_of, config=config)
                bound_records.append({**bound.record(), "budget_requested": float(budget)})
        add_gap_to_opt(records + bound_records)
        _print_sweep(records + bound_records, budgets)
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
        rank_by = "retained_mass_decode" if mixed_modes else "retained_mass"
        results.sort(key=lambda result: -result.summary[rank_by])
        records = [{"rank": i + 1, **result.record()} for i, result in enumerate(results)]
        has_error = records[0]["output_error"] is not None
        columns = [c for c in RESULT_COLUMNS if c[0] != "output_error" or has_error]
        bound_records = [] if bound is None else [{"rank": None, **bound.record()}]
        if add_gap_to_opt(records + bound_records):
            columns.insert(columns.index(("worst_unit_mass", "worst unit", ".4f")),
                           ("gap_to_opt", "gap to opt", ".4f"))  # fmt: skip
        if mixed_modes:
            columns.insert(3, ("prompt_mode", "prompt", "s"))
        print(format_table(bound_records + records, columns))
        if mixed_modes:
            print("ranked by mass(decode): some policies attend the prompt in full (prompt = full)")
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


def _print_sweep(records: list[dict[str, Any]], budgets: Sequence[float]) -> None:
    """Policies x budgets matrix of mean retained mass."""
    by_policy: dict[str, dict[float, float]] = {}
    for record in records:
        by_policy.setdefault(record["policy"], {})[record["budget_requested"]] = record[
            "retained_mass"
        ]
    rows = []
    for policy, masses in by_policy.items():
        row: dict[str, Any] = {"policy": policy}
        for budget in budgets:
            row[str(budget)] = masses.get(budget, masses.get(budgets[0]))
        rows.append(row)
    rows.sort(key=lambda row: -float(np.mean([row[str(b)] for b in budgets])))
    print("mean retained attention mass by budget")
    print(
        format_table(
            rows, [("policy", "policy", "s")] + [(str(b), f"{b:g}", ".4f") for b in budgets]
        )
    )
    if any(record.get("gap_to_opt") is not None for record in records):
        gaps: dict[str, dict[float, Any]] = {}
        for record in records:
            gaps.setdefault(record["policy"], {})[record["budget_requested"]] = record["gap_to_opt"]
        print(
            "gap to opt (opt's retained mass minus the policy's; '-': other budget or prompt mode)"
        )
        print(format_table([{"policy": row["policy"], **{str(b): gaps[row["policy"]].get(b)
                                                          for b in budgets}} for row in rows],
                           [("policy", "policy", "s")] + [(str(b), f"{b:g}", ".4f") for b in budgets]))  # fmt: skip


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point; user errors print one line to stderr and exit 2."""
    return run_cli(build_parser, run, argv)


if __name__ == "__main__":
    sys.exit(main())
