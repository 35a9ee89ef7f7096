"""Figures for the bound report (matplotlib, headless via h2osim.plots' Agg backend)."""

from __future__ import annotations

import os

import numpy as np

from h2osim.plots import plt  # Agg backend already selected there
from theory.bounds import ONE_MINUS_INV_E
from theory.report import TraceBoundReport


def bound_report_figure(report: TraceBoundReport, title: str = ""):
    """Top: f(S_i)/opt_i (mean over units, min-max band) against the bound/opt_i, slack
    shaded. Bottom: the measured alpha and beta/opt."""
    figure, (top, bottom) = plt.subplots(2, 1, figsize=(8, 6), sharex=True,
                                         height_ratios=[2, 1], layout="constrained")  # fmt: skip
    steps = np.arange(len(report.ratio))
    ratio, bound = report.ratio, report.bound_ratio
    top.fill_between(steps, ratio.min(axis=1), ratio.max(axis=1), color="C0", alpha=0.2,
                     lw=0, label="f/opt, range over units")  # fmt: skip
    top.plot(steps, ratio.mean(axis=1), color="C0", lw=1.4, label=f"f(S_i)/opt_i ({report.policy})")
    top.plot(steps, bound.mean(axis=1), color="C3", lw=1.4, label="bound/opt_i (mean)")
    top.fill_between(steps, bound.mean(axis=1), ratio.mean(axis=1), color="C2", alpha=0.15,
                     lw=0, label="slack")  # fmt: skip
    top.axhline(ONE_MINUS_INV_E, color="grey", ls="--", lw=1, label="1 - 1/e")
    top.axvline(report.prompt_length - 0.5, color="grey", ls=":", lw=1, label="end of prompt")
    top.set_ylabel("share of opt_i")
    top.set_ylim(min(0.0, float(np.nanmin(bound))) if np.isfinite(bound).all() else 0.0, 1.05)
    top.set_title(title or f"dynamic bound, k={report.budget}, h={report.concave_name}")
    top.grid(alpha=0.3)
    top.legend(fontsize=8, ncol=2, loc="lower left")
    beta_ratio = np.divide(report.beta, report.opt, out=np.zeros_like(report.beta),
                           where=report.opt > 0)  # fmt: skip
    bottom.plot(steps, report.alpha.mean(axis=1), color="C1", lw=1.2, label="alpha (mean)")
    bottom.plot(steps, beta_ratio.mean(axis=1), color="C4", lw=1.2, label="beta/opt (mean)")
    bottom.set_xlabel("step i (query row)")
    bottom.set_ylabel("measured")
    bottom.grid(alpha=0.3)
    bottom.legend(fontsize=8)
    return figure


def save_bound_report_figure(report: TraceBoundReport, path: str | os.PathLike[str],
                             title: str = "") -> None:  # fmt: skip
    from h2osim.files import save_figure

    figure = bound_report_figure(report, title)
    save_figure(figure, path, dpi=120)
    plt.close(figure)
