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


# ----------------------------------------------------------------- page shell
CLASSROOM = ("full", "window", "sink", "heavy", "h2o", "opt")  # the default policy set
GLOSSARY = """
- **Cache unit**: one layer's KV head; it keeps its own *k* tokens. Every cache unit
  evicts on its own.
- **KV head / GQA**: grouped-query attention lets several query heads read one key-value
  head (SmolLM2: 9 query heads share 3 KV heads), so a cache unit's score combines the
  scores of its query heads.
- **Budget k**: how many tokens a cache unit may keep (a share of the sequence, or a count).
- **Accumulated attention**: the attention a token has received from all rows so far;
  H2O keeps the tokens where it is highest (the *heavy hitters*) plus the newest ones.
- **Retained mass**: the share of a row's attention that lands on tokens still in the
  cache (1 = nothing lost).
- **Hit rate**: the share of a row's significant keys (at least 1% of the row's largest
  attention) still in the cache.
- **Open vs closed loop**: open loop replays rows recorded with the full cache, so an
  eviction never changes later rows; closed loop (Live lab) evicts inside the running
  model, so mistakes can compound.
- **Teacher forcing**: the model reads a given text token by token (instead of its own
  output), so every policy is scored on the same text.
- **KL**: the Kullback-Leibler divergence of the model's next-token distribution with
  evictions from the full-cache one (0 = identical predictions).
- **opt / topk**: offline oracles that see the whole future; `opt` is the best any
  policy that evicts for good can do, `topk` a per-step bound (dashed lines).
"""
PRESENTER_CSS = """<style>
[data-testid="stMainBlockContainer"] { padding-top: 3.6rem; padding-bottom: 1rem; }
[data-testid="stMainBlockContainer"] h1 { font-size: 1.7rem; padding: 0 0 0.1rem 0; }
[data-testid="stMainBlockContainer"] [data-testid="stMarkdownContainer"] p,
[data-testid="stMainBlockContainer"] li { font-size: 1.1rem; }
[data-testid="stMetricValue"] [data-testid="stMarkdownContainer"] p { font-size: 2.2rem; }
</style>"""
BASE_CSS = """<style>
/* the chart toolbar (fullscreen, menu) sits inside the chart, not over the row above */
[data-testid="stElementToolbar"] { top: 0.1rem !important; right: 0.1rem !important; }
</style>"""


def presenter() -> bool:
    """Whether presenter mode is on (sidebar toggle, or ``?presenter=1`` in the URL)."""
    return bool(st.session_state.get("presenter", False))


def page_intro(title: str, text: str, page: str = "") -> None:
    """The shell of every page: sidebar (presenter toggle, policy set, glossary), URL
    state read once per session, play stopped when the user came from another page,
    then the title and the few sentences that tell the viewer what they see (folded
    away in presenter mode)."""
    _read_url_once()
    if page and st.session_state.get("_page") != page:  # arrived from another page
        for key in [k for k in st.session_state if str(k).endswith("_playing")]:
            st.session_state[key] = False
    st.session_state["_page"] = page
    kept = [k for k in st.session_state if str(k).endswith(("_step", "_speed"))]
    keep_across_pages("presenter", "advanced", *kept)  # a player's step survives other pages
    default("presenter", False)
    default("advanced", False)
    sidebar = st.sidebar
    sidebar.toggle("Presenter mode", key="presenter", on_change=_write_presenter,
                   help="Intros folded, larger type, the main picture at the top. "
                   "Also `?presenter=1` in the address.")  # fmt: skip
    sidebar.toggle("Advanced policies", key="advanced",
                   help="Besides the classroom set (full, window, sink, heavy, h2o, opt): "
                   "every registered policy, including the variants that follow the "
                   "official H2O code paths.")  # fmt: skip
    glossary()
    st.html(BASE_CSS + (PRESENTER_CSS if presenter() else ""))
    st.title(title)
    if presenter():
        with st.expander("About this page"):
            st.markdown(text)
    else:
        st.markdown(text)


def glossary() -> None:
    """The short glossary, in the sidebar of every page."""
    with st.sidebar.expander("Glossary"):
        st.markdown(GLOSSARY)


def _write_presenter() -> None:
    if st.session_state["presenter"]:
        st.query_params["presenter"] = "1"
    else:
        st.query_params.pop("presenter", None)


def _read_url_once() -> None:
    """Copy the URL's state (``?trace=...&policies=h2o,opt&budget=0.2&step=5&presenter=1``)
    into the session once, at its first run, so a shared link opens that view."""
    if st.session_state.get("_url_read"):
        return
    st.session_state["_url_read"] = True
    params = st.query_params
    if params.get("presenter") in ("1", "true", "yes"):
        st.session_state["presenter"] = True
    url_state = {name: params.get(name) for name in ("trace", "policies", "budget", "step")}
    st.session_state["_url_state"] = {k: v for k, v in url_state.items() if v}


def url_value(name: str) -> str | None:
    """A value the URL asked for at the session's start, used once by the page that
    owns it (then forgotten, so the widget rules again)."""
    return st.session_state.get("_url_state", {}).pop(name, None)


def parse_float(text: str | None) -> float | None:
    """A number from the URL, or None. Example: "0.2" -> 0.2; "abc" -> None."""
    try:
        return None if text is None else float(text)
    except ValueError:
        return None


def share_state(**values: Any) -> None:
    """Write the view's state into the URL (``st.query_params``), so copying the address
    shares exactly this view. ``None`` values are removed."""
    for name, value in values.items():
        if value is None or value == [] or value == "":
            st.query_params.pop(name, None)
        else:
            text = ",".join(map(str, value)) if isinstance(value, list | tuple) else str(value)
            if st.query_params.get(name) != text:
                st.query_params[name] = text


def policy_choices() -> list[str]:
    """The policies the pickers offer: the classroom set, or every registered policy when
    "Advanced policies" is on (policies chosen earlier stay offered)."""
    names = policy_names()
    if st.session_state.get("advanced"):
        return names
    return [name for name in CLASSROOM if name in names]


def offered(chosen: list[str]) -> list[str]:
    """:func:`policy_choices` plus any registered policy already chosen (a picker must
    offer its current value when "Advanced policies" is switched off)."""
    choices = policy_choices()
    names = set(policy_names())
    return choices + [name for name in chosen if name in names and name not in choices]


# ----------------------------------------------------------------- traces
def trace_picker() -> cached.TraceKey | None:
    """Sidebar: choose a shipped or uploaded trace; None (with a message) when none loads."""
    keep_across_pages("trace")
    uploads: dict[str, str] = st.session_state.setdefault("uploaded_traces", {})
    own: dict[str, str] = st.session_state.setdefault("own_traces", {})
    shipped = cached.shipped_traces()
    labels = {str(path): path.name for path in shipped}
    labels.update({path: f"{name} (uploaded)" for name, path in uploads.items()})
    labels.update({path: f"{name} (your text)" for name, path in own.items()})
    options = list(labels)
    sidebar = st.sidebar
    if "_select_trace" in st.session_state:  # a trace just made from the user's text
        st.session_state["trace"] = st.session_state.pop("_select_trace")
    wanted = url_value("trace")  # a shared link names a shipped trace by its file name
    for path in shipped:
        if wanted == path.name:
            st.session_state["trace"] = str(path)
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
    shipped_names = {str(p): p.name for p in shipped}
    share_state(trace=shipped_names.get(path))  # uploads and own texts stay private
    own_text_box()
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
        reason = without_server_paths(str(exc), path, uploaded.name)
        st.session_state["upload_message"] = ("error", (
            f"{uploaded.name} is not a valid h2osim trace: {reason}. "
            "The format is described in docs/trace-format.md."))  # fmt: skip
        return
    st.session_state["uploaded_traces"][uploaded.name] = str(path)
    st.session_state["trace"] = str(path)
    st.session_state["upload_message"] = ("success", f"Loaded {uploaded.name}: {trace.describe()}")


def without_server_paths(message: str, path: Path, name: str) -> str:
    """An error message with the server's temporary file replaced by the user's file name
    (the user never saw the temp path). Example: "/tmp/h2osim-uploads/ab.npz: bad zip" ->
    "mine.npz: bad zip"."""
    for form in (str(path), path.name, str(path.parent)):
        message = message.replace(form, name)
    return message


# ----------------------------------------------------------------- your own text
OWN_TEXT_MAX_TOKENS = 512


def own_text_box() -> None:
    """Sidebar: type a text, and the bundled SmolLM2 dumps a trace of it on the CPU (up to
    512 tokens), selectable on every page of this session. Cached by text and settings:
    the same text is instant for every session of the server."""
    from h2oapp import live_runs

    with st.sidebar.expander("Your own text"):
        if live_runs.bundled_model_file() is None or live_runs.missing_model_stack():
            st.caption("Needs the bundled model: run `make setup`.")
            return
        text = st.text_area("Text to trace", key="own_text", height=100,
                            placeholder="Type or paste a paragraph ...",
                            on_change=live_runs.start_loading_model)  # fmt: skip
        # the model starts loading (in the background, once per server) as soon as a text
        # is typed, so it is ready or nearly so when the button is pressed
        tokens = st.slider("At most this many tokens", 16, OWN_TEXT_MAX_TOKENS, 128,
                           step=16, key="own_text_tokens")  # fmt: skip
        made = st.button("Make a trace", key="own_text_run", icon=":material/add:")
        if made:
            if not text.strip():
                st.warning("Type a text first.")
                return
            try:
                with st.status("Tracing your text with SmolLM2 ...") as status:
                    status.write("1. the model (loaded once per server, in the background)")
                    live_runs.live_model()
                    status.write(f"2. the model reads up to {tokens} tokens, recording attention")
                    path, info = live_runs.own_text_trace(text, tokens)
                    status.update(label=f"Traced: {info}", state="complete")
            except ValueError as exc:
                st.error(f"Cannot trace this text: {exc}")
                return
            label = (
                f"{text.strip()[:24]}... ({info})"
                if len(text.strip()) > 24
                else f"{text.strip()} ({info})"
            )
            st.session_state["own_traces"][label] = path
            st.session_state["_select_trace"] = path  # the picker is drawn already
            st.rerun()


# ----------------------------------------------------------------- policies
def policy_label(name: str) -> str:
    """``"h2o - heavy hitters ..."``, with ``[offline oracle]`` for clairvoyant policies."""
    cls = policy_class(name)
    label = f"{name} - {cls.summary}" if cls.summary else name
    return label if cls.online else f"{label} [offline oracle]"


def policy_short_label(name: str) -> str:
    """``"h2o"``, or ``"opt (offline)"`` for clairvoyant policies: short enough for chips."""
    return name if policy_class(name).online else f"{name} (offline)"


CLASSROOM_WORDS = {
    "full": "keeps every token: the reference, nothing is ever lost",
    "window": "keeps the k newest tokens (first in, first out)",
    "sink": "keeps the first few tokens (the attention sink) plus the newest ones",
    "heavy": "keeps the tokens with the most accumulated attention, nothing else",
    "h2o": "keeps heavy hitters (most accumulated attention) plus the newest tokens",
    "opt": "offline oracle: the best any policy that evicts for good could do, knowing the future",
}


def policy_glossary() -> None:
    """An expander saying what each offered policy keeps, in classroom words for the
    default set (the registry's summaries for the advanced ones)."""
    with st.expander("What the policies do"):
        rows = [f"| `{name}` | {'online' if policy_class(name).online else 'offline oracle'} | "
                f"{CLASSROOM_WORDS.get(name, policy_class(name).summary)} |"
                for name in policy_choices()]  # fmt: skip
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


def replay_options(prefix: str, where: Any = None) -> cached.Options:
    """The replay engine's options (GQA aggregation, prompt mode, observation)."""
    config = ReplayConfig()
    with (where or st).expander("Replay options"):
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


# ----------------------------------------------------------------- step / play
FRAME_SECONDS = 0.6  # one animation frame; each frame advances "steps per frame" tokens


def player(prefix: str, last_step: int, draw: Any, speeds: tuple[int, ...] = (1, 2, 4, 8, 16),
           start_at: int | None = None) -> None:  # fmt: skip
    """Start / step back / play-pause / step forward buttons and a step slider, shared by
    the pages that animate a cache (keys ``{prefix}_step``, ``{prefix}_playing``,
    ``{prefix}_speed``). The controls and ``draw(t)``, the view of step t, sit in one
    fragment: a step, a slider move or a speed change re-runs only the fragment, and
    while playing it re-runs alone every frame. The step survives page switches; play
    stops when the user leaves the page (:func:`page_intro`)."""
    step_key, playing_key, speed_key = f"{prefix}_step", f"{prefix}_playing", f"{prefix}_speed"
    keep_across_pages(step_key, speed_key)
    url_step = url_value("step")
    if url_step is not None and url_step.isdigit():
        st.session_state[step_key] = int(url_step)
    default(step_key, last_step if start_at is None else start_at)
    default(playing_key, False)
    default(speed_key, speeds[min(2, len(speeds) - 1)])
    st.session_state[step_key] = min(max(0, int(st.session_state[step_key])), last_step)

    def toggle() -> None:
        playing = not st.session_state[playing_key]
        st.session_state[playing_key] = playing
        if playing and st.session_state[step_key] >= last_step:
            st.session_state[step_key] = 0

    playing_now = st.session_state[playing_key]  # the timer of this page run

    def move(delta: int) -> None:
        st.session_state[playing_key] = False
        st.session_state[step_key] = min(last_step, max(0, st.session_state[step_key] + delta))

    @st.fragment(run_every=FRAME_SECONDS if playing_now else None)
    def frame() -> None:
        """The controls and the view: a step, a slider move or a speed change re-runs
        this fragment alone; play and pause re-run the page once (to set the timer)."""
        playing = st.session_state[playing_key]
        if playing != playing_now:  # play or pause was pressed: start or stop the timer
            st.rerun(scope="app")
        if playing:
            step = st.session_state[step_key] + st.session_state[speed_key]
            st.session_state[step_key] = min(step, last_step)
            if step >= last_step:  # the end: stop, and re-run the page to drop the timer
                st.session_state[playing_key] = False
                st.rerun(scope="app")
        buttons = st.columns([1, 1, 1, 1, 3])
        buttons[0].button("start", key=f"{prefix}_start", icon=":material/first_page:",
                          on_click=move, args=(-last_step - 1,))  # fmt: skip
        buttons[1].button("step", key=f"{prefix}_back", icon=":material/chevron_left:",
                          on_click=move, args=(-1,))  # fmt: skip
        buttons[2].button(
            "pause" if playing else "play", key=f"{prefix}_play", type="primary",
            on_click=toggle, icon=":material/pause:" if playing else ":material/play_arrow:",
        )  # fmt: skip
        buttons[3].button("step", key=f"{prefix}_forward", icon=":material/chevron_right:",
                          icon_position="right", on_click=move, args=(1,))  # fmt: skip
        buttons[4].select_slider("Tokens per frame", list(speeds), key=speed_key)
        t = st.slider("Step t", 0, last_step, key=step_key)
        share_state(step=t)
        draw(t)

    frame()
