"""Page 4, Theory lab: the H2O paper's Appendix D, checked by computation (the theory package)."""

import pandas as pd
import streamlit as st
from h2oapp import cached, figures, theory_runs
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
from theory.functions import CONCAVE

page_intro(
    "Theory lab",
    f"""Why should greedy eviction work at all? [H2O]({PAPER}) **Appendix D** casts the
choice of which tokens to keep as maximising a **set function** f(S): the attention
mass that the kept set S captures. If f is **monotone** (keeping more never hurts) and
**submodular** (a token adds less the more you already keep: diminishing returns), the
greedy choice, one token at a time, is provably close to the best set. The paper's
theorem extends this to eviction, where the objective drifts from step to step and the
scores are only approximate. Submodularity of attention is **assumed**, not proved;
section 3 shows where it fails.""",
)
with st.expander("The results, stated"):
    st.markdown("**Nemhauser, Wolsey and Fisher (1978).** For monotone submodular f and budget k:")
    st.latex(
        r"f(S_{\mathrm{greedy}}) \;\ge\; \left(1 - \tfrac{1}{e}\right) \max_{|S| \le k} f(S) \approx 0.632\,\mathrm{OPT}"
    )
    st.markdown(
        "With gains off by at most ε (Cor. D.18, after Qin, Song and Wang) the guarantee "
        "loses k(2 - 1/e)ε. **Theorem D.32**: greedy eviction keeps, at every step i,"
    )
    st.latex(
        r"f(S_i) \;\ge\; \left(1 - \tfrac{1}{e}\right)(1 - \alpha)\,\mathrm{opt}_i \;-\; \beta"
    )
    st.markdown(
        "opt_i is the best set for step i; α comes from how far the objective drifted since "
        "the eviction decisions were made, β from approximate scores. Section 2 measures α "
        "and β on a real trajectory (`theory.report`; the constants are measured, not the "
        "paper's θ, γ, ε₀ expressions)."
    )

# ----------------------------------------------------------------- 1. greedy vs optimum
st.header("1. Greedy vs the optimum on a small instance")
st.markdown(
    "Pick a set function and a budget k: greedy adds the element with the largest gain, k "
    "times; brute force tries all subsets. For the first four families (monotone "
    "submodular) greedy never falls below the red (1 - 1/e) line; the last two are not "
    "submodular, and nothing protects them."
)
default("th_family", "facility-location")
default("th_size", 10)
default("th_k", 3)
default("th_seed", 0)
default("th_h", "identity")
columns = st.columns([2, 1, 1, 1, 1])
family = columns[0].selectbox(
    "Set function", list(theory_runs.FAMILIES), key="th_family",
    format_func=theory_runs.FAMILIES.__getitem__,
)  # fmt: skip
size = columns[1].slider("Elements n", 4, 14, key="th_size")
st.session_state["th_k"] = min(st.session_state["th_k"], size)
k = columns[2].slider("Budget k", 1, size, key="th_k")
seed = int(columns[3].number_input("Instance seed", 0, 10_000, step=1, key="th_seed"))
concave_name = columns[4].selectbox(
    "h (accumulated score)", CONCAVE, key="th_h", disabled=family != "accumulated-score",
    help="The paper's f(S) = h(sum of accumulated scores), h non-decreasing and concave.",
)  # fmt: skip

result = theory_runs.greedy_vs_optimum(family, size, k, seed, concave_name)
greedy_value, best = result["greedy_values"][-1], result["optimal_values"][-1]
metrics = st.columns(4)
metrics[0].metric(
    "Greedy f(S_k)", f"{greedy_value:.4f}", help=f"picks, in order: {result['chosen']}"
)
metrics[1].metric(
    "Optimum OPT_k", f"{best:.4f}", help=f"an optimal set: {result['optimal_subset']}"
)
metrics[2].metric("Greedy / optimum", "n/a" if best <= 0 else f"{greedy_value / best:.3f}")
metrics[3].metric("(1 - 1/e) OPT_k", f"{result['nemhauser']:.4f}")
left, right = st.columns([3, 2])
left.vega_lite_chart(
    spec=figures.greedy_chart(result["greedy_values"], result["optimal_values"]), width="stretch"
)
with right:
    st.markdown(f"**{result['describe']}**")
    if result["counterexample"] is None:
        st.success("Exhaustive check over all subsets: diminishing returns hold (submodular).")
    else:
        st.error(f"Not submodular: {result['counterexample']}")
    if result["monotonicity"] is None:
        st.success("Monotone: adding an element never lowers f.")
    else:
        st.error(f"Not monotone: {result['monotonicity']}")
    st.dataframe(
        pd.DataFrame({"pick": range(1, len(result["chosen"]) + 1), "element": result["chosen"],
                      "gain": result["gains"], "best gain available": result["best_gains"]}),
        hide_index=True, key="th_picks",
    )  # fmt: skip

# ----------------------------------------------------------------- 2. dynamic bound
st.header("2. The dynamic bound on a real trace")
st.markdown(
    "Replay a policy on the chosen trace (sidebar) and check Theorem D.32's inequality at "
    "every step of every cache unit, with f_i = the accumulated attention score through "
    "row i and opt_i its exact optimum (the top-|S_i| scores). The band is the range over "
    "cache units; the bound must stay below the held value everywhere."
)
key = trace_picker()
if key is not None:
    trace = cached.load_trace(key)
    online = [name for name in policy_names(online=True) if name != "full"]
    default("th_policy", "heavy" if "heavy" in online else online[0])
    default("th_budget", 0.2)
    default("th_charge", False)
    columns = st.columns([2, 1, 1])
    policy = columns[0].selectbox(
        "Trajectory of", online, format_func=policy_label, key="th_policy",
        help="'heavy' is H2O's greedy eviction by accumulated attention alone (Algorithm 2).",
    )  # fmt: skip
    budget = columns[1].slider("Budget", 0.05, 0.95, step=0.05, key="th_budget")
    columns[1].caption(f"k = {resolve_budget(budget, trace.n, trace.prompt_length)} tokens")
    charge = columns[2].checkbox(
        "Charge score errors to β", key="th_charge",
        help="The paper's split: 2 ε₀ of every gain goes to β (approximate scores), the rest "
        "to α. Off: β = 0 and α absorbs everything. Both bounds are valid.",
    )  # fmt: skip
    with st.expander("Policy parameters"):
        params = policy_parameters(policy, "th")
    options = replay_options("th")
    try:
        with st.spinner("Replaying and checking the bound at every step ..."):
            bound = theory_runs.trace_bound(
                key, policy, params, budget, options, concave_name, charge
            )
    except ValueError as exc:
        st.error(f"Cannot check the bound with these settings: {exc}")
    else:
        summary = bound["summary"]
        metrics = st.columns(4)
        metrics[0].metric("Steps x units checked", f"{summary['steps_checked']:,}")
        metrics[1].metric("Violations", summary["violations"])
        metrics[2].metric("Mean f(S_i) / opt_i", f"{summary['mean_ratio']:.3f}",
                          help="After the first eviction.")  # fmt: skip
        metrics[3].metric("Mean α", f"{summary['mean_alpha']:.3f}")
        left, right = st.columns([3, 2])
        left.vega_lite_chart(spec=figures.bound_chart(bound), width="stretch")
        right.vega_lite_chart(spec=figures.alpha_beta_chart(bound), width="stretch")
        right.caption(
            "Where α is large, the held set is far from what greedy would pick now: the "
            "objective drifted since those tokens were chosen, and the guarantee weakens "
            "even though the held value stays high."
        )

# ----------------------------------------------------------------- 3. counterexamples
st.header("3. Counterexamples: where attention is not submodular")
st.markdown(
    "A counterexample is A ⊆ B and x ∉ B with f(A + x) - f(A) **<** f(B + x) - f(B): adding x "
    "to the bigger set gains more, so returns increased. The checker (`theory.submodularity`) "
    "tries every set; each family below got the first of 40 seeded instances on 6 elements "
    "that breaks the rule. Recompute them by hand."
)
rows = []
for entry in theory_runs.counterexample_gallery(6):
    rows.append({
        "set function": entry["about"],
        "seed": entry["seed"],
        "A": "-" if entry["seed"] is None else str(set(entry["A"]) or "{}"),
        "B": "-" if entry["seed"] is None else str(set(entry["B"])),
        "x": "-" if entry["seed"] is None else str(entry["x"]),
        "gain at A": None if entry["seed"] is None else entry["gain_A"],
        "gain at B": None if entry["seed"] is None else entry["gain_B"],
        "verdict": "none found: submodular (proved)" if entry["seed"] is None else "NOT submodular",
    })  # fmt: skip
st.dataframe(pd.DataFrame(rows), hide_index=True, width="stretch", key="th_gallery")
if key is not None:
    layer, head = cached.showcase_head(key)
    kv_head = int(cached.load_trace(key).head_map[head])
    real = theory_runs.trace_fidelity_counterexample(key, layer, kv_head, 10)
    label = unit_name((layer, kv_head), ("sum", "", ""))
    if real is None:
        st.caption("This trace stores no value vectors, so output fidelity on real attention "
                   "cannot be checked here.")  # fmt: skip
    elif real["witness"] is None:
        st.info(f"On this trace ({label}, last row, its 10 most attended tokens with their "
                "value vectors) output fidelity happens to be submodular.")  # fmt: skip
    else:
        st.warning(
            f"**On real attention too.** Output fidelity of {label}'s last row, restricted to "
            f"its 10 most attended tokens {real['tokens']} with their stored value vectors: "
            f"A = {set(real['A']) or '{}'}, B = {set(real['B'])}, x = token {real['x']}: "
            f"gain {real['gain_A']:.4g} at A < {real['gain_B']:.4g} at B."
        )
