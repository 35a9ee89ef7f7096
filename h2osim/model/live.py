"""Live (closed-loop) eviction inside the real model (the library under ``python -m h2osim.live``).

Replay (:mod:`h2osim.engine`) is open loop: its rows come from the full-cache model, so
evictions never change them. Here the same policy objects drive the model's real KV
cache while it runs, and every later row, hidden state and logit is computed from
what was kept - the truth replay can only estimate (docs/architecture.md, "Open and
closed loop").

The step is replay's (:class:`h2osim.schedule.CacheSchedule`), in closed loop. For t = 0..n-1, in every cache unit (one
(layer, KV head)): admit token t; if the unit holds more than k tokens, the policy
evicts down to k deciding from rows < t only; the model serves row t over what is kept
(really: the K/V tensors hold k entries); the policy observes row t - the model's own
attention weights, already a softmax over the kept tokens, i.e. replay's default
"renormalised" observation - with the unit's query heads aggregated (sum, mean or max;
one cache per query head is impossible under GQA, the heads share the K/V tensors).

How it plugs in (composition, not patching): :class:`h2osim.model.live_cache.EvictingCache`
is a transformers ``Cache`` whose layers apply the eviction the controller
(:class:`LiveEviction`) scheduled, inside ``cache.update`` - no attention module is
patched. Keys are cached post-RoPE, rotated at their true position; every forward pass
gets explicit position ids = the true token index, and the cache reports the tokens it
has seen, never its shrunken length, as its sequence length.

What scoring costs: score policies need attention weights, which only eager attention
materialises (no fused kernel); each step the weights of the new row, (layers, heads,
kept), are aggregated per KV head and copied to numpy for the policy. Policies that
never observe (window, sink, random) need no weights and run with any attention kernel.

Speed: rows no policy has evicted from yet (the first k, or the prompt in "full" prompt
mode) are identical for every policy, so they are prefilled once, in chunks, and the
cache is then copied to one batch row per policy; the evicting steps run all policies
that share a budget as one batch (one row each), token by token.

Simplifications: batch of policies, never of texts; full-attention layers only; no
beam search; teacher forcing and greedy generation only.
"""

from __future__ import annotations

import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from h2osim.policies import Policy, ReplayContext, make_policy, policy_class, policy_names
from h2osim.schedule import (
    BUDGET_BASES,
    PROMPT_MODES,
    CacheSchedule,
    ask_policy,
    check_compression,
    kept_at,
    read_only,
)
from h2osim.trace import AGGREGATIONS, aggregate_heads

# per-head is replay-only (GQA heads share one K/V tensor); layer: one kept set per layer
LIVE_AGGREGATIONS = AGGREGATIONS + ("layer",)
DEFAULT_PREFILL_CHUNK = 256  # prompt rows per forward pass: bounds the attention weights' memory
DEFAULT_MAX_TOKENS = 2048
SWEEP_POLICIES = ("h2o", "heavy", "window", "sink", "tova", "scissorhands", "lru", "lfu", "random")


@dataclass(frozen=True)
class LiveConfig:
    """How a live run is done (everything except the policies and their budget)."""

    aggregation: str = "sum"  # how a KV head's query heads combine: sum | mean | max
    prompt_mode: str = "stream"  # stream: evict from token k on; full: prompt first, in full
    prefill_chunk: int = DEFAULT_PREFILL_CHUNK  # shared rows per forward pass
    batch: int = 0  # most policies per forward pass (0: every policy sharing a budget)
    compression_ratio: float | None = None  # prompt mode prefill: keep int(P (1 - ratio))

    def __post_init__(self) -> None:
        if self.aggregation == "per-head":
            raise ValueError(
                "--aggregation per-head is replay-only: under GQA a KV head's query heads share "
                "one K/V tensor, so live eviction keeps one cache per KV head; choose sum, mean or max"
            )
        if self.aggregation not in LIVE_AGGREGATIONS:
            raise ValueError(
                f"aggregation must be one of {LIVE_AGGREGATIONS}, got {self.aggregation!r}"
            )
        if self.prompt_mode not in PROMPT_MODES:
            raise ValueError(f"prompt mode must be one of {PROMPT_MODES}, got {self.prompt_mode!r}")
        if self.prefill_chunk < 1:
            raise ValueError(f"--prefill-chunk must be >= 1, got {self.prefill_chunk}")
        if self.batch < 0:
            raise ValueError(f"--batch must be >= 0 (0 = all), got {self.batch}")
        check_compression(self.prompt_mode, self.compression_ratio)


def observes(policy: Policy) -> bool:
    """Whether ``policy`` reads attention rows (overrides :meth:`Policy.observe`)."""
    return type(policy).observe is not Policy.observe


def live_policy_names() -> list[str]:
    """Policies that can run live: online cache policies (not ``full``, not masks)."""
    return [name for name in policy_names(online=True)
            if name != "full" and policy_class(name).kind == "cache"]  # fmt: skip


def check_live_policy(policy: Policy) -> None:
    """Refuse offline policies (a real cache cannot read rows from the future) and mask
    policies (they re-admit keys a real cache would have dropped)."""
    if not policy.online:
        online = ", ".join(live_policy_names())
        raise ValueError(
            f"policy {policy.name!r} is offline (it reads the whole trace, future included) and "
            f"cannot run live; replay it instead (python -m h2osim.replay). Live policies: {online}"
        )
    if policy.kind == "mask":
        raise ValueError(
            f"policy {policy.name!r} is a mask (it re-admits keys, as the official H2O masking "
            "code does, so it needs the full cache) and cannot run as live eviction; replay it "
            f"instead (python -m h2osim.replay). Live policies: {', '.join(live_policy_names())}"
        )


# --------------------------------------------------------------------------- the controller
class LiveEviction:
    """One policy per batch row over an :class:`EvictingCache`: replay's step, closed loop.

    Bookkeeping is numpy, ``(rows, units, ...)``, with units ordered (layer, KV head) as
    in replay: ``kept`` and ``evicted_at`` per position, ``slot_positions`` the token each
    cache slot holds. :meth:`admit` decides the evictions of a step and returns the
    per-layer :class:`SlotPlan` s; :meth:`observe_rows` shows the policies the served row.
    """

    def __init__(
        self,
        policies: Sequence[Policy],
        budget: int,
        n: int,
        prompt_length: int,
        shape: tuple[int, int, int],
        config: LiveConfig,
        device: Any = "cpu",
    ) -> None:
        self.policies = list(policies)
        self.budget, self.n, self.prompt_length = budget, n, prompt_length
        self.schedule = CacheSchedule(budget, prompt_length, config.prompt_mode)
        self.num_layers, self.num_heads, self.num_kv_heads = shape
        self.group = self.num_heads // self.num_kv_heads
        self.per_layer = config.aggregation == "layer"  # one unit (kept set) per layer
        self.kv_per_unit = self.num_kv_heads if self.per_layer else 1
        self.units = self.num_layers * self.num_kv_heads // self.kv_per_unit
        self.config = config
        self.device = device
        self.cache = None  # the EvictingCache, set by run_group (knorm reads its keys)
        if self.per_layer:
            self.unit_labels = tuple((layer, -1) for layer in range(self.num_layers))
        else:
            self.unit_labels = tuple(
                (layer, kv) for layer in range(self.num_layers) for kv in range(self.num_kv_heads)
            )
        for row, policy in enumerate(self.policies):
            check_live_policy(policy)
            norms = (lambda t, row=row: self.key_norms(row, t)) if policy.needs_key_norms else None
            policy.reset(ReplayContext(units=self.units, n=n, budget=budget,
                                       prompt_length=prompt_length, unit_labels=self.unit_labels,
                                       prompt_mode=config.prompt_mode, key_norms=norms))  # fmt: skip
        rows = len(self.policies)
        self.kept = np.zeros((rows, self.units, n), dtype=bool)
        self.evicted_at = np.full((rows, self.units, n), -1, dtype=np.int32)
        self.slot_positions = np.zeros((rows, self.units, 0), dtype=np.int64)  # (rows, units, held)
        self.held_at = np.zeros(n, dtype=np.int32)  # slots per unit when row t was served
        self.observing = [observes(policy) for policy in self.policies]
        self.needs_weights = any(self.observing)
        self.policy_seconds = 0.0  # evict + observe + bookkeeping, all steps

    @property
    def rows(self) -> int:
        return len(self.policies)

    def per_kv(self, array: np.ndarray) -> np.ndarray:
        """``(rows, units, ...)`` -> ``(rows, layers x KV heads, ...)``: a layer unit's
        bookkeeping repeated for each of its KV heads (they hold the same slots)."""
        return np.repeat(array, self.kv_per_unit, axis=1) if self.per_layer else array

    def shared_prefix(self) -> int:
        """Rows [0, f) served before any eviction, identical for every policy."""
        return self.schedule.shared_prefix(self.n)

    def admit(self, t: int, new_tokens: int = 1) -> list | None:
        """Admit tokens t..t+new_tokens-1, evicting down to the budget first if needed.

        Returns one plan per layer for :meth:`EvictingCache.schedule`, or None (append).
        Only single-token steps evict; the shared prefix is fed in eviction-free chunks.
        """
        started = time.perf_counter()
        new = np.arange(t, t + new_tokens)
        self.kept[:, :, new] = True
        held = self.slot_positions.shape[-1] + new_tokens
        count = self.schedule.evictions(t + new_tokens - 1, held)
        plans = None
        if count == 0:
            appended = np.broadcast_to(new, (self.rows, self.units, new_tokens))
            self.slot_positions = np.concatenate([self.slot_positions, appended], axis=2)
        elif new_tokens != 1:
            raise RuntimeError(f"a chunk of {new_tokens} tokens at t={t} would need eviction")
        else:
            plans = self._evict(t, count)
        self.policy_seconds += time.perf_counter() - started
        return plans

    def _evict(self, t: int, count: int) -> list:
        from h2osim.model.live_cache import apply_plan

        units = np.arange(self.units)[:, None]
        for row, policy in enumerate(self.policies):
            kept = self.kept[row]
            victims = ask_policy(policy, t, kept, count)  # (units, count)
            kept[units, victims] = False
            self.evicted_at[row][units, victims] = t
        # which slots survive: (rows, units, held), read off the updated kept sets
        survives = np.take_along_axis(self.kept[:, :, :t], self.slot_positions, axis=2)
        flat = self.slot_positions.reshape(self.rows * self.units, -1)
        if count == 1:
            overwrite = np.argmin(survives, axis=2)  # (rows, units): the victim's slot
            updated = apply_plan(flat, np.array([t]), overwrite=overwrite.reshape(-1))
            self.slot_positions = updated.reshape(self.rows, self.units, -1)
            return self._layer_plans(overwrite[..., None], overwrite=True)
        keep = np.nonzero(survives)[2].reshape(self.rows, self.units, -1)  # ascending slots
        updated = apply_plan(flat, np.array([t]), keep=keep.reshape(self.rows * self.units, -1))
        self.slot_positions = updated.reshape(self.rows, self.units, -1)
        return self._layer_plans(keep, overwrite=False)

    def key_norms(self, row: int, t: int) -> np.ndarray:
        """``(units, t+1)`` float64: L2 norms of the keys cached for batch row ``row``, read
        from the cache (NaN at positions not cached; a layer unit: mean over its KV heads)."""
        norms = np.full((self.units, t + 1), np.nan)
        if self.cache is None or self.slot_positions.shape[-1] == 0:
            return norms
        per_layer = [layer.keys[row].float().norm(dim=-1).cpu().numpy()  # (KVH, slots)
                     for layer in self.cache.layers]  # fmt: skip
        stacked = np.stack(per_layer)  # (L, KVH, slots)
        if self.per_layer:
            stacked = stacked.mean(axis=1, keepdims=True)
        stacked = stacked.reshape(self.units, -1)
        slots = self.slot_positions[row]  # (units, slots)
        norms[np.arange(self.units)[:, None], slots] = stacked[:, : slots.shape[-1]]
        return norms

    def _layer_plans(self, slots: np.ndarray, overwrite: bool) -> list:
        """``(rows, units, s)`` slots -> one :class:`SlotPlan` per layer, ``(rows, KVH, s)``
        (a layer unit's plan is repeated for each of its KV heads)."""
        import torch

        from h2osim.model.live_cache import SlotPlan

        by_layer = torch.from_numpy(np.ascontiguousarray(slots)).to(self.device)
        by_layer = by_layer.view(self.rows, self.num_layers, -1, slots.shape[-1])
        if self.per_layer:
            by_layer = by_layer.expand(-1, -1, self.num_kv_heads, -1).contiguous()
        if overwrite:
            return [SlotPlan(overwrite=by_layer[:, layer]) for layer in range(self.num_layers)]
        return [SlotPlan(keep=by_layer[:, layer]) for layer in range(self.num_layers)]

    def aggregate(self, weights: Sequence[Any]) -> np.ndarray:
        """``(batch, units, queries, slots)`` float32 from every layer's ``(batch, heads,
        queries, slots)`` attention weights, a KV head's query heads combined (``repeat_kv``
        layout: query head h reads KV head h // group)."""
        import torch

        stacked = torch.stack(list(weights))  # (L, B, H, Q, S)
        layers, batch, _, queries, slots = stacked.shape
        grouped = stacked.float().cpu().numpy()  # (L, B, H, Q, S)
        kv_units = self.num_kv_heads // self.kv_per_unit  # layer units: all heads in one group
        grouped = grouped.reshape(layers, batch, kv_units, -1, queries, slots)
        rule = "mean" if self.per_layer else self.config.aggregation
        combined = aggregate_heads(grouped, rule, axis=3)  # (L, B, units per layer, Q, S)
        return combined.transpose(1, 0, 2, 3, 4).reshape(batch, self.units, queries, slots)

    def observe_rows(self, t: int, served: np.ndarray | None) -> None:
        """Row t was served: record the slot count and show the policies what was attended.

        ``served`` is ``(1 or rows, units, slots)`` in slot order, or None when no policy
        observes. A single row (the shared prefix) is shown to every policy, read-only.
        """
        started = time.perf_counter()
        self.held_at[t] = min(self.slot_positions.shape[-1], t + 1)  # a chunk admits ahead
        if served is not None:
            units = np.arange(self.units)[:, None]
            observed = None
            for row, policy in enumerate(self.policies):
                if not self.observing[row]:
                    continue
                if observed is None or served.shape[0] > 1:
                    observed = np.zeros((self.units, t + 1), dtype=np.float32)  # (units, t+1)
                    slots = self.slot_positions[row][:, : served.shape[-1]]  # a chunk's row t: t+1
                    observed[units, slots] = served[min(row, len(served) - 1)]
                    observed.flags.writeable = False
                policy.observe(t, observed, read_only(self.kept[row][:, : t + 1]))
        self.policy_seconds += time.perf_counter() - started


# --------------------------------------------------------------------------- one batch run
@dataclass
class GroupRun:
    """What :func:`run_group` measured for a batch of policies that share a budget."""

    controller: LiveEviction
    token_ids: np.ndarray  # (rows, n): the tokens fed (teacher forcing: the text in every row)
    kv_bytes: int  # K/V bytes per row (per policy) at the end
    max_held: int  # most slots per unit while evicting (stream mode: <= the budget)
    prefill_seconds: float  # the shared prefix, once for all rows
    decode_seconds: float  # the token-by-token steps, all rows together
    decode_steps: int
    forward_seconds: float  # of decode_seconds: inside the model's forward passes
    weights_seconds: float  # of decode_seconds: attention weights aggregated and copied out
    policy_seconds: float  # of decode_seconds: evict + observe + slot bookkeeping
    cache: Any = field(default=None, repr=False)  # the EvictingCache at the end


def model_shape(model) -> tuple[int, int, int]:
    """``(layers, query heads, KV heads)`` of a transformers model."""
    from h2osim.model import attention_shape

    layers, heads, kv_heads, _ = attention_shape(model.config)
    return layers, heads, kv_heads


def run_group(
    model,
    policies: Sequence[Policy],
    budget: int,
    known_ids: Sequence[int],
    n: int,
    prompt_length: int,
    config: LiveConfig,
    *,
    on_logits: Callable[[int, Any], None] | None = None,
    choose: Callable[[int, Any], Any] | None = None,
    all_logits: bool = True,
    on_step: Callable[[int], None] | None = None,
    row_hook: Callable[[int, Any, np.ndarray], None] | None = None,
) -> GroupRun:
    """Run ``policies`` (one batch row each) over n tokens with k = ``budget`` per unit.

    ``known_ids`` are fed as given (teacher forcing: all n; generation: the prompt); after
    them ``choose(t, logits)`` picks every row's token t from the ``(rows, vocab)`` logits
    of row t-1. ``on_logits(t0, logits)`` receives the ``(1 or rows, m, vocab)`` logits of
    rows t0..t0+m-1 (``all_logits=False``: the prefix gives only its last row).
    ``row_hook(t0, attentions, slot_positions)`` sees each forward pass's raw attention
    weights and the token held by each slot (tests rebuild the served rows from them).
    """
    import torch

    from h2osim.model import require_attention_weights
    from h2osim.model.live_cache import EvictingCache

    device = next(model.parameters()).device
    controller = LiveEviction(
        policies, budget, n, prompt_length, model_shape(model), config, device
    )
    if controller.needs_weights:
        require_attention_weights(model)
    cache = EvictingCache.for_model(model)
    controller.cache = cache
    rows = controller.rows
    known = min(n, len(known_ids))
    token_ids = np.zeros((rows, n), dtype=np.int64)
    token_ids[:, :known] = np.asarray(list(known_ids)[:known], dtype=np.int64)
    shared = min(controller.shared_prefix(), known)
    weights = controller.needs_weights
    logits = None
    with torch.inference_mode():
        started = time.perf_counter()
        for start in range(0, shared, config.prefill_chunk):
            stop = min(shared, start + config.prefill_chunk)
            controller.admit(start, stop - start)  # never evicts: rows < shared
            output = model(torch.as_tensor(token_ids[:1, start:stop], device=device), cache=cache,
                           position_ids=torch.arange(start, stop, device=device)[None],
                           use_cache=True, output_attentions=weights,
                           logits_to_keep=0 if all_logits else 1)  # fmt: skip
            if row_hook is not None:
                row_hook(start, output.attentions, controller.slot_positions)
            chunk_rows = controller.aggregate(output.attentions) if weights else None
            for offset in range(stop - start):  # (1, units, m, stop) -> one row at a time
                t = start + offset
                served = None if chunk_rows is None else chunk_rows[:, :, offset, : t + 1]
                controller.observe_rows(t, served)
            logits = output.logits
            if on_logits is not None:
                on_logits(start if all_logits else stop - 1, logits)
            if on_step is not None:
                on_step(stop - start)
        if rows > 1 and shared > 0:
            cache.batch_repeat_interleave(rows)  # one copy of the prefix per policy
        prefill_seconds = time.perf_counter() - started
        started = time.perf_counter()
        forward_seconds = weights_seconds = 0.0
        policy_before = controller.policy_seconds
        max_held = 0
        last = None if logits is None else logits[:, -1].expand(rows, -1)
        for t in range(shared, n):
            if t < known:
                step_ids = torch.as_tensor(token_ids[:, t : t + 1], device=device)
            else:
                chosen = choose(t, last).reshape(rows)
                token_ids[:, t] = chosen.cpu().numpy()
                step_ids = chosen.reshape(rows, 1).to(device)
            plans = controller.admit(t)
            if plans is not None:
                cache.schedule(plans)
            forward_started = time.perf_counter()
            output = model(step_ids, cache=cache, position_ids=torch.full((rows, 1), t, device=device),
                           use_cache=True, output_attentions=weights)  # fmt: skip
            if device.type == "cuda":
                torch.cuda.synchronize(device)  # time the kernels, not their launch
            forward_seconds += time.perf_counter() - forward_started
            if row_hook is not None:
                row_hook(t, output.attentions, controller.slot_positions)
            weights_started = time.perf_counter()
            served = controller.aggregate(output.attentions)[:, :, 0] if weights else None
            weights_seconds += time.perf_counter() - weights_started
            controller.observe_rows(t, served)
            held = cache.held()
            if held != controller.slot_positions.shape[-1]:
                raise RuntimeError(f"the cache holds {held} slots per unit, the controller "
                                   f"expects {controller.slot_positions.shape[-1]} (t={t})")  # fmt: skip
            max_held = max(max_held, held)
            last = output.logits[:, -1]
            if on_logits is not None:
                on_logits(t, output.logits)
            if on_step is not None:
                on_step(1)
        decode_seconds = time.perf_counter() - started
    limit = controller.schedule.held_limit(n)
    if max_held > limit and (config.prompt_mode == "stream" or shared < n):
        raise RuntimeError(f"the cache held {max_held} slots per unit, over the budget {budget} "
                           f"(at most {limit} in prompt mode {config.prompt_mode})")  # fmt: skip
    return GroupRun(
        controller=controller, token_ids=token_ids, kv_bytes=cache.kv_bytes() // max(rows, 1),
        max_held=max_held, prefill_seconds=prefill_seconds, decode_seconds=decode_seconds,
        decode_steps=n - shared, forward_seconds=forward_seconds, weights_seconds=weights_seconds,
        policy_seconds=controller.policy_seconds - policy_before, cache=cache,
    )  # fmt: skip


# --------------------------------------------------------------------------- results
@dataclass
class LiveResult:
    """One policy's live run. Per-step arrays cover predictions t = 0..n-2 (row t -> token t+1)."""

    policy: str
    description: str
    budget: int
    n: int
    prompt_length: int
    prompt_mode: str
    unit_labels: tuple[tuple[int, int], ...]
    token_ids: np.ndarray  # (n,)
    evicted_at: np.ndarray  # (units, n) int32: step at which each token left, -1 = never
    held_at: np.ndarray  # (n,) slots per unit when row t was served
    kv_bytes: int  # K/V bytes at the end (this policy's cache)
    logprob: np.ndarray | None = None  # (n-1,) log p(token t+1 | row t), teacher forcing
    kl: np.ndarray | None = None  # (n-1,) KL(full || live) of the next-token distribution
    top1: np.ndarray | None = None  # (n-1,) bool: same argmax as the full cache
    timing: dict[str, float] = field(default_factory=dict)
    summary: dict[str, Any] = field(default_factory=dict)

    def kept_at(self, t: int) -> np.ndarray:
        """``(units, t+1)`` bool: what each unit held when row t was served."""
        return kept_at(self.evicted_at, t)

    def record(self) -> dict[str, Any]:
        """One flat, JSON-ready row."""
        return {"policy": self.policy, "description": self.description, "budget": self.budget,
                "budget_fraction": self.budget / self.n, "n": self.n,
                "prompt_mode": self.prompt_mode, **self.summary, **self.timing}  # fmt: skip


def summarize_teacher_forced(result: LiveResult, full_kv_bytes: int) -> dict[str, Any]:
    """Perplexity, KL and top-1 agreement over the scored predictions and over the evicted
    ones (rows served over a compressed cache: held < t+1). Scored: every row, or in
    prompt mode ``prefill`` the continuation only, rows P..n-2 (kvpress's perplexity; the
    prompt's own rows are the full cache's), with ``perplexity_all`` over every row."""
    steps = np.arange(result.n - 1)
    evicted = result.held_at[:-1] < steps + 1
    summary: dict[str, Any] = {}
    scored = np.ones_like(evicted)
    if result.prompt_mode == "prefill":
        scored = steps >= result.prompt_length
        summary["perplexity_all"] = float(np.exp(-result.logprob.mean()))
        summary["scored_rows"] = f"{result.prompt_length}..{result.n - 2}"
    for suffix, chosen in (("", scored), ("_evicted", evicted)):
        if not chosen.any():
            summary |= {f"perplexity{suffix}": None, f"kl{suffix}": None, f"top1{suffix}": None}
            continue
        summary[f"perplexity{suffix}"] = float(np.exp(-result.logprob[chosen].mean()))
        summary[f"kl{suffix}"] = float(result.kl[chosen].mean())
        summary[f"top1{suffix}"] = float(result.top1[chosen].mean())
    summary["evicted_steps"] = int(evicted.sum())
    summary["kv_bytes"] = result.kv_bytes
    summary["kv_fraction"] = result.kv_bytes / full_kv_bytes if full_kv_bytes else None
    return summary


def _timing(run: GroupRun) -> dict[str, float]:
    steps = max(run.decode_steps, 1)
    return {
        "rows_in_batch": run.controller.rows,
        "prefill_seconds": round(run.prefill_seconds, 3),
        "decode_seconds": round(run.decode_seconds, 3),
        "decode_ms_per_step": round(1000 * run.decode_seconds / steps, 2),
        "forward_ms_per_step": round(1000 * run.forward_seconds / steps, 2),
        "weights_ms_per_step": round(1000 * run.weights_seconds / steps, 2),
        "policy_ms_per_step": round(1000 * run.policy_seconds / steps, 2),
    }


@dataclass
class LiveReport:
    """A live run of several policies against the full cache (the reference)."""

    mode: str  # "teacher-forced" | "generate"
    reference: LiveResult
    results: list[LiveResult]
    config: LiveConfig

    def records(self) -> list[dict[str, Any]]:
        return [result.record() for result in [self.reference, *self.results]]


def _groups(
    policies: Sequence[Policy], budget: float | int | str, budget_of: str, n: int, prompt_length: int,
    config: LiveConfig,
) -> list[tuple[int, LiveConfig, list[Policy]]]:  # fmt: skip
    """Policies grouped by (budget k, prompt mode), in batches of ``config.batch``."""
    grouped: dict[tuple[int, str], list[Policy]] = {}
    for policy in policies:
        check_live_policy(policy)
        schedule = CacheSchedule.for_policy(policy, budget, n, prompt_length, budget_of=budget_of,
                                            prompt_mode=config.prompt_mode,
                                            compression_ratio=config.compression_ratio)  # fmt: skip
        grouped.setdefault((min(schedule.budget, n), schedule.prompt_mode), []).append(policy)
    batches = []
    for (k, mode), members in grouped.items():
        size = config.batch or len(members)
        ratio = config.compression_ratio if mode == "prefill" else None
        own = LiveConfig(config.aggregation, mode, config.prefill_chunk, config.batch, ratio)
        batches += [(k, own, members[i : i + size]) for i in range(0, len(members), size)]
    return batches


def reference_logprobs(model, token_ids: Sequence[int], chunk: int = DEFAULT_PREFILL_CHUNK):
    """Full-cache log-probabilities ``(n, vocab)`` float32 and the K/V bytes of the full cache:
    transformers' own ``DynamicCache``, chunked forward passes, explicit positions."""
    import torch
    from transformers import DynamicCache

    device = next(model.parameters()).device
    cache = DynamicCache(config=model.config)
    pieces = []
    with torch.inference_mode():
        for start in range(0, len(token_ids), chunk):
            stop = min(len(token_ids), start + chunk)
            ids = torch.as_tensor([list(token_ids[start:stop])], device=device)
            output = model(ids, cache=cache, use_cache=True,
                           position_ids=torch.arange(start, stop, device=device)[None])  # fmt: skip
            pieces.append(torch.log_softmax(output.logits[0].float(), dim=-1).cpu())
    kv_bytes = sum(layer.keys.nbytes + layer.values.nbytes for layer in cache.layers)
    return torch.cat(pieces), kv_bytes


def teacher_forced(
    model,
    token_ids: Sequence[int],
    policies: Sequence[Policy | str],
    budget: float | int | str = 0.2,
    *,
    budget_of: str = "sequence",
    prompt_length: int = 0,
    config: LiveConfig | None = None,
    progress: bool = False,
    row_hook: Callable[[int, Any, np.ndarray], None] | None = None,
) -> LiveReport:
    """Feed ``token_ids`` (the text) to the model under each policy; compare with the full cache.

    Row t predicts token t+1: perplexity of the text, and against the full cache the KL
    divergence of the next-token distribution and top-1 agreement. The budget is a
    fraction of n (or of ``prompt_length`` with ``budget_of="prompt"``) or a count.
    """
    import torch

    config = config or LiveConfig()
    policies = [make_policy(p) if isinstance(p, str) else p for p in policies]
    ids = [int(token) for token in token_ids]
    n = len(ids)
    if n < 2:
        raise ValueError(f"teacher forcing needs at least 2 tokens, got {n}")
    _check_prompt(prompt_length, n, budget_of, config, policies)
    groups = _groups(policies, budget, budget_of, n, prompt_length, config)
    bar = _bar(progress, n * (1 + len(groups)), "live")
    with bar:
        reference_logp, full_kv_bytes = reference_logprobs(model, ids, config.prefill_chunk)
        bar.update(n)
        targets = torch.as_tensor(ids[1:])
        reference_top = reference_logp.argmax(dim=-1)
        full = LiveResult(
            policy="full", description="full", budget=n, n=n, prompt_length=prompt_length,
            prompt_mode=config.prompt_mode, unit_labels=(), token_ids=np.asarray(ids),
            evicted_at=np.zeros((0, n), dtype=np.int32), held_at=np.arange(1, n + 1),
            kv_bytes=full_kv_bytes,
            logprob=reference_logp[:-1].gather(1, targets[:, None])[:, 0].numpy(),
            kl=np.zeros(n - 1), top1=np.ones(n - 1, dtype=bool),
        )  # fmt: skip
        full.summary = summarize_teacher_forced(full, full_kv_bytes)
        results = []
        for k, group_config, members in groups:
            logprob = np.zeros((len(members), n - 1))
            kl = np.zeros((len(members), n - 1))
            top1 = np.zeros((len(members), n - 1), dtype=bool)

            def on_logits(t0: int, logits, logprob=logprob, kl=kl, top1=top1) -> None:
                steps = np.arange(t0, min(t0 + logits.shape[1], n - 1))
                if len(steps) == 0:
                    return
                logp = torch.log_softmax(logits[:, : len(steps)].float(), dim=-1).cpu()  # (R, m, V)
                reference = reference_logp[steps]  # (m, V)
                logprob[:, steps] = logp.gather(
                    2, targets[steps][None, :, None].expand(len(logp), -1, 1)
                )[..., 0].numpy()
                kl[:, steps] = (reference.exp() * (reference - logp)).sum(dim=-1).numpy()
                top1[:, steps] = (logp.argmax(dim=-1) == reference_top[steps]).numpy()

            run = run_group(model, members, k, ids, n, prompt_length, group_config,
                            on_logits=on_logits, on_step=bar.update, row_hook=row_hook)  # fmt: skip
            for row, policy in enumerate(members):
                result = _result(policy, run, row, k, n, prompt_length, group_config)
                result.logprob, result.kl, result.top1 = logprob[row], kl[row], top1[row]
                result.summary = summarize_teacher_forced(result, full_kv_bytes)
                results.append(result)
    return LiveReport("teacher-forced", full, results, config)


def generate(
    model,
    prompt_ids: Sequence[int],
    policies: Sequence[Policy | str],
    budget: float | int | str = 0.2,
    *,
    max_new_tokens: int = 32,
    budget_of: str = "sequence",
    config: LiveConfig | None = None,
    progress: bool = False,
) -> LiveReport:
    """Greedy generation of ``max_new_tokens`` after the prompt under each policy and the full
    cache. The budget is a fraction of n = prompt + new tokens (or of the prompt)."""
    config = config or LiveConfig()
    if max_new_tokens < 1:
        raise ValueError(f"--generate needs at least 1 new token, got {max_new_tokens}")
    policies = [make_policy(p) if isinstance(p, str) else p for p in policies]
    prompt = [int(token) for token in prompt_ids]
    if not prompt:
        raise ValueError("the prompt has no tokens")
    prompt_length = len(prompt)
    n = prompt_length + max_new_tokens
    _check_prompt(prompt_length, n, budget_of, config, policies)
    full_policy = make_policy("full")
    groups = [(n, config, [full_policy])] + _groups(
        policies, budget, budget_of, n, prompt_length, config
    )
    bar = _bar(progress, n * len(groups), "live")

    def greedy(t: int, logits):
        return logits.argmax(dim=-1)

    results = []
    with bar:
        for k, group_config, members in groups:
            run = run_group(model, members, k, prompt, n, prompt_length, group_config, choose=greedy,
                            all_logits=False, on_step=bar.update)  # fmt: skip
            for row, policy in enumerate(members):
                results.append(_result(policy, run, row, k, n, prompt_length, group_config))
    reference, results = results[0], results[1:]
    full_new = reference.token_ids[prompt_length:]
    for result in [reference, *results]:
        new = result.token_ids[prompt_length:]
        differs = np.nonzero(new != full_new)[0]
        result.summary = {
            "agree_prefix": int(differs[0]) if len(differs) else len(new),
            "agree_rate": float((new == full_new).mean()),
            "kv_bytes": result.kv_bytes,
            "kv_fraction": result.kv_bytes / reference.kv_bytes,
        }
    return LiveReport("generate", reference, results, config)


def _result(policy: Policy, run: GroupRun, row: int, k: int, n: int, prompt_length: int,
            config: LiveConfig) -> LiveResult:  # fmt: skip
    controller = run.controller
    return LiveResult(
        policy=policy.name, description=policy.describe(), budget=k, n=n,
        prompt_length=prompt_length, prompt_mode=config.prompt_mode,
        unit_labels=controller.unit_labels, token_ids=run.token_ids[row].copy(),
        evicted_at=controller.evicted_at[row].copy(), held_at=controller.held_at.copy(),
        kv_bytes=run.kv_bytes, timing=_timing(run),
    )  # fmt: skip


def _check_prompt(prompt_length: int, n: int, budget_of: str, config: LiveConfig,
                  policies: Sequence[Policy]) -> None:  # fmt: skip
    if prompt_length < 0 or prompt_length >= n:
        raise ValueError(
            f"--prompt-length must be in 0..{n - 1} (n = {n} tokens), got {prompt_length}"
        )
    check_prompt_needed(prompt_length, budget_of, config, policies)


def check_prompt_needed(prompt_length: int, budget_of: str, config: LiveConfig,
                        policies: Sequence[Policy]) -> None:  # fmt: skip
    """A prompt (P > 0) is needed by a budget of the prompt and by the "full" prompt mode."""
    if budget_of not in BUDGET_BASES:
        raise ValueError(f"budget base must be one of {BUDGET_BASES}, got {budget_of!r}")
    reasons = ["--budget-of prompt"] if budget_of == "prompt" else []
    if config.prompt_mode in ("full", "prefill"):
        reasons.append(f"--prompt-mode {config.prompt_mode}")
    forcing = [p.name for p in policies if p.prompt_mode in ("full", "prefill")]
    if forcing:
        reasons.append(f"{', '.join(forcing)} (attending the prompt in full)")
    if reasons and prompt_length == 0:
        raise ValueError(
            f"{' and '.join(reasons)} need a prompt: give --prompt-length P (teacher forcing "
            "treats the first P tokens as the prompt)"
        )


def _bar(progress: bool, total: int, desc: str):
    from tqdm import tqdm

    return tqdm(total=total, unit="tok", desc=desc, disable=not progress, file=sys.stderr,
                dynamic_ncols=True, delay=0.5)  # fmt: skip
