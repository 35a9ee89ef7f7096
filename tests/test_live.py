"""Live eviction (h2osim.live, h2osim.live_cache) on a tiny random llama: fast, no download.

The known answer: given the evictions a live run made, one forward pass over the whole
text with a per-(layer, KV head) attention mask that hides, from row t, exactly the
tokens evicted by step t - and positions 0..n-1 - must reproduce the live logits and the
cached keys. It fails if RoPE positions come from the shrunken cache length (a negative
control shows it), if a slot holds the wrong token, or if a policy's decision is applied
to the wrong unit. A differential test replays the rows the live model served through
the replay engine and must find the same evictions. The real SmolLM2 runs the same
checks on a few dozen tokens in tests/test_live_model.py.
"""

from __future__ import annotations

import functools
import json

import numpy as np
import pytest
import torch

from h2osim.engine import ReplayConfig, replay
from h2osim.live import main
from h2osim.model.live import (
    SWEEP_POLICIES,
    LiveConfig,
    generate,
    live_policy_names,
    model_shape,
    run_group,
    teacher_forced,
)
from h2osim.model.live_cache import EvictingCache, EvictingLayer, SlotPlan, apply_plan
from h2osim.policies import make_policy
from h2osim.trace import Trace

LIVE_POLICIES = live_policy_names()  # online caches: masks re-admit, so they are replay-only


@functools.lru_cache(maxsize=1)
def tiny_model():
    """A seeded random llama: 3 layers, 6 query heads -> 2 KV heads (GQA 3:1), head_dim 8."""
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.set_num_threads(1)  # small ops on a busy 2-core box crawl with 2 threads
    torch.manual_seed(0)
    config = LlamaConfig(
        vocab_size=97, hidden_size=48, intermediate_size=96, num_hidden_layers=3,
        num_attention_heads=6, num_key_value_heads=2, head_dim=8,
        max_position_embeddings=512, initializer_range=0.2,
    )  # fmt: skip
    model = LlamaForCausalLM(config).eval()
    model.set_attn_implementation("eager")
    return model


def tiny_ids(n: int, seed: int = 1) -> list[int]:
    return np.random.default_rng(seed).integers(0, 97, n).tolist()


def live_logits(model, policy, budget, ids, *, prompt_length=0, config=None, rows_out=None):
    """Run one policy; return the GroupRun and its ``(n, vocab)`` logits."""
    got = {}

    def on_logits(t0, logits):
        for i in range(logits.shape[1]):
            got[t0 + i] = logits[0, i].float().clone()

    run = run_group(model, [policy], budget, ids, len(ids), prompt_length,
                    config or LiveConfig(prefill_chunk=5), on_logits=on_logits,
                    row_hook=rows_out)  # fmt: skip
    return run, torch.stack([got[t] for t in range(len(ids))])


def kept_masks(evicted_at: np.ndarray, shape: tuple[int, int, int]) -> list[np.ndarray]:
    """Per layer ``(heads, n, n)`` bool: row t may attend j iff j <= t and j was kept at t."""
    layers, heads, kv_heads = shape
    group = heads // kv_heads
    n = evicted_at.shape[1]
    rows = np.arange(n)[:, None]
    masks = []
    for layer in range(layers):
        mask = np.zeros((heads, n, n), dtype=bool)
        for kv in range(kv_heads):
            left = evicted_at[layer * kv_heads + kv][None, :]  # (1, n)
            allowed = ((left < 0) | (left > rows)) & (np.arange(n)[None, :] <= rows)
            mask[kv * group : (kv + 1) * group] = allowed
        masks.append(mask)
    return masks


def masked_reference(model, ids, evicted_at):
    """One forward pass over ``ids`` at positions 0..n-1, each (layer, KV head) masked by
    its evictions; returns ``(n, vocab)`` logits and the full DynamicCache (every key)."""
    from transformers import AttentionInterface, DynamicCache
    from transformers.models.llama.modeling_llama import eager_attention_forward

    minimum = torch.finfo(torch.float32).min
    masks = [torch.where(torch.from_numpy(m), 0.0, minimum)[None]
             for m in kept_masks(evicted_at, model_shape(model))]  # fmt: skip

    def masked_eager(module, query, key, value, attention_mask, scaling, dropout=0.0, **kwargs):
        return eager_attention_forward(
            module, query, key, value, masks[module.layer_idx], scaling, dropout, **kwargs
        )

    AttentionInterface.register("h2osim_test_masked", masked_eager)
    previous = model.config._attn_implementation
    model.set_attn_implementation("h2osim_test_masked")
    try:
        cache = DynamicCache(config=model.config)
        with torch.inference_mode():
            output = model(torch.tensor([ids]), position_ids=torch.arange(len(ids))[None],
                           cache=cache, use_cache=True)  # fmt: skip
    finally:
        model.set_attn_implementation(previous)
    return output.logits[0].float(), cache


class ShrunkenPositions:
    """The bug the known-answer test must catch: RoPE positions = slots held, not the index."""

    def __init__(self, model):
        self.model, self.config = model, model.config

    def parameters(self):
        return self.model.parameters()

    def __call__(self, ids, cache, position_ids, **kwargs):
        layer = cache.layers[0]
        start = layer.get_mask_sizes(ids.shape[1])[0] - ids.shape[1]  # slots kept before them
        positions = torch.arange(start, start + ids.shape[1])[None].expand(ids.shape[0], -1)
        return self.model(ids, cache=cache, position_ids=positions, **kwargs)


class NoPositions(ShrunkenPositions):
    """Leaves positions to the model, which asks the cache (tokens seen, not slots held)."""

    def __call__(self, ids, cache, position_ids, **kwargs):
        return self.model(ids, cache=cache, **kwargs)


# --------------------------------------------------------------------------- known answers
@pytest.mark.parametrize("name", LIVE_POLICIES)
def test_live_equals_masked_one_shot_forward(name):
    """Conformance matrix over the registry: logits and every kept key match the reference."""
    model = tiny_model()
    ids = tiny_ids(36)
    run, logits = live_logits(model, make_policy(name), 11, ids, prompt_length=8)
    evicted_at = run.controller.per_kv(run.controller.evicted_at)[0]  # layer units repeated
    reference, full_cache = masked_reference(model, ids, evicted_at)
    assert torch.allclose(logits, reference, atol=1e-4), (logits - reference).abs().max()
    slot_positions = run.controller.per_kv(run.controller.slot_positions)[0]  # (units, slots)
    layers, _, kv_heads = model_shape(model)
    for layer in range(layers):
        live_keys = run.cache.layers[layer].keys[0]  # (KVH, slots, d)
        for kv in range(kv_heads):
            positions = torch.from_numpy(slot_positions[layer * kv_heads + kv])
            expected = full_cache.layers[layer].keys[0, kv, positions]
            assert torch.allclose(live_keys[kv], expected, atol=1e-5)


def test_rope_positions_from_the_shrunken_cache_length_are_caught():
    model = tiny_model()
    ids = tiny_ids(36)
    run, _ = live_logits(model, make_policy("h2o"), 11, ids)
    reference, _ = masked_reference(model, ids, run.controller.evicted_at[0])
    _, wrong = live_logits(ShrunkenPositions(model), make_policy("h2o"), 11, ids)
    assert (wrong - reference).abs().max() > 1e-2  # the known-answer test would fail
    _, implicit = live_logits(NoPositions(model), make_policy("h2o"), 11, ids)
    assert torch.allclose(implicit, reference, atol=1e-4)  # the cache reports tokens seen


def test_budget_at_least_n_reproduces_the_full_cache():
    model = tiny_model()
    ids = tiny_ids(30)
    with torch.inference_mode():
        full = model(torch.tensor([ids])).logits[0]
    for budget in (30, 45):
        run, logits = live_logits(model, make_policy("h2o"), min(budget, 30), ids)
        assert (run.controller.evicted_at < 0).all()
        assert torch.allclose(logits, full, atol=1e-4)
    report = teacher_forced(model, ids, ["h2o", "window"], 1.0)
    for result in report.results:
        assert result.summary["kl"] < 1e-8 and result.summary["top1"] == 1.0
        assert result.summary["perplexity"] == pytest.approx(
            report.reference.summary["perplexity"], rel=1e-5
        )


# --------------------------------------------------------------------------- invariants
@pytest.mark.parametrize("name", SWEEP_POLICIES)
def test_cache_holds_at_most_the_budget_and_evicted_tokens_never_return(name):
    model = tiny_model()
    ids = tiny_ids(40)
    budget = 9
    seen_slots = []

    def record(t0, attentions, slot_positions):
        width = slot_positions.shape[-1] if attentions is None else attentions[0].shape[-1]
        seen_slots.append((t0, width, slot_positions[0].copy()))

    run, _ = live_logits(model, make_policy(name), budget, ids, rows_out=record)
    evicted_at = run.controller.evicted_at[0]
    assert run.max_held == budget and run.cache.held() == budget
    assert (run.controller.held_at <= budget).all()
    assert run.cache.kv_bytes() == 2 * 3 * 2 * budget * 8 * 4  # K+V x layers x KVH x k x d x fp32
    for t0, width, slots in seen_slots:
        assert width == slots.shape[1] <= budget  # the attention really ran over <= k slots
        if t0 >= budget:  # decode steps: every held slot is a token not yet evicted
            for unit in range(slots.shape[0]):
                left = evicted_at[unit, slots[unit]]
                assert ((left < 0) | (left > t0)).all()
                assert len(set(slots[unit])) == budget and t0 in slots[unit]
    # the final cache holds exactly the never-evicted tokens
    final = run.controller.slot_positions[0]
    for unit in range(final.shape[0]):
        assert sorted(final[unit]) == np.nonzero(evicted_at[unit] < 0)[0].tolist()


def test_live_evictions_equal_a_replay_of_the_rows_the_live_model_served():
    """Differential: the replay engine fed the closed-loop rows makes the same decisions."""
    model = tiny_model()
    ids = tiny_ids(32)
    layers, heads, kv_heads = model_shape(model)
    n = len(ids)
    for name, aggregation in (
        ("h2o", "sum"),
        ("tova-kv", "max"),
        ("tova", "sum"),  # one kept set per layer, over per-KV-head units
        ("h2o", "layer"),  # layer units: one cache unit (kept set) per layer
        ("scissorhands", "mean"),
        ("lru", "sum"),
    ):
        per_layer = aggregation == "layer"
        dense = np.zeros((layers, heads, n, n), dtype=np.float32)

        def record(t0, attentions, slot_positions, dense=dense, per_layer=per_layer):
            for layer in range(layers):
                weights = attentions[layer][0].float().numpy()  # (H, m, slots)
                for offset in range(weights.shape[1]):
                    t = t0 + offset
                    for head in range(heads):
                        unit = (
                            layer if per_layer else layer * kv_heads + head // (heads // kv_heads)
                        )
                        positions = slot_positions[0, unit]
                        width = min(len(positions), t + 1)
                        dense[layer, head, t, positions[:width]] = weights[head, offset, :width]

        config = LiveConfig(aggregation=aggregation, prefill_chunk=4)
        run, _ = live_logits(model, make_policy(name), 10, ids, config=config, rows_out=record)
        trace = Trace.from_arrays(dense, head_map=[h // 3 for h in range(heads)], token_ids=ids,
                                  metadata={"source": "live rows"})  # fmt: skip
        replayed = replay(
            trace, make_policy(name), 10, config=ReplayConfig(aggregation=aggregation)
        )
        np.testing.assert_array_equal(replayed.evicted_at, run.controller.evicted_at[0])
        assert replayed.summary["retained_mass"] == pytest.approx(
            1.0, abs=1e-5
        )  # closed loop: nothing lost


def test_batched_policies_equal_their_single_runs():
    model = tiny_model()
    ids = tiny_ids(30)
    batched = teacher_forced(model, ids, ["h2o", "window", "lfu"], 10)
    for result in batched.results:
        alone = teacher_forced(model, ids, [result.policy], 10).results[0]
        np.testing.assert_array_equal(alone.evicted_at, result.evicted_at)
        np.testing.assert_allclose(alone.logprob, result.logprob, atol=1e-5)
    assert {r.timing["rows_in_batch"] for r in batched.results} == {3}


def test_full_prompt_mode_compresses_the_prompt_after_prefill():
    model = tiny_model()
    ids = tiny_ids(30)
    config = LiveConfig(prompt_mode="full", prefill_chunk=7)
    run, logits = live_logits(model, make_policy("h2o"), 6, ids, prompt_length=20, config=config)
    held = run.controller.held_at
    assert held[:20].tolist() == list(range(1, 21)) and (held[20:] == 6).all()
    assert (run.controller.evicted_at[0][:, :20] == 20).sum(axis=1).tolist() == [15] * 6
    reference, _ = masked_reference(model, ids, run.controller.evicted_at[0])
    assert torch.allclose(logits, reference, atol=1e-4)


def test_generation_side_by_side():
    model = tiny_model()
    prompt = tiny_ids(20)
    report = generate(model, prompt, ["h2o", "window"], 1.0, max_new_tokens=6)
    assert report.reference.policy == "full"
    for result in report.results:  # budget >= n: nothing evicted, same continuation
        np.testing.assert_array_equal(result.token_ids, report.reference.token_ids)
        assert result.summary["agree_prefix"] == 6
    small = generate(model, prompt, ["window"], 8, max_new_tokens=6)
    assert small.results[0].kv_bytes * 26 == small.reference.kv_bytes * 8
    np.testing.assert_array_equal(small.results[0].token_ids[:20], prompt)


# --------------------------------------------------------------------------- the cache alone
def test_layer_plans_are_mirrored_by_apply_plan():
    rng = torch.Generator().manual_seed(3)
    layer = EvictingLayer()
    keys = torch.randn(2, 3, 5, 4, generator=rng)
    layer.update(keys, keys + 1)
    positions = np.tile(np.arange(5), (6, 1))  # (rows x KVH, slots)
    overwrite = np.array([[0, 4, 2], [1, 1, 3]])
    layer.plan = SlotPlan(overwrite=torch.from_numpy(overwrite)[..., None])
    assert layer.get_mask_sizes(1) == (5, 1)
    new = torch.randn(2, 3, 1, 4, generator=rng)
    layer.update(new, new + 1)
    positions = apply_plan(positions, np.array([5]), overwrite=overwrite.reshape(-1))
    assert layer.held() == 5 and layer.get_seq_length() == 6
    keep = np.array([[[0, 2, 3], [1, 2, 4], [0, 1, 2]], [[2, 3, 4], [0, 3, 4], [1, 2, 3]]])
    layer.plan = SlotPlan(keep=torch.from_numpy(keep))
    assert layer.get_mask_sizes(2) == (5, 3)  # 3 kept + 2 new; new tokens at virtual 6, 7
    newer = torch.randn(2, 3, 2, 4, generator=rng)
    layer.update(newer, newer + 1)
    positions = apply_plan(positions, np.array([6, 7]), keep=keep.reshape(6, 3))
    every = torch.cat([keys, new, newer], dim=2)  # (2, 3, 8, 4) keys by position
    expected = torch.stack([torch.stack([every[b, h, torch.from_numpy(positions[b * 3 + h])]
                                         for h in range(3)]) for b in range(2)])  # fmt: skip
    assert torch.equal(layer.keys, expected) and torch.equal(layer.values, expected + 1)


def test_sliding_window_models_are_refused():
    from transformers import LlamaConfig, LlamaForCausalLM

    config = LlamaConfig(vocab_size=10, hidden_size=8, intermediate_size=8, num_hidden_layers=2,
                         num_attention_heads=2, num_key_value_heads=1,
                         layer_types=["sliding_attention", "full_attention"], sliding_window=4)  # fmt: skip
    with pytest.raises(ValueError, match="full-attention layers only"):
        EvictingCache.for_model(LlamaForCausalLM(config))


# --------------------------------------------------------------------------- CLI errors
@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["--budget", "0"], "budget must be in (0, 1]"),
        (["--budget", "-3"], "budget must be in (0, 1]"),
        (["--budget", "2.5"], "must be whole"),
        (["--policy", "nope"], "unknown policy 'nope'"),
        (["--policy", "h2o-global"], "offline"),
        (["--generate", "0"], "at least 1 new token"),
        (["--prefill-chunk", "0"], "--prefill-chunk must be >= 1"),
        (["--pydoc-topic", "no-such-topic"], "unknown pydoc topic"),
        (["--policy", "all"], "h2o-drop"),  # policies that attend the prompt in full need P
        (["--prompt-mode", "full"], "--prompt-length P"),
    ],
)
def test_cli_bad_arguments_exit_2_with_one_line(argv, message, capsys):
    assert main(argv + ["--no-progress"]) == 2
    err = capsys.readouterr().err
    assert message in err and len(err.strip().splitlines()) == 1, err


def test_cli_per_head_is_not_a_live_choice(capsys):
    with pytest.raises(SystemExit) as caught:
        main(["--aggregation", "per-head"])
    assert caught.value.code == 2 and "invalid choice" in capsys.readouterr().err


def test_cli_offline_policy_names_the_live_ones(capsys):
    assert main(["--policy", "h2o-global", "--no-progress"]) == 2
    err = capsys.readouterr().err
    assert "python -m h2osim.replay" in err and "h2o" in err and "window" in err


def test_cli_cuda_without_a_gpu_is_one_clear_line(capsys, monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert main(["--device", "cuda", "--no-progress"]) == 2
    err = capsys.readouterr().err
    assert "CUDA is not available" in err and "--device cpu" in err and "Traceback" not in err


def test_live_config_refuses_per_head():
    with pytest.raises(ValueError, match="replay-only"):
        LiveConfig(aggregation="per-head")


def test_records_are_json_ready():
    model = tiny_model()
    report = teacher_forced(model, tiny_ids(20), ["sink"], 0.5)
    text = json.dumps(report.records())
    assert '"policy": "sink"' in text and '"kv_fraction": 0.5' in text
