"""Page 4, Theory lab: the H2O paper's Appendix D (submodular framing, greedy guarantee).

Built on the public API of the ``theory`` package. Until that package has landed, the
page states the results it will let you test and says how to get them; it computes
nothing of its own (no second copy of the theory code, no placeholder numbers).
"""

import importlib
import pkgutil

import streamlit as st
from h2oapp.controls import PAPER, page_intro

page_intro(
    "Theory lab",
    f"""Why should greedy eviction work at all? [H2O]({PAPER}) **Appendix D** casts the
choice of which tokens to keep as maximising a **set function** f(S): the attention
mass that the kept set S captures. If f is **monotone** (keeping more never hurts) and
**submodular** (a token adds less the more you already keep: diminishing returns), the
greedy choice, one token at a time, is provably close to the best set. The paper's
theorem extends this to eviction, where the objective drifts from step to step and the
scores are only approximate.""",
)

st.subheader("The results this lab is about")
st.markdown(
    "**Nemhauser, Wolsey and Fisher (1978).** For a monotone submodular f and a budget of "
    "k items, the greedy set S_greedy satisfies"
)
st.latex(
    r"f(S_{\mathrm{greedy}}) \;\ge\; \left(1 - \tfrac{1}{e}\right) \max_{|S| \le k} f(S) \approx 0.632\,\mathrm{OPT}"
)
st.markdown(
    "With scores that are off by at most ε (Qin, Song and Wang), the guarantee loses "
    "an additive k(2 - 1/e)ε. **H2O, Theorem D.32**: greedy eviction keeps, at every step i,"
)
st.latex(r"f(S_i) \;\ge\; \left(1 - \tfrac{1}{e}\right)(1 - \alpha)\,\mathrm{opt}_i \;-\; \beta")
st.markdown(
    "where opt_i is the best set for step i, α comes from how much the objective drifts "
    "between steps and β from approximate scores. Submodularity of attention is "
    "**assumed**, not proved, and some natural attention objectives are not submodular "
    "at all; finding such counterexamples is part of this lab."
)

theory_modules = sorted(
    module.name for module in pkgutil.iter_modules(importlib.import_module("theory").__path__)
)
st.subheader("Interactive experiments")
if not theory_modules:
    st.warning(
        "**Not available yet.** The `theory/` package (set functions, brute-force and greedy "
        "solvers, the Nemhauser, noisy and dynamic bounds, a submodularity counterexample "
        "checker) is still being written, and this page shows no numbers until it can "
        "compute real ones."
    )
    st.markdown(
        """When it lands, this page will let you:

1. **Greedy vs optimum** on a small instance: pick a set function and a budget, see the
   greedy set, the brute-force optimum and the (1 - 1/e) line.
2. **The dynamic bound on a real trace**: the per-step guarantee of Theorem D.32 next to
   what H2O actually retained.
3. **A gallery of counterexamples**: attention-derived set functions that break
   submodularity, each with the sets that show it.

How to get it: update your checkout (`git pull`) once the oracle/theory work is merged,
then rerun `make setup`. Meanwhile the **Policy race** page already compares online
policies with any offline oracle in the policy registry (such as the exact optimum
`opt`, once registered)."""
    )
else:
    st.info(
        f"The `theory` package is present (modules: {', '.join(theory_modules)}), but this "
        "page has not been wired to its API yet. Use it from Python meanwhile, e.g. "
        f"`python -c 'import theory.{theory_modules[0]} as m; help(m)'`."
    )
