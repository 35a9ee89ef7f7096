"""Long-context recording: the per-layer hooks that bound a long dump's memory record
exactly what ``output_attentions`` returns, and the GPU-vs-CPU check runs without a GPU."""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pytest

from tests.conftest_model import smollm2

TEXT = ("Special method names let classes define their own behaviour for operators, "
        "attribute access and iteration; the interpreter calls them implicitly.")  # fmt: skip


@pytest.fixture(scope="module")
def loaded():
    return smollm2()


@pytest.mark.model
def test_hooks_find_one_attention_module_per_layer(loaded):
    from h2osim.model.recorder import attention_modules

    model = loaded[0]
    modules = attention_modules(model, 30)
    assert modules is not None and len(modules) == 30
    assert modules[7] is model.model.layers[7].self_attn
    assert attention_modules(model, 29) is None  # a mismatch falls back, never guesses


@pytest.mark.model
def test_hooked_rows_equal_the_output_attentions_path(loaded, monkeypatch):
    from h2osim.model import encode_text
    from h2osim.model import recorder as recorder_module

    model, tokenizer, _ = loaded
    prompt = encode_text(tokenizer, TEXT)
    hooks_before = [dict(layer.self_attn._forward_hooks) for layer in model.model.layers]
    hooked = recorder_module.record(model, prompt, max_new_tokens=4, layers=[0, 29],
                                    prefill_chunk=7)  # fmt: skip
    hooks_after = [dict(layer.self_attn._forward_hooks) for layer in model.model.layers]
    assert hooks_after == hooks_before  # the recorder's hooks are removed
    monkeypatch.setattr(recorder_module, "attention_modules", lambda model, layers: None)
    whole = recorder_module.record(model, prompt, max_new_tokens=4, layers=[0, 29],
                                   prefill_chunk=11)  # fmt: skip
    assert hooked.token_ids == whole.token_ids and hooked.n > 20
    for layer in (0, 29):
        np.testing.assert_allclose(hooked.attention[layer], whole.attention[layer], atol=1e-5)
        np.testing.assert_allclose(hooked.values[layer], whole.values[layer], atol=1e-5)


@pytest.mark.model
def test_gpu_check_runs_cpu_against_cpu_and_refuses_a_missing_gpu(monkeypatch, capsys):
    import torch

    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "bench"))
    import gpu_dump_check

    assert gpu_dump_check.main(["--device", "cpu", "--dtype", "float32", "--tokens", "40",
                                "--layers", "0,29", "--prefill-chunk", "16"]) == 0  # fmt: skip
    out = capsys.readouterr().out
    assert "PASS" in out and "layer 29" in out
    # The check can fail: bfloat16 rows are not within float32's tolerance of the reference.
    assert gpu_dump_check.main(["--device", "cpu", "--dtype", "bfloat16", "--tokens", "24",
                                "--layers", "0", "--tolerance", "1e-5"]) == 1  # fmt: skip
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert gpu_dump_check.main(["--device", "cuda"]) == 2
    assert "no CUDA GPU" in capsys.readouterr().err
