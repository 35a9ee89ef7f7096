"""Page 3, Policy race: budget sweeps of several policies, the offline optimum as the bar."""

import pandas as pd
import streamlit as st
from h2oapp import cached, figures
from h2oapp.controls import (
    CLASSROOM,
    PAPER,
    default,
    offered,
    page_intro,
    parse_float,
    policy_glossary,
    policy_parameters,
    policy_short_label,
    presenter,
    replay_options,
    share_state,
    trace_picker,
    url_value,
)

from h2osim.engine import resolve_budget
from h2osim.policies import policy_names

OPTIMUM = "opt"  # the exact offline optimum of permanent eviction, when registered
BUDGET_GRID = [
    0.05,
    0.1,
    0.15,
    0.2,
    0.25,
    0.3,
    0.4,
    0.5,
    0.6,
    0.8,
    1.0,
]  # replays are cached per point
METRICS = {
    "retained_mass": "retained mass",
    "retained_mass_decode": "retained mass (decode steps)",
    "worst_unit_mass": "retained mass (worst unit)",
    "hit_rate": "hit rate",
    "output_error": "output error",
    "output_error_decode": "output error (decode steps)",
}

page_intro(
    "Policy race",
    f"""How much does a policy lose at each cache size? Each curve replays the whole trace
at several budgets and plots the mean **retained attention mass** (higher is better) and
the **attention-output error** (lower is better): the cache world's miss-ratio curve.
[H2O]({PAPER}) **Section 4** argues that greedily keeping heavy hitters plus recent tokens
loses little; its **Section 5** measures the same on downstream tasks. Offline oracles
(marked *offline*) see the whole future: `{OPTIMUM}`, the best any permanent-eviction
policy can do, is the bar the online policies race against; the shaded band is the gap.""",
    page="race",
)

key = trace_picker()
if key is None:
    st.stop()
trace = cached.load_trace(key)
names = policy_names()
offline = policy_names(online=False)
url_policies = url_value("policies")
if url_policies:
    st.session_state["race_policies"] = [p for p in url_policies.split(",") if p in names]
url_budgets = [parse_float(b) for b in (url_value("budget") or "").split(",") if b]
if url_budgets:
    st.session_state["race_budgets"] = [b for b in BUDGET_GRID if b in url_budgets]
default("race_policies", [name for name in CLASSROOM if name in names])
default("race_budgets", [0.1, 0.2, 0.3, 0.5])

panel = st.sidebar if presenter() else st.container()  # presenter: controls in the sidebar
chosen = panel.multiselect(
    "Policies", offered(st.session_state["race_policies"]), format_func=policy_short_label,
    key="race_policies",
    help="The classroom set; switch on 'Advanced policies' in the sidebar for every "
    "registered policy. Offline oracles (dashed) know the whole trace in advance.",
)  # fmt: skip
with panel:
    policy_glossary()
columns = [panel, panel] if presenter() else panel.columns([3, 1])
budgets = sorted(
    columns[0].pills(
        "Budgets (share of the sequence kept per cache unit)",
        BUDGET_GRID,
        selection_mode="multi",
        key="race_budgets",
        help="Each policy is replayed once per budget; replays are cached, so adding a "
        "budget or a policy only computes what is new.",
    )  # fmt: skip
)
if budgets:
    columns[1].caption(
        "k = " + ", ".join(str(resolve_budget(b, trace.n, trace.prompt_length)) for b in budgets)
        + f" of {trace.n} tokens"
    )  # fmt: skip
share_state(policies=chosen, budget=budgets)
if OPTIMUM not in names:
    st.info(
        f"The exact offline optimum `{OPTIMUM}` is not registered yet: once the oracle "
        "policies land in `h2osim/policies/` it appears in the list and the gap from any "
        "online policy to it is shaded here."
    )
if not chosen or not budgets:
    st.warning("Choose at least one policy and one budget.")
    st.stop()
with panel.expander("Policy parameters"):
    params = {name: policy_parameters(name, "race") for name in chosen}
options = replay_options("race", panel)
default("race_second", "hit_rate")
second_metric = panel.radio(
    "Second chart", ["hit_rate", "output_error"], key="race_second", horizontal=True,
    format_func=lambda m: {"hit_rate": "hit rate of significant keys",
                           "output_error": "attention-output error (replays take about 3x longer)"}[m],
    disabled=not trace.has_values,
    help="The output error needs the value vectors stored in the trace.",
)  # fmt: skip
output_error = second_metric == "output_error" and trace.has_values

progress = st.progress(0.0, text="Replaying ...")


def _report(done: int, total: int, name: str, budget: float) -> None:
    progress.progress(done / total, text=f"Replaying {name} at budget {budget:.2f}")


try:  # the engine's sweep cell by cell (cached), then its gap to opt: the CLI's numbers
    records = cached.race_records(key, params, budgets, options, output_error, _report)
except ValueError as exc:
    progress.empty()
    st.error(f"Cannot replay with these settings: {exc}")
    st.stop()
progress.empty()

online_chosen = [name for name in chosen if name not in offline]
shade = None
if OPTIMUM in chosen and online_chosen:
    default("race_shade", "h2o" if "h2o" in online_chosen else online_chosen[0])
    if st.session_state["race_shade"] not in online_chosen:
        st.session_state["race_shade"] = online_chosen[0]
    shade = panel.selectbox(f"Shade the gap to {OPTIMUM} of", online_chosen, key="race_shade")

default("race_mass_metric", "retained_mass")
mass_metric = panel.radio(
    "Retained mass over", ["retained_mass", "retained_mass_decode", "worst_unit_mass"],
    format_func=lambda m: {"retained_mass": "all steps", "retained_mass_decode": "decode steps only",
                           "worst_unit_mass": "the worst cache unit"}[m],
    key="race_mass_metric", horizontal=True,
)  # fmt: skip
error_metric = "output_error" if output_error else "hit_rate"
left, right = st.columns(2)
left.vega_lite_chart(
    spec=figures.race_chart(
        records, mass_metric, METRICS[mass_metric], shade=shade, optimum=OPTIMUM
    ),
    width="stretch",
)
right.vega_lite_chart(
    spec=figures.race_chart(records, error_metric, METRICS[error_metric]), width="stretch"
)

table = pd.DataFrame(records)
shown = ["policy", "budget_requested", "budget", "gap_to_opt", *METRICS, "description", "online",
         "seconds"]  # fmt: skip
table = table[[column for column in shown if column in table]].dropna(axis=1, how="all")
st.dataframe(table, hide_index=True, width="stretch", key="race_table")
st.download_button(
    "Download the table (CSV)", table.to_csv(index=False).encode(), file_name="policy-race.csv",
    mime="text/csv", key="race_download", on_click="ignore",
)  # fmt: skip
st.caption(
    "Open loop: every replay serves the same full-cache rows, so a policy's mistakes never "
    "feed back into later attention. `seconds` is the replay time on this machine."
)
