"""Cache units: a trace's attention arranged the way the engine and the oracles read it.

A cache unit is one (layer, KV head) - the K/V tensors a real model keeps - or, in
``per-head`` mode, one (layer, query head), or, in ``layer`` mode, one whole layer (all
its query heads averaged, one kept set shared by every KV head of the layer: TOVA's rule,
Oren et al. 2024, Sec. 3). Under grouped-query attention (GQA) a KV head serves ``G``
query heads; their rows are read together, ``(units, G, t+1)``, and combined by
:func:`h2osim.trace.aggregate_heads` (sum, mean or max) wherever a policy needs one score
per token. Labels are ``(layer, KV head)``, ``(layer, query head)`` or ``(layer, -1)``.
See docs/architecture.md ("Cache units").
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import numpy as np

from h2osim.metrics import kept_matrix, output_error
from h2osim.trace import AGGREGATIONS, Trace

# how a unit's query heads combine, or one unit per query head, or one unit per layer (mean)
GQA_MODES = AGGREGATIONS + ("per-head", "layer")


def observed_aggregation(aggregation: str) -> str:
    """The :func:`aggregate_heads` rule behind a GQA mode: per-head units have one head
    (sum), layer units average all heads. Example: "layer" -> "mean"."""
    return {"per-head": "sum", "layer": "mean"}.get(aggregation, aggregation)


class UnitLayout:
    """Arranges a trace's rows as ``(units, G, t+1)``: cache units x their query heads."""

    def __init__(
        self, trace: Trace, aggregation: str = "sum", layers: Sequence[int] | None = None
    ) -> None:
        if aggregation not in GQA_MODES:
            raise ValueError(f"aggregation must be one of {GQA_MODES}, got {aggregation!r}")
        self.trace = trace
        self.aggregation = aggregation
        layers = trace.layers.tolist() if layers is None else list(layers)
        for layer in layers:
            if layer not in trace.layer_positions:
                raise ValueError(
                    f"layer {layer} is not stored in this trace; stored: {trace.layers.tolist()}"
                )
        self.layers = [int(layer) for layer in layers]
        self.per_head = aggregation == "per-head"
        self.per_layer = aggregation == "layer"
        order = np.argsort(trace.head_map, kind="stable")  # query heads grouped by KV head
        self.head_order = None if np.array_equal(order, np.arange(trace.num_heads)) else order
        if self.per_head:
            self.heads_per_unit = 1
            labels = [(layer, head) for layer in self.layers for head in range(trace.num_heads)]
        elif self.per_layer:
            self.heads_per_unit = trace.num_heads
            labels = [(layer, -1) for layer in self.layers]
        else:
            self.heads_per_unit = trace.group_size
            labels = [(layer, kv) for layer in self.layers for kv in range(trace.num_kv_heads)]
        self.labels: tuple[tuple[int, int], ...] = tuple(labels)
        self.units = len(labels)

    def rows(self, t: int) -> np.ndarray:
        """Row t of every unit's query heads, ``(units, G, t+1)`` float64.

        float64 because every float32/float16 row then sums exactly, in any order: the
        kept mass, and with it what policies observe, is bit-identical in any correct
        implementation (see :func:`_observe`).
        """
        block = self.trace.rows(t, self.layers, np.float64)  # (L, H, t+1)
        if self.head_order is not None and not self.per_head:
            block = block[:, self.head_order]
        return block.reshape(self.units, self.heads_per_unit, t + 1)

    def row_stats(self) -> tuple[np.ndarray, ...] | None:
        """Cached sum, maximum and significant-key count of every row, each ``(n, units, G)``
        in :meth:`rows` order, or None when some layer has none yet."""
        per_layer = [self.trace.row_stats(layer, compute=False) for layer in self.layers]
        if any(stats is None for stats in per_layer):
            return None
        shape = (self.units, self.heads_per_unit, self.trace.n)
        arranged = []
        for column in zip(*per_layer, strict=True):
            stacked = np.stack(column)  # (L, H, n)
            if self.head_order is not None and not self.per_head:
                stacked = stacked[:, self.head_order]
            arranged.append(np.moveaxis(stacked.reshape(shape), 2, 0).copy())
        return tuple(arranged)

    def store_row_stats(self, stats: tuple[np.ndarray, ...]) -> None:
        """Give the trace row statistics measured during a replay (inverse of :meth:`row_stats`)."""
        heads = self.trace.num_heads
        per_layer = []
        for column in stats:  # (n, units, G) -> (L, H, n)
            by_head = np.moveaxis(column, 0, 2).reshape(len(self.layers), heads, self.trace.n)
            if self.head_order is not None and not self.per_head:
                by_head = by_head[:, np.argsort(self.head_order)]
            per_layer.append(by_head)
        for position, layer in enumerate(self.layers):
            self.trace.set_row_stats(layer, tuple(part[position] for part in per_layer))

    def heads(self, unit: int) -> list[int]:
        """The query heads whose rows a unit serves. Example: GQA 3:1, unit (0, 1) -> [3, 4, 5]."""
        _, head = self.labels[unit]
        if self.per_layer:
            return (np.argsort(self.trace.head_map, kind="stable")).tolist()
        return [head] if self.per_head else np.flatnonzero(self.trace.head_map == head).tolist()

    def output_errors(self, served: np.ndarray | Callable[[int], np.ndarray]) -> np.ndarray:
        """Attention-output error ``(n, units)`` of a finished replay, one matmul pass per head.

        ``served`` is the ``(units, n)`` eviction schedule (``evicted_at``) or a function
        giving each unit's ``(n, n)`` served sets (mask policies). A row served over no key
        at all (a mask with zero budgets) has error 1: its whole output is lost. Computed
        after the loop; the full-cache outputs are cached on the trace, so sweeps pay them once.
        """
        errors = np.empty((self.trace.n, self.units), dtype=np.float32)
        for unit, (layer, _) in enumerate(self.labels):
            kept = served(unit) if callable(served) else kept_matrix(served[unit])  # (n, n)
            values = self.trace.values(layer)  # (KVH, n, d)
            per_head = [
                output_error(self.trace.head_matrix(layer, head), values[self.trace.head_map[head]],
                             kept, full=self.trace.head_output(layer, head))
                for head in self.heads(unit)
            ]  # fmt: skip
            errors[:, unit] = np.mean(per_head, axis=0)
            errors[~kept.any(axis=1), unit] = 1.0  # a row served over nothing lost its output
        return errors

    def matrix(self, unit: int) -> np.ndarray:
        """The unit's full ``(n, n)`` attention, aggregated as the engine does (for oracles)."""
        layer, head = self.labels[unit]
        if self.per_head:
            return self.trace.head_matrix(layer, head)
        if self.per_layer:
            heads = [self.trace.head_matrix(layer, h) for h in range(self.trace.num_heads)]
            return np.mean(heads, axis=0, dtype=np.float64).astype(np.float32)
        return self.trace.unit_matrix(layer, head, self.aggregation)

    def weights(self, unit: int) -> np.ndarray:
        """The unit's ``(n, n)`` float64 metric weights (for oracles): entry [t, j] is what
        keeping token j while row t is served adds to its retained mass at step t - each
        query head's row as a share of its total, averaged over the unit's heads. Unlike
        :meth:`matrix` this is exact for every aggregation (max included)."""
        layer, _ = self.labels[unit]
        heads = self.heads(unit)
        weights = np.zeros((self.trace.n, self.trace.n))
        for query_head in heads:
            rows = self.trace.head_matrix(layer, int(query_head)).astype(np.float64)
            row_total = rows.sum(axis=1, keepdims=True)  # (n, 1), 1 up to storage rounding
            weights += rows / np.where(row_total > 0, row_total, 1.0)
        return weights / len(heads)

    def key_norms(self, t: int) -> np.ndarray:
        """``(units, t+1)`` float64: the L2 norm of every key 0..t in each unit's KV head
        (a layer unit: the mean over its KV heads), from the trace's optional
        ``key_norms`` member. ValueError when the trace has none (dumped before it existed)."""
        norms = getattr(self.trace, "key_norms", None)
        stored = None if norms is None else norms(self.layers[0])
        if stored is None:
            raise ValueError("this trace stores no key norms (policy knorm needs them): dump "
                             "it again with python -m h2osim.dump")  # fmt: skip
        rows = []
        for layer, head in self.labels:
            per_kv = self.trace.key_norms(layer)[:, : t + 1].astype(np.float64)  # (KVH, t+1)
            if self.per_layer:
                rows.append(per_kv.mean(axis=0))
            else:
                rows.append(per_kv[self.trace.head_map[head] if self.per_head else head])
        return np.stack(rows)
