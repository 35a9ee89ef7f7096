"""Matplotlib figures shared by the CLIs and the app (headless: the Agg backend)."""

from __future__ import annotations

import os
from collections.abc import Sequence
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
from matplotlib.figure import Figure  # noqa: E402

from h2osim.files import save_figure  # noqa: E402


def retained_mass_figure(results: Sequence[Any], title: str = "") -> Figure:
    """Mean retained attention mass per step (over units) for each replay result; with an
    ``opt`` result, each curve's gap to opt is shaded (the topk bound is dashed)."""
    figure, axis = plt.subplots(figsize=(8, 4.5), layout="constrained")
    optimum = next((r.retained_mass.mean(axis=1) for r in results if r.policy == "opt"), None)
    for result in results:
        curve = result.retained_mass.mean(axis=1)
        (line,) = axis.plot(curve, label=f"{result.policy} (k={result.budget})", lw=1.2,
                            ls="--" if result.policy == "topk" else "-")  # fmt: skip
        if optimum is not None and result.policy != "opt" and len(curve) == len(optimum):
            # Shade the gap to opt (above opt for the topk bound: unreachable headroom).
            axis.fill_between(np.arange(len(curve)), curve, optimum, color=line.get_color(),
                              alpha=0.12, lw=0)  # fmt: skip
    if results:
        axis.axvline(
            results[0].prompt_length - 0.5, color="grey", ls=":", lw=1, label="end of prompt"
        )
    axis.set_xlabel("step t (query row)")
    axis.set_ylabel("retained attention mass")
    axis.set_ylim(0, 1.02)
    axis.set_title(title or "retained attention mass per step")
    axis.grid(alpha=0.3)
    axis.legend(fontsize=8, ncol=2)
    return figure


def budget_curves_figure(records: Sequence[dict[str, Any]], title: str = "",
                         metric: str = "retained_mass") -> Figure:  # fmt: skip
    """Metric vs budget fraction per policy (the cache world's miss-ratio curve); with opt
    among the policies, each curve's gap to opt is shaded."""
    figure, axis = plt.subplots(figsize=(8, 4.5), layout="constrained")
    by_policy: dict[str, list[tuple[float, float]]] = {}
    for record in records:
        if record.get(metric) is not None:
            by_policy.setdefault(record["policy"], []).append(
                (record["budget_fraction"], record[metric])
            )
    optimum = dict(sorted(by_policy.get("opt", [])))
    for policy, points in sorted(by_policy.items()):
        points.sort()
        xs, ys = zip(*points, strict=True)
        if len(points) == 1:
            axis.axhline(ys[0], ls="--", color="black", lw=1, label=policy)
        else:
            (line,) = axis.plot(xs, ys, marker="o", ms=3, label=policy)
            if optimum and policy != "opt" and all(x in optimum for x in xs):
                # Shade the gap to opt at each budget.
                axis.fill_between(xs, ys, [optimum[x] for x in xs], color=line.get_color(),
                                  alpha=0.12, lw=0)  # fmt: skip
    axis.set_xlabel("budget (fraction of the sequence)")
    axis.set_ylabel(metric.replace("_", " "))
    axis.set_title(title or f"{metric.replace('_', ' ')} vs budget")
    axis.grid(alpha=0.3)
    axis.legend(fontsize=8, ncol=2)
    return figure


def _save(figure: Figure, path: str | os.PathLike[str]) -> None:
    save_figure(figure, path, dpi=120)
    plt.close(figure)


def plot_retained_mass(
    results: Sequence[Any], path: str | os.PathLike[str], title: str = ""
) -> None:
    _save(retained_mass_figure(results, title), path)


def plot_budget_curves(
    records: Sequence[dict[str, Any]], path: str | os.PathLike[str], title: str = ""
) -> None:
    _save(budget_curves_figure(records, title), path)


def log_colour_limits(values: np.ndarray) -> tuple[float, float]:
    """Sensible LogNorm limits for attention (positive entries), e.g. (1e-4, 1)."""
    positive = values[values > 0]
    if positive.size == 0:
        return 1e-6, 1.0
    return float(max(np.quantile(positive, 0.01), 1e-8)), float(positive.max())
