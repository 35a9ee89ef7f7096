"""Page 2, Eviction dynamics: two policies evict from the same cache, step by step."""

import streamlit as st
from h2oapp import analysis, cached, figures
from h2oapp.controls import (
    PAPER,
    default,
    page_intro,
    policy_label,
    policy_parameters,
    replay_options,
    trace_picker,
    unit_name,
)

from h2osim.engine import resolve_budget
from h2osim.policies import policy_names

FRAME_SECONDS = 0.6  # one animation frame; each frame advances "steps per frame" tokens

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
)

key = trace_picker()
if key is None:
    st.stop()
trace = cached.load_trace(key)
names = policy_names()
default("dyn_policy_a", "h2o" if "h2o" in names else names[0])
default("dyn_policy_b", "window" if "window" in names else names[-1])
default("dyn_budget", 0.2)
default("dyn_playing", False)

columns = st.columns([1, 1, 1])
policy_a = columns[0].selectbox("Left policy", names, format_func=policy_label, key="dyn_policy_a")
policy_b = columns[1].selectbox("Right policy", names, format_func=policy_label, key="dyn_policy_b")
budget = columns[2].slider(
    "Budget: share of the sequence each cache unit keeps", 0.05, 1.0, step=0.05,
    key="dyn_budget", format="%.2f",
)  # fmt: skip
columns[2].caption(
    f"k = {resolve_budget(budget, trace.n, trace.prompt_length)} of {trace.n} tokens"
)
with st.expander("Policy parameters"):
    params_a = policy_parameters(policy_a, "dyn_a")
    params_b = policy_parameters(policy_b, "dyn_b")
    if not params_a and not params_b:
        st.caption("Neither policy has parameters.")
options = replay_options("dyn")
default("dyn_output_error", False)
output_error = st.checkbox(
    "Also measure the attention-output error (replays take about 3x longer)",
    key="dyn_output_error", disabled=not trace.has_values,
    help="The relative L2 error of each attention output when computed over the kept "
    "tokens only; needs the value vectors stored in the trace.",
)  # fmt: skip

labels = (
    (policy_a, policy_b) if policy_a != policy_b else (f"{policy_a} (left)", f"{policy_b} (right)")
)
try:
    with st.spinner("Replaying the trace ..."):
        results = {
            labels[0]: cached.replay_result(key, policy_a, params_a, budget, options, output_error),
            labels[1]: cached.replay_result(key, policy_b, params_b, budget, options, output_error),
        }
except ValueError as exc:
    st.error(f"Cannot replay with these settings: {exc}")
    st.stop()

summary_columns = st.columns(2)
for column, (label, result) in zip(summary_columns, results.items(), strict=True):
    column.markdown(f"**{label}**: `{result.description}`, k = {result.budget}")
    cells = column.columns(3)
    cells[0].metric("Retained mass", f"{result.summary['retained_mass']:.3f}",
                    help="Mean over all steps and cache units (1 = nothing lost).")  # fmt: skip
    cells[1].metric("Hit rate", f"{result.summary['hit_rate']:.3f}",
                    help="Share of significant keys (>= 1% of the row max) still cached.")  # fmt: skip
    error = result.summary["output_error"]
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
unit = st.selectbox(
    "Cache unit to watch", list(range(len(unit_labels))), key="dyn_unit",
    format_func=lambda index: unit_name(unit_labels[index], options),
)  # fmt: skip

# ----------------------------------------------------------------- the animation
last_step = trace.n - 1
default("dyn_step", last_step)
default("dyn_speed", 4)
if st.session_state["dyn_step"] > last_step:
    st.session_state["dyn_step"] = last_step


def _toggle_play() -> None:
    playing = not st.session_state["dyn_playing"]
    st.session_state["dyn_playing"] = playing
    if playing and st.session_state["dyn_step"] >= last_step:
        st.session_state["dyn_step"] = 0


def _move(delta: int) -> None:
    st.session_state["dyn_playing"] = False
    st.session_state["dyn_step"] = min(last_step, max(0, st.session_state["dyn_step"] + delta))


buttons = st.columns([1, 1, 1, 1, 3])
playing = st.session_state["dyn_playing"]
buttons[0].button(
    "start", key="dyn_start", icon=":material/first_page:", on_click=_move, args=(-trace.n,)
)
buttons[1].button(
    "step", key="dyn_back", icon=":material/chevron_left:", on_click=_move, args=(-1,)
)
buttons[2].button(
    "pause" if playing else "play", key="dyn_play", type="primary", on_click=_toggle_play,
    icon=":material/pause:" if playing else ":material/play_arrow:",
)  # fmt: skip
buttons[3].button(
    "step",
    key="dyn_forward",
    icon=":material/chevron_right:",
    icon_position="right",
    on_click=_move,
    args=(1,),
)
buttons[4].select_slider("Tokens per frame", [1, 2, 4, 8, 16], key="dyn_speed")


@st.fragment(run_every=FRAME_SECONDS if st.session_state["dyn_playing"] else None)
def cache_view() -> None:
    """The cache at step t; while playing, re-runs alone every frame and advances t."""
    if st.session_state["dyn_playing"]:
        step = st.session_state["dyn_step"] + st.session_state["dyn_speed"]
        st.session_state["dyn_step"] = min(step, last_step)
        if step >= last_step:  # the end: stop, and re-run the page to drop the timer
            st.session_state["dyn_playing"] = False
            st.rerun()
    t = st.slider("Step t", 0, last_step, key="dyn_step")
    states = {label: analysis.cache_states(r.evicted_at[unit], t) for label, r in results.items()}
    st.vega_lite_chart(spec=figures.token_strip(states, t), width="stretch")
    text_columns = st.columns(2)
    for column, (label, result) in zip(text_columns, results.items(), strict=True):
        kept = int(
            (states[label] == analysis.RECENT).sum() + (states[label] == analysis.HEAVY).sum()
        )
        mass = float(result.retained_mass[t, unit])
        column.markdown(f"**{label}** at step {t}: {kept} tokens kept, retained mass {mass:.3f}")
        column.html(figures.cache_text_html(trace.tokens, states[label], t))
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


cache_view()
st.caption(
    "Recent run = the unbroken run of kept tokens ending at step t; older kept tokens "
    "survived because the policy ranked them high (heavy hitters, for h2o). Open loop: "
    "every row comes from the full-cache model, so evictions never change later rows; "
    "what eviction really does to generation is measured by live (closed-loop) eviction."
)
