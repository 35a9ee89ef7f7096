"""Page 1, Algorithm 1 by hand: H2O's eviction on one short sentence, every decision shown."""

import numpy as np
import pandas as pd
import streamlit as st
from h2oapp import analysis, by_hand, cached, figures, live_runs, prepared
from h2oapp.controls import (
    PAPER,
    default,
    page_intro,
    parse_float,
    player,
    presenter,
    share_state,
    url_value,
)

MAX_TOY_WORDS = 16
MAX_REAL_TOKENS = 48

page_intro(
    "Algorithm 1 by hand",
    f"""[H2O]({PAPER}) keeps a cache of at most **k** tokens. Each step one token arrives;
when the cache is over budget, the newest **r** tokens are *protected* (the recent
window) and, of the older ones (the *candidates*), the token with the lowest
**accumulated attention** - the attention it received from every row so far - leaves for
good (Algorithm 1). Below, every decision on one short sentence: what is cached, the
scores, who is protected, who leaves and why; then the same sentence through `opt` (the
best any policy could do, knowing the future) and `window` (keep the newest only).
**Toy scores** are a textbook exercise: each word gets a weight you set, and row t
spreads its attention over tokens 0..t in proportion to the weights. **SmolLM2
attention** uses the real model's attention on the sentence instead.""",
    page="by_hand",
)

default("bh_sentence", by_hand.DEFAULT_SENTENCE)
default("bh_mode", "toy")
url_k = parse_float(url_value("budget"))
if url_k is not None and url_k >= 2:
    st.session_state["bh_k"] = int(url_k)
panel = st.sidebar if presenter() else st.container()
top = panel.columns([3, 2]) if not presenter() else [panel, panel]
sentence = top[0].text_input("Sentence", key="bh_sentence", max_chars=300)
model_ok = live_runs.bundled_model_file() is not None and not live_runs.missing_model_stack()
mode = top[1].radio(
    "Scores", ["toy", "real"], key="bh_mode", horizontal=True, disabled=not model_ok,
    format_func={"toy": "toy scores (set by hand)", "real": "SmolLM2 attention"}.__getitem__,
    help="Toy: one token per word, attention in proportion to the weights below. "
    "SmolLM2: the bundled model reads the sentence and its real attention is used.",
)  # fmt: skip

if mode == "toy":
    tokens = by_hand.words(sentence)[:MAX_TOY_WORDS]
    if len(tokens) < 3:
        st.warning("Type a sentence of at least three words.")
        st.stop()
    if len(sentence.split()) > MAX_TOY_WORDS:
        st.caption(f"Toy mode uses the first {MAX_TOY_WORDS} words.")
    if st.session_state.get("bh_for") != tokens:  # a new sentence: its default weights
        for i, weight in enumerate(by_hand.default_weights(tokens)):
            st.session_state[f"bh_w{i}"] = weight
        st.session_state["bh_for"] = tokens
    with panel.expander("Toy weights (edit them: how much attention each word draws)",
                        expanded=not presenter()):  # fmt: skip
        cells = st.columns(min(8, len(tokens)))
        weights = [
            cells[i % len(cells)].number_input(
                token.strip(), min_value=0.1, max_value=100.0, step=0.5, key=f"bh_w{i}"
            )
            for i, token in enumerate(tokens)
        ]
    source = ("toy", tuple(tokens), tuple(float(w) for w in weights))
    layer, unit = None, 0
else:
    live_runs.start_loading_model()
    try:
        with st.spinner("SmolLM2 reads the sentence (the first time also loads the model) ..."):
            path, _ = live_runs.own_text_trace(sentence, MAX_REAL_TOKENS)
    except ValueError as exc:
        st.error(f"Cannot run the model on this sentence: {exc}")
        st.stop()
    trace = cached.load_trace(cached.trace_key(path))
    source = ("trace", cached.trace_key(path))
    tokens = list(trace.tokens)
    if trace.n < 3:
        st.warning("Type a sentence of at least three tokens.")
        st.stop()
    pick = panel.columns(2) if not presenter() else [panel, panel]
    default("bh_layer", int(trace.layers[len(trace.layers) // 2]))
    layer = pick[0].selectbox("Layer", trace.layers.tolist(), key="bh_layer")
    unit = pick[1].selectbox("KV head (cache unit)", list(range(trace.num_kv_heads)), key="bh_unit")

n = len(tokens)
default("bh_k", min(by_hand.DEFAULT_BUDGET, n - 1))
st.session_state["bh_k"] = min(max(2, st.session_state["bh_k"]), n - 1)
sizes = panel.columns(2) if not presenter() else [panel, panel]
k = sizes[0].slider("Budget k (tokens the cache keeps)", 2, n - 1, key="bh_k")
default("bh_recent", by_hand.DEFAULT_RECENT)
st.session_state["bh_recent"] = min(max(1, st.session_state["bh_recent"]), k)
recent = sizes[1].slider(
    "Recent tokens r (protected; heavy hitters = k - r)", 1, k, key="bh_recent"
)
share_state(budget=k)


@st.cache_data(max_entries=64, show_spinner=False)
def worked(source: tuple, k: int, recent: int, layer: int | None, unit: int):
    """The walk-through and the side-by-side replays (cached: reruns only redraw); the
    opening example is read from setup's store (:mod:`h2oapp.prepared`) when it holds it."""
    stored = prepared.stored_by_hand(cached.by_hand_example(), source, k, recent, layer, unit)
    if stored is not None:
        return stored
    if source[0] == "toy":
        replayed = by_hand.toy_trace(list(source[1]), list(source[2]))
    else:
        replayed = cached.load_trace(source[1])
    return by_hand.worked_example(replayed, k, recent, layer, unit)


decisions, scores, compared = worked(source, k, recent, layer, unit)  # scores: (n, n)
step_rows = pd.DataFrame(by_hand.decision_rows(decisions, tokens))
names = [token.strip() or repr(token) for token in tokens]


def step_view(t: int) -> None:
    """The cache of h2o, opt and window at step t, and step t's decision."""
    decision = next((d for d in decisions if d.t == t), None)
    arrives = names[t]
    if decision is None:
        st.markdown(f"**Step {t}**: {arrives!r} arrives; the cache holds {min(t + 1, k)} of "
                    f"k = {k} tokens, so nothing is evicted.")  # fmt: skip
    else:
        st.markdown(f"**Step {t}**: {arrives!r} arrives, the cache is over budget. Protected "
                    f"(recent): {', '.join(names[j] for j in decision.protected)}. Evicted: "
                    f"**{', '.join(names[j] for j in decision.evicted)}** - "
                    f"{by_hand.reason(decision, tokens)}.")  # fmt: skip
    columns = st.columns(len(compared))
    for column, (name, replayed) in zip(columns, compared.items(), strict=True):
        states = analysis.cache_states(replayed.evicted_at[unit], t)
        kept = by_hand.kept_tokens(replayed, t, unit)
        column.markdown(
            f"**{name}**: retained mass {float(replayed.retained_mass[t, unit]):.3f} at this "
            f"step, {float(replayed.retained_mass[:, unit].mean()):.3f} over the sentence"
        )
        column.html(figures.cache_text_html(tokens, states, t, scores[t] if name == "h2o" else None,
                                            replayed.evicted_at[unit]))  # fmt: skip
        column.caption("kept: " + ", ".join(names[j] for j in kept))
    st.subheader("Every eviction of h2o")
    if step_rows.empty:
        st.info("The cache never fills: choose a smaller k.")
        return
    # this step's row is marked in a column of its own (a pandas Styler highlight cost
    # ~0.1-0.3 s per step to render, and a step re-runs only this fragment)
    marked = step_rows.copy()
    marked.insert(0, "now", np.where(step_rows["step t"] == t, "▶", ""))
    st.dataframe(marked, hide_index=True, width="stretch",
                 column_config={"now": st.column_config.TextColumn("", width="small")})  # fmt: skip


st.subheader("Step by step")
player("bh", n - 1, step_view, speeds=(1, 2), start_at=min(n - 1, k))

table = pd.DataFrame(np.round(scores, 3), columns=[f"{j} {names[j]}" for j in range(n)])
table.insert(0, "step t", np.arange(n))
with st.expander("Accumulated scores at every step (blank: not in the cache)"):
    st.dataframe(table, hide_index=True, width="stretch", key="bh_scores")
summary = pd.DataFrame([
    {"policy": name, "kept at the end": ", ".join(names[j] for j in by_hand.kept_tokens(r, n - 1, unit)),
     "retained mass (mean over steps)": float(r.retained_mass[:, unit].mean())}
    for name, r in compared.items()
])  # fmt: skip
st.dataframe(summary, hide_index=True, width="stretch", key="bh_summary")
st.caption(
    "Retained mass: the share of each row's attention that lands on cached tokens. `opt` "
    "sees the future (an exact optimum of permanent eviction), so no online policy beats "
    "it; all three replay the same rows through the engine (`h2osim.engine.replay`)."
)
