"""What a page computes on its first (cold) run, prepared at setup for the shipped traces.

The Eviction dynamics page opens on two replays (``h2o`` and ``window`` at budget 0.2,
default parameters and replay options) and the Trace explorer on the showcase head's
heatmap (log colour scale). Both are most of those pages' first script run, so
``app/h2oapp/precompute.py`` (``make setup``) also writes them here, one ``.npz`` per
trace beside the race payload, named by the trace file's SHA-256. The file is read
without unpickling (``allow_pickle=False``: plain arrays, plus one JSON text member).

Invalidation follows the race payload (:mod:`h2oapp.precompute`): a file is read only
when its trace SHA-256 and :func:`h2osim.code_version` match; it also carries a hash
of the app's own sources (``app/h2oapp``, ``app/views``), since the heatmap spec is
app code. Anything else misses and the page computes on the fly (the same functions,
:func:`replay_of` and :func:`heatmap_of`, so stored and live results are equal).
"""

from __future__ import annotations

import dataclasses
import hashlib
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
    digest = hashlib.sha256()
    for path in sorted([*APP_ROOT.glob("h2oapp/*.py"), *APP_ROOT.glob("views/*.py")]):
        digest.update(path.name.encode() + b"\0" + path.read_bytes())
    return f"{h2osim.code_version()}+app.{digest.hexdigest()[:16]}"


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


def write(folder: Path, trace: Trace, sha256: str, showcase: tuple[int, int]) -> Path:
    """Compute the cold runs' results of one trace and store them (atomically)."""
    arrays: dict[str, np.ndarray] = {}
    results = {}
    for policy in DYNAMICS:
        result = replay_of(trace, policy, default_params(policy), DYNAMICS_BUDGET, DEFAULT_OPTIONS)
        for name in ARRAYS:
            if getattr(result, name) is not None:
                arrays[f"{policy}.{name}"] = getattr(result, name)
        results[policy] = {
            "policy": result.policy, "description": result.description, "online": result.online,
            "budget": result.budget, "n": result.n, "prompt_length": result.prompt_length,
            "config": dataclasses.asdict(result.config),
            "unit_labels": [list(label) for label in result.unit_labels],
            "seconds": result.seconds, "summary": result.summary, "kind": result.kind,
        }  # fmt: skip
    layer, head = showcase
    meta = {"format": FORMAT, "trace_sha256": sha256, "version": _VERSION,
            "replays": results, "heatmap": {"layer": layer, "head": head, "log_scale": True,
                                            "spec": heatmap_of(trace, layer, head, True)}}  # fmt: skip
    arrays["meta"] = np.array(json.dumps(meta, default=json_default))
    path = path_for(folder, sha256)
    path.parent.mkdir(parents=True, exist_ok=True)
    with atomic_write(path) as handle:
        np.savez(handle, **arrays)
    return path


def read(folder: Path, sha256: str) -> dict[str, Any]:
    """The stored results of the trace with this SHA-256: ``replays`` (policy name ->
    ReplayResult) and ``heatmap`` (layer, head, log_scale, spec); empty when there are
    none or they were made by other code."""
    try:
        with np.load(path_for(folder, sha256), allow_pickle=False) as stored:
            meta = json.loads(str(stored["meta"]))
            if meta.get("format") != FORMAT or meta.get("trace_sha256") != sha256:
                return {}
            if meta.get("version") != _VERSION:
                return {}  # other code made it: compute instead
            replays = {}
            for policy, fields in meta["replays"].items():
                config = dict(fields["config"])
                if config.get("layers") is not None:
                    config["layers"] = tuple(config["layers"])
                arrays = {name: stored.get(f"{policy}.{name}") for name in ARRAYS}
                replays[policy] = ReplayResult(**{
                    **fields, "config": ReplayConfig(**config),
                    "unit_labels": tuple(tuple(label) for label in fields["unit_labels"]),
                    **arrays,
                })  # fmt: skip
    except (OSError, ValueError, KeyError, TypeError, zipfile.BadZipFile):
        return {}
    return {"replays": replays, "heatmap": meta["heatmap"]}


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
