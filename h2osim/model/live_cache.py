"""A transformers cache whose layers really drop K/V entries: the plug for live eviction.

Follows transformers' own cache abstraction (``cache_utils``): a :class:`Cache` is a list
of layer caches, and the attention modules only ever call ``cache.update(keys, values,
layer)`` and ask the cache for its sizes. :class:`EvictingLayer` is a
``DynamicLayer`` that, at its next ``update``, drops the slots the controller scheduled
(per batch row and KV head) before serving the new token - no attention module is
patched. The policies and their bookkeeping live in :mod:`h2osim.live`; this module
only moves tensors.

Storage: ``keys``/``values`` are ``(batch, kv_heads, slots, head_dim)``, keys post-RoPE
(rotated at their true position when they were computed; eviction never re-rotates).
Every (batch row, KV head) holds the same number of slots, so the tensors stay dense.
Two ways to apply a schedule, both mirrored exactly by :func:`apply_plan` in numpy:

- **overwrite** (the steady state: one token in, one out): the new token is written in
  place into the victim's slot. No allocation, no copy: the buffer stays at the budget.
  Slots are then no longer in position order - attention does not care, because keys
  carry their positions in their rotation and a decode query attends to every slot.
- **keep** (several out, e.g. the prompt compressed after prefill): the surviving slots
  are gathered in ascending slot order into new, smaller tensors (the old ones are
  freed) and the new tokens are appended after them.

Positions: like ``DynamicSlidingWindowLayer`` (the library's own dropping cache), the
layer reports the number of tokens it has *seen* as its sequence length, so a caller
that passes no position ids still gets the true ones, and :meth:`get_mask_sizes` maps
its physical slots to virtual positions ``kv_offset + slot`` just below the new tokens:
a decode query sees every kept slot, and a multi-token chunk is causal among its own
tokens. ``h2osim.live`` passes explicit position ids all the same.

Simplifications: full-attention layers only (no sliding-window or linear layers), the
same slot count in every layer and row, a chunk of several new tokens only with a keep
plan (never overwrite), no beam-search reordering after eviction.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from transformers.cache_utils import Cache, DynamicLayer


@dataclass
class SlotPlan:
    """What one layer does to its slots at its next update (tensors on the cache's device).

    Exactly one field is set. ``overwrite`` ``(batch, kv_heads, 1)``: the slot each row's
    single new token replaces. ``keep`` ``(batch, kv_heads, survivors)``: ascending slots
    to keep; the new tokens are appended after them.
    """

    overwrite: torch.Tensor | None = None
    keep: torch.Tensor | None = None

    def held_after(self, held: int, new_tokens: int) -> int:
        """Slots held once the update is done. Example: held 8, keep 5 slots, 1 new -> 6."""
        if self.overwrite is not None:
            return held
        return int(self.keep.shape[-1]) + new_tokens


class EvictingLayer(DynamicLayer):
    """A ``DynamicLayer`` that applies a scheduled :class:`SlotPlan` at its next update.

    Example: 4 slots held, plan overwrite slot 1 -> after ``update(k_new, v_new)`` the
    layer still holds 4 slots and slot 1 is the new token; ``get_seq_length()`` grew by 1.
    """

    def __init__(self, **kwargs) -> None:
        super().__init__(**kwargs)
        self.seen = 0  # tokens admitted so far = the position of the next token
        self.plan: SlotPlan | None = None

    def held(self) -> int:
        """Physical slots per (batch row, KV head)."""
        return 0 if not self.is_initialized or self.keys.numel() == 0 else self.keys.shape[-2]

    def update(
        self, key_states: torch.Tensor, value_states: torch.Tensor, *args, **kwargs
    ) -> tuple[torch.Tensor, torch.Tensor]:
        if not self.is_initialized:
            self.lazy_initialization(key_states, value_states)
        plan, self.plan = self.plan, None
        new_tokens = key_states.shape[-2]
        self.seen += new_tokens
        if plan is None:
            self.keys = torch.cat([self.keys, key_states], dim=-2)
            self.values = torch.cat([self.values, value_states], dim=-2)
        elif plan.overwrite is not None:
            if new_tokens != 1:
                raise RuntimeError(f"an overwrite plan takes 1 new token, got {new_tokens}")
            index = plan.overwrite[..., None].expand(-1, -1, -1, key_states.shape[-1])
            self.keys.scatter_(2, index, key_states)  # in place: the buffer keeps its size
            self.values.scatter_(2, index, value_states)
        else:
            index = plan.keep[..., None].expand(-1, -1, -1, key_states.shape[-1])
            self.keys = torch.cat([self.keys.gather(2, index), key_states], dim=-2)
            self.values = torch.cat([self.values.gather(2, index), value_states], dim=-2)
        return self.keys, self.values

    def get_seq_length(self) -> int:
        """Tokens seen (the true next position), not slots held - as sliding-window layers do."""
        return self.seen

    def get_mask_sizes(self, query_length: int) -> tuple[int, int]:
        """``(kv_length, kv_offset)`` of the coming update: slots after it, and the offset that
        puts the kept slots just before the ``query_length`` new tokens."""
        held = self.held()
        after = (
            held + query_length if self.plan is None else self.plan.held_after(held, query_length)
        )
        return after, self.seen + query_length - after

    def get_max_length(self) -> int:
        return -1

    def crop(self, tokens_to_remove: int) -> None:
        raise NotImplementedError(
            "an evicting cache cannot be cropped (its slots are not in order)"
        )

    def reset(self) -> None:
        super().reset()
        self.seen = 0
        self.plan = None


class EvictingCache(Cache):
    """One :class:`EvictingLayer` per model layer; the controller schedules, layers apply.

    Example: ``cache = EvictingCache.for_model(model)``; before a forward pass call
    ``cache.schedule(plans)`` with one :class:`SlotPlan` per layer (or None for "just
    append"); ``model(ids, cache=cache, position_ids=...)`` then evicts and serves.
    """

    def __init__(self, num_layers: int) -> None:
        super().__init__(layers=[EvictingLayer() for _ in range(num_layers)])

    @classmethod
    def for_model(cls, model) -> EvictingCache:
        """A cache for ``model``; refuses sliding-window, chunked or linear-attention layers."""
        config = model.config.get_text_config(decoder=True)
        layer_types = getattr(config, "layer_types", None) or []
        other = sorted({kind for kind in layer_types if kind != "full_attention"})
        if other or getattr(config, "sliding_window", None):
            raise ValueError(
                f"live eviction supports full-attention layers only; this model has "
                f"{', '.join(other) or 'sliding-window'} layers"
            )
        return cls(int(config.num_hidden_layers))

    def schedule(self, plans: list[SlotPlan | None]) -> None:
        """Set every layer's plan for the next update."""
        if len(plans) != len(self.layers):
            raise ValueError(f"need {len(self.layers)} plans, got {len(plans)}")
        for layer, plan in zip(self.layers, plans, strict=True):
            layer.plan = plan

    def held(self) -> int:
        """Slots per (batch row, KV head), the same in every layer (checked)."""
        counts = {layer.held() for layer in self.layers}
        if len(counts) != 1:
            raise RuntimeError(f"layers hold different slot counts: {sorted(counts)}")
        return counts.pop()

    def kv_bytes(self) -> int:
        """Bytes of every layer's key and value tensors (all batch rows)."""
        return sum(
            layer.keys.nbytes + layer.values.nbytes for layer in self.layers if layer.is_initialized
        )


def apply_plan(
    slot_positions: np.ndarray,
    new_positions: np.ndarray,
    overwrite: np.ndarray | None = None,
    keep: np.ndarray | None = None,
) -> np.ndarray:
    """The numpy mirror of :meth:`EvictingLayer.update`: token position held by each slot.

    ``slot_positions`` is ``(rows, held)``, ``new_positions`` ``(m,)``; ``overwrite``
    ``(rows,)`` or ``keep`` ``(rows, survivors)``; neither means append.
    Example: slots [[0, 1, 2]], new [3], overwrite [1] -> [[0, 3, 2]];
    keep [[0, 2]] -> [[0, 2, 3]].
    """
    rows = slot_positions.shape[0]
    appended = np.broadcast_to(new_positions, (rows, len(new_positions)))
    if overwrite is not None:
        updated = slot_positions.copy()
        updated[np.arange(rows), overwrite] = new_positions[0]
        return updated
    if keep is not None:
        slot_positions = np.take_along_axis(slot_positions, keep, axis=1)
    return np.concatenate([slot_positions, appended], axis=1)
