"""The H2O paper's Section 3 observations on any trace (the library under ``python -m h2osim.observe``).

Zhang et al. (2023), Sec. 3, observe in pre-trained OPT models that (3.1) attention is
sparse - most entries of a row are tiny, over 95% in most layers - and (3.2) that the
accumulated attention scores of tokens follow a power law, so a few "heavy hitters"
collect most of the attention. This module measures, per stored layer:

* sparsity: share of attention entries below 1% of their row's maximum (entries of the
  causal lower triangle, all query heads; also over decode rows only);
* attention sink: mean mass on token 0 (rows t >= 1; Xiao et al. 2023, StreamingLLM);
* concentration: mean mass held by the top 5/10/20% of keys of each row (rows with at
  least 20 keys, so 5% is at least one key) - the per-step top-k oracle's share;
* heavy hitters: share of all accumulated attention held by the top 10% of tokens;
* power law: accumulated score ``s_j = sum_t a[t, j]`` of every token, sorted per head and
  averaged by rank, fitted as ``s_(r) ~ C r^(-alpha)`` by least squares in log-log on
  log-spaced ranks (each decade weighs the same), with R^2; an exponential fit's R^2 is
  printed beside it, because a straight-ish log-log line alone is weak evidence;
* early-token bias: share of accumulated score on the first 10% of positions after token 0
  (the sink has its own column), against what uniform attention would give there (early
  tokens are seen by more rows, so even uniform attention favours them).

Simplification: a layer's numbers are means over its query heads (each head weighs the
same); the "all" row is the mean over layers. Works on float16, float32 and quantized
traces (quantized entries under 1/levels read as 0, which can only raise sparsity).
"""

from __future__ import annotations

import math
import sys
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np

from h2osim.metrics import SIGNIFICANCE  # "below 1% of the row max", as in the paper
from h2osim.trace import Trace

TOP_SHARES = (0.05, 0.10, 0.20)
MIN_ROW_KEYS = 20  # rows shorter than this are left out of the top-p% means
EARLY_SHARE = 0.10  # "early" = positions 1..ceil(10% of n) after the sink (early_positions)
FIT_POINTS = 40  # log-spaced ranks for the fits
PAPER_SPARSITY = 0.95  # reported for OPT (Sec. 3.1, Fig. 2a)


@dataclass
class LayerObservation:
    """Sec. 3 statistics of one layer (means over its query heads)."""

    layer: int
    sparsity: float
    sparsity_decode: float | None
    sink_mass: float
    top_mass: dict[str, float]  # "5%" -> mean mass of each row's top 5% keys
    heavy_hitter_share: float  # share of accumulated attention held by the top 10% tokens
    power_law_exponent: float  # alpha in s_(r) ~ r^(-alpha)
    power_law_r2: float
    exponential_r2: float
    early_share: float  # share of accumulated score (after token 0) on positions 1..10% of n
    rank_curve: np.ndarray = field(repr=False)  # (n,) accumulated scores by rank, head mean
    position_curve: np.ndarray = field(repr=False)  # (n,) accumulated score by position

    def record(self) -> dict:
        """JSON-ready dict (without the curves)."""
        row = asdict(self)
        row.pop("rank_curve")
        row.pop("position_curve")
        return row


@dataclass
class Observations:
    """All layers of one trace plus the averages and reference values."""

    trace_description: str
    n: int
    prompt_length: int
    layers: list[LayerObservation]
    uniform_early_share: float  # the same share under uniform attention (a baseline)

    def mean(self, key: str) -> float | None:
        values = [getattr(layer, key) for layer in self.layers]
        values = [v for v in values if v is not None]
        return float(np.mean(values)) if values else None

    def mean_top(self, share: str) -> float:
        return float(np.mean([layer.top_mass[share] for layer in self.layers]))

    def record(self) -> dict:
        return {
            "trace": self.trace_description, "n": self.n, "prompt_length": self.prompt_length,
            "uniform_early_share": self.uniform_early_share,
            "layers": [layer.record() for layer in self.layers],
            "mean": {key: self.mean(key) for key in (
                "sparsity", "sparsity_decode", "sink_mass", "heavy_hitter_share",
                "power_law_exponent", "power_law_r2", "exponential_r2", "early_share")}
            | {f"top_mass_{share}": self.mean_top(share) for share in _share_labels()},
        }  # fmt: skip


def _share_label(share: float) -> str:
    """Example: 0.05 -> "5%"."""
    return f"{round(share * 100, 6):g}%"


def _share_labels() -> list[str]:
    return [_share_label(share) for share in TOP_SHARES]


def sparsity(matrices: np.ndarray, threshold: float = SIGNIFICANCE,
             rows: slice = slice(None)) -> float:  # fmt: skip
    """Share of causal entries below ``threshold`` x their row max, ``matrices`` (H, n, n).

    Example: one head, rows [1], [0.5, 0.5], [0.98, 0.0, 0.02] -> the 0.0 is below
    0.0098 -> 1 of 6 entries -> 0.1667.
    """
    n = matrices.shape[-1]
    causal = np.tril(np.ones((n, n), dtype=bool))[rows]  # (r, n)
    chosen = matrices[:, rows]  # (H, r, n)
    row_max = chosen.max(axis=2, keepdims=True)  # (H, r, 1)
    below = (chosen < threshold * row_max) & causal
    return float(below.sum() / (causal.sum() * matrices.shape[0]))


def top_mass(matrices: np.ndarray, shares: Sequence[float] = TOP_SHARES,
             min_keys: int = MIN_ROW_KEYS) -> dict[str, float]:  # fmt: skip
    """Mean mass of each row's top ``share`` keys (ceil(share * (t+1)) keys), rows t+1 >= min_keys.

    Example: row [0.7, 0.1, 0.1, 0.1] with share 0.25 keeps 1 key -> 0.7.
    """
    n = matrices.shape[-1]
    first = min(max(min_keys - 1, 0), n - 1)
    chosen = matrices[:, first:]  # (H, r, n) rows t = first..n-1
    ordered = -np.sort(-chosen, axis=2)  # descending; zeros above the diagonal go last
    cumulative = np.cumsum(ordered, axis=2)
    keys = np.arange(first, n) + 1  # (r,) keys per row
    result = {}
    for share in shares:
        count = np.ceil(share * keys - 1e-9).astype(int)  # (r,)
        picked = np.take_along_axis(cumulative, (count - 1)[None, :, None], axis=2)[..., 0]
        result[_share_label(share)] = float(picked.mean())
    return result


def power_law_fit(curve: np.ndarray, points: int = FIT_POINTS) -> tuple[float, float, float]:
    """Fit ``curve[r-1] ~ C r^(-alpha)`` (r = rank) on log-spaced ranks.

    Returns ``(alpha, r2_power_law, r2_exponential)``; the exponential model is
    ``log curve ~ a - b r`` on the same ranks. Example: curve = 1/r -> alpha 1, R^2 1.
    """
    positive = curve[curve > 0]
    if positive.size < 3:
        return float("nan"), float("nan"), float("nan")
    ranks = np.unique(np.geomspace(1, positive.size, points).astype(int))
    log_score = np.log(positive[ranks - 1])
    slope, r2_power = _line_fit(np.log(ranks), log_score)
    _, r2_exponential = _line_fit(ranks.astype(float), log_score)
    return -slope, r2_power, r2_exponential


def _line_fit(x: np.ndarray, y: np.ndarray) -> tuple[float, float]:
    slope, intercept = np.polyfit(x, y, 1)
    residual = y - (slope * x + intercept)
    total = ((y - y.mean()) ** 2).sum()
    return float(slope), float(1 - (residual**2).sum() / total) if total > 0 else 1.0


def uniform_early_share(n: int, share: float = EARLY_SHARE) -> float:
    """Early tokens' share of accumulated score (token 0 left out) under uniform attention.

    Row t gives 1/(t+1) to each of its keys, so token j collects H_n - H_j; e.g. n=10,
    share 0.1 -> token 1 holds (H_10 - H_1) / (10 - H_10) = 1.929 / 7.071 = 0.273.
    """
    collected = _uniform_accumulated(n)
    return float(collected[early_positions(n, share)].sum() / collected[1:].sum())


def _uniform_accumulated(n: int) -> np.ndarray:
    """Token j's accumulated score under uniform attention: H_n - H_j, ``(n,)``."""
    harmonic = np.concatenate([[0.0], np.cumsum(1.0 / np.arange(1, n + 1))])  # H_0..H_n
    return harmonic[n] - harmonic[:n]


def early_positions(n: int, share: float = EARLY_SHARE) -> slice:
    """Positions 1..ceil(share * n): the early tokens after the sink (token 0 has its own
    column). The one definition of "early", also used by the claims table. Example: n=50 ->
    slice(1, 6), positions 1..5; n=512 -> slice(1, 53)."""
    return slice(1, 1 + max(1, int(math.ceil(share * n))))


def observe_layer(trace: Trace, layer: int) -> LayerObservation:
    """All Sec. 3 statistics of one stored layer."""
    n, prompt = trace.n, trace.prompt_length
    matrices = np.stack([trace.head_matrix(layer, head) for head in range(trace.num_heads)])
    # (H, n, n) float32, zero above the diagonal
    accumulated = matrices.sum(axis=1)  # (H, n): column sums = accumulated attention
    rank_curve = -np.sort(-accumulated, axis=1)  # (H, n) descending per head
    mean_rank_curve = rank_curve.mean(axis=0)
    alpha, r2_power, r2_exponential = power_law_fit(mean_rank_curve)
    tenth = max(1, int(math.ceil(0.1 * n)))
    heavy = float((rank_curve[:, :tenth].sum(axis=1) / rank_curve.sum(axis=1)).mean())
    early = early_positions(n)
    after_sink = accumulated[:, 1:].sum(axis=1)  # (H,)
    early_sum = accumulated[:, early].sum(axis=1)
    early_share = float(np.divide(early_sum, after_sink, out=np.zeros_like(early_sum),
                                  where=after_sink > 0).mean())  # fmt: skip
    return LayerObservation(
        layer=int(layer),
        sparsity=sparsity(matrices),
        sparsity_decode=sparsity(matrices, rows=slice(prompt, n)) if prompt < n else None,
        sink_mass=float(matrices[:, 1:, 0].mean()) if n > 1 else 1.0,
        top_mass=top_mass(matrices),
        heavy_hitter_share=heavy,
        power_law_exponent=alpha,
        power_law_r2=r2_power,
        exponential_r2=r2_exponential,
        early_share=early_share,
        rank_curve=mean_rank_curve,
        position_curve=accumulated.mean(axis=0),
    )


def observe(trace: Trace, layers: Sequence[int] | None = None,
            progress: bool = False) -> Observations:  # fmt: skip
    """Observe every stored layer (or ``layers``) of ``trace``."""
    chosen = [int(layer) for layer in (trace.layers if layers is None else layers)]
    missing = [layer for layer in chosen if layer not in trace.layer_positions]
    if missing:
        raise ValueError(
            f"layer {missing[0]} is not stored in this trace; stored layers: {trace.layers.tolist()}"
        )
    if trace.n < 2:
        raise ValueError(f"a trace needs at least 2 tokens to observe, got n={trace.n}")
    from tqdm import tqdm

    observed = []
    with tqdm(total=len(chosen) * trace.n, unit="row", desc="observing", disable=not progress,
              file=sys.stderr, leave=False) as bar:  # fmt: skip
        for layer in chosen:
            observed.append(observe_layer(trace, layer))
            bar.update(trace.n)
    return Observations(trace.describe(), trace.n, trace.prompt_length, observed,
                        uniform_early_share(trace.n))  # fmt: skip


# --------------------------------------------------------------------------- output
def format_table(observations: Observations) -> str:
    """The per-layer table plus the mean row, as plain text."""
    labels = _share_labels()
    headers = ["layer", "sparsity", "sparse(dec)", "sink", *(f"top{s}" for s in labels),
               "HH10%", "alpha", "R2 pow", "R2 exp", "early10%"]  # fmt: skip

    def cells(name, obs_values):
        return [name] + [("-" if v is None or (isinstance(v, float) and math.isnan(v))
                          else f"{v:.3f}") for v in obs_values]  # fmt: skip

    rows = []
    for layer in observations.layers:
        rows.append(cells(str(layer.layer), [
            layer.sparsity, layer.sparsity_decode, layer.sink_mass,
            *(layer.top_mass[s] for s in labels), layer.heavy_hitter_share,
            layer.power_law_exponent, layer.power_law_r2, layer.exponential_r2,
            layer.early_share]))  # fmt: skip
    mean = observations.mean
    rows.append(cells("mean", [
        mean("sparsity"), mean("sparsity_decode"), mean("sink_mass"),
        *(observations.mean_top(s) for s in labels), mean("heavy_hitter_share"),
        mean("power_law_exponent"), mean("power_law_r2"), mean("exponential_r2"),
        mean("early_share")]))  # fmt: skip
    widths = [max(len(row[i]) for row in [headers, *rows]) for i in range(len(headers))]

    def line(row):
        return "  ".join(cell.rjust(width) for cell, width in zip(row, widths, strict=True))

    separator = "  ".join("-" * width for width in widths)
    return "\n".join([line(headers), separator, *map(line, rows[:-1]), separator, line(rows[-1])])


def legend(observations: Observations) -> str:
    """What the columns mean and the reference values to compare with."""
    return (
        f"sparsity: share of entries < {SIGNIFICANCE:.0%} of the row max (paper, OPT: "
        f"> {PAPER_SPARSITY:.0%}); sparse(dec): decode rows only; sink: mean mass on token 0; "
        f"topX%: mean mass of each row's top X% keys (rows with >= {MIN_ROW_KEYS} keys); HH10%: "
        "share of accumulated attention held by the top 10% tokens; alpha: power-law exponent "
        "of accumulated score vs rank (R2 of log-log and of exponential fits); early10%: share "
        "of accumulated score (token 0 left out) on positions 1..10% of n (uniform attention: "
        f"{observations.uniform_early_share:.3f})."
    )


def _pick_layers(observations: Observations, most: int = 4) -> list[LayerObservation]:
    layers = observations.layers
    if len(layers) <= most:
        return list(layers)
    picks = np.unique(np.linspace(0, len(layers) - 1, most).round().astype(int))
    return [layers[i] for i in picks]


def save_figures(observations: Observations, folder: str | Path, title: str = "") -> list[Path]:
    """Four PNGs: sparsity, power law, accumulated score vs position, concentration."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from h2osim.files import save_figure

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    layers = observations.layers
    names = [str(layer.layer) for layer in layers]
    positions = np.arange(len(layers))
    suffix = f" - {title}" if title else ""
    written = []

    def finish(figure, name):
        path = folder / name
        save_figure(figure, path, dpi=110)
        plt.close(figure)
        written.append(path)

    figure, axis = plt.subplots(figsize=(8, 4), layout="constrained")
    width = 0.4 if any(layer.sparsity_decode is not None for layer in layers) else 0.8
    axis.bar(positions - (width / 2 if width < 0.8 else 0), [layer.sparsity for layer in layers],
             width, label="all rows")  # fmt: skip
    if width < 0.8:
        axis.bar(positions + width / 2, [layer.sparsity_decode for layer in layers], width,
                 label="decode rows")  # fmt: skip
    axis.axhline(PAPER_SPARSITY, color="red", ls="--", lw=1, label="paper, OPT: 95%")
    axis.set_xticks(positions, names, fontsize=7)
    axis.set_xlabel("layer")
    axis.set_ylabel(f"share of entries < {SIGNIFICANCE:.0%} of row max")
    axis.set_ylim(0, 1)
    axis.set_title("attention sparsity per layer" + suffix)
    axis.legend(fontsize=8, loc="lower right")
    finish(figure, "sparsity.png")

    figure, axis = plt.subplots(figsize=(7, 5), layout="constrained")
    for layer in _pick_layers(observations):
        curve = layer.rank_curve[layer.rank_curve > 0]
        ranks = np.arange(1, curve.size + 1)
        (line,) = axis.loglog(ranks, curve, lw=1.2,
                              label=f"layer {layer.layer}: alpha={layer.power_law_exponent:.2f}, "
                                    f"R2={layer.power_law_r2:.2f}")  # fmt: skip
        fit_at = np.unique(np.geomspace(1, curve.size, FIT_POINTS).astype(int))
        scale = np.exp(
            np.mean(np.log(curve[fit_at - 1]) + layer.power_law_exponent * np.log(fit_at))
        )
        axis.loglog(ranks, scale * ranks ** (-layer.power_law_exponent), ls="--", lw=0.8,
                    color=line.get_color())  # fmt: skip
    axis.set_xlabel("rank of token by accumulated attention")
    axis.set_ylabel("accumulated attention score (mean over heads)")
    axis.set_title("accumulated attention vs rank, power-law fits (dashed)" + suffix)
    axis.grid(alpha=0.3, which="both")
    axis.legend(fontsize=8)
    finish(figure, "power_law.png")

    figure, axis = plt.subplots(figsize=(8, 4.5), layout="constrained")
    n = observations.n
    for layer in _pick_layers(observations):
        axis.semilogy(np.arange(n), np.maximum(layer.position_curve, 1e-6), lw=0.9,
                      label=f"layer {layer.layer}")  # fmt: skip
    axis.semilogy(np.arange(n), _uniform_accumulated(n), color="black", ls=":", lw=1.2,
                  label="uniform attention")  # fmt: skip
    if observations.prompt_length < n:
        axis.axvline(observations.prompt_length - 0.5, color="grey", ls=":", lw=1,
                     label="end of prompt")  # fmt: skip
    axis.set_xlabel("token position")
    axis.set_ylabel("accumulated attention score (mean over heads)")
    axis.set_title("accumulated score vs position (early-token bias)" + suffix)
    axis.grid(alpha=0.3)
    axis.legend(fontsize=8)
    finish(figure, "accumulated_vs_position.png")

    figure, axis = plt.subplots(figsize=(8, 4), layout="constrained")
    for label in _share_labels():
        axis.plot(positions, [layer.top_mass[label] for layer in layers], marker="o", ms=3,
                  label=f"top {label} keys of each row")  # fmt: skip
    axis.plot(positions, [layer.heavy_hitter_share for layer in layers], marker="s", ms=3,
              label="top 10% tokens by accumulated score")  # fmt: skip
    axis.plot(positions, [layer.sink_mass for layer in layers], marker="^", ms=3,
              label="token 0 (attention sink)")  # fmt: skip
    axis.set_xticks(positions, names, fontsize=7)
    axis.set_xlabel("layer")
    axis.set_ylabel("attention mass")
    axis.set_ylim(0, 1.02)
    axis.set_title("where the attention mass sits" + suffix)
    axis.grid(alpha=0.3)
    axis.legend(fontsize=8)
    finish(figure, "concentration.png")
    return written
