"""Page 1, Trace explorer: the H2O paper's Section 3 observations on one attention head."""

import streamlit as st
from h2oapp import cached, figures
from h2oapp.controls import PAPER, default, page_intro, presenter, trace_picker

page_intro(
    "Trace explorer",
    f"""A language model that generates text keeps a key and a value vector for every past
token: the **KV cache**. It grows with every token, and [H2O]({PAPER}) (Zhang et al.,
NeurIPS 2023) asks which entries can be thrown away. Here you see the attention the model
actually paid, one query head at a time: row *t* of the heatmap is how query step *t*
spread its attention (probabilities that sum to 1) over tokens 0..*t*.

The paper's **Section 3** makes three observations you can check on this page:
attention is **sparse** (most entries are tiny next to their row's maximum); a few
**heavy-hitter** tokens receive attention from many later rows (the bright vertical
stripes; the orange words in the text); and the tokens' **accumulated attention** falls
off like a **power law** (a straight line on log-log axes). The first token is often a
heavy hitter of its own, the **attention sink** (Xiao et al., StreamingLLM).""",
    page="explorer",
)

key = trace_picker()
if key is None:
    st.stop()
trace = cached.load_trace(key)
if trace.metadata.get("model") == "synthetic":
    st.info(
        "This trace is **synthetic** (`h2osim.synthetic`): a sink, recency and power-law "
        "heavy hitters are planted on purpose. Traces dumped from a real model "
        "(`python -m h2osim.dump`) appear in the sidebar list once they are in `traces/`."
    )

layers = trace.layers.tolist()
if st.session_state.get("te_for_trace") != key[0]:  # a new trace: open on its showcase head
    st.session_state["te_layer"], st.session_state["te_head"] = cached.showcase_head(key)
    st.session_state["te_for_trace"] = key[0]
default("te_scale", "log")
default("te_score", "sum")
columns = [st.sidebar] * 4 if presenter() else st.columns(4)  # presenter: in the sidebar
layer = columns[0].selectbox("Layer", layers, key="te_layer")
head = columns[1].selectbox(
    "Query head", list(range(trace.num_heads)), key="te_head",
    format_func=lambda h: f"{h} (reads KV head {trace.head_map[h]})",
)  # fmt: skip
log_scale = (
    columns[2].radio("Colour scale", ["log", "linear"], key="te_scale", horizontal=True) == "log"
)
per_row = (
    columns[3].radio(
        "Token score",
        ["sum", "per row seen"],
        key="te_score",
        horizontal=True,
        help="sum: attention summed over all rows, H2O's accumulated score. per row seen: "
        "that sum divided by the number of rows that could attend to the token, which "
        "does not favour old tokens just for being old.",
    )  # fmt: skip
    == "per row seen"
)

score_label = "attention per row seen" if per_row else "accumulated attention"
summary = cached.head_summary(key, layer, head, per_row)
metric_row = st.container()  # presenter mode: below the pictures
main = st.container()
if presenter():
    metric_row = st.container()
metrics = metric_row.columns(4)
metrics[0].metric(
    "Sparsity", f"{summary['sparsity']:.1%}",
    help="Share of this head's attention entries below 1% of their row's maximum.",
)  # fmt: skip
metrics[1].metric(
    "Attention-sink mass", f"{summary['sink_mass']:.1%}",
    help="Mean attention that rows t >= 1 give to token 0.",
)  # fmt: skip
metrics[2].metric(
    "Top 10% of tokens hold", f"{summary['top10_share']:.1%}",
    help="Share of the accumulated attention held by the 10% highest-scored tokens.",
)  # fmt: skip
metrics[3].metric(
    "Power-law exponent α", f"{summary['alpha']:.2f}",
    help=f"score ~ rank^(-α), fitted on log-spaced ranks of the {score_label} (R² = "
    f"{summary['r2']:.2f}); the same estimator as `python -m h2osim.observe`.",
)  # fmt: skip

left, right = main.columns([1.25, 1])
with left:
    st.vega_lite_chart(spec=cached.heatmap_spec(key, layer, head, log_scale), width="stretch")
    st.caption(
        "The page opens on the head whose heavy hitters stand out most. "
        f"n = {trace.n} tokens; rows below the dashed line (if any) are decoding steps "
        f"after the {trace.prompt_length}-token prompt. Blank upper triangle: a query cannot "
        "attend to future tokens."
    )
with right:
    st.markdown(
        f"**The text, each token as orange as its {score_label}** (log scale over three "
        "decades: white = under 1/1000 of the top token; hover a token for its score and rank)"
    )
    st.html(figures.weighted_tokens_html(trace.tokens, summary["weights"], summary["scores"],
                                         score_label))  # fmt: skip

left, right = st.columns(2)
left.vega_lite_chart(
    spec=figures.power_law_chart(
        summary["scores"], trace.tokens, summary["alpha"], summary["scale"], score_label
    ),
    width="stretch",
)
right.vega_lite_chart(
    spec=figures.sink_chart(cached.sink_column(key, layer, head), trace.prompt_length),
    width="stretch",
)
st.caption(
    "Left: a few tokens collect most of the attention and the rest fall off steadily; H2O "
    "keeps the top of this list (Section 4). Right: how much of every row goes to the first "
    "token, whatever it says."
)
