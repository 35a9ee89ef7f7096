"""``python -m theory.check TRACE``: the paper's Appendix D chain and our certificate, on a trace.

Replays an online policy (default ``heavy``: H2O's greedy eviction by accumulated attention),
runs it live in SmolLM2 on the trace's tokens (``--live``: the caches the model really had),
or runs the paper's own Algorithm 2 (``--trajectory algorithm2``: exact scores, newest
token evictable, as Def. D.12 allows), then reports two different things:

- ``paper`` (:mod:`theory.paper`): the H2O paper's chain literally - theta_i (Def. D.25 /
  D.26), gamma_i in both directions (Def. D.28 as stated, and as Lemmas D.29 / D.30 use it),
  the one-sided score error eps0_i, Lemma D.30's bound, and whether Thm D.32's hypotheses
  (theta, gamma <= alpha / (10 n), eps0 <= beta / (10 n)) hold for some alpha in (0, 1);
- ``certificate`` (:mod:`theory.report`): OUR a-posteriori certificate f(S_i) >= (1 - 1/e)
  (1 - alpha_i) opt_i - beta_i (and the tighter 1 - e^-(1 - alpha_i) form), alpha_i measured
  on the held set. It holds for any set, so it cannot fail for a correct implementation.

Exit 0 when computed; 1 only when an inequality that is proved under hypotheses that hold
fails: the certificate anywhere (it needs none beyond monotone submodular f), or Thm D.32
where its hypotheses hold with D.28 read as the proof uses it. 2 on bad input (one line).
The figure is written only with ``--plot PATH``.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from h2osim.cli import add_replay_arguments, check_outputs, number, replay_config_from_args
from h2osim.files import write_json
from h2osim.policies import policy_names
from h2osim.trace import Trace
from theory.functions import CONCAVE
from theory.paper import PaperChain, algorithm2_chain, algorithm2_trajectory, paper_chain
from theory.report import TraceBoundReport, trace_bound_report

MAX_ROWS = 10_000  # steps the per-step table may show (it also never shows more than n)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m theory.check",
        description="The H2O paper's Appendix D chain (theta, gamma, eps0, Lemma D.30, Thm D.32's "
        "hypotheses) and our a-posteriori certificate f(S_i) >= (1-1/e)(1-alpha_i) opt_i - beta_i, "
        "step by step on an attention trace.",
        epilog="Example: python -m theory.check traces/smollm2-chat.npz --policy h2o --budget 0.2",
    )
    parser.add_argument("trace", help="trace file (.npz, format v1)")
    parser.add_argument("--policy", default="heavy", choices=policy_names(online=True), metavar="NAME",
                        help="online policy whose trajectory is checked (default heavy: greedy by "
                        "accumulated attention, Algorithm 2 with the newest token protected)")  # fmt: skip
    parser.add_argument("--trajectory", choices=("engine", "algorithm2"), default="engine",
                        help="engine: replay --policy (the newest token is never evicted); algorithm2: "
                        "the paper's Algorithm 2 on exact scores, newest token evictable (Def. D.12)")  # fmt: skip
    add_replay_arguments(parser, observe_default="full",
                         observe_help="what the policy sees: the full row (default; scores exact, "
                         "eps0 = 0) or the row renormalised over the cache (approximate scores, eps0 > 0)")  # fmt: skip
    parser.add_argument("--concave", choices=CONCAVE, default="identity",
                        help="h in f(S) = h(sum of accumulated scores): identity, sqrt(z+1), log(z+1)")  # fmt: skip
    parser.add_argument("--charge-eps0", action="store_true",
                        help="our certificate: charge 2*eps0 of every gain to beta instead of alpha (as the paper splits drift and score error)")  # fmt: skip
    parser.add_argument("--rows", type=number(int, 1, MAX_ROWS), default=16,
                        help="how many steps the per-step table shows (default 16, evenly spaced)")  # fmt: skip
    parser.add_argument("--plot", metavar="PNG", help="write the figure there (default: no figure)")
    parser.add_argument(
        "--no-plot", action="store_true", help="no figure (the default; kept for old scripts)"
    )
    parser.add_argument("--json", metavar="PATH", help="write the 'paper' and 'certificate' sections, per "
                        "layer and per step, as JSON ('-': stdout)")  # fmt: skip
    parser.add_argument("--live", action="store_true",
                        help="run --policy live in the bundled SmolLM2 on the trace's own tokens and use the "
                        "caches the model really had (needs the model stack; minutes on a CPU)")  # fmt: skip
    parser.add_argument("--d4", type=int, metavar="M", default=0,
                        help="also check Def. D.4 (submodularity w.r.t. the cache Z) exhaustively on "
                        "the M most attended tokens of every 16th row of every unit (M <= 14; 0: off)")  # fmt: skip
    parser.add_argument("--no-progress", action="store_true", help="hide progress bars")
    return parser


def _format(value: float) -> str:
    return "-" if not np.isfinite(value) else f"{value:.3f}"


def _mean(values: np.ndarray) -> float:
    return float(np.nanmean(values)) if np.isfinite(values).any() else np.nan


def report_lines(report: TraceBoundReport, rows: int, chain: PaperChain | None = None) -> list[str]:
    """The per-step table (means over units unless the header says min/max) and summary;
    with ``chain``, the last columns are the paper's theta_i (D.26) and gamma_i (D.28 as
    Lemma D.30 uses it), else the report's own drift diagnostics."""
    n = len(report.ratio)
    if chain is not None and chain.theta.shape != report.ratio.shape:
        chain = None  # not the same trajectory: show the report's own diagnostics
    evicting = np.flatnonzero((report.sizes < np.arange(1, n + 1)[:, None]).any(axis=1))
    first = int(evicting[0]) if evicting.size else 0
    chosen = sorted({first, n - 1, *np.linspace(first, n - 1, max(rows, 2)).round().astype(int)})
    beta_ratio = np.divide(report.beta, report.opt, out=np.zeros_like(report.beta),
                           where=report.opt > 0)  # fmt: skip
    header = ["step", "|S|", "f/opt", "f/opt min", "cert/opt", "exp form", "slack min", "alpha",
              "beta/opt", "eps0 max"] + (["theta D.26", "gamma D.30"] if chain is not None
                                         else ["theta", "gamma"])  # fmt: skip
    theta = chain.theta if chain is not None else report.theta
    gamma = chain.gamma_lemma if chain is not None else report.gamma
    table = [header]
    for i in chosen:
        slack = report.ratio[i] - report.bound_ratio[i]
        table.append([str(i), str(int(report.sizes[i].max())), _format(report.ratio[i].mean()),
                      _format(report.ratio[i].min()), _format(report.bound_ratio[i].mean()),
                      _format(report.bound_exp_ratio[i].mean()),
                      _format(slack.min()), _format(report.alpha[i].mean()),
                      _format(beta_ratio[i].mean()), _format(report.eps0[i].max()),
                      f"{_mean(theta[i]):.2g}", f"{_mean(gamma[i]):.2g}"])  # fmt: skip
    widths = [max(len(row[c]) for row in table) for c in range(len(header))]
    lines = ["  ".join(cell.rjust(width) for cell, width in zip(row, widths, strict=True))
             for row in table]  # fmt: skip
    lines.insert(1, "  ".join("-" * width for width in widths))
    summary = report.summary()
    violations = report.violations()
    verdict = (f"certificate holds at all {summary['steps_checked']} (step, unit) pairs (as it must "
               "for any set)" if not len(violations) else
               f"CERTIFICATE FAILS at {len(violations)} (step, unit) pairs (a bug), first at step "
               f"{violations[0][0]} unit {report.unit_labels[violations[0][1]]}")  # fmt: skip
    lines += [
        "",
        verdict,
        f"after the first eviction: mean f/opt {summary['mean_ratio']:.3f}, mean certificate/opt "
        f"{summary['mean_bound_ratio']:.3f} (1 - e^-(1 - alpha) form: {summary['mean_bound_exp_ratio']:.3f}), mean alpha {summary['mean_alpha']:.3f} "
        f"(max {summary['max_alpha']:.3f}), max eps0 {summary['max_eps0']:.3g}, "
        f"max beta/opt {summary['max_beta_ratio']:.3g}",
        f"worst f/opt {summary['min_ratio']:.3f}; smallest slack/opt {summary['min_slack_ratio']:.3f}; "
        f"Nemhauser's static ratio 1 - 1/e = {summary['nemhauser_ratio']:.3f}; without drift "
        f"(alpha = beta = 0) the certificate would fail at {summary['undrifted_violations']} pairs",
    ]  # fmt: skip
    return lines


def _g(value) -> str:
    return "null" if value is None else f"{value:.3g}"


def paper_lines(chain: PaperChain) -> list[str]:
    """What the paper's chain says on this trajectory (see :mod:`theory.paper`)."""
    s = chain.summary()
    lines = [
        "",
        f"the paper's chain (App. D), n = {s['n']}, alpha/(10 n) < {s['alpha_over_10n_limit']:.3g} "
        "for any alpha < 1:",
        f"  theta_max (D.26, on what the policy sees) {s['theta_max']:.3g}, on the true f (D.25) "
        f"{s['theta_exact_max']:.3g}",
        f"  gamma_max (D.28 as stated) {s['gamma_max']:.3g}; as D.29/D.30 use it {s['gamma_lemma_max']:.3g} "
        f"(above the limit at {s['gamma_lemma_steps_over_limit']} of {s['steps']} step-units; max "
        f"{s['gamma_lemma_max_after_first_eviction']:.3g} after the first eviction, "
        f"{_g(s['gamma_lemma_last'])} at the last step)",
        f"  eps0_max (one-sided score error) {s['eps0_max']:.3g}",
    ]
    if s["hypotheses_hold"]:
        lines.append(f"  Thm D.32's hypotheses HOLD: alpha_min {s['alpha_min']:.3g}, beta_min "
                     f"{s['beta_min']:.3g}; guarantee/opt {s['theorem_guarantee_over_opt']:.3f} vs held "
                     f"{s['held_over_opt']:.3f}; violations {s['theorem_violations']}")  # fmt: skip
    else:
        lines.append(f"  Thm D.32's hypotheses FAIL: they need alpha > {s['alpha_needed']:.3g} (alpha must "
                     "be < 1): the theorem guarantees nothing here")  # fmt: skip
    lines.append(
        f"  Lemma D.30's bound / opt_(i+1): mean {s['lemma_d30_bound_over_opt']:.3g}, last "
        f"{s['lemma_d30_bound_over_opt_last']:.3g}"
        + (" (VACUOUS: <= 0 at every step)" if s["lemma_d30_vacuous_share"] == 1.0 else
           f" ({s['lemma_d30_below_1pct_share']:.0%} of steps below 1% of opt: vacuous)")
        + f"; held / opt_(i+1) {s['held_over_next_opt']:.3f}")  # fmt: skip
    lines.append(
        f"  chain with gamma per step collapses to (1-1/e) opt_0: mean "
        f"{s['per_step_chain_over_opt']:.3g} of opt, last {s['per_step_chain_over_opt_last']:.3g}"
    )
    if s["hypotheses_hold_as_stated"]:
        lines.append(f"  with D.28 read as stated the hypotheses hold (alpha > {s['alpha_min_as_stated']:.3g} "
                     f"suffices) and the conclusion fails at {s['theorem_as_stated_violations']} step-units"
                     + (f", e.g. {s['theorem_as_stated_witness']}" if s["theorem_as_stated_witness"] else ""))  # fmt: skip
    return lines


def _finite(value):
    """nan / inf -> None, recursively, so the JSON is standard."""
    if isinstance(value, dict):
        return {key: _finite(item) for key, item in value.items()}
    if isinstance(value, list | tuple):
        return [_finite(item) for item in value]
    if isinstance(value, float | np.floating) and not np.isfinite(value):
        return None
    return value


def run(args: argparse.Namespace) -> int:
    check_outputs(
        {"--plot": args.plot, "--json": args.json}, inputs=[args.trace], stdout_ok={"--json"}
    )
    if args.live and args.trajectory != "engine":
        raise ValueError("--live replaces the replayed trajectory; drop --trajectory algorithm2")
    if args.d4 and not 2 <= args.d4 <= 14:
        raise ValueError(f"--d4: ground must be in 2..14 (exhaustive over 2^M sets), got {args.d4}")
    trace = Trace.load(args.trace)
    config = replay_config_from_args(args, trace)
    print(f"trace {args.trace}: {trace.describe()}", flush=True)
    if args.trajectory == "algorithm2":
        from h2osim.engine import ReplayConfig

        config = ReplayConfig(
            aggregation=config.aggregation, layers=config.layers, observation="full"
        )
        chain = algorithm2_chain(trace, args.budget, config=config, concave_name=args.concave,
                                 budget_of=args.budget_of)  # fmt: skip
        layout = config.layout(trace)
        weights = np.stack([layout.weights(u) for u in range(layout.units)])
        held = algorithm2_trajectory(weights, chain.budget)
        report = trace_bound_report(trace, "algorithm2", args.budget, config=config,
                                    concave_name=args.concave, charge_eps0=args.charge_eps0,
                                    held=held)  # fmt: skip
    elif args.live:
        from theory.paper import live_trajectory

        kept_at, labels, _ = live_trajectory(trace, args.policy, args.budget,
                                             budget_of=args.budget_of, config=config)  # fmt: skip
        layout = config.layout(trace)
        pick = [labels.index(label) for label in layout.labels]
        held = np.zeros((trace.n, layout.units, trace.n), dtype=bool)
        for t in range(trace.n):
            held[t, :, : t + 1] = kept_at(t)[pick]
        report = trace_bound_report(trace, f"{args.policy} (live)", args.budget, config=config,
                                    concave_name=args.concave, charge_eps0=args.charge_eps0,
                                    held=held)  # fmt: skip
        chain = paper_chain(trace, f"{args.policy} (live)", config=config, concave_name=args.concave,
                            kept_at=kept_at, kept_labels=labels)  # fmt: skip
    else:
        report = trace_bound_report(trace, args.policy, args.budget, budget_of=args.budget_of,
                                    config=config, concave_name=args.concave,
                                    charge_eps0=args.charge_eps0, progress=not args.no_progress)  # fmt: skip
        chain = paper_chain(trace, args.policy, args.budget, budget_of=args.budget_of,
                            config=config, concave_name=args.concave)  # fmt: skip
    print(f"our a-posteriori certificate f(S_i) >= (1-1/e)(1-alpha_i) opt_i - beta_i (valid for any "
          f"set; not the paper's theorem) with f(S) = h(sum of accumulated attention over S), "
          f"h = {args.concave}")  # fmt: skip
    print(f"trajectory {report.policy}, k={report.budget}, {len(report.unit_labels)} units, "
          f"observation {report.config.observation}, beta "
          f"{'charged 2*eps0 per gain' if args.charge_eps0 else 'not charged (delta = 0)'}")  # fmt: skip
    print("\n".join(report_lines(report, min(args.rows, trace.n), chain) + paper_lines(chain)))
    if args.plot:
        from theory.figures import save_bound_report_figure

        save_bound_report_figure(report, args.plot, title=f"{Path(args.trace).name}: {report.policy}, "
                                 f"k={report.budget}, h={args.concave}", chain=chain)  # fmt: skip
        print(f"wrote {args.plot}")
    paper = chain.summary()
    d4 = None
    if args.d4:
        from theory.d4 import d4_on_trace

        if args.trajectory != "engine":
            raise ValueError("--d4 checks the engine's trajectory; drop --trajectory algorithm2")
        d4 = d4_on_trace(trace, args.policy, args.budget, config=config, ground=args.d4).summary()
        for name in d4["checked"]:
            print(f"Def. D.4 ({name} objective, Z = the cache entering the step, {args.d4} tokens): "
                  f"fails at {d4['failed'][name]} of {d4['checked'][name]} instances "
                  f"({d4['failure_rate'][name]:.0%})")  # fmt: skip
        if d4["witnesses"]:
            print(f"  first witness: {d4['witnesses'][0]}")
    if args.json:
        certificate = dict(report.summary(), kind="a-posteriori certificate (ours, valid for any set; "
                           "not the paper's Thm D.32)")  # fmt: skip
        certificate["per_step_mean"] = {
            name: np.nanmean(getattr(report, name), axis=1).tolist()
            for name in ("ratio", "bound_ratio", "bound_exp_ratio", "alpha", "eps0")}  # fmt: skip
        payload = {"trace": str(args.trace), "trajectory": report.policy, "budget": report.budget,
                   "config": vars(report.config),
                   "paper": dict(paper, per_layer=chain.per_layer(), per_step_mean=chain.per_step_mean()),
                   "certificate": certificate, "d4": d4}  # fmt: skip
        write_json(args.json, _finite(payload))
    proved_fails = len(report.violations()) or paper["theorem_violations"]
    return 1 if proved_fails else 0


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point; user errors print one line to stderr and exit 2."""
    from h2osim.cli import run_cli

    return run_cli(build_parser, run, argv)


if __name__ == "__main__":
    sys.exit(main())
