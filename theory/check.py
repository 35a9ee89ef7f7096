"""``python -m theory.check TRACE``: the dynamic greedy bound, step by step, on a trace.

Replays an online policy (default ``heavy``: H2O's greedy eviction by accumulated
attention) and checks f(S_i) >= (1 - 1/e)(1 - alpha_i) opt_i - beta_i at every step and
cache unit (see :mod:`theory.report`), printing the ratio f/opt, the bound/opt, the slack,
the measured alpha and beta and the drift diagnostics, and plotting them to a PNG.
Exit status 1 if the bound fails anywhere (it should not: it is a theorem).
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from h2osim.cli import add_replay_arguments, replay_config_from_args
from h2osim.files import write_json
from h2osim.policies import policy_names
from h2osim.trace import Trace
from theory.functions import CONCAVE
from theory.report import TraceBoundReport, trace_bound_report


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m theory.check",
        description="Check H2O's dynamic greedy bound f(S_i) >= (1-1/e)(1-alpha_i) opt_i - beta_i "
        "step by step on an attention trace, with alpha and beta measured on the held sets.",
        epilog="Example: python -m theory.check traces/smollm2-chat.npz --policy h2o --budget 0.2",
    )
    parser.add_argument("trace", help="trace file (.npz, format v1)")
    parser.add_argument("--policy", default="heavy", choices=policy_names(online=True), metavar="NAME",
                        help="online policy whose trajectory is checked (default heavy: greedy by "
                        "accumulated attention, the paper's Algorithm 2)")  # fmt: skip
    add_replay_arguments(parser, observe_default="full",
                         observe_help="what the policy sees: the full row (default; scores exact, "
                         "eps0 = 0) or the row renormalised over the cache (approximate scores, eps0 > 0)")  # fmt: skip
    parser.add_argument("--concave", choices=CONCAVE, default="identity",
                        help="h in f(S) = h(sum of accumulated scores): identity, sqrt(z+1), log(z+1)")  # fmt: skip
    parser.add_argument("--charge-eps0", action="store_true",
                        help="charge 2*eps0 of every gain to beta (the paper's split) instead of alpha")  # fmt: skip
    parser.add_argument("--rows", type=int, default=16,
                        help="how many steps the per-step table shows (default 16, evenly spaced)")  # fmt: skip
    parser.add_argument("--plot", metavar="PNG",
                        help="figure path (default: <trace name>-bound.png in the current folder)")  # fmt: skip
    parser.add_argument("--no-plot", action="store_true", help="do not write the figure")
    parser.add_argument("--json", metavar="PATH", help="write the summary and per-step means as JSON ('-': stdout)")  # fmt: skip
    parser.add_argument("--no-progress", action="store_true", help="hide progress bars")
    return parser


def _format(value: float) -> str:
    return "-" if not np.isfinite(value) else f"{value:.3f}"


def report_lines(report: TraceBoundReport, rows: int) -> list[str]:
    """The per-step table (means over units unless the header says min/max) and summary."""
    n = len(report.ratio)
    evicting = np.flatnonzero((report.sizes < np.arange(1, n + 1)[:, None]).any(axis=1))
    first = int(evicting[0]) if evicting.size else 0
    chosen = sorted({first, n - 1, *np.linspace(first, n - 1, max(rows, 2)).round().astype(int)})
    beta_ratio = np.divide(report.beta, report.opt, out=np.zeros_like(report.beta),
                           where=report.opt > 0)  # fmt: skip
    header = ["step", "|S|", "f/opt", "f/opt min", "bound/opt", "slack min", "alpha", "beta/opt",
              "eps0 max", "theta", "gamma"]  # fmt: skip
    table = [header]
    for i in chosen:
        slack = report.ratio[i] - report.bound_ratio[i]
        table.append([str(i), str(int(report.sizes[i].max())), _format(report.ratio[i].mean()),
                      _format(report.ratio[i].min()), _format(report.bound_ratio[i].mean()),
                      _format(slack.min()), _format(report.alpha[i].mean()),
                      _format(beta_ratio[i].mean()), _format(report.eps0[i].max()),
                      _format(np.nanmean(report.theta[i]) if np.isfinite(report.theta[i]).any() else np.nan),
                      _format(np.nanmean(report.gamma[i]) if np.isfinite(report.gamma[i]).any() else np.nan)])  # fmt: skip
    widths = [max(len(row[c]) for row in table) for c in range(len(header))]
    lines = ["  ".join(cell.rjust(width) for cell, width in zip(row, widths, strict=True))
             for row in table]  # fmt: skip
    lines.insert(1, "  ".join("-" * width for width in widths))
    summary = report.summary()
    violations = report.violations()
    verdict = (f"bound holds at all {summary['steps_checked']} (step, unit) pairs"
               if not len(violations) else
               f"BOUND FAILS at {len(violations)} (step, unit) pairs, first at step "
               f"{violations[0][0]} unit {report.unit_labels[violations[0][1]]}")  # fmt: skip
    lines += [
        "",
        verdict,
        f"after the first eviction: mean f/opt {summary['mean_ratio']:.3f}, mean bound/opt "
        f"{summary['mean_bound_ratio']:.3f}, mean alpha {summary['mean_alpha']:.3f} "
        f"(max {summary['max_alpha']:.3f}), max eps0 {summary['max_eps0']:.3g}, "
        f"max beta/opt {summary['max_beta_ratio']:.3g}",
        f"worst f/opt {summary['min_ratio']:.3f}; smallest slack/opt {summary['min_slack_ratio']:.3f}; "
        f"Nemhauser's static ratio 1 - 1/e = {summary['nemhauser_ratio']:.3f}",
    ]  # fmt: skip
    return lines


def run(args: argparse.Namespace) -> int:
    trace = Trace.load(args.trace)
    if args.rows < 1:
        raise ValueError(f"--rows must be >= 1, got {args.rows}")
    config = replay_config_from_args(args)
    print(f"trace {args.trace}: {trace.describe()}", flush=True)
    report = trace_bound_report(trace, args.policy, args.budget, budget_of=args.budget_of,
                                config=config, concave_name=args.concave,
                                charge_eps0=args.charge_eps0, progress=not args.no_progress)  # fmt: skip
    print(f"dynamic bound f(S_i) >= (1-1/e)(1-alpha_i) opt_i - beta_i with f(S) = h(sum of "
          f"accumulated attention over S), h = {args.concave}")  # fmt: skip
    print(f"policy {report.policy}, k={report.budget}, {len(report.unit_labels)} units, "
          f"observation {config.observation}, prompt {config.prompt_mode}, beta "
          f"{'charged 2*eps0 per gain' if args.charge_eps0 else 'not charged (delta = 0)'}")  # fmt: skip
    lines = report_lines(report, args.rows)
    print("\n".join(lines))
    if not args.no_plot:
        from theory.figures import save_bound_report_figure

        path = args.plot or f"{Path(args.trace).stem}-bound.png"
        save_bound_report_figure(report, path, title=f"{Path(args.trace).name}: {report.policy}, "
                                 f"k={report.budget}, h={args.concave}")  # fmt: skip
        print(f"wrote {path}")
    if args.json:
        payload = {"trace": str(args.trace), "config": vars(config), "summary": report.summary(),
                   "per_step_mean": {name: np.nanmean(getattr(report, name), axis=1).tolist()
                                     for name in ("ratio", "bound_ratio", "alpha", "eps0")}}  # fmt: skip
        write_json(args.json, payload)
    return 1 if len(report.violations()) else 0


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point; user errors print one line to stderr and exit 2."""
    from h2osim.cli import run_cli

    return run_cli(build_parser, run, argv)


if __name__ == "__main__":
    sys.exit(main())
