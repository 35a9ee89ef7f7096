"""What a policy is, what the engine shows it, and the one registry of policies.

Follows libCacheSim's "one loop, many hooks" and kvpress's ``ScorerPress``: the replay
engine (:mod:`h2osim.replay`) owns the only loop over steps; at step t it admits token
t and, when a cache unit holds more than its budget k, asks the policy which tokens to
evict. Most policies only rank the cached tokens (:class:`ScorePolicy`: higher score =
more worth keeping); the engine then evicts the lowest-scored ones.

Engine-wide rules every policy can rely on:

- All arrays are shaped ``(units, positions)``: one row per cache unit (a (layer, KV
  head) pair, or a (layer, query head) in per-head mode), one column per token 0..t.
- The newest token t is never evicted at its own step, evicted tokens never return, and
  ties in score are broken by evicting the oldest (lowest position) token first.
- An online policy sees only rows already served (``observe``); it is never handed the
  trace. An offline policy (``online = False``) gets ``context.unit_matrix`` up front.
- Two kinds (``kind``): a ``cache`` policy evicts permanently (``evict``); a ``mask``
  policy (:class:`MaskPolicy`, the official H2O masking simulations) names the set each
  row attends (``attend``) and may re-admit keys. The engine serves and measures both
  the same way; only the oracle bounds differ (docs/fidelity.md).
"""

from __future__ import annotations

import dataclasses
import importlib
import pkgutil
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, ClassVar

import numpy as np


@dataclass(frozen=True)
class ReplayContext:
    """What a policy learns at :meth:`Policy.reset`, before step 0."""

    units: int  # number of cache units replayed together
    n: int  # trace length (steps 0..n-1)
    budget: int  # k, tokens each unit may hold after eviction
    prompt_length: int  # P, rows 0..P-1 are the prompt
    unit_labels: tuple[tuple[int, int], ...]  # (model layer, KV head or query head) per unit
    # Offline policies only: the unit's full (n, n) lower-triangular attention, already
    # aggregated over the unit's query heads as the engine does. None for online policies.
    unit_matrix: Callable[[int], np.ndarray] | None = None
    # Offline policies only: the unit's (n, n) metric weights - entry [t, j] is exactly what
    # keeping token j while row t is served adds to the unit's retained-mass metric at step
    # t (each query head's row as a share of its total, averaged over the unit's heads),
    # whatever the aggregation. Oracles maximising retained mass optimise these.
    unit_weights: Callable[[int], np.ndarray] | None = None
    prompt_mode: str = "stream"  # the replay's prompt mode, after any policy override
    # Per-key L2 norms of the cached keys, ``(units, t+1)`` float64 at the current step
    # (NaN where unknown); None when the trace or model provides none. Read by ``knorm``.
    key_norms: Callable[[int], np.ndarray] | None = None


class Policy:
    """Base class: subclasses are dataclasses whose fields are their hyperparameters.

    A policy answers, at step t, which ``count`` tokens each unit should evict; it may
    learn from every row served so far through :meth:`observe`.
    """

    name: ClassVar[str] = ""
    online: ClassVar[bool] = True
    summary: ClassVar[str] = ""
    # A policy that reproduces a specific code path may force the prompt mode ("full":
    # prompt attended in full, eviction after prefill) whatever the replay asked for.
    prompt_mode: ClassVar[str | None] = None
    kind: ClassVar[str] = "cache"  # "cache": permanent eviction; "mask": see MaskPolicy
    needs_key_norms: ClassVar[bool] = False  # reads ``context.key_norms``

    def fixed_budget(self, n: int, prompt_length: int) -> int | None:
        """A budget the policy sets itself (e.g. from absolute sizes), or None to use the
        replay's. Example: the full cache returns n."""
        return None

    def reset(self, context: ReplayContext) -> None:
        """Start a new replay. Default: remember the context."""
        self.context = context

    def observe(self, t: int, observed: np.ndarray, kept: np.ndarray) -> None:
        """Row t as served: ``observed`` ``(units, t+1)`` attention (zero at evicted tokens in
        the default renormalised mode) and ``kept``, the ``(units, t+1)`` bool cache contents
        it was served over. Default: ignore."""

    def evict(self, t: int, kept: np.ndarray, count: int) -> np.ndarray:
        """Return ``(units, count)`` positions to evict at step t; ``kept`` is ``(units, t+1)`` bool."""
        raise NotImplementedError

    def __post_init__(self) -> None:
        """Check every hyperparameter against the range its :func:`param` declares."""
        for field in self.parameters():
            check_parameter(field, getattr(self, field.name))

    @classmethod
    def parameters(cls) -> list[dataclasses.Field]:
        """The hyperparameters (dataclass fields) of this policy."""
        return list(dataclasses.fields(cls)) if dataclasses.is_dataclass(cls) else []

    def describe(self) -> str:
        """``name(param=value, ...)`` for tables and plots."""
        values = ", ".join(f"{f.name}={getattr(self, f.name)}" for f in self.parameters())
        return f"{self.name}({values})" if values else self.name


class MaskPolicy(Policy):
    """A policy that chooses the whole attended set of every row (re-admission allowed).

    The official H2O masking simulations are masks, not caches: at row t they attend a set
    of keys computed from rows < t, and a key masked at one row may be attended at the
    next. Subclasses implement :meth:`attend`; the engine serves row t over that set and
    measures it exactly as it measures a cache. ``fixed_budget`` is the nominal size
    shown in tables (the sets' real sizes are measured).
    """

    kind: ClassVar[str] = "mask"

    def attend(self, t: int) -> np.ndarray:
        """``(units, t+1)`` bool: the keys row t attends, decided from rows < t."""
        raise NotImplementedError

    def evict(self, t: int, kept: np.ndarray, count: int) -> np.ndarray:
        raise RuntimeError(f"{self.name!r} is a mask policy: the engine asks attend(), not evict()")


def top_scored(scores: np.ndarray, allowed: np.ndarray, count: int) -> np.ndarray:
    """``(units, width)`` bool: the ``count`` highest-scored allowed keys of each unit.

    Ties go to the newest key (the oldest loses: the engine's rule, and how the golden
    outputs of the official code break ``torch.topk`` ties). Fewer allowed keys than
    ``count``: all of them. Example: scores [[0.5, 0.1, 0.5, 0.9]], all allowed,
    count=2 -> [[False, False, True, True]] (0.9, then the newer 0.5).
    """
    chosen = np.zeros(scores.shape, dtype=bool)
    if count <= 0:
        return chosen
    positions = np.broadcast_to(np.arange(scores.shape[1]), scores.shape)
    masked = np.where(allowed, scores, -np.inf)
    order = np.lexsort((-positions, -masked, ~allowed), axis=-1)[:, :count]  # best first
    rows = np.arange(scores.shape[0])[:, None]
    chosen[rows, order] = True
    return chosen & allowed


class ScorePolicy(Policy):
    """A policy that only ranks cached tokens; the lowest scores are evicted.

    Subclasses implement :meth:`score`, returning ``(units, t+1)`` floats (higher =
    keep). Scores of tokens no longer kept are ignored.
    """

    def score(self, t: int, kept: np.ndarray) -> np.ndarray:
        raise NotImplementedError

    def evict(self, t: int, kept: np.ndarray, count: int) -> np.ndarray:
        return lowest_scored(self.score(t, kept), kept, count)


def lowest_scored(scores: np.ndarray, kept: np.ndarray, count: int) -> np.ndarray:
    """Positions of the ``count`` lowest-scored kept tokens per unit, never the newest.

    Ties go to the oldest position, also when scores are +inf (protected tokens are
    evicted, oldest first, only when nothing else is left). Example: scores
    [[0.5, 0.1, 0.4, 0.9]], all kept, count=1 -> [[1]]; count=2 -> [[1, 2]] (the newest,
    position 3, is never a candidate).
    """
    evictable = kept.copy()  # (units, t+1)
    evictable[:, -1] = False
    candidates = np.where(evictable, scores, np.inf)
    if count == 1:
        choice = np.argmin(candidates, axis=1)  # (units,)
        missed = ~evictable[np.arange(len(choice)), choice]  # every candidate scored +inf
        if missed.any():
            choice[missed] = np.argmax(evictable[missed], axis=1)  # oldest evictable
        return choice[:, None]
    order = np.lexsort((candidates, ~evictable), axis=-1)  # evictable first, then by score
    return order[:, :count]


def recent_mask(t: int, recent: int) -> slice:
    """Slice of the ``recent`` newest positions among 0..t. Example: t=9, recent=3 -> 7:10."""
    return slice(max(0, t + 1 - recent), t + 1)


# --------------------------------------------------------------------------- registry
POLICIES: dict[str, type[Policy]] = {}


def register(cls: type[Policy]) -> type[Policy]:
    """Class decorator: add a policy to the registry under ``cls.name``."""
    if not cls.name:
        raise TypeError(f"{cls.__qualname__} needs a class attribute 'name'")
    if cls.name in POLICIES and POLICIES[cls.name] is not cls:
        raise TypeError(f"policy name {cls.name!r} is registered twice")
    POLICIES[cls.name] = cls
    return cls


_DISCOVERED: list[bool] = []  # the folder was listed (once per process)


def _discover() -> None:
    """Import every module of :mod:`h2osim.policies` so their ``@register`` runs. The
    folder is listed once per process: the app asks the registry ~60 times per page run,
    and each listing cost up to 20 ms on a loaded machine."""
    if _DISCOVERED:
        return
    package = importlib.import_module("h2osim.policies")
    for module in pkgutil.iter_modules(package.__path__):
        importlib.import_module(f"h2osim.policies.{module.name}")
    _DISCOVERED.append(True)


def policy_names(online: bool | None = None) -> list[str]:
    """Registered policy names, sorted; ``online=True/False`` filters by kind."""
    _discover()
    return sorted(name for name, cls in POLICIES.items() if online is None or cls.online == online)


def policy_class(name: str) -> type[Policy]:
    """The registered class for ``name``; ValueError listing the choices otherwise."""
    _discover()
    if name not in POLICIES:
        raise ValueError(f"unknown policy {name!r}; choose from: {', '.join(policy_names())}")
    return POLICIES[name]


def make_policy(name: str, **params: Any) -> Policy:
    """Instantiate policy ``name``; parameters it does not have are ignored.

    Example: ``make_policy("h2o", heavy_ratio=0.3, sinks=4)`` -> H2O with heavy_ratio 0.3
    (``sinks`` belongs to other policies). Invalid values raise ValueError.
    """
    cls = policy_class(name)
    own = {f.name for f in cls.parameters()}
    return cls(**{key: value for key, value in params.items() if key in own and value is not None})


def all_parameters() -> dict[str, dataclasses.Field]:
    """Every hyperparameter name across the registry (the CLI makes one flag of each)."""
    fields: dict[str, dataclasses.Field] = {}
    for name in policy_names():
        for field in POLICIES[name].parameters():
            fields.setdefault(field.name, field)
    return fields


def param(
    default: Any, help: str, *, low: float | None = None, high: float | None = None,
    low_open: bool = False,
) -> Any:  # fmt: skip
    """A dataclass field with help text (CLI, app) and the range :class:`Policy` checks.

    Example: ``param(0.5, "share of the budget", low=0, high=1)`` rejects 1.5 with
    "heavy_ratio must be in [0, 1], got 1.5". ``low_open`` excludes ``low`` itself.
    """
    return dataclasses.field(
        default=default, metadata={"help": help, "low": low, "high": high, "low_open": low_open}
    )


def check_parameter(field: dataclasses.Field, value: Any) -> None:
    """Raise ValueError when ``value`` is outside the range declared by :func:`param`."""
    low, high = field.metadata.get("low"), field.metadata.get("high")
    low_open = field.metadata.get("low_open", False)
    too_low = low is not None and (value <= low if low_open else value < low)
    too_high = high is not None and value > high
    if too_low or too_high:
        left = "(" if low_open else "["
        if high is None:
            expected = f"> {low}" if low_open else f">= {low}"
        else:
            expected = f"in {left}{low}, {high}]"
        raise ValueError(f"{field.name} must be {expected}, got {value}")
