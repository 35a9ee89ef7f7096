"""Figures for theory.check (matplotlib, headless via h2osim.plots' Agg backend): our
certificate (top two panels) and, with a chain, the paper's App. D quantities (bottom)."""

from __future__ import annotations

import os

import numpy as np

from h2osim.plots import plt  # Agg backend already selected there
from theory.bounds import ONE_MINUS_INV_E
from theory.report import TraceBoundReport


def bound_report_figure(report: TraceBoundReport, title: str = "", chain=None):
    """Top: f(S_i)/opt_i (mean over units, min-max band) against our certificate/opt_i, slack
    shaded. Middle: the measured alpha and beta/opt. Bottom (with ``chain``, a
    :class:`theory.paper.PaperChain`): the paper's gamma (as D.30 uses it), theta and eps0/opt
    against the alpha/(10 n) line, log scale, and Lemma D.30's bound/opt."""
    rows = 3 if chain is not None else 2
    figure, axes = plt.subplots(rows, 1, figsize=(8, 6 + 2.5 * (rows - 2)), sharex=True,
                                height_ratios=[2, 1, 1.4][:rows], layout="constrained")  # fmt: skip
    top, bottom = axes[0], axes[1]
    steps = np.arange(len(report.ratio))
    ratio, bound = report.ratio, report.bound_ratio
    top.fill_between(steps, ratio.min(axis=1), ratio.max(axis=1), color="C0", alpha=0.2,
                     lw=0, label="f/opt, range over units")  # fmt: skip
    top.plot(steps, ratio.mean(axis=1), color="C0", lw=1.4, label=f"f(S_i)/opt_i ({report.policy})")
    top.plot(steps, bound.mean(axis=1), color="C3", lw=1.4, label="our certificate/opt_i (mean)")
    top.fill_between(steps, bound.mean(axis=1), ratio.mean(axis=1), color="C2", alpha=0.15,
                     lw=0, label="slack")  # fmt: skip
    top.axhline(ONE_MINUS_INV_E, color="grey", ls="--", lw=1, label="1 - 1/e")
    top.axvline(report.prompt_length - 0.5, color="grey", ls=":", lw=1, label="end of prompt")
    top.set_ylabel("share of opt_i")
    top.set_ylim(min(0.0, float(np.nanmin(bound))) if np.isfinite(bound).all() else 0.0, 1.05)
    top.set_title(title or f"a-posteriori certificate, k={report.budget}, h={report.concave_name}")
    top.grid(alpha=0.3)
    top.legend(fontsize=8, ncol=2, loc="lower left")
    beta_ratio = np.divide(report.beta, report.opt, out=np.zeros_like(report.beta),
                           where=report.opt > 0)  # fmt: skip
    bottom.plot(steps, report.alpha.mean(axis=1), color="C1", lw=1.2, label="alpha (mean)")
    bottom.plot(steps, beta_ratio.mean(axis=1), color="C4", lw=1.2, label="beta/opt (mean)")
    bottom.set_ylabel("measured")
    bottom.grid(alpha=0.3)
    bottom.legend(fontsize=8)
    if chain is not None:
        paper = axes[2]
        means = chain.per_step_mean()
        for name, colour, label in (("gamma_lemma", "C3", "gamma_i (as D.30 uses D.28)"),
                                    ("eps0_over_opt", "C4", "eps0_i / opt_i"),
                                    ("lemma_d30_bound_over_opt", "C0", "Lemma D.30 bound / opt_(i+1) (off the axis: < 1e-7)")):  # fmt: skip
            values = np.array([np.nan if v is None else v for v in means[name]])
            paper.plot(
                steps, np.where(values > 0, values, np.nan), color=colour, lw=1.1, label=label
            )
        paper.axhline(
            1.0 / (10 * chain.n), color="k", ls="--", lw=1, label="alpha/(10 n), alpha -> 1"
        )
        paper.set_yscale("log")
        paper.set_ylim(
            1e-7, 2.0
        )  # D.30's bound falls off the bottom: below 1e-7 of opt it says nothing
        paper.set_ylabel("paper's App. D")
        paper.grid(alpha=0.3)
        paper.legend(fontsize=7, ncol=2)
    axes[-1].set_xlabel("step i (query row)")
    return figure


def save_bound_report_figure(report: TraceBoundReport, path: str | os.PathLike[str],
                             title: str = "", chain=None) -> None:  # fmt: skip
    from h2osim.files import save_figure

    figure = bound_report_figure(report, title, chain)
    save_figure(figure, path, dpi=120)
    plt.close(figure)
