"""What a page computes on its first (cold) run, prepared at setup for the shipped traces.

The Eviction dynamics page opens on two replays (``h2o`` and ``window`` at budget 0.2,
default parameters and replay options) and the Trace explorer on the showcase head's
heatmap (log colour scale), and Algorithm 1 by hand on its worked example (three
replays, ``opt`` among them: numba's first call). Those are most of the pages' first
script run, so
``app/h2oapp/precompute.py`` (``make setup``) also writes them here, one ``.npz`` per
trace beside the race payload, named by the trace file's SHA-256. The file is read
without unpickling (``allow_pickle=False``: plain arrays, plus one JSON text member).

Invalidation follows the race payload (:mod:`h2oapp.precompute`): a file is read only
when its trace SHA-256 and :func:`h2osim.code_version` match; it also carries a hash
of the app's own sources (``app/h2oapp``, ``app/views``), since the heatmap spec is
app code. Anything else misses and the page computes on the fly (the same functions,
:func:`replay_of` and :func:`heatmap_of`, so stored and live results are equal). Setup
loads every trace it prepares with full validation, so the app loads a trace whose
prepared views it finds without validating it again (:func:`h2oapp.cached.load_trace`).
"""

from __future__ import annotations

import dataclasses
import json
import zipfile
from pathlib import Path
from typing import Any

import numpy as np

import h2osim
from h2osim.engine import ReplayConfig, ReplayResult, replay
from h2osim.files import atomic_write, json_default
from h2osim.policies import make_policy, policy_class
from h2osim.trace import Trace

FORMAT = "h2osim-app-views/1"
DEFAULT_OPTIONS = ("sum", "stream", "renormalized")  # = precompute.DEFAULT_OPTIONS
DYNAMICS = ("h2o", "window")  # the Eviction dynamics page's opening policies ...
DYNAMICS_BUDGET = 0.2  # ... at its opening budget
ARRAYS = ("evicted_at", "retained_mass", "hit_rate", "output_error", "attended")
APP_ROOT = Path(__file__).resolve().parents[1]


def _app_version() -> str:
    """The library's code version and a hash of the app's sources."""
    sources = [*APP_ROOT.glob("h2oapp/*.py"), *APP_ROOT.glob("views/*.py")]
    return f"{h2osim.code_version()}+app.{h2osim.source_hash(APP_ROOT, sources)[:16]}"


_VERSION = _app_version()  # read only by the code that made them


def default_params(policy: str) -> tuple[tuple[str, Any], ...]:
    """A policy's parameters at their defaults, sorted by name (the page's format)."""
    return tuple(sorted((field.name, field.default) for field in policy_class(policy).parameters()))


def replay_config(options: tuple[str, str, str], output_error: bool = False) -> ReplayConfig:
    """The engine configuration; the attention-output error is opt-in in the app (it is
    most of a replay's time on traces with values)."""
    aggregation, prompt_mode, observation = options
    return ReplayConfig(aggregation=aggregation, prompt_mode=prompt_mode, observation=observation,
                        output_error=output_error)  # fmt: skip


def replay_of(
    trace: Trace, policy: str, params: tuple, budget: float, options: tuple[str, str, str],
    output_error: bool = False,
) -> ReplayResult:  # fmt: skip
    """One replay of the whole trace (all units), as the pages run it."""
    policy_instance = make_policy(policy, **dict(params))
    return replay(trace, policy_instance, budget, config=replay_config(options, output_error))


def heatmap_of(trace: Trace, layer: int, head: int, log_scale: bool) -> dict[str, Any]:
    """The Vega-Lite spec of one head's attention heatmap (its PNG inside)."""
    from h2oapp import figures

    title = f"layer {layer}, query head {head} (KV head {trace.head_map[head]})"
    return figures.attention_heatmap(trace.head_matrix(layer, head), trace.prompt_length,
                                     log_scale=log_scale, title=title, tokens=trace.tokens)  # fmt: skip


def path_for(folder: Path, sha256: str) -> Path:
    return folder / f"{sha256[:24]}.views.npz"


def _pack(result: ReplayResult, prefix: str, arrays: dict[str, np.ndarray]) -> dict[str, Any]:
    """A replay as JSON-ready fields; its arrays go into ``arrays`` as ``prefix.name``."""
    for name in ARRAYS:
        if getattr(result, name) is not None:
            arrays[f"{prefix}.{name}"] = getattr(result, name)
    return {
        "policy": result.policy, "description": result.description, "online": result.online,
        "budget": result.budget, "n": result.n, "prompt_length": result.prompt_length,
        "config": dataclasses.asdict(result.config),
        "unit_labels": [list(label) for label in result.unit_labels],
        "seconds": result.seconds, "summary": result.summary, "kind": result.kind,
    }  # fmt: skip


def _unpack(fields: dict[str, Any], prefix: str, stored: Any) -> ReplayResult:
    """:func:`_pack` reversed, reading the arrays from the open ``.npz``."""
    config = dict(fields["config"])
    if config.get("layers") is not None:
        config["layers"] = tuple(config["layers"])
    arrays = {name: stored.get(f"{prefix}.{name}") for name in ARRAYS}
    return ReplayResult(**{
        **fields, "config": ReplayConfig(**config),
        "unit_labels": tuple(tuple(label) for label in fields["unit_labels"]), **arrays,
    })  # fmt: skip


def _save(path: Path, meta: dict[str, Any], arrays: dict[str, np.ndarray]) -> Path:
    arrays["meta"] = np.array(json.dumps(meta, default=json_default))
    path.parent.mkdir(parents=True, exist_ok=True)
    with atomic_write(path) as handle:
        np.savez(handle, **arrays)
    return path


def _load(path: Path, trace_sha256: str | None, read: Any) -> dict[str, Any]:
    """``read(meta, npz)`` on a stored file made by this code for this trace, else {}."""
    try:
        with np.load(path, allow_pickle=False) as stored:
            meta = json.loads(str(stored["meta"]))
            if meta.get("format") != FORMAT or meta.get("trace_sha256") != trace_sha256:
                return {}
            if meta.get("version") != _VERSION:
                return {}  # other code made it: compute instead
            return read(meta, stored)
    except (OSError, ValueError, KeyError, TypeError, zipfile.BadZipFile):
        return {}


def write(folder: Path, trace: Trace, sha256: str, showcase: tuple[int, int]) -> Path:
    """Compute the cold runs' results of one trace and store them (atomically)."""
    arrays: dict[str, np.ndarray] = {}
    results = {}
    for policy in DYNAMICS:
        result = replay_of(trace, policy, default_params(policy), DYNAMICS_BUDGET, DEFAULT_OPTIONS)
        results[policy] = _pack(result, policy, arrays)
    layer, head = showcase
    meta = {"format": FORMAT, "trace_sha256": sha256, "version": _VERSION,
            "replays": results, "heatmap": {"layer": layer, "head": head, "log_scale": True,
                                            "spec": heatmap_of(trace, layer, head, True)}}  # fmt: skip
    return _save(path_for(folder, sha256), meta, arrays)


def read(folder: Path, sha256: str) -> dict[str, Any]:
    """The stored results of the trace with this SHA-256: ``replays`` (policy name ->
    ReplayResult) and ``heatmap`` (layer, head, log_scale, spec); empty when there are
    none or they were made by other code."""

    def results(meta: dict[str, Any], stored: Any) -> dict[str, Any]:
        replays = {policy: _unpack(fields, policy, stored)
                   for policy, fields in meta["replays"].items()}  # fmt: skip
        return {"replays": replays, "heatmap": meta["heatmap"]}

    return _load(path_for(folder, sha256), sha256, results)


# ----------------------------------------------------------------- Algorithm 1 by hand
def by_hand_path(folder: Path) -> Path:
    return folder / "by-hand.views.npz"


def by_hand_default() -> tuple[tuple, int, int, None, int]:
    """The by-hand page's opening ``(source, k, recent, layer, unit)``: the worked
    example of :mod:`h2oapp.by_hand` in toy mode (no trace: the same for every trace)."""
    from h2oapp import by_hand

    tokens = by_hand.words(by_hand.DEFAULT_SENTENCE)
    weights = tuple(float(w) for w in by_hand.default_weights(tokens))
    k = min(by_hand.DEFAULT_BUDGET, len(tokens) - 1)
    return ("toy", tuple(tokens), weights), k, min(by_hand.DEFAULT_RECENT, k), None, 0


def write_by_hand(folder: Path) -> Path:
    """The by-hand page's opening walk-through (:func:`h2oapp.by_hand.worked_example`)."""
    from h2oapp import by_hand

    source, k, recent, layer, unit = by_hand_default()
    trace = by_hand.toy_trace(list(source[1]), list(source[2]))
    decisions, scores, compared = by_hand.worked_example(trace, k, recent, layer, unit)
    arrays: dict[str, np.ndarray] = {"scores": scores}
    meta = {"format": FORMAT, "trace_sha256": None, "version": _VERSION,
            "opening": json.loads(json.dumps(by_hand_default())),
            "decisions": [{**dataclasses.asdict(d), "scores": list(d.scores.items())}
                          for d in decisions],
            "compared": {name: _pack(r, name, arrays) for name, r in compared.items()}}  # fmt: skip
    return _save(by_hand_path(folder), meta, arrays)


def read_by_hand(folder: Path) -> dict[str, Any]:
    """The stored walk-through: ``opening`` (the settings, as JSON lists) and ``worked``
    (decisions, scores, compared), or {} when none or made by other code."""
    from h2oapp import by_hand

    def worked(meta: dict[str, Any], stored: Any) -> dict[str, Any]:
        decisions = [by_hand.Decision(**{**d, "scores": {int(j): float(v) for j, v in d["scores"]}})
                     for d in meta["decisions"]]  # fmt: skip
        compared = {
            name: _unpack(fields, name, stored) for name, fields in meta["compared"].items()
        }
        return {"opening": meta["opening"], "worked": (decisions, stored["scores"], compared)}

    return _load(by_hand_path(folder), None, worked)


def stored_by_hand(
    stored: dict[str, Any], source: tuple, k: int, recent: int, layer: int | None, unit: int
) -> tuple | None:
    """The stored walk-through when these are the page's opening settings, else None."""
    if not stored or json.loads(json.dumps([source, k, recent, layer, unit])) != stored["opening"]:
        return None
    return stored["worked"]


def stored_replay(
    stored: dict[str, Any], policy: str, params: tuple, budget: float,
    options: tuple[str, str, str], output_error: bool,
) -> ReplayResult | None:  # fmt: skip
    """The stored replay for these settings, or None when setup did not store it."""
    if (
        output_error
        or tuple(options) != DEFAULT_OPTIONS
        or round(float(budget), 9) != DYNAMICS_BUDGET
    ):
        return None
    if policy not in stored.get("replays", {}) or tuple(params) != default_params(policy):
        return None
    return stored["replays"][policy]


def stored_heatmap(
    stored: dict[str, Any], layer: int, head: int, log_scale: bool
) -> dict[str, Any] | None:
    """The stored heatmap spec of this head and colour scale, or None."""
    heatmap = stored.get("heatmap")
    if heatmap is None or (heatmap["layer"], heatmap["head"], heatmap["log_scale"]) != (
        int(layer),
        int(head),
        bool(log_scale),
    ):
        return None
    return heatmap["spec"]
