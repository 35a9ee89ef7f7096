"""Widgets shared by the pages: trace picker and upload, policy and replay-option pickers.

Policies come from the one registry (:func:`h2osim.policies.policy_names`): new policies,
including offline oracles (``online = False``), appear here without code changes, and
their parameter inputs are built from the policy dataclass fields and their ``help``.

State: every widget has a key. Defaults are put in ``st.session_state`` before a widget
is drawn (no ``value=`` argument), so a value set by code or kept from an earlier run
wins. The chosen trace survives page switches (:func:`keep_across_pages`).
"""

from __future__ import annotations

import hashlib
import tempfile
from pathlib import Path
from typing import Any

import streamlit as st

from h2oapp import cached
from h2osim.engine import GQA_MODES, OBSERVATIONS, PROMPT_MODES, ReplayConfig
from h2osim.files import atomic_write
from h2osim.policies import policy_class, policy_names
from h2osim.trace import APP_LIMITS, Trace, TraceError

MAX_UPLOAD_MB = 50
MAX_UPLOAD_BYTES = MAX_UPLOAD_MB * 2**20  # checked again on the server: the browser may not
UPLOAD_FOLDER = Path(tempfile.gettempdir()) / "h2osim-uploads"
PAPER = "https://arxiv.org/abs/2306.14048"


def keep_across_pages(*keys: str) -> None:
    """Keep these widget values when the user visits another page and comes back.

    Streamlit forgets a widget's value once a run does not draw it; re-assigning the
    value at the top of every page makes it plain session state, which is kept.
    """
    for key in keys:
        if key in st.session_state:
            st.session_state[key] = st.session_state[key]


def default(key: str, value: Any) -> None:
    """Give widget ``key`` its first value (kept afterwards by the widget itself)."""
    st.session_state.setdefault(key, value)


def page_intro(title: str, text: str) -> None:
    """Page title and the few sentences that tell the viewer what they are looking at."""
    st.title(title)
    st.markdown(text)


# ----------------------------------------------------------------- traces
def trace_picker() -> cached.TraceKey | None:
    """Sidebar: choose a shipped or uploaded trace; None (with a message) when none loads."""
    keep_across_pages("trace")
    uploads: dict[str, str] = st.session_state.setdefault("uploaded_traces", {})
    shipped = cached.shipped_traces()
    labels = {str(path): path.name for path in shipped}
    labels.update({path: f"{name} (uploaded)" for name, path in uploads.items()})
    options = list(labels)
    sidebar = st.sidebar
    if not options:
        sidebar.error(
            f"No traces found in {cached.trace_folder()}. Make one with "
            "`python -m h2osim.synth -o traces/synthetic-demo.npz`, or upload one below."
        )
    elif st.session_state.get("trace") not in labels:
        st.session_state["trace"] = options[0]
    if options:
        sidebar.selectbox(
            "Trace", options, format_func=labels.__getitem__, key="trace",
            help="Shipped traces are the .npz files in traces/; uploads are yours only.",
        )  # fmt: skip
    with sidebar.expander("Upload a trace (.npz)"):
        st.file_uploader(
            f"An h2osim trace file, at most {MAX_UPLOAD_MB} MB",
            type=["npz"],
            key="trace_upload",
            on_change=_accept_upload,
            max_upload_size=MAX_UPLOAD_MB,
            help="Made by `python -m h2osim.dump` or `python -m h2osim.synth`; "
            "the format is in docs/trace-format.md.",
        )
        message = st.session_state.get("upload_message")
        if message:
            getattr(st, message[0])(message[1])
    if not options:
        return None
    path = st.session_state["trace"]
    try:
        key = cached.trace_key(path)
        trace = cached.load_trace(key)
    except FileNotFoundError:
        st.error(f"The trace file {path} has gone; choose another one in the sidebar.")
        uploads_gone = [name for name, stored in uploads.items() if stored == path]
        for name in uploads_gone:
            del uploads[name]
        return None
    except (TraceError, OSError) as exc:  # a broken or unreadable file, not a bug of the app
        st.error(
            f"{Path(path).name} cannot be read as an h2osim trace: {exc}. "
            "Choose another trace in the sidebar."
        )
        return None
    sidebar.caption(trace.describe())
    return key


def _accept_upload() -> None:
    """on_change of the uploader: size check, save by content hash, validate, select it."""
    uploaded = st.session_state.get("trace_upload")
    if uploaded is None:
        return
    data = uploaded.getvalue()
    if len(data) > MAX_UPLOAD_BYTES:
        st.session_state["upload_message"] = ("error", (
            f"{uploaded.name} is {len(data) / 2**20:.1f} MB; the limit is {MAX_UPLOAD_MB} MB. "
            "Store fewer layers or a shorter text, or re-save it with the compact "
            "'quantized' encoding (Trace.save(path, encoding='quantized'))."))  # fmt: skip
        return
    UPLOAD_FOLDER.mkdir(parents=True, exist_ok=True)
    path = UPLOAD_FOLDER / f"{hashlib.sha256(data).hexdigest()[:20]}.npz"
    with atomic_write(path) as handle:
        handle.write(data)
    try:  # an upload may declare at most APP_LIMITS (n, layers, heads, 1 GiB of arrays)
        trace = Trace.load(path, limits=APP_LIMITS)
    except (TraceError, OSError) as exc:
        path.unlink(missing_ok=True)
        st.session_state["upload_message"] = ("error", (
            f"{uploaded.name} is not a valid h2osim trace: {exc}. "
            "The format is described in docs/trace-format.md."))  # fmt: skip
        return
    st.session_state["uploaded_traces"][uploaded.name] = str(path)
    st.session_state["trace"] = str(path)
    st.session_state["upload_message"] = ("success", f"Loaded {uploaded.name}: {trace.describe()}")


# ----------------------------------------------------------------- policies
def policy_label(name: str) -> str:
    """``"h2o - heavy hitters ..."``, with ``[offline oracle]`` for clairvoyant policies."""
    cls = policy_class(name)
    label = f"{name} - {cls.summary}" if cls.summary else name
    return label if cls.online else f"{label} [offline oracle]"


def policy_short_label(name: str) -> str:
    """``"h2o"``, or ``"opt (offline)"`` for clairvoyant policies: short enough for chips."""
    return name if policy_class(name).online else f"{name} (offline)"


def policy_glossary() -> None:
    """An expander listing every registered policy and what it does (from the registry)."""
    with st.expander("What the policies do"):
        rows = [f"| `{name}` | {'online' if policy_class(name).online else 'offline oracle'} | "
                f"{policy_class(name).summary} |" for name in policy_names()]  # fmt: skip
        st.markdown("| policy | kind | what it keeps |\n|---|---|---|\n" + "\n".join(rows))


def policy_parameters(name: str, prefix: str) -> cached.Params:
    """Inputs for a policy's hyperparameters (its dataclass fields); sorted (name, value) pairs."""
    chosen = []
    for field in policy_class(name).parameters():
        key = f"{prefix}_{name}_{field.name}"
        value = field.default
        default(key, value)
        label = f"{name}: {field.name}"
        help_text = field.metadata.get("help")
        if isinstance(value, bool):
            chosen.append((field.name, st.checkbox(label, key=key, help=help_text)))
        elif isinstance(value, int):
            chosen.append(
                (field.name, int(st.number_input(label, step=1, key=key, help=help_text)))
            )
        elif isinstance(value, float):
            chosen.append(
                (field.name, float(st.number_input(label, step=0.05, key=key, help=help_text)))
            )
        else:
            chosen.append((field.name, st.text_input(label, key=key, help=help_text)))
    return tuple(sorted(chosen))


def replay_options(prefix: str) -> cached.Options:
    """The replay engine's options (GQA aggregation, prompt mode, observation)."""
    config = ReplayConfig()
    with st.expander("Replay options"):
        default(f"{prefix}_aggregation", config.aggregation)
        default(f"{prefix}_prompt_mode", config.prompt_mode)
        default(f"{prefix}_observation", config.observation)
        aggregation = st.selectbox(
            "GQA: a KV head's query heads combine by", GQA_MODES, key=f"{prefix}_aggregation",
            help="A cache unit is one (layer, KV head); its query heads' scores combine by "
            "sum, mean or max. 'per-head' gives every query head its own cache.",
        )  # fmt: skip
        prompt_mode = st.selectbox(
            "Prompt", PROMPT_MODES, key=f"{prefix}_prompt_mode",
            help="stream: prompt rows evict like decode rows; full: the prompt is attended "
            "in full and eviction starts after prefill (the H2O masking simulation).",
        )  # fmt: skip
        observation = st.selectbox(
            "Policies observe", OBSERVATIONS, key=f"{prefix}_observation",
            help="renormalized: each row over the kept tokens, as the model would compute it; "
            "full: the full-cache row (an oracle-ish view).",
        )  # fmt: skip
    return aggregation, prompt_mode, observation


def unit_name(label: tuple[int, int], options: cached.Options) -> str:
    """``(3, 1)`` -> ``"layer 3, KV head 1"`` (``"query head"`` in per-head mode)."""
    kind = "query head" if options[0] == "per-head" else "KV head"
    return f"layer {label[0]}, {kind} {label[1]}"
