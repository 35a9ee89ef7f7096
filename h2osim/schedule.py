"""The step rule: what enters a cache unit, when tokens must leave, and what a policy may do.

One rule serves open-loop replay (:mod:`h2osim.engine`), live eviction in the model
(:mod:`h2osim.model.live`) and the offline oracles (:mod:`h2osim.oracles`), so the three
can never disagree about a step. At step t, in every cache unit:

1. **Admit** token t (the cache now holds ``held`` tokens).
2. **Evict** ``CacheSchedule.evictions(t, held)`` tokens, chosen by the policy among the
   cached tokens older than t, deciding from rows < t only:

   - prompt mode ``stream``: whenever the unit holds more than its budget k, down to k;
   - prompt mode ``full``: nothing leaves while the prompt (rows 0..P-1) is read, then the
     cache shrinks to k at the first decode step and stays there (the H2O masking
     simulation's "prompt attended in full");
   - prompt mode ``prefill``: the prompt is compressed once, after prefill, to k tokens
     (kvpress: n_kept = int(P (1 - compression_ratio))); decode tokens are then appended
     and nothing else ever leaves.

3. **Serve** row t over what is kept (the engine measures it), then show it to the policy.

Evicted tokens never return. :func:`check_victims` enforces the rules on every answer a
policy gives, and :func:`read_only` hands policies views they cannot write through.

Mask policies (``kind = "mask"``, the official H2O masking simulations) are the one
exception, and they are served by the same loop: instead of steps 1-2, the policy names
the whole set row t attends (deciding from rows < t only); a key may leave and come back.
:func:`ask_mask` checks that answer. Such a policy is not a cache: the exact optimum of
permanent eviction (``opt``) does not bound it, the per-row ``topk`` bound does.
See docs/architecture.md ("The step rule") and docs/fidelity.md.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np

if TYPE_CHECKING:
    from h2osim.policies import Policy

PROMPT_MODES = ("stream", "full", "prefill")  # how the prompt rows are cached (module docstring)
BUDGET_BASES = ("sequence", "prompt")  # what a fractional budget is a fraction of


def resolve_budget(
    budget: float | int | str, n: int, prompt_length: int, of: str = "sequence"
) -> int:
    """Turn a budget into a token count k >= 1.

    A value in (0, 1] is a fraction of the sequence length n (or of the prompt length
    with ``of="prompt"``); a value > 1 must be a whole token count.
    Examples: 0.2 of n=1000 -> 200; 1 -> n (everything); 128 -> 128; 0.001 of 100 -> 1.
    """
    if of not in BUDGET_BASES:
        raise ValueError(f"budget base must be one of {BUDGET_BASES}, got {of!r}")
    try:
        value = float(budget)
    except (TypeError, ValueError):
        raise ValueError(f"budget must be a number, got {budget!r}") from None
    if not np.isfinite(value) or value <= 0:
        raise ValueError(f"budget must be in (0, 1] as a fraction or > 1 as a count, got {budget}")
    if value <= 1:
        base = prompt_length if of == "prompt" else n
        return max(1, int(round(value * base)))
    if value != int(value):
        raise ValueError(f"a budget above 1 is a token count and must be whole, got {budget}")
    return int(value)


def check_compression(prompt_mode: str, compression_ratio: float | None) -> None:
    """A compression ratio belongs to prompt mode ``prefill`` and lies in [0, 1) (replay's
    and live eviction's configurations both check it here)."""
    if compression_ratio is None:
        return
    if prompt_mode != "prefill":
        raise ValueError("--compression-ratio is for --prompt-mode prefill (the prompt "
                         "compressed once after prefill)")  # fmt: skip
    if not 0 <= compression_ratio < 1:
        raise ValueError(f"--compression-ratio must be in [0, 1), got {compression_ratio}")


def compressed_size(prompt_length: int, compression_ratio: float) -> int:
    """Prompt tokens kept by prefill compression, counted as kvpress counts them:
    ``max(1, int(P (1 - cr)))``. Examples: P=384, cr=0.5 -> 192; cr=0.8 -> 76 (float
    rounding: 384 x 0.19999999999999996 = 76.8 -> 76)."""
    ratio = float(compression_ratio)
    if not 0 <= ratio < 1:
        raise ValueError(f"--compression-ratio must be in [0, 1), got {compression_ratio}")
    return max(1, int(prompt_length * (1 - ratio)))


@dataclass(frozen=True)
class CacheSchedule:
    """How many tokens leave each step, for one budget and prompt mode.

    Example: k=2, prompt 3, ``full``: steps 0..4 evict [0, 0, 0, 2, 1] (nothing during the
    prompt, then 4 -> 2 at once); ``stream``: [0, 0, 1, 1, 1]; ``prefill``: [0, 0, 0, 1, 0]
    (the 3 prompt tokens become 2 once, then the cache grows).
    """

    budget: int  # k, tokens each unit may hold after eviction
    prompt_length: int  # P, rows 0..P-1 are the prompt
    prompt_mode: str = "stream"

    def __post_init__(self) -> None:
        if self.prompt_mode not in PROMPT_MODES:
            raise ValueError(f"prompt mode must be one of {PROMPT_MODES}, got {self.prompt_mode!r}")
        if self.budget < 1:
            raise ValueError(f"budget must be >= 1 token, got {self.budget}")

    @classmethod
    def for_policy(
        cls,
        policy: Policy,
        budget: float | int | str,
        n: int,
        prompt_length: int,
        *,
        budget_of: str = "sequence",
        prompt_mode: str = "stream",
        compression_ratio: float | None = None,
    ) -> CacheSchedule:
        """The schedule ``policy`` runs under: its own budget and prompt mode when it sets
        them (the full cache keeps n; the official H2O code paths size and place their
        cache themselves), else the requested ``budget`` and ``prompt_mode``. With
        ``compression_ratio`` (prompt mode ``prefill`` only) the budget is
        :func:`compressed_size` of the prompt and ``budget`` is ignored."""
        mode = policy.prompt_mode or prompt_mode
        fixed = policy.fixed_budget(n, prompt_length)
        check_compression(prompt_mode, compression_ratio)
        if fixed is not None:
            k = fixed
        elif compression_ratio is not None and mode == "prefill":
            k = compressed_size(prompt_length, compression_ratio)
        else:
            k = resolve_budget(budget, n, prompt_length, budget_of)
        if k < 1:
            raise ValueError(f"policy {policy.name!r} asked for a budget of {k}; it must be >= 1")
        return cls(k, prompt_length, mode)

    def evictions(self, t: int, held: int) -> int:
        """Tokens to evict at step t when the unit holds ``held`` after admitting token t.

        Examples (k=2): held 3 -> 1; held 2 -> 0; ``full`` mode, t inside the prompt -> 0;
        ``prefill`` mode, P=5: t=5, held 6 -> 3 (down to k + the new token), any other t -> 0.
        """
        if self.prompt_mode == "prefill":
            if t != self.prompt_length or held <= self.budget + 1:
                return 0
            return held - self.budget - 1
        if held <= self.budget or (self.prompt_mode == "full" and t < self.prompt_length):
            return 0
        return held - self.budget

    def counts(self, n: int) -> np.ndarray:
        """``(n,)`` int64: tokens evicted at each step (the oracles' view of the same rule)."""
        counts = np.zeros(n, dtype=np.int64)
        held = 0
        for t in range(n):
            held += 1
            counts[t] = self.evictions(t, held)
            held -= counts[t]
        return counts

    def shared_prefix(self, n: int) -> int:
        """Rows [0, f) served before any eviction - identical for every policy.

        Example: stream, k=100, n=400 -> 100; full prompt mode, P=300, k=100 -> 300.
        """
        if self.prompt_mode == "prefill":
            return min(n, self.prompt_length) if self.prompt_length > self.budget else n
        first = (
            self.budget if self.prompt_mode == "stream" else max(self.budget, self.prompt_length)
        )
        return min(n, first)

    def held_limit(self, n: int) -> int:
        """Most tokens a unit holds once eviction has begun (``stream``/``full``: k;
        ``prefill``: k + 1 + the decode tokens after the first). Example: prefill, k=2,
        P=3, n=6 -> 5."""
        sizes = cache_sizes(self.counts(n))[self.shared_prefix(n) :]
        return int(sizes.max()) if len(sizes) else self.budget


def cache_sizes(counts: np.ndarray) -> np.ndarray:
    """``(n,)``: tokens held when row t is served. Example: counts [0, 0, 1, 1] -> [1, 2, 2, 2]."""
    return np.arange(1, len(counts) + 1) - np.cumsum(counts)


def kept_at(evicted_at: np.ndarray, t: int, attended: np.ndarray | None = None) -> np.ndarray:
    """``(units, t+1)`` bool: what each unit held (a mask policy: attended) at row t.

    ``evicted_at`` ``(units, n)`` is the step at which each token left, -1 for never.
    ``attended``, for mask policies, is ``(units, n, ceil(n/8))`` packed bits of every
    row's attended set (``numpy.packbits`` along the keys); it wins when given.
    Example: evicted_at [[2, -1, -1]], t=2 -> [[False, True, True]].
    """
    if attended is not None:
        return np.unpackbits(attended[:, t], axis=-1, count=t + 1).astype(bool)
    left = evicted_at[:, : t + 1]
    return (left < 0) | (left > t)


def departures(attended: np.ndarray, n: int) -> np.ndarray:
    """``(units, n)`` int32 for a mask policy: the step after which each key is never
    attended again (-1: attended by the last row; j: never attended at all) - the
    ``evicted_at`` of a cache that holds what the mask still needs.
    Example: rows attend {0}, {0, 1}, {1, 2} -> [[2, -1, -1]]."""
    keys = np.unpackbits(attended, axis=-1, count=n).astype(bool)  # (units, n rows, n keys)
    seen = keys.any(axis=1)
    last = n - 1 - np.argmax(keys[:, ::-1, :], axis=1)  # last row attending each key
    left = np.where(last >= n - 1, -1, last + 1)
    return np.where(seen, left, np.arange(n)[None, :]).astype(np.int32)


def read_only(array: np.ndarray) -> np.ndarray:
    """A view of ``array`` that cannot be written through (the array itself stays writable)."""
    view = array.view()
    view.flags.writeable = False
    return view


def ask_policy(policy: Policy, t: int, kept: np.ndarray, count: int) -> np.ndarray:
    """Ask ``policy`` which ``count`` tokens each unit evicts at step t, and check the answer.

    ``kept`` is the ``(units, n)`` bool cache contents; the policy sees ``kept[:, :t+1]``
    read-only. Returns ``(units, count)`` positions that :func:`check_victims` accepted.
    """
    victims = np.asarray(policy.evict(t, read_only(kept[:, : t + 1]), count))
    check_victims(policy, victims, kept, t, count)
    return victims


def ask_mask(policy: Policy, t: int, units: int) -> np.ndarray:
    """Ask a mask policy which keys row t attends, and check the answer.

    Rule: ``(units, t+1)`` bool. A row may attend no key at all (the official masking
    code does that with zero budgets): it is served over nothing, retained mass 0.
    Returns the answer as a fresh array. A broken rule is a bug in the policy: RuntimeError.
    """
    attended = np.asarray(policy.attend(t))
    if attended.shape != (units, t + 1) or attended.dtype != bool:
        raise RuntimeError(f"mask policy {policy.name!r} returned a row mask of shape "
                           f"{attended.shape} dtype {attended.dtype}; expected ({units}, {t + 1}) bool")  # fmt: skip
    return attended.copy()


def check_victims(
    policy: Policy, victims: np.ndarray, kept: np.ndarray, t: int, count: int
) -> None:
    """Enforce the step rule on a policy's answer (cheap: count is usually 1).

    Rules: ``(units, count)`` integers, each a token older than t that is still cached,
    no token named twice. A broken rule is a bug in the policy: RuntimeError.
    """
    if victims.shape != (kept.shape[0], count) or victims.dtype.kind not in "iu":
        raise RuntimeError(f"policy {policy.name!r} returned evictions of shape {victims.shape} "
                           f"dtype {victims.dtype}; expected ({kept.shape[0]}, {count}) integers")  # fmt: skip
    if victims.min() < 0 or victims.max() >= t:
        raise RuntimeError(
            f"policy {policy.name!r} tried to evict a token outside 0..{t - 1} at step {t}"
        )
    if not kept[np.arange(kept.shape[0])[:, None], victims].all():
        raise RuntimeError(
            f"policy {policy.name!r} tried to evict a token no longer cached at step {t}"
        )
    if count > 1 and (np.diff(np.sort(victims, axis=1), axis=1) == 0).any():
        raise RuntimeError(f"policy {policy.name!r} named the same token twice at step {t}")
