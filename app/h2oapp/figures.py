"""Charts and HTML snippets of the app: pure functions of arrays, no Streamlit calls.

Every chart is a plain Vega-Lite spec (a dict) for ``st.vega_lite_chart``: the server
only builds a small dict, the browser draws it, and hovering a point shows the token it
stands for. The specs are written out by hand rather than through Altair because
Altair's validation and data conversion cost ~0.2 s per chart, too slow to animate.
Data sits in the spec's top-level ``datasets`` (Streamlit ships them as Arrow).

The attention heatmap has too many cells for one mark per cell: it is a PNG (drawn with
matplotlib's colour map, encoded by Pillow) shown by an ``image`` mark that fills the
plot, so it still gets Vega-Lite axes and a colour legend.

Imports are lazy: pandas where a chart builds a table, matplotlib and Pillow in the
heatmap only, so a page without charts (Live lab, Needle lab before a run) imports
neither (a cold server's first page paid ~1.4 s for them).
"""

from __future__ import annotations

import base64
import html
import io
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from h2oapp.analysis import EVICTED, EVICTED_NOW, FUTURE, HEAVY, RECENT, STATE_NAMES
from theory.bounds import ONE_MINUS_INV_E  # Nemhauser's (1 - 1/e) = 0.632..., one definition

Spec = dict[str, Any]

STATE_COLOURS = {
    FUTURE: "#eeeeee",
    EVICTED: "#bdbdbd",
    EVICTED_NOW: "#d62728",
    RECENT: "#4c8fd6",
    HEAVY: "#f28e2b",
}
# One colour per policy on every page (a policy keeps its colour whatever else is shown).
# Offline oracles (opt, belady, the topk bound) are drawn dashed as well.
POLICY_COLOURS = {
    "full": "#555555", "window": "#1f78b4", "sink": "#33a02c", "heavy": "#b15928",
    "h2o": "#e7298a", "opt": "#111111", "topk": "#111111", "belady": "#6a3d9a",
}  # fmt: skip
OTHER_COLOURS = ("#ff7f00", "#a6cee3", "#b2df8a", "#fb9a99", "#cab2d6", "#fdbf6f", "#8dd3c7",
                 "#bebada", "#80b1d3", "#fccde5", "#bc80bd", "#ccebc5", "#ffed6f")  # fmt: skip
DASHED = {"opt": [6, 3], "belady": [6, 3], "topk": [2, 2]}
GAP_COLOUR = "#f28e2b"


def policy_colour(label: str) -> str:
    """The colour of a policy (``"h2o"``, or a label such as ``"h2o (left)"``): fixed for
    the classroom set, and for the other registered policies by their place in the
    registry, so it is the same on every page."""
    from h2osim.policies import policy_names

    name = label.split(" ")[0]
    if name in POLICY_COLOURS:
        return POLICY_COLOURS[name]
    others = [n for n in policy_names() if n not in POLICY_COLOURS]
    index = others.index(name) if name in others else len(others)
    return OTHER_COLOURS[index % len(OTHER_COLOURS)]


def policy_dash(label: str) -> list[int]:
    """Stroke dash of a policy's line: dashed for offline oracles, solid otherwise."""
    return DASHED.get(label.split(" ")[0], [1, 0])


MAX_HEATMAP_PIXELS = 400  # about the drawn size: longer traces are max-pooled in blocks so
# a one-token heavy-hitter stripe stays visible instead of falling between screen pixels


def _q(field: str, title: str | None = None, **extra: Any) -> dict[str, Any]:
    """A quantitative encoding channel. Example: _q("step") -> {"field": "step", "type": ...}."""
    channel = {"field": field, "type": "quantitative", **extra}
    if title is not None:
        channel["title"] = title
    return channel


def _n(field: str, **extra: Any) -> dict[str, Any]:
    return {"field": field, "type": "nominal", **extra}


def _policy_colour(
    policies: Sequence[str], extra: Mapping[str, str] | None = None
) -> dict[str, Any]:
    """The policy colour channel: each policy's own colour (:func:`policy_colour`);
    ``extra`` adds legend entries (label -> colour), such as the shaded gap."""
    domain = list(policies) + list(extra or {})
    palette = [policy_colour(p) for p in policies] + list((extra or {}).values())
    return _n("policy", scale={"domain": domain, "range": palette},
              legend={"orient": "bottom", "title": None, "labelLimit": 260, "columns": 3,
                      "symbolOpacity": 1, "symbolStrokeWidth": 2.5})  # fmt: skip


def _policy_dash(policies: Sequence[str]) -> dict[str, Any]:
    return _n("policy", scale={"domain": list(policies), "range": [policy_dash(p) for p in policies]},
              legend=None)  # fmt: skip


def _token_labels(tokens: Sequence[str]) -> list[str]:
    return [repr(piece) for piece in tokens]


# ----------------------------------------------------------------- trace explorer
def heatmap_png(matrix: np.ndarray, low: float, high: float, log_scale: bool) -> bytes:
    """The lower triangle coloured with matplotlib's "magma", white above it, as PNG bytes.

    Rows/columns beyond :data:`MAX_HEATMAP_PIXELS` are max-pooled in blocks.
    """
    import matplotlib
    from matplotlib.colors import LogNorm, Normalize
    from PIL import Image

    n = matrix.shape[0]
    block = -(-n // MAX_HEATMAP_PIXELS)  # ceil
    causal = np.tri(n, dtype=bool)
    shown = np.where(causal, matrix, 0.0)
    if block > 1:
        padded = -(-n // block) * block
        shown = np.pad(shown, ((0, padded - n), (0, padded - n)))
        shown = shown.reshape(padded // block, block, padded // block, block).max(axis=(1, 3))
        causal = np.tri(shown.shape[0], dtype=bool)
    norm = LogNorm(vmin=low, vmax=high) if log_scale else Normalize(vmin=low, vmax=high)
    rgb = matplotlib.colormaps["magma"](norm(np.clip(shown, low, high)), bytes=True)[..., :3]
    rgb[~causal] = 255
    buffer = io.BytesIO()
    Image.fromarray(np.ascontiguousarray(rgb)).save(buffer, format="png", compress_level=1)
    return buffer.getvalue()


HOVER_GRID = 64  # the heatmap's tooltips: at most this many cells per side (~2k cells)


def heatmap_cells(
    matrix: np.ndarray, tokens: Sequence[str] | None, grid: int = HOVER_GRID
) -> list[dict[str, Any]]:
    """Hover cells of the heatmap: one per block of ``ceil(n / grid)`` rows x columns on
    or below the diagonal, each naming its strongest entry: query t and key j with their
    token text and the attention value. Example: n=2, grid 2 -> cells (0,0), (1,0), (1,1).
    """
    n = matrix.shape[0]
    block = -(-n // grid)
    labels = _token_labels(tokens) if tokens is not None else [str(j) for j in range(n)]
    causal = np.where(np.tri(n, dtype=bool), matrix, -1.0)
    cells = []
    for top in range(0, n, block):
        for left in range(0, top + 1, block):
            part = causal[top : top + block, left : left + block]
            row, column = np.unravel_index(int(np.argmax(part)), part.shape)
            t, j = top + int(row), left + int(column)
            cells.append({"x": left, "x2": min(n, left + block), "y": top, "y2": min(n, top + block),
                          "query": f"t = {t}: {labels[t]}", "key": f"j = {j}: {labels[j]}",
                          "attention": float(matrix[t, j])})  # fmt: skip
    return cells


def attention_heatmap(
    matrix: np.ndarray, prompt_length: int, *, log_scale: bool = True, title: str = "",
    tokens: Sequence[str] | None = None,
) -> Spec:  # fmt: skip
    """The causal ``(n, n)`` attention matrix: query step t down, key position j across.

    The upper triangle (future keys) is blank. Heavy hitters show as bright vertical
    stripes: keys that many later queries attend to. Hovering names query t and key j,
    their tokens and the attention (the strongest entry of a block on long traces); the
    image itself carries no tooltip (its data URL is not for reading).
    """
    from h2osim.plots import log_colour_limits

    n = matrix.shape[0]
    causal_values = matrix[np.tri(n, dtype=bool)]
    if log_scale:
        low, high = log_colour_limits(causal_values)
    else:
        low, high = 0.0, float(causal_values.max())
    url = (
        "data:image/png;base64,"
        + base64.b64encode(heatmap_png(matrix, low, high, log_scale)).decode()
    )
    axis_x = _q("x", "key position j (token attended to)", scale={"domain": [0, n], "nice": False})
    axis_y = _q("y", "query step t", scale={"domain": [0, n], "nice": False, "reverse": True})
    layers: list[Spec] = [
        {
            "data": {"name": "image"},
            "mark": {"type": "image", "width": {"expr": "width"}, "height": {"expr": "height"},
                     "align": "left", "baseline": "top", "aspect": False, "smooth": False,
                     "tooltip": False},
            "encoding": {"x": axis_x, "y": axis_y, "url": _n("url")},
        },
        {  # transparent hover cells that carry the tooltips
            "data": {"name": "cells"},
            "mark": {"type": "rect", "fill": "#000000", "opacity": 0.001},
            "encoding": {"x": _q("x"), "x2": {"field": "x2"}, "y": _q("y"), "y2": {"field": "y2"},
                         "tooltip": [_n("query", title="query"), _n("key", title="key"),
                                     _q("attention", format=".3g")]},
        },
        {  # invisible points that only carry the colour scale, for its legend
            "data": {"name": "legend"},
            "mark": {"type": "point", "opacity": 0, "tooltip": False},
            "encoding": {
                "x": _q("x"), "y": _q("y"),
                "color": _q("p", "attention" + (" (log)" if log_scale else ""), scale={
                    "type": "log" if log_scale else "linear", "domain": [low, high], "scheme": "magma"}),
            },
        },
    ]  # fmt: skip
    datasets = {
        "image": [{"x": 0, "y": 0, "url": url}],
        "cells": heatmap_cells(matrix, tokens),
        "legend": [{"x": 0, "y": 0, "p": low}, {"x": 0, "y": 0, "p": high}],
    }
    if prompt_length < n:
        datasets["prompt"] = [{"y": prompt_length, "label": "end of prompt"}]
        layers.append({
            "data": {"name": "prompt"},
            "mark": {"type": "rule", "color": "#33a0ff", "strokeDash": [4, 3]},
            "encoding": {"y": _q("y"), "tooltip": [_n("label")]},
        })  # fmt: skip
    return {"title": title, "height": 440, "datasets": datasets, "layer": layers}


def power_law_chart(
    scores: np.ndarray, tokens: Sequence[str], alpha: float, scale: float, score_label: str
) -> Spec:
    """Token scores sorted high to low against rank, both axes logarithmic, with the fit
    ``scale * rank^(-alpha)`` (the estimator of ``python -m h2osim.observe``) dashed."""
    import pandas as pd

    order = np.argsort(-scores, kind="stable")
    order = order[scores[order] > 0]
    labels = _token_labels(tokens)
    points = pd.DataFrame({
        "rank": np.arange(1, order.size + 1), "score": scores[order], "position": order,
        "token": [labels[position] for position in order],
    })  # fmt: skip
    last = max(2, order.size)
    fitted = np.isfinite(alpha)
    fit = (
        [{"rank": 1, "score": scale}, {"rank": last, "score": scale * last**-alpha}]
        if fitted
        else []
    )
    x = _q("rank", f"rank (by {score_label})", scale={"type": "log", "nice": False})
    y = _q("score", score_label, scale={"type": "log", "nice": False})
    tooltip = [_n("token"), _q("rank"), _q("position"), _q("score", score_label, format=".4g")]
    title = f"power law? exponent alpha = {alpha:.2f} (dashed fit)" if fitted else "power law?"
    return {
        "title": title,
        "height": 300,
        "datasets": {"points": points, "fit": fit},
        "layer": [
            {"data": {"name": "points"}, "mark": {"type": "circle", "size": 22, "color": "#f28e2b"},
             "encoding": {"x": x, "y": y, "tooltip": tooltip}},
            {"data": {"name": "fit"}, "mark": {"type": "line", "color": "black", "strokeDash": [4, 3]},
             "encoding": {"x": x, "y": y}},
        ],
    }  # fmt: skip


def _prompt_rule(prompt_length: int, n: int) -> tuple[dict[str, Any], list[Spec]]:
    """A dashed vertical rule at the end of the prompt (nothing when all rows are prompt)."""
    if prompt_length >= n:
        return {}, []
    layer = {"data": {"name": "prompt"}, "mark": {"type": "rule", "color": "grey", "strokeDash": [4, 3]},
             "encoding": {"x": _q("step"), "tooltip": [_n("label")]}}  # fmt: skip
    return {"prompt": [{"step": prompt_length - 0.5, "label": "end of prompt"}]}, [layer]


def sink_chart(first_token: np.ndarray, prompt_length: int) -> Spec:
    """Attention each query step t gives to token 0, ``first_token[t]`` (the attention sink)."""
    import pandas as pd

    n = first_token.size
    data = pd.DataFrame({"step": np.arange(n), "attention on token 0": first_token})
    prompt_data, prompt_layers = _prompt_rule(prompt_length, n)
    line = {
        "data": {"name": "sink"},
        "mark": {"type": "line", "color": "#4c8fd6"},
        "encoding": {
            "x": _q("step", "query step t"),
            "y": _q("attention on token 0", scale={"domain": [0, 1]}),
            "tooltip": [_q("step"), _q("attention on token 0", format=".3f")],
        },
    }
    return {"title": "attention sink: how much each row gives the first token", "height": 300,
            "datasets": {"sink": data, **prompt_data}, "layer": [line, *prompt_layers]}  # fmt: skip


# ----------------------------------------------------------------- eviction dynamics
def _segments(codes: np.ndarray) -> list[tuple[int, int, int]]:
    """Runs of equal codes as (start, end, code), end exclusive.

    Example: [3, 3, 1, 0] -> [(0, 2, 3), (2, 3, 1), (3, 4, 0)].
    """
    breaks = np.flatnonzero(np.diff(codes)) + 1
    starts = np.concatenate([[0], breaks])
    ends = np.concatenate([breaks, [codes.size]])
    return [(int(s), int(e), int(codes[s])) for s, e in zip(starts, ends, strict=True)]


def token_tooltips(
    tokens: Sequence[str], scores: np.ndarray | None, t: int,
    evicted_at: np.ndarray | None = None, states: np.ndarray | None = None,
) -> list[str]:  # fmt: skip
    """One line per token 0..t: text, position, accumulated score and its rank among the
    tokens so far, and the cache state (with the step it was evicted at).

    Example: "' park' (token 7): score 0.20, rank 5 of 8; kept: recent run".
    """
    lines = []
    ranks = np.zeros(t + 1, dtype=np.int64)
    if scores is not None:
        ranks[np.argsort(-np.asarray(scores[: t + 1]), kind="stable")] = np.arange(1, t + 2)
    for j in range(t + 1):
        line = f"{tokens[j]!r} (token {j})"
        if scores is not None:
            line += f": score {float(scores[j]):.3g}, rank {ranks[j]} of {t + 1}"
        if states is not None:
            state = STATE_NAMES[int(states[j])]
            if evicted_at is not None and int(states[j]) in (EVICTED, EVICTED_NOW):
                state = f"evicted at step {int(evicted_at[j])}"
            line += f"; {state}"
        lines.append(line)
    return lines


def token_strip(
    states: Mapping[str, np.ndarray], t: int, tokens: Sequence[str] | None = None,
    scores: np.ndarray | None = None, evicted_at: Mapping[str, np.ndarray] | None = None,
) -> Spec:  # fmt: skip
    """One strip per policy: every token's cache state when row t is served.

    With ``tokens``, tokens 0..t are one mark each and the tooltip says the token's text,
    its accumulated score and rank (``scores``, the rows 0..t) and its state; tokens after
    t (not generated yet) stay one grey block.
    """
    rows = []
    for label, codes in states.items():
        if tokens is None:
            for start, end, code in _segments(codes):
                what = f"token {start}" if end - start == 1 else f"tokens {start}-{end - 1}"
                rows.append({"policy": label, "start": start, "end": end,
                             "state": STATE_NAMES[code], "tokens": what})  # fmt: skip
            continue
        left = None if evicted_at is None else evicted_at[label]
        tips = token_tooltips(tokens, scores, t, left, codes)
        for j in range(t + 1):
            rows.append({"policy": label, "start": j, "end": j + 1,
                         "state": STATE_NAMES[int(codes[j])], "tokens": tips[j]})  # fmt: skip
        if t + 1 < codes.size:
            rows.append({"policy": label, "start": t + 1, "end": int(codes.size),
                         "state": STATE_NAMES[FUTURE], "tokens": f"tokens {t + 1}-{codes.size - 1}"})  # fmt: skip
    n = int(next(iter(states.values())).size)
    codes = sorted(STATE_COLOURS)
    colour = _n("state", scale={"domain": [STATE_NAMES[c] for c in codes],
                                "range": [STATE_COLOURS[c] for c in codes]},
                legend={"orient": "top", "title": None, "columns": 5, "labelLimit": 300})  # fmt: skip
    return {
        "height": {"step": 26},
        "datasets": {"segments": rows, "now": [{"x": t + 1}]},
        "layer": [
            {"data": {"name": "segments"}, "mark": {"type": "rect", "strokeWidth": 0},
             "encoding": {
                 "x": _q("start", f"token position (the black line is step t = {t})",
                         scale={"domain": [0, n], "nice": False}),
                 "x2": {"field": "end"},
                 "y": _n("policy", title=None, sort=list(states)),
                 "color": colour,
                 "tooltip": [_n("tokens", title="token"), _n("policy")],
             }},
            {"data": {"name": "now"}, "mark": {"type": "rule", "color": "black", "strokeWidth": 1.5},
             "encoding": {"x": _q("x")}},
        ],
    }  # fmt: skip


def retained_mass_chart(
    curves: Mapping[str, np.ndarray], t: int, prompt_length: int, title: str
) -> Spec:
    """Retained attention mass of every row, one line per policy, a rule at step t."""
    import pandas as pd

    data = pd.concat(
        [pd.DataFrame({"step": np.arange(c.size), "retained mass": c, "policy": label})
         for label, c in curves.items()], ignore_index=True,
    )  # fmt: skip
    n = int(data["step"].max()) + 1
    prompt_data, prompt_layers = _prompt_rule(prompt_length, n)
    return {
        "title": title,
        "height": 300,
        "datasets": {"mass": data, "now": [{"step": t}], **prompt_data},
        "layer": [
            {"data": {"name": "mass"}, "mark": {"type": "line", "strokeWidth": 1.3},
             "encoding": {"x": _q("step", "step t"),
                          "y": _q("retained mass", scale={"domain": [0, 1]}),
                          "color": _policy_colour(list(curves)),
                          "tooltip": [_n("policy"), _q("step"), _q("retained mass", format=".3f")]}},
            *prompt_layers,
            {"data": {"name": "now"}, "mark": {"type": "rule", "color": "black", "strokeDash": [2, 2]},
             "encoding": {"x": _q("step")}},
        ],
    }  # fmt: skip


def eviction_times_chart(
    evicted_at: Mapping[str, np.ndarray], tokens: Sequence[str], t: int
) -> Spec:
    """When each token left the cache: token position across, eviction step up.

    Tokens never evicted sit on the top line (step n). The grey diagonal is the arrival
    of each token; at step t (dotted line) the cache holds the tokens left of t whose
    points lie above the dotted line.
    """
    import pandas as pd

    labels = _token_labels(tokens)
    frames = []
    for label, left in evicted_at.items():
        n = left.size
        frames.append(pd.DataFrame({
            "position": np.arange(n), "evicted at step": np.where(left < 0, n, left),
            "policy": label, "token": labels,
            "fate": np.where(left < 0, "never evicted", "evicted"),
        }))  # fmt: skip
    data = pd.concat(frames, ignore_index=True)
    n = int(data["position"].max()) + 1
    return {
        "title": "when each token left the cache",
        "height": 300,
        "datasets": {"evicted": data, "now": [{"y": t}],
                     "arrival": [{"x": 0, "y": 0}, {"x": n - 1, "y": n - 1}]},
        "layer": [
            {"data": {"name": "arrival"}, "mark": {"type": "line", "color": "#bbbbbb"},
             "encoding": {"x": _q("x"), "y": _q("y")}},
            {"data": {"name": "evicted"}, "mark": {"type": "point", "size": 14, "filled": True, "opacity": 0.75},
             "encoding": {
                 "x": _q("position", "token position j", scale={"domain": [0, n]}),
                 "y": _q("evicted at step", "step it was evicted (top row: never)", scale={"domain": [0, n + 2]}),
                 "color": _policy_colour(list(evicted_at)),
                 "shape": _n("policy", sort=list(evicted_at), legend=None),
                 "tooltip": [_n("policy"), _q("position"), _n("token"), _q("evicted at step"), _n("fate")],
             }},
            {"data": {"name": "now"}, "mark": {"type": "rule", "color": "black", "strokeDash": [2, 2]},
             "encoding": {"y": _q("y")}},
        ],
    }  # fmt: skip


# ----------------------------------------------------------------- policy race
def race_chart(
    records: Sequence[Mapping[str, Any]],
    metric: str,
    label: str,
    *,
    shade: str | None = None,
    optimum: str = "opt",
) -> Spec:
    """``metric`` against the budget, one line per policy; the gap ``shade`` -> ``optimum`` filled.

    A policy replayed at one budget only (``full``, which keeps everything) is a rule.
    """
    import pandas as pd

    rows = [r for r in records if r.get(metric) is not None]
    data = pd.DataFrame({
        "policy": [r["policy"] for r in rows], "budget": [r["budget_fraction"] for r in rows],
        "k": [r["budget"] for r in rows], label: [r[metric] for r in rows],
    })  # fmt: skip
    policies = list(dict.fromkeys(data["policy"]))
    counts = data.groupby("policy")["budget"].transform("count")
    x = _q("budget", "budget (share of the sequence kept)")
    tooltip = [_n("policy"), _q("budget", format=".2f"), _q("k"), _q(label, format=".4f")]
    wide = data[counts > 1].pivot_table(index="budget", columns="policy", values=label)
    gapped = bool(shade and shade != optimum and shade in wide and optimum in wide)
    gap_label = f"gap {shade} to {optimum} (shaded)"
    colour = _policy_colour(policies, {gap_label: GAP_COLOUR} if gapped else None)
    dash = _policy_dash(policies)
    layers: list[Spec] = [
        {"data": {"name": "curves"}, "mark": {"type": "line", "point": True},
         "encoding": {"x": x, "y": _q(label, label, scale={"zero": False}), "color": colour,
                      "strokeDash": dash, "tooltip": tooltip}},
        {"data": {"name": "flat"}, "mark": {"type": "rule", "strokeDash": [5, 3]},
         "encoding": {"y": _q(label), "color": colour, "tooltip": tooltip}},
    ]  # fmt: skip
    datasets: dict[str, Any] = {"curves": data[counts > 1], "flat": data[counts == 1]}
    if gapped:
        gap = wide[[shade, optimum]].dropna().reset_index()
        gap.columns = ["budget", "policy value", "optimum value"]
        gap["policy"] = gap_label  # its own legend entry
        datasets["gap"] = gap
        layers.insert(0, {
            "data": {"name": "gap"}, "mark": {"type": "area", "opacity": 0.25},
            "encoding": {"x": x, "y": _q("policy value", label), "y2": {"field": "optimum value"},
                         "color": colour,
                         "tooltip": [_q("budget", format=".2f"),
                                     _q("policy value", shade, format=".4f"),
                                     _q("optimum value", optimum, format=".4f")]},
        })  # fmt: skip
    return {"title": f"{label} vs budget", "height": 340, "datasets": datasets, "layer": layers}


# ----------------------------------------------------------------- text
def _escape(piece: str) -> str:
    return html.escape(piece).replace("\n", "↵<br>")


def weighted_tokens_html(
    tokens: Sequence[str], weights: np.ndarray, scores: np.ndarray,
    score_label: str = "accumulated attention",
) -> str:  # fmt: skip
    """Text with each token's background as orange as its weight in [0, 1]; hovering a
    token shows its text, position, score and rank (1 = highest score)."""
    ranks = np.empty(scores.size, dtype=np.int64)
    ranks[np.argsort(-scores, kind="stable")] = np.arange(1, scores.size + 1)
    spans = []
    for position, (piece, weight, score) in enumerate(zip(tokens, weights, scores, strict=True)):
        alpha = float(np.clip(weight, 0.0, 1.0))
        colour = "#000" if alpha < 0.6 else "#fff"
        tip = html.escape(f"{piece!r} (token {position}): {score_label} {score:.3g}, "
                          f"rank {ranks[position]} of {scores.size}", quote=True)  # fmt: skip
        spans.append(
            f'<span title="{tip}" style="background: rgba(217, 95, 2, '
            f'{alpha:.2f}); color: {colour}; white-space: pre-wrap">{_escape(piece)}</span>'
        )
    return _text_box("".join(spans))


def cache_text_html(
    tokens: Sequence[str], states: np.ndarray, t: int, scores: np.ndarray | None = None,
    evicted_at: np.ndarray | None = None,
) -> str:  # fmt: skip
    """Tokens 0..t styled by cache state: kept (recent blue, older orange), evicted struck;
    hovering a token shows its text, score, rank and state (:func:`token_tooltips`)."""
    styles = {
        EVICTED: "color: #999; text-decoration: line-through",
        EVICTED_NOW: "color: #fff; background: #d62728; text-decoration: line-through",
        RECENT: "background: rgba(76, 143, 214, 0.30)",
        HEAVY: "background: rgba(242, 142, 43, 0.55)",
    }
    tips = token_tooltips(tokens, scores, t, evicted_at, states)
    spans = [
        f'<span title="{html.escape(tips[position], quote=True)}" '
        f'style="{styles[int(states[position])]}; white-space: pre-wrap">'
        f"{_escape(tokens[position])}</span>"
        for position in range(t + 1)
    ]
    return _text_box("".join(spans))


def _text_box(inner: str) -> str:
    return (
        '<div style="font-family: ui-monospace, monospace; font-size: 0.8rem; line-height: 1.6; '
        "max-height: 20rem; overflow-y: auto; border: 1px solid #ddd; border-radius: 4px; "
        f'padding: 0.5rem">{inner}</div>'
    )


# ----------------------------------------------------------------- live lab
def running_perplexity_chart(logprobs: Mapping[str, np.ndarray], budget: int) -> Spec:
    """Perplexity of the text so far, ``exp(-mean log p)`` over predictions 0..t, per policy.

    Lines agree until the cache first fills (step ``budget``, the rule); after that each
    policy's evictions change what the model sees. Example: log p [-1, -3] -> [e, e^2].
    """
    import pandas as pd

    frames = []
    for label, values in logprobs.items():
        running = np.exp(-np.cumsum(values) / np.arange(1, values.size + 1))
        frames.append(
            pd.DataFrame({"step": np.arange(values.size), "perplexity": running, "policy": label})
        )
    data = pd.concat(frames, ignore_index=True)
    return {
        "title": "perplexity of the text so far",
        "height": 320,
        "datasets": {"ppl": data, "full": [{"step": budget, "label": "the cache is full: eviction starts"}]},
        "layer": [
            {"data": {"name": "ppl"}, "mark": {"type": "line", "strokeWidth": 1.5},
             "encoding": {"x": _q("step", "token t (predicting t + 1)"),
                          "y": _q("perplexity", "running perplexity", scale={"type": "log"}),
                          "color": _policy_colour(list(logprobs)),
                          "tooltip": [_n("policy"), _q("step"), _q("perplexity", format=".2f")]}},
            {"data": {"name": "full"}, "mark": {"type": "rule", "color": "grey", "strokeDash": [4, 3]},
             "encoding": {"x": _q("step"), "tooltip": [_n("label")]}},
        ],
    }  # fmt: skip


# ----------------------------------------------------------------- needle lab
def needle_answers_chart(records: Sequence[Mapping[str, Any]]) -> Spec:
    """One bar per run (the full cache first): the share of (cache unit, needle token)
    pairs still cached at the answer row, in the policy's colour, labelled right or wrong.

    Example: records [{"policy": "full", "needle_held": 1.0, "correct": True, ...}] ->
    one grey bar at 100% labelled "right".
    """
    rows = [{"policy": r["policy"], "needle held": float(r["needle_held"]),
             "answer": "right" if r["correct"] else "wrong", "output": str(r["output"]).strip(),
             "k": int(r["budget"])} for r in records]  # fmt: skip
    policies = [row["policy"] for row in rows]
    colour = _policy_colour(policies)
    colour["legend"] = None  # the axis names the policies
    y = _n("policy", title=None, sort=policies)
    tooltip = [_n("policy"), _q("k"), _q("needle held", format=".0%"), _n("answer"), _n("output")]
    return {
        "title": "needle held, and the answer",
        "height": {"step": 34},
        "datasets": {"runs": rows},
        "resolve": {"scale": {"color": "independent"}},  # policy colours; right/wrong
        "layer": [
            {"data": {"name": "runs"}, "mark": {"type": "bar"},
             "encoding": {"y": y, "x": _q("needle held", "share of the needle held (all cache units)",
                                          scale={"domain": [0, 1]}, axis={"format": "%"}),
                          "color": colour, "tooltip": tooltip}},
            {"data": {"name": "runs"}, "mark": {"type": "text", "align": "left", "dx": 4,
                                                "fontWeight": "bold"},
             "encoding": {"y": y, "x": _q("needle held"), "text": _n("answer"),
                          "color": _n("answer", scale={"domain": ["right", "wrong"],
                                                       "range": ["#1a9850", "#d73027"]},
                                      legend=None),
                          "tooltip": tooltip}},
        ],
    }  # fmt: skip


def needle_tokens_chart(
    held: Mapping[str, Sequence[float]], pieces: Sequence[str], positions: Sequence[int]
) -> Spec:
    """Policy x needle token: the share of cache units that still held the token at the
    answer row (green = every unit, red = none); hovering names the token's text."""
    columns = [f"{piece!r} @{position}" for piece, position in zip(pieces, positions, strict=True)]
    rows = [{"policy": name, "token": column, "held": float(share)}
            for name, shares in held.items()
            for column, share in zip(columns, shares, strict=True)]  # fmt: skip
    return {
        "title": "which needle tokens each cache held",
        "height": {"step": 34},
        "datasets": {"held": rows},
        "layer": [
            {"data": {"name": "held"}, "mark": {"type": "rect"},
             "encoding": {"x": _n("token", title="needle token (text @ position)", sort=columns),
                          "y": _n("policy", title=None, sort=list(held)),
                          "color": _q("held", "units holding it",
                                      scale={"domain": [0, 1], "scheme": "redyellowgreen"},
                                      legend={"format": "%"}),
                          "tooltip": [_n("policy"), _n("token"), _q("held", format=".0%")]}},
            {"data": {"name": "held"}, "mark": {"type": "text", "fontSize": 11},
             "encoding": {"x": _n("token", sort=columns), "y": _n("policy", sort=list(held)),
                          "text": _q("held", format=".0%")}},
        ],
    }  # fmt: skip


# ----------------------------------------------------------------- theory lab


def greedy_chart(greedy_values: Sequence[float], optimal_values: Sequence[float]) -> Spec:
    """Greedy's value after t picks, the exact optimum with t elements, and (1 - 1/e) of it."""
    rows = []
    for t, (value, best) in enumerate(zip(greedy_values, optimal_values, strict=True)):
        rows += [{"budget": t, "value": value, "curve": "greedy f(S_t)"},
                 {"budget": t, "value": best, "curve": "optimum OPT_t (brute force)"},
                 {"budget": t, "value": ONE_MINUS_INV_E * best, "curve": "(1 - 1/e) OPT_t"}]  # fmt: skip
    curves = ["greedy f(S_t)", "optimum OPT_t (brute force)", "(1 - 1/e) OPT_t"]
    return {
        "title": "greedy vs the optimum, budget by budget",
        "height": 300,
        "datasets": {"curves": rows},
        "layer": [{
            "data": {"name": "curves"}, "mark": {"type": "line", "point": True},
            "encoding": {
                "x": _q("budget", "budget t (elements picked)", axis={"tickMinStep": 1}),
                "y": _q("value", "f"),
                "color": _n("curve", scale={"domain": curves, "range": ["#1b9e77", "#333333", "#d62728"]},
                            legend={"orient": "bottom", "title": None, "labelLimit": 320}),
                "strokeDash": _n("curve", scale={"domain": curves, "range": [[1, 0], [1, 0], [5, 3]]},
                                 legend=None),
                "tooltip": [_n("curve"), _q("budget"), _q("value", format=".4f")],
            },
        }],
    }  # fmt: skip


VACUOUS_FLOOR = (
    -1.0
)  # shares of opt below this are drawn at the floor (the bound says nothing there)


def _share_domain(*series: np.ndarray) -> list[float]:
    """y-domain for shares of opt: from min(0, the lowest value) (floored at VACUOUS_FLOOR) to
    1.02, so a negative (vacuous) bound stays in view. Example: [0.5, -8.6] -> [-1.0, 1.02]."""
    values = np.concatenate([np.asarray(s, dtype=np.float64).ravel() for s in series])
    values = values[np.isfinite(values)]
    low = float(values.min()) if values.size else 0.0
    return [max(VACUOUS_FLOOR, min(0.0, np.floor(low * 10) / 10)), 1.02]


def bound_chart(bound: Mapping[str, Any]) -> Spec:
    """Our a-posteriori certificate on a trace, as shares of the per-step optimum opt_i.

    Values below VACUOUS_FLOOR are clipped to it (the tooltip keeps the true value); the
    y-domain always includes the lowest drawn value, so ticking "charge score errors to
    beta" (bounds of -8.6 or -30) keeps the axis, the title and the band."""
    import pandas as pd

    n = len(bound["ratio_mean"])
    held, floor = (
        "held f(S_i) / opt_i (mean over units)",
        "our certificate / opt_i (mean over units)",
    )
    tighter = "1 - e^-(1 - alpha) form (mean)"
    data = pd.DataFrame({
        "step": np.arange(n), "low": bound["ratio_min"], "high": bound["ratio_max"],
        held: bound["ratio_mean"], floor: bound["bound_mean"], tighter: bound["bound_exp_mean"],
    })  # fmt: skip
    lines = data.melt(id_vars=["step"], value_vars=[held, floor, tighter], var_name="curve",
                      value_name="value")  # fmt: skip
    lines["share of opt_i"] = lines["value"].clip(lower=VACUOUS_FLOOR)
    domain = _share_domain(data["low"], lines["share of opt_i"])
    prompt_data, prompt_layers = _prompt_rule(bound["prompt_length"], n)
    return {
        "title": "our a-posteriori certificate (valid for any set): held value vs certificate",
        "height": 320,
        "datasets": {"band": data, "lines": lines,
                     "rules": [{"y": ONE_MINUS_INV_E, "label": "1 - 1/e"},
                               {"y": 0.0, "label": "0: below it a bound says nothing (vacuous)"}],
                     **prompt_data},
        "layer": [
            {"data": {"name": "band"}, "mark": {"type": "area", "color": "#1b9e77", "opacity": 0.2, "clip": True},
             "encoding": {"x": _q("step", "step i"), "y": _q("low", "share of opt_i", scale={"domain": domain}),
                          "y2": {"field": "high"}, "tooltip": [_q("step"), _q("low", format=".3f"), _q("high", format=".3f")]}},
            {"data": {"name": "lines"}, "mark": {"type": "line", "strokeWidth": 1.4, "clip": True},
             "encoding": {"x": _q("step"), "y": _q("share of opt_i"),
                          "color": _n("curve", scale={"domain": [held, floor, tighter],
                                                      "range": ["#1b9e77", "#d62728", "#ff9896"]},
                                      legend={"orient": "bottom", "title": None, "labelLimit": 320}),
                          "tooltip": [_n("curve"), _q("step"), _q("value", format=".3f")]}},
            {"data": {"name": "rules"}, "mark": {"type": "rule", "color": "grey", "strokeDash": [5, 3]},
             "encoding": {"y": _q("y"), "tooltip": [_n("label")]}},
            *prompt_layers,
        ],
    }  # fmt: skip


def paper_hypotheses_chart(steps: Mapping[str, Any], n: int) -> Spec:
    """Thm D.32's hypotheses over the steps (log scale): gamma_i as D.30 uses D.28, theta_i
    and eps0_i / opt_i where positive, against the largest value any alpha < 1 allows,
    alpha / (10 n) = 1 / (10 n). Points above the line break the theorem's hypotheses."""
    curves = {"gamma_lemma": "gamma_i (D.28 as D.30 uses it)", "theta": "theta_i (D.26), where > 0",
              "eps0_over_opt": "eps0_i / opt_i, where > 0"}  # fmt: skip
    rows = [{"step": t, "value": value, "curve": label}
            for name, label in curves.items()
            for t, value in enumerate(steps[name]) if value is not None and value > 0]  # fmt: skip
    limit = 1.0 / (10.0 * n)
    return {
        "title": "Thm D.32's hypotheses vs alpha/(10 n)",
        "height": 300,
        "datasets": {"hyp": rows, "limit": [{"y": limit, "label": f"alpha/(10 n) with alpha -> 1: {limit:.2g}"}]},
        "layer": [
            {"data": {"name": "hyp"}, "mark": {"type": "line", "strokeWidth": 1.2, "point": False},
             "encoding": {"x": _q("step", "step i"), "y": _q("value", "value (log)", scale={"type": "log"}),
                          "color": _n("curve", scale={"domain": list(curves.values()),
                                                      "range": ["#d62728", "#1f78b4", "#7b3294"]},
                                      legend={"orient": "bottom", "title": None, "labelLimit": 320}),
                          "tooltip": [_n("curve"), _q("step"), _q("value", format=".3g")]}},
            {"data": {"name": "limit"}, "mark": {"type": "rule", "color": "black", "strokeDash": [6, 3]},
             "encoding": {"y": _q("y"), "tooltip": [_n("label")]}},
        ],
    }  # fmt: skip


def paper_bound_chart(steps: Mapping[str, Any], prompt_length: int) -> Spec:
    """Lemma D.30's bound and the per-step chain against what the policy held, as shares of
    opt_(i+1) (the lemma compares with the next step's optimum); clipped at VACUOUS_FLOOR."""
    n = len(steps["held_over_next_opt"])
    curves = {"held_over_next_opt": "held f(S_i) / opt_(i+1)",
              "lemma_d30_bound_over_opt": "Lemma D.30 bound / opt_(i+1)",
              "per_step_chain_over_opt": "chain with gamma per step / opt_(i+1)"}  # fmt: skip
    rows = [{"step": t, "value": value, "share": max(value, VACUOUS_FLOOR), "curve": label}
            for name, label in curves.items()
            for t, value in enumerate(steps[name]) if value is not None]  # fmt: skip
    domain = _share_domain(np.array([row["share"] for row in rows] or [0.0]))
    prompt_data, prompt_layers = _prompt_rule(prompt_length, n)
    return {
        "title": "Lemma D.30's bound vs what the policy held",
        "height": 300,
        "datasets": {"chain": rows, "zero": [{"y": 0.0, "label": "0: below it the bound is vacuous"}],
                     **prompt_data},
        "layer": [
            {"data": {"name": "chain"}, "mark": {"type": "line", "strokeWidth": 1.3, "clip": True},
             "encoding": {"x": _q("step", "step i"), "y": _q("share", "share of opt_(i+1)", scale={"domain": domain}),
                          "color": _n("curve", scale={"domain": list(curves.values()),
                                                      "range": ["#1b9e77", "#d62728", "#999999"]},
                                      legend={"orient": "bottom", "title": None, "labelLimit": 320}),
                          "tooltip": [_n("curve"), _q("step"), _q("value", format=".3g")]}},
            {"data": {"name": "zero"}, "mark": {"type": "rule", "color": "grey", "strokeDash": [5, 3]},
             "encoding": {"y": _q("y"), "tooltip": [_n("label")]}},
            *prompt_layers,
        ],
    }  # fmt: skip


def alpha_beta_chart(bound: Mapping[str, Any]) -> Spec:
    """The measured alpha (drift) and beta / opt (score error) of our certificate."""
    import pandas as pd

    n = len(bound["alpha_mean"])
    data = pd.DataFrame(
        {"step": np.arange(n), "alpha": bound["alpha_mean"], "beta / opt": bound["beta_mean"]}
    )
    data = data.melt(id_vars=["step"], var_name="quantity", value_name="mean over units")
    return {
        "title": "measured alpha and beta / opt",
        "height": 300,
        "datasets": {"ab": data},
        "layer": [{"data": {"name": "ab"}, "mark": {"type": "line", "strokeWidth": 1.2},
                   "encoding": {"x": _q("step", "step i"), "y": _q("mean over units"),
                                "color": _n("quantity", scale={"range": ["#f28e2b", "#7b3294"]},
                                            legend={"orient": "bottom", "title": None}),
                                "tooltip": [_n("quantity"), _q("step"), _q("mean over units", format=".3f")]}}],
    }  # fmt: skip
