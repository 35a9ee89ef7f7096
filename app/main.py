"""h2osim classroom app: ``streamlit run app/main.py``. This file only routes; pages are in views/."""

import importlib.util
from pathlib import Path

import streamlit as st

st.set_page_config(
    page_title="h2osim: heavy hitters in the KV cache",
    page_icon=str(Path(__file__).with_name("icon.png")),  # a local file: nothing from other hosts
    layout="wide",
)
if importlib.util.find_spec("h2osim") is None:
    st.error(
        "The h2osim package is not importable. From the repository root run `make setup` "
        "(it installs h2osim into .venv), then `.venv/bin/streamlit run app/main.py`."
    )
    st.stop()


@st.cache_resource(show_spinner=False)
def _one_blas_thread() -> int:
    """One BLAS thread for the server (many small products per replay, see h2osim.cli),
    set once per process: threadpoolctl walks every loaded library (3 ms a call once
    torch is loaded), and this file runs again at every rerun of every session."""
    from h2osim.cli import limit_threads

    return limit_threads()


_one_blas_thread()
pages = [
    st.Page(
        "views/by_hand.py", title="Algorithm 1 by hand", icon=":material/edit_note:", default=True
    ),
    st.Page("views/trace_explorer.py", title="Trace explorer", icon=":material/grid_on:"),
    st.Page("views/eviction_dynamics.py", title="Eviction dynamics", icon=":material/animation:"),
    st.Page("views/policy_race.py", title="Policy race", icon=":material/sports_score:"),
    st.Page("views/theory_lab.py", title="Theory lab", icon=":material/functions:"),
    st.Page("views/live_lab.py", title="Live lab", icon=":material/science:"),
    st.Page("views/needle_lab.py", title="Needle lab", icon=":material/search:"),
]
st.navigation(pages).run()
