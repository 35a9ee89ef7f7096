"""Page 2, Eviction dynamics: two policies evict from the same cache, step by step."""

import streamlit as st
from h2oapp import analysis, cached, figures
from h2oapp.controls import (
    PAPER,
    default,
    offered,
    page_intro,
    parse_float,
    player,
    policy_label,
    policy_parameters,
    presenter,
    replay_options,
    share_state,
    trace_picker,
    unit_name,
    url_value,
)

from h2osim.engine import resolve_budget

page_intro(
    "Eviction dynamics",
    f"""The cache may hold only *k* tokens per cache unit (one layer's KV head). Every step
a new token arrives; when the cache is full, the policy must **evict** one, for good.
[H2O]({PAPER}) (**Section 4**, Algorithm 1) keeps the tokens with the largest
**accumulated attention** (the heavy hitters of Section 3) plus a window of the most
recent tokens; a plain **window** keeps only the newest. Press play and watch the token
strip: blue tokens are the recent run, orange ones are older tokens a policy chose to
keep, red is the token evicted at this step. Below, the share of each row's attention
that still lands on kept tokens (**retained mass**) and when every token left.""",
    page="dynamics",
)

key = trace_picker()
if key is None:
    st.stop()
trace = cached.load_trace(key)
from_url = (url_value("policies") or "").split(",")
for slot, wanted in zip(("dyn_policy_a", "dyn_policy_b"), from_url, strict=False):
    if wanted in offered([]):
        st.session_state[slot] = wanted
url_budget = parse_float(url_value("budget"))
if url_budget is not None:  # the slider's grid: 0.05 .. 1 in steps of 0.05
    st.session_state["dyn_budget"] = min(1.0, max(0.05, round(url_budget * 20) / 20))
default("dyn_policy_a", "h2o")
default("dyn_policy_b", "window")
default("dyn_budget", 0.2)
names = offered([st.session_state["dyn_policy_a"], st.session_state["dyn_policy_b"]])

panel = st.sidebar if presenter() else st.container()  # presenter: controls in the sidebar
columns = [panel] * 3 if presenter() else panel.columns([1, 1, 1])
policy_a = columns[0].selectbox("Left policy", names, format_func=policy_label, key="dyn_policy_a")
policy_b = columns[1].selectbox("Right policy", names, format_func=policy_label, key="dyn_policy_b")
budget = columns[2].slider(
    "Budget: share of the sequence each cache unit keeps", 0.05, 1.0, step=0.05,
    key="dyn_budget", format="%.2f",
)  # fmt: skip
columns[2].caption(
    f"k = {resolve_budget(budget, trace.n, trace.prompt_length)} of {trace.n} tokens"
)
share_state(policies=[policy_a, policy_b], budget=budget)
with panel.expander("Policy parameters"):
    params_a = policy_parameters(policy_a, "dyn_a")
    params_b = policy_parameters(policy_b, "dyn_b")
    if not params_a and not params_b:
        st.caption("Neither policy has parameters.")
options = replay_options("dyn", panel)
default("dyn_output_error", False)
output_error = panel.checkbox(
    "Also measure the attention-output error (replays take about 3x longer)",
    key="dyn_output_error", disabled=not trace.has_values,
    help="The relative L2 error of each attention output when computed over the kept "
    "tokens only; needs the value vectors stored in the trace.",
)  # fmt: skip

labels = (
    (policy_a, policy_b) if policy_a != policy_b else (f"{policy_a} (left)", f"{policy_b} (right)")
)
chosen = {labels[0]: (policy_a, params_a), labels[1]: (policy_b, params_b)}
try:
    with st.spinner("Replaying the trace ..."):
        results = {label: cached.replay_result(key, policy, params, budget, options)
                   for label, (policy, params) in chosen.items()}  # fmt: skip
        # the output error is a number of the metric row only: the race's cell (read from
        # the setup store when it holds it, else one replay with the error), so ticking
        # the box does not replay the animation's arrays again
        errors = {label: cached.race_record(key, policy, params, budget, options, True)["output_error"]
                  for label, (policy, params) in chosen.items() if output_error}  # fmt: skip
except ValueError as exc:
    st.error(f"Cannot replay with these settings: {exc}")
    st.stop()

summary = st.container()  # the metric row: above the animation, below it when presenting


def metric_row() -> None:
    for column, (label, result) in zip(st.columns(2), results.items(), strict=True):
        column.markdown(f"**{label}**: `{result.description}`, k = {result.budget}")
        cells = column.columns(3)
        cells[0].metric("Retained mass", f"{result.summary['retained_mass']:.3f}",
                      help="Mean over all steps and cache units (1 = nothing lost).")  # fmt: skip
        cells[1].metric("Hit rate", f"{result.summary['hit_rate']:.3f}",
                      help="Share of significant keys (>= 1% of the row max) still cached.")  # fmt: skip
        error = errors.get(label)
        cells[2].metric("Output error", "off" if error is None else f"{error:.3f}",
                      help="Relative L2 error of the attention output; tick the box above "
                      "to measure it (needs value vectors in the trace).")  # fmt: skip


unit_labels = next(iter(results.values())).unit_labels
if st.session_state.get("dyn_for_trace") != (key[0], options) or st.session_state.get(
    "dyn_unit", len(unit_labels)
) >= len(unit_labels):  # a new trace or unit layout: open on the showcase head's cache unit
    layer, head = cached.showcase_head(key)
    wanted = (layer, head if options[0] == "per-head" else int(trace.head_map[head]))
    st.session_state["dyn_unit"] = unit_labels.index(wanted)
    st.session_state["dyn_for_trace"] = (key[0], options)
unit = panel.selectbox(
    "Cache unit to watch", list(range(len(unit_labels))), key="dyn_unit",
    format_func=lambda index: unit_name(unit_labels[index], options),
)  # fmt: skip


# ----------------------------------------------------------------- the animation
def cache_view(t: int) -> None:
    """The cache at step t (re-drawn alone every frame while playing)."""
    states = {label: analysis.cache_states(r.evicted_at[unit], t) for label, r in results.items()}
    scores = accumulated[t]  # (n,) full-cache accumulated attention of rows 0..t
    st.vega_lite_chart(spec=figures.token_strip(states, t, trace.tokens, scores,
                                                evicted_at), width="stretch")  # fmt: skip
    text_columns = st.columns(2)
    for column, (label, result) in zip(text_columns, results.items(), strict=True):
        kept = int(
            (states[label] == analysis.RECENT).sum() + (states[label] == analysis.HEAVY).sum()
        )
        mass = float(result.retained_mass[t, unit])
        column.markdown(f"**{label}** at step {t}: {kept} tokens kept, retained mass {mass:.3f}")
        column.html(figures.cache_text_html(trace.tokens, states[label], t, scores,
                                            result.evicted_at[unit]))  # fmt: skip
    chart_columns = st.columns(2)
    curves = {label: r.retained_mass[:, unit] for label, r in results.items()}
    chart_columns[0].vega_lite_chart(
        spec=figures.retained_mass_chart(curves, t, trace.prompt_length,
                                    f"retained mass of each row, {unit_name(unit_labels[unit], options)}"),
        width="stretch",
    )  # fmt: skip
    evicted = {label: r.evicted_at[unit] for label, r in results.items()}
    chart_columns[1].vega_lite_chart(
        spec=figures.eviction_times_chart(evicted, trace.tokens, t), width="stretch"
    )


accumulated = cached.unit_accumulated(key, options, unit)
evicted_at = {label: r.evicted_at[unit] for label, r in results.items()}
if not presenter():
    with summary:
        metric_row()
player("dyn", trace.n - 1, cache_view)
if presenter():
    metric_row()
st.caption(
    "Recent run = the unbroken run of kept tokens ending at step t; older kept tokens "
    "survived because the policy ranked them high (heavy hitters, for h2o). Open loop: "
    "every row comes from the full-cache model, so evictions never change later rows; "
    "what eviction really does to generation is measured by live (closed-loop) eviction."
)
