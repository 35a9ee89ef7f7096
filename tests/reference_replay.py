"""A slow, obviously-correct replay: one unit at a time, Python lists and sums.

Used only as the differential oracle for the vectorised engine in h2osim.replay. It
drives the same policy objects (their scoring is pinned by known-answer tests) but does
its own admission, eviction choice (sorting (score, position) pairs), metrics and
renormalised observation, token by token. Mask policies name each row's set themselves;
the reference then only serves, measures and observes it.
"""

from __future__ import annotations

import math

import numpy as np

from h2osim.engine import ReplayConfig, resolve_budget
from h2osim.metrics import OUTPUT_NORM_FLOOR, SIGNIFICANCE
from h2osim.policies import ReplayContext, ScorePolicy


def reference_replay(trace, policy, budget, *, budget_of="sequence", config=None):
    config = config or ReplayConfig()
    config = ReplayConfig(config.aggregation,
                          policy.prompt_mode or config.prompt_mode, config.observation,
                          config.layers, compression_ratio=config.compression_ratio)  # fmt: skip
    layout = config.layout(trace)
    n, prompt = trace.n, trace.prompt_length
    fixed = policy.fixed_budget(n, prompt)
    k = resolve_budget(budget, n, prompt, budget_of) if fixed is None else fixed
    if fixed is None and config.prompt_mode == "prefill" and config.compression_ratio is not None:
        k = max(1, int(prompt * (1 - config.compression_ratio)))  # kvpress's count
    units = layout.units
    # Which (layer, query head) rows feed each unit, and that unit's value vectors.
    heads_of_unit = []
    for layer, head in layout.labels:
        if config.aggregation == "per-head":
            heads_of_unit.append([(layer, head)])
        elif config.aggregation == "layer":
            heads_of_unit.append([(layer, h) for h in range(trace.num_heads)])
        else:
            heads_of_unit.append(
                [(layer, h) for h in range(trace.num_heads) if trace.head_map[h] == head]
            )
    policy.reset(
        ReplayContext(
            units=units,
            n=n,
            budget=k,
            prompt_length=prompt,
            unit_labels=layout.labels,
            unit_matrix=None if policy.online else layout.matrix,
            unit_weights=None if policy.online else layout.weights,
            prompt_mode=config.prompt_mode,
            key_norms=layout.key_norms if policy.needs_key_norms else None,
        )
    )
    mask = policy.kind == "mask"
    last_row = np.full((units, n), -1)  # masks: the last row that attended each key
    caches = [[] for _ in range(units)]
    evicted_at = np.full((units, n), -1)
    mass = np.zeros((n, units))
    hits = np.zeros((n, units))
    errors = np.zeros((n, units)) if trace.has_values else None
    for t in range(n):
        if mask:
            attended = policy.attend(t)
            caches = [[j for j in range(t + 1) if attended[u][j]] for u in range(units)]
            for u, cache in enumerate(caches):
                last_row[u, cache] = t
        else:
            for cache in caches:
                cache.append(t)
        held = len(caches[0])
        if mask:
            count = 0
        elif config.prompt_mode == "prefill":
            count = held - k - 1 if t == prompt and held > k + 1 else 0
        elif config.prompt_mode == "full" and t < prompt:
            count = 0
        else:
            count = max(0, held - k)
        if count:
            kept = _kept_array(caches, t)
            if isinstance(policy, ScorePolicy) and type(policy).evict is ScorePolicy.evict:
                scores = policy.score(t, kept)
                victims = []
                for u, cache in enumerate(caches):
                    ranked = sorted((float(scores[u][j]), j) for j in cache if j != t)
                    victims.append([j for _, j in ranked[:count]])
            else:
                victims = policy.evict(t, kept, count).tolist()
            for u, cache in enumerate(caches):
                for j in victims[u]:
                    cache.remove(j)
                    evicted_at[u, j] = t
        observed = np.zeros((units, t + 1))
        for u, cache in enumerate(caches):
            per_head_observed = []
            head_mass, head_hits, head_errors = [], [], []
            for layer, head in heads_of_unit[u]:
                row = [float(x) for x in trace.row(layer, head, t)]
                retained = sum(row[j] for j in cache)  # exact: float32 values summed in float64
                total = sum(row)
                head_mass.append(retained / total)  # the share of the row kept
                cutoff = SIGNIFICANCE * max(row)
                significant = [j for j in range(t + 1) if row[j] >= cutoff]
                head_hits.append(sum(1 for j in significant if j in cache) / len(significant))
                if config.observation == "full":
                    per_head_observed.append(row)
                else:
                    per_head_observed.append(
                        [
                            row[j] / retained if (j in cache and retained > 0) else 0.0
                            for j in range(t + 1)
                        ]
                    )
                if errors is not None:
                    values = trace.values(layer)[trace.head_map[head]].astype(np.float64)
                    full = sum(row[j] * values[j] for j in range(t + 1)) / total
                    kept_out = sum(row[j] * values[j] for j in cache) / (
                        retained if retained > 0 else 1.0
                    )
                    scale = math.sqrt(float(np.dot(full, full)))
                    diff = full - kept_out
                    head_errors.append(
                        math.sqrt(float(np.dot(diff, diff))) / max(scale, OUTPUT_NORM_FLOOR)
                    )
            mass[t, u] = sum(head_mass) / len(head_mass)
            hits[t, u] = sum(head_hits) / len(head_hits)
            if errors is not None:
                errors[t, u] = sum(head_errors) / len(head_errors) if cache else 1.0
            for j in range(t + 1):
                column = [head_row[j] for head_row in per_head_observed]
                if config.aggregation == "max":
                    observed[u, j] = max(column)
                elif config.aggregation in ("mean", "layer"):
                    observed[u, j] = sum(column) / len(column)
                else:
                    observed[u, j] = sum(column)
        policy.observe(t, observed, _kept_array(caches, t))
    if mask:  # a key leaves for good after the last row that attended it (never: at once)
        evicted_at = np.where(
            last_row < 0, np.arange(n), np.where(last_row == n - 1, -1, last_row + 1)
        )
    return {
        "evicted_at": evicted_at,
        "retained_mass": mass,
        "hit_rate": hits,
        "output_error": errors,
    }


def _kept_array(caches, t):
    kept = np.zeros((len(caches), t + 1), dtype=bool)
    for u, cache in enumerate(caches):
        kept[u, cache] = True
    return kept
