"""Figures of the claims table (``python -m h2osim.claims``), one PNG per row better seen than read.

A claim names its figure (``Claim.figure``), a key of :data:`FIGURES`; several rows may share one.

* ``claims-budget-curves.png`` - retained mass vs budget per trace: opt, the topk bound,
  belady, h2o, a2sf and the baselines; h2o's gap to opt shaded;
* ``claims-live.png`` - live perplexity / full-cache perplexity vs budget per text;
* ``claims-ablation.png`` - heavy only vs recent only vs both (paper Table 9), replay and live;
* ``claims-official-paths.png`` - decode-row mass of the official code paths at equal budget;
* ``early-token-bias.png`` - accumulated score by position with and without A2SF's
  forgetting factor (uniform-attention references dashed), and which positions each
  cache holds at the end.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

from h2osim.files import save_figure  # noqa: E402

CURVE_POLICIES = ("topk", "opt", "belady", "a2sf", "tova", "h2o", "sink", "heavy", "window")
STYLE = {"topk": dict(ls="--", color="black"), "opt": dict(color="black", lw=2),
         "belady": dict(color="grey", ls="-."), "h2o": dict(color="C3", lw=2),
         "a2sf": dict(color="C1"), "tova": dict(color="C4"), "sink": dict(color="C2"),
         "heavy": dict(color="C5"), "window": dict(color="C0")}  # fmt: skip


def _save(figure, path: Path) -> None:
    save_figure(figure, path, dpi=110)
    plt.close(figure)


def _panels(count: int, rows: int = 1, height: float = 3.6):
    figure, axes = plt.subplots(rows, count, figsize=(4.6 * count, height * rows),
                                layout="constrained", squeeze=False)  # fmt: skip
    return figure, axes


def budget_curves(sweep: Sequence[dict[str, Any]], path: Path) -> None:
    """Retained mass vs budget, one panel per trace; h2o's gap to opt shaded."""
    traces = list(dict.fromkeys(r["trace"] for r in sweep))
    figure, axes = _panels(len(traces))
    for axis, name in zip(axes[0], traces, strict=True):
        for policy in CURVE_POLICIES:
            points = sorted((r["budget_requested"], r["retained_mass"]) for r in sweep
                            if r["trace"] == name and r["policy"] == policy and not r.get("grid"))  # fmt: skip
            if points:
                xs, ys = zip(*points, strict=True)
                axis.plot(xs, ys, marker="o", ms=3, label=policy, **STYLE[policy])
        optimum = dict(sorted((r["budget_requested"], r["retained_mass"]) for r in sweep
                              if r["trace"] == name and r["policy"] == "opt"))  # fmt: skip
        h2o = dict(sorted((r["budget_requested"], r["retained_mass"]) for r in sweep
                          if r["trace"] == name and r["policy"] == "h2o" and not r.get("grid")))  # fmt: skip
        if optimum and h2o:
            xs = sorted(set(optimum) & set(h2o))
            axis.fill_between(xs, [h2o[x] for x in xs], [optimum[x] for x in xs], color="C3",
                              alpha=0.15, lw=0, label="h2o's gap to opt")  # fmt: skip
        axis.set_title(f"smollm2-{name}")
        axis.set_xlabel("budget (fraction of the sequence)")
        axis.set_ylim(0.3, 1.01)
        axis.grid(alpha=0.3)
    axes[0][0].set_ylabel("retained attention mass (1 = full cache)")
    axes[0][-1].legend(fontsize=7, loc="lower right")
    figure.suptitle(
        "Replay: retained attention mass vs budget (topk = per-step bound, opt = exact optimum)"
    )
    _save(figure, path)


def live_curves(live: Sequence[dict[str, Any]], path: Path) -> None:
    """Live perplexity / full-cache perplexity vs budget, one panel per text (log scale)."""
    texts = list(dict.fromkeys(r["text"] for r in live))
    figure, axes = _panels(len(texts))
    for axis, name in zip(axes[0], texts, strict=True):
        for policy in ("h2o", "a2sf", "sink", "heavy", "window"):
            points = sorted((r["budget_requested"], r["perplexity_ratio"]) for r in live
                            if r["text"] == name and r["policy"] == policy)  # fmt: skip
            if points:
                xs, ys = zip(*points, strict=True)
                axis.plot(xs, ys, marker="o", label=policy, **STYLE[policy])
        axis.axhline(1.0, color="black", lw=1, label="full cache")
        axis.axhline(1.1, color="black", lw=0.8, ls=":", label="1.1x (close)")
        axis.axhline(1.5, color="black", lw=0.8, ls="--", label="1.5x (collapse)")
        axis.set_yscale("log")
        n = next(r["n"] for r in live if r["text"] == name)
        axis.set_title(f"{name} (n = {n}, teacher forcing)")
        axis.set_xlabel("budget (fraction of the sequence)")
        axis.grid(alpha=0.3, which="both")
    axes[0][0].set_ylabel("perplexity / full-cache perplexity")
    axes[0][-1].legend(fontsize=7)
    figure.suptitle("Live eviction inside SmolLM2-135M")
    _save(figure, path)


def ablation_bars(sweep: Sequence[dict[str, Any]], live: Sequence[dict[str, Any]], budget: float,
                  path: Path) -> None:  # fmt: skip
    """Heavy only vs recent only vs both at ``budget``: replay mass and live perplexity."""
    halves = (("heavy", "heavy hitters only"), ("window", "recent only"), ("h2o", "both (H2O)"))
    panels = 2 if live else 1
    figure, axes = _panels(panels)
    traces = list(dict.fromkeys(r["trace"] for r in sweep))
    width = 0.8 / len(halves)
    for i, (policy, label) in enumerate(halves):
        values = [next((r["retained_mass"] for r in sweep if r["trace"] == name and r["policy"] == policy
                        and r["budget_requested"] == budget and not r.get("grid")), np.nan)
                  for name in traces]  # fmt: skip
        axes[0][0].bar(np.arange(len(traces)) + i * width, values, width, label=label,
                       color=STYLE[policy]["color"])  # fmt: skip
    axes[0][0].set_xticks(np.arange(len(traces)) + width, traces)
    axes[0][0].set_ylabel("retained attention mass")
    axes[0][0].set_ylim(0, 1.18)  # headroom: the legend sits above the bars
    axes[0][0].set_yticks(np.linspace(0, 1, 6))
    axes[0][0].set_title(f"replay, budget {budget:g}")
    axes[0][0].legend(fontsize=8, loc="upper center", ncol=3)
    if live:
        texts = list(dict.fromkeys(r["text"] for r in live))
        for i, (policy, label) in enumerate(halves):
            values = [next((r["perplexity_ratio"] for r in live if r["text"] == name and r["policy"] == policy
                            and r["budget_requested"] == budget), np.nan) for name in texts]  # fmt: skip
            axes[0][1].bar(np.arange(len(texts)) + i * width, values, width, label=label,
                           color=STYLE[policy]["color"])  # fmt: skip
        axes[0][1].axhline(1.0, color="black", lw=1)
        axes[0][1].set_yscale("log")
        axes[0][1].set_xticks(np.arange(len(texts)) + width, texts)
        axes[0][1].set_ylabel("perplexity / full-cache perplexity")
        axes[0][1].set_title(f"live, budget {budget:g}")
    figure.suptitle("Ablation (H2O paper, Table 9): heavy hitters only, recent only, both")
    _save(figure, path)


def path_bars(paths: Sequence[dict[str, Any]], path: Path) -> None:
    """Decode-row retained mass of each official code path at equal budget, per trace."""
    traces = list(dict.fromkeys(r["trace"] for r in paths))
    labels = list(dict.fromkeys(r["label"] for r in paths))
    figure, axis = plt.subplots(figsize=(max(7.0, 3.2 * len(traces)), 4.2), layout="constrained")
    width = 0.8 / len(labels)
    for i, label in enumerate(labels):
        values = [next((r["retained_mass_decode"] for r in paths if r["trace"] == name and r["label"] == label),
                       np.nan) for name in traces]  # fmt: skip
        bars = axis.bar(np.arange(len(traces)) + i * width, values, width, label=label)
        axis.bar_label(bars, fmt="%.3f", fontsize=6, rotation=90, padding=2)
    axis.set_xticks(np.arange(len(traces)) + width * (len(labels) - 1) / 2, traces)
    finite = [r["retained_mass_decode"] for r in paths]
    axis.set_ylim(max(0.0, min(finite) - 0.05), min(1.0, max(finite) + 0.03))
    axis.set_ylabel("retained mass, decode rows")
    budget = paths[0]["budget_fraction"]
    axis.set_title(
        f"Official H2O code paths at the same budget ({budget:.0%}) and heavy/recent split\n"
        "h2o: Algorithm 1, prompt streamed; the others attend the prompt in full, then evict",
        fontsize=10,
    )
    axis.legend(fontsize=7, ncol=2)
    axis.grid(alpha=0.3, axis="y")
    _save(figure, path)


def early_token_bias(bias: dict[str, dict[str, Any]], kept: dict[str, dict[str, list[float]]],
                     budget: float, path: Path, default: float = 0.95, bins: int = 16) -> None:  # fmt: skip
    """Top: share of the accumulated score by position (mean over query heads; uniform
    attention dashed) for each forgetting factor. Bottom: share of cache units holding each
    position (in ``bins`` bins) after the last row, h2o vs a2sf vs opt at ``budget``."""
    traces = list(bias)
    figure, axes = _panels(len(traces), rows=2, height=3.3)
    for column, name in enumerate(traces):
        axis = axes[0][column]
        for i, (forgetting, curve) in enumerate(bias[name]["curves"].items()):
            label = "h2o (no forgetting)" if forgetting == "1" else f"a2sf, forgetting {forgetting}"
            colour = {"1": STYLE["h2o"]["color"], f"{default:g}": STYLE["a2sf"]["color"]}.get(
                forgetting, f"C{6 + i}"
            )
            positions = np.arange(len(curve))
            (line,) = axis.plot(positions[1:], curve[1:], lw=1, color=colour, label=label)
            axis.plot(positions[1:], bias[name]["uniform"][forgetting][1:], lw=1, ls="--",
                      color=line.get_color())  # fmt: skip
            axis.scatter([0], [curve[0]], color=line.get_color(), s=14, zorder=3)
        axis.set_yscale("log")
        axis.set_ylim(1e-5, 1)
        axis.set_title(f"smollm2-{name}: score by position (dot: token 0)")
        axis.set_xlabel("position j")
        axis.grid(alpha=0.3)
        axis = axes[1][column]
        for policy in ("h2o", "a2sf", "opt"):
            share = np.asarray(kept.get(name, {}).get(policy, []))
            if share.size:
                edges = np.linspace(0, share.size, bins + 1).astype(int)
                binned = [share[a:b].mean() for a, b in zip(edges[:-1], edges[1:], strict=True)]
                axis.step(edges[:-1], binned, where="post", label=policy, **STYLE[policy])
        axis.set_ylim(0, 1.02)
        axis.set_xlabel("position j (binned)")
        axis.set_title(f"kept at the last row, budget {budget:g}")
        axis.grid(alpha=0.3)
    axes[0][0].set_ylabel("share of the accumulated score")
    axes[1][0].set_ylabel("share of cache units keeping j")
    axes[0][-1].legend(fontsize=7, title="dashed: uniform attention", title_fontsize=7)
    axes[1][-1].legend(fontsize=7)
    figure.suptitle(
        "Early-token bias of accumulated scores, with and without A2SF's forgetting factor"
    )
    _save(figure, path)


def _budget_curves(measured, path: Path) -> bool:
    budget_curves(measured.sweep, path)
    return True


def _ablation(measured, path: Path) -> bool:
    ablation_bars(measured.sweep, measured.live, measured.settings.main_budget, path)
    return True


def _live(measured, path: Path) -> bool:
    if not measured.live:
        return False
    live_curves(measured.live, path)
    return True


def _paths(measured, path: Path) -> bool:
    if not measured.paths:
        return False
    path_bars(measured.paths, path)
    return True


def _early_bias(measured, path: Path) -> bool:
    early_token_bias(measured.bias, measured.kept, measured.settings.main_budget, path,
                     default=measured.settings.forgetting)  # fmt: skip
    return True


# figure name (a claim's ``figure``) -> draws it from the Measurements into a path; False
# when what it shows was not measured (then nothing is written and the rows link no figure)
FIGURES: dict[str, Callable[[Any, Path], bool]] = {
    "claims-budget-curves.png": _budget_curves,
    "claims-ablation.png": _ablation,
    "claims-live.png": _live,
    "claims-official-paths.png": _paths,
    "early-token-bias.png": _early_bias,
}


def plot_all(measured, names: Sequence[str], out_dir: Path) -> list[Path]:
    """The figures ``names`` (keys of :data:`FIGURES`, each once) into ``out_dir``; returns
    the paths written."""
    written = []
    for name in dict.fromkeys(names):
        if FIGURES[name](measured, out_dir / name):
            written.append(out_dir / name)
    return written
