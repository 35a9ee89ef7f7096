"""Charts and HTML snippets of the app: pure functions of arrays, no Streamlit calls.

Line, scatter and strip charts are Vega-Lite (Altair): the server only builds a small
spec, the browser draws it, and hovering a point shows the token it stands for. The
attention heatmap has too many cells for that and is a matplotlib image instead: a bare
``Figure`` (no pyplot, whose global state is not thread-safe under Streamlit's session
threads) with fixed margins, rendered to PNG by :func:`png` so pages can cache it.
"""

from __future__ import annotations

import html
import io
from collections.abc import Mapping, Sequence
from typing import Any

import altair as alt
import numpy as np
import pandas as pd
from matplotlib.colors import LogNorm, Normalize
from matplotlib.figure import Figure
from matplotlib.ticker import LogLocator, MaxNLocator

from h2oapp.analysis import EVICTED, EVICTED_NOW, FUTURE, HEAVY, RECENT, STATE_NAMES
from h2osim.plots import log_colour_limits

STATE_COLOURS = {
    FUTURE: "#eeeeee",
    EVICTED: "#bdbdbd",
    EVICTED_NOW: "#d62728",
    RECENT: "#4c8fd6",
    HEAVY: "#f28e2b",
}
POLICY_COLOURS = ("#1b9e77", "#7b3294", "#e7298a", "#66a61e", "#e6ab02", "#a6761d", "#666666")


def png(figure: Figure, dpi: int = 100) -> bytes:
    """Render a matplotlib ``figure`` to PNG bytes."""
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png", dpi=dpi)
    return buffer.getvalue()


def attention_heatmap(
    matrix: np.ndarray, prompt_length: int, *, log_scale: bool = True, title: str = ""
) -> Figure:
    """The causal ``(n, n)`` attention matrix: query step t down, key position j across.

    The upper triangle (future keys) is blank. Heavy hitters show as bright vertical
    stripes: keys that many later queries attend to.
    """
    n = matrix.shape[0]
    causal = np.tri(n, dtype=bool)
    if log_scale:
        low, high = log_colour_limits(matrix[causal])
        shown = np.where(causal, np.clip(matrix, low, high), np.nan)  # (n, n)
        norm: Normalize = LogNorm(vmin=low, vmax=high)
    else:
        shown = np.where(causal, matrix, np.nan)
        norm = Normalize(vmin=0.0, vmax=float(matrix[causal].max()))
    width, height = 6.2, 5.0
    figure = Figure(figsize=(width, height))
    axis = figure.add_axes((0.6 / width, 0.5 / height, 1 - 1.75 / width, 1 - 0.85 / height))
    image = axis.imshow(shown, cmap="magma", norm=norm, aspect="auto",
                        interpolation="nearest" if n <= 512 else "antialiased")  # fmt: skip
    if prompt_length < n:
        axis.axhline(prompt_length - 0.5, color="#33a0ff", lw=1, ls="--")
        axis.text(1, prompt_length - 1.5, "end of prompt", color="#33a0ff", fontsize=8)
    axis.xaxis.set_major_locator(MaxNLocator(6, integer=True))
    axis.yaxis.set_major_locator(MaxNLocator(6, integer=True))
    axis.set_xlabel("key position j (token attended to)")
    axis.set_ylabel("query step t")
    axis.set_title(title, fontsize=10)
    colour_axis = figure.add_axes((1 - 0.95 / width, 0.5 / height, 0.16 / width, 1 - 0.85 / height))
    colour_bar = figure.colorbar(image, cax=colour_axis)
    colour_bar.set_label("attention probability" + (" (log scale)" if log_scale else ""))
    if log_scale:
        colour_axis.yaxis.set_major_locator(LogLocator(numticks=6))
    colour_axis.minorticks_off()
    return figure


def power_law_chart(
    scores: np.ndarray, tokens: Sequence[str], slope: float, intercept: float
) -> alt.LayerChart:
    """Accumulated attention sorted high to low against rank, both axes logarithmic."""
    order = np.argsort(-scores, kind="stable")
    order = order[scores[order] > 0]
    data = pd.DataFrame({
        "rank": np.arange(1, order.size + 1),
        "score": scores[order],
        "position": order,
        "token": [repr(tokens[position]) for position in order],
    })  # fmt: skip
    top = max(2, order.size // 2)
    fit = pd.DataFrame({"rank": [1, top], "score": [10**intercept, 10**intercept * top**slope]})
    x = alt.X("rank:Q", scale=alt.Scale(type="log"), title="rank (by accumulated attention)")
    y = alt.Y("score:Q", scale=alt.Scale(type="log"), title="accumulated attention")
    points = (
        alt.Chart(data)
        .mark_circle(size=22, color="#f28e2b")
        .encode(x, y, tooltip=["rank", "token", "position", alt.Tooltip("score", format=".4g")])
    )
    line = alt.Chart(fit).mark_line(color="black", strokeDash=[4, 3]).encode(x, y)
    return (points + line).properties(
        height=300, title=f"power law? fitted slope {slope:.2f} (dashed line)"
    )


def sink_chart(first_token: np.ndarray, prompt_length: int) -> alt.LayerChart:
    """Attention each query step t gives to token 0, ``first_token[t]`` (the attention sink)."""
    n = first_token.size
    data = pd.DataFrame({"step": np.arange(n), "attention on token 0": first_token})
    line = (
        alt.Chart(data)
        .mark_line(color="#4c8fd6")
        .encode(
            alt.X("step:Q", title="query step t"),
            alt.Y("attention on token 0:Q", scale=alt.Scale(domain=[0, 1])),
            tooltip=["step", alt.Tooltip("attention on token 0", format=".3f")],
        )
    )
    return (line + _prompt_rule(prompt_length, n)).properties(
        height=300, title="attention sink: how much each row gives the first token"
    )


def _prompt_rule(prompt_length: int, n: int, field: str = "step") -> alt.Chart:
    """A dashed vertical rule at the end of the prompt (nothing when all rows are prompt)."""
    rows = [{field: prompt_length - 0.5, "label": "end of prompt"}] if prompt_length < n else []
    return (
        alt.Chart(pd.DataFrame(rows, columns=[field, "label"]))
        .mark_rule(color="grey", strokeDash=[4, 3])
        .encode(alt.X(f"{field}:Q"), tooltip=["label"])
    )


def _step_rule(t: int, field: str = "step") -> alt.Chart:
    return (
        alt.Chart(pd.DataFrame({field: [t]}))
        .mark_rule(color="black", strokeDash=[2, 2])
        .encode(alt.X(f"{field}:Q"))
    )


def token_strip(states: Mapping[str, np.ndarray], tokens: Sequence[str], t: int) -> alt.Chart:
    """One strip per policy: every token's cache state when row t is served."""
    frames = []
    for label, codes in states.items():
        frames.append(pd.DataFrame({
            "policy": label,
            "position": np.arange(codes.size),
            "end": np.arange(codes.size) + 1,
            "state": [STATE_NAMES[int(code)] for code in codes],
            "token": [repr(piece) for piece in tokens],
        }))  # fmt: skip
    data = pd.concat(frames, ignore_index=True)
    codes = sorted(STATE_COLOURS)
    colour = alt.Color(
        "state:N",
        scale=alt.Scale(
            domain=[STATE_NAMES[c] for c in codes], range=[STATE_COLOURS[c] for c in codes]
        ),
        legend=alt.Legend(orient="top", title=None, columns=5, labelLimit=260),
    )
    strip = (
        alt.Chart(data)
        .mark_rect(strokeWidth=0)
        .encode(
            alt.X("position:Q", title=f"token position (the black line is step t = {t})",
                  scale=alt.Scale(domain=[0, int(data["end"].max())], nice=False)),
            alt.X2("end:Q"),
            alt.Y("policy:N", title=None, sort=list(states)),
            colour,
            tooltip=["policy", "position", "token", "state"],
        )
    )  # fmt: skip
    marker = (
        alt.Chart(pd.DataFrame({"position": [t + 1]}))
        .mark_rule(color="black", strokeWidth=1.5)
        .encode(alt.X("position:Q"))
    )
    return (strip + marker).properties(height=alt.Step(26))


def retained_mass_chart(
    curves: Mapping[str, np.ndarray], t: int, prompt_length: int, title: str
) -> alt.LayerChart:
    """Retained attention mass of every row, one line per policy, a rule at step t."""
    frames = [pd.DataFrame({"step": np.arange(curve.size), "retained mass": curve, "policy": label})
              for label, curve in curves.items()]  # fmt: skip
    data = pd.concat(frames, ignore_index=True)
    lines = (
        alt.Chart(data)
        .mark_line(strokeWidth=1.3)
        .encode(
            alt.X("step:Q", title="step t"),
            alt.Y("retained mass:Q", scale=alt.Scale(domain=[0, 1])),
            _policy_colour(list(curves)),
            tooltip=["policy", "step", alt.Tooltip("retained mass", format=".3f")],
        )
    )
    n = int(data["step"].max()) + 1
    return (lines + _prompt_rule(prompt_length, n) + _step_rule(t)).properties(
        height=300, title=title
    )


def eviction_times_chart(
    evicted_at: Mapping[str, np.ndarray], tokens: Sequence[str], t: int
) -> alt.LayerChart:
    """When each token left the cache: token position across, eviction step up.

    Tokens never evicted sit on the top line (step n). The grey diagonal is the arrival
    of each token; at step t (dotted line) the cache holds the tokens left of t whose
    points lie above the dotted line.
    """
    frames = []
    for label, left in evicted_at.items():
        n = left.size
        frames.append(pd.DataFrame({
            "position": np.arange(n),
            "evicted at step": np.where(left < 0, n, left),
            "policy": label,
            "token": [repr(piece) for piece in tokens],
            "fate": np.where(left < 0, "never evicted", "evicted"),
        }))  # fmt: skip
    data = pd.concat(frames, ignore_index=True)
    n = int(data["position"].max()) + 1
    points = (
        alt.Chart(data)
        .mark_point(size=14, filled=True, opacity=0.75)
        .encode(
            alt.X("position:Q", title="token position j", scale=alt.Scale(domain=[0, n])),
            alt.Y("evicted at step:Q", title="step it was evicted (top row: never)",
                  scale=alt.Scale(domain=[0, n + 2])),
            _policy_colour(list(evicted_at)),
            alt.Shape("policy:N", sort=list(evicted_at), legend=None),
            tooltip=["policy", "position", "token", "evicted at step", "fate"],
        )
    )  # fmt: skip
    arrival = (
        alt.Chart(pd.DataFrame({"position": [0, n - 1], "evicted at step": [0, n - 1]}))
        .mark_line(color="#bbbbbb")
        .encode(alt.X("position:Q"), alt.Y("evicted at step:Q"))
    )
    now = (
        alt.Chart(pd.DataFrame({"evicted at step": [t]}))
        .mark_rule(color="black", strokeDash=[2, 2])
        .encode(alt.Y("evicted at step:Q"))
    )
    return (arrival + points + now).properties(height=300, title="when each token left the cache")


def race_chart(
    records: Sequence[Mapping[str, Any]],
    metric: str,
    label: str,
    *,
    shade: str | None = None,
    optimum: str = "opt",
) -> alt.LayerChart:
    """``metric`` against the budget, one line per policy; the gap ``shade`` -> ``optimum`` filled.

    A policy replayed at one budget only (``full``, which keeps everything) is a rule.
    """
    rows = [r for r in records if r.get(metric) is not None]
    data = pd.DataFrame({
        "policy": [r["policy"] for r in rows],
        "budget": [r["budget_fraction"] for r in rows],
        "k": [r["budget"] for r in rows],
        label: [r[metric] for r in rows],
    })  # fmt: skip
    policies = list(dict.fromkeys(data["policy"]))
    counts = data.groupby("policy")["budget"].count()
    curve_data = data[data["policy"].map(counts) > 1]
    flat_data = data[data["policy"].map(counts) == 1]
    colour = _policy_colour(policies)
    x = alt.X("budget:Q", title="budget (fraction of the sequence kept per cache unit)")
    tooltip = ["policy", alt.Tooltip("budget", format=".2f"), "k", alt.Tooltip(label, format=".4f")]
    curves = (
        alt.Chart(curve_data)
        .mark_line(point=True)
        .encode(x, alt.Y(f"{label}:Q", scale=alt.Scale(zero=False)), colour, tooltip=tooltip)
    )
    flats = (
        alt.Chart(flat_data)
        .mark_rule(strokeDash=[5, 3])
        .encode(alt.Y(f"{label}:Q"), colour, tooltip=tooltip)
    )
    layers = [curves, flats]
    if shade and shade != optimum:
        wide = curve_data.pivot_table(index="budget", columns="policy", values=label)
        if shade in wide and optimum in wide:
            gap = wide[[shade, optimum]].dropna().reset_index()
            gap.columns = ["budget", "policy value", "optimum value"]
            layers.insert(0, alt.Chart(gap).mark_area(color="#f28e2b", opacity=0.25).encode(
                x, alt.Y("policy value:Q"), alt.Y2("optimum value:Q"),
                tooltip=[alt.Tooltip("budget", format=".2f"),
                         alt.Tooltip("policy value", title=shade, format=".4f"),
                         alt.Tooltip("optimum value", title=optimum, format=".4f")],
            ))  # fmt: skip
    return alt.layer(*layers).properties(height=340, title=f"{label} vs budget")


def _policy_colour(policies: Sequence[str]) -> alt.Color:
    """The same policy gets the same colour in every chart of a page."""
    palette = [POLICY_COLOURS[i % len(POLICY_COLOURS)] for i in range(len(policies))]
    return alt.Color(
        "policy:N", scale=alt.Scale(domain=list(policies), range=palette),
        legend=alt.Legend(orient="bottom", title=None),
    )  # fmt: skip


def _escape(piece: str) -> str:
    return html.escape(piece).replace("\n", "↵<br>")


def weighted_tokens_html(tokens: Sequence[str], weights: np.ndarray, scores: np.ndarray) -> str:
    """Text with each token's background as orange as its weight in [0, 1]; hover for its score."""
    spans = []
    for position, (piece, weight, score) in enumerate(zip(tokens, weights, scores, strict=True)):
        alpha = float(np.clip(weight, 0.0, 1.0))
        colour = "#000" if alpha < 0.6 else "#fff"
        spans.append(
            f'<span title="token {position}: {score:.3g}" style="background: rgba(217, 95, 2, '
            f'{alpha:.2f}); color: {colour}; white-space: pre-wrap">{_escape(piece)}</span>'
        )
    return _text_box("".join(spans))


def cache_text_html(tokens: Sequence[str], states: np.ndarray, t: int) -> str:
    """Tokens 0..t styled by cache state: kept (recent blue, older orange), evicted struck."""
    styles = {
        EVICTED: "color: #999; text-decoration: line-through",
        EVICTED_NOW: "color: #fff; background: #d62728; text-decoration: line-through",
        RECENT: "background: rgba(76, 143, 214, 0.30)",
        HEAVY: "background: rgba(242, 142, 43, 0.55)",
    }
    spans = [
        f'<span title="token {position}" style="{styles[int(states[position])]}; '
        f'white-space: pre-wrap">{_escape(tokens[position])}</span>'
        for position in range(t + 1)
    ]
    return _text_box("".join(spans))


def _text_box(inner: str) -> str:
    return (
        '<div style="font-family: ui-monospace, monospace; font-size: 0.8rem; line-height: 1.6; '
        "max-height: 20rem; overflow-y: auto; border: 1px solid #ddd; border-radius: 4px; "
        f'padding: 0.5rem">{inner}</div>'
    )
