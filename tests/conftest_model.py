"""The real SmolLM2, loaded once per test process (``@pytest.mark.model`` tests only).

Test modules that need the model import :func:`smollm2` and wrap it in a fixture; the
``lru_cache`` makes every module share one load (~1 s from the safetensors cache, which
``make setup`` builds; ~40 s the first time on a fresh machine).
"""

from __future__ import annotations

import functools


@functools.lru_cache(maxsize=1)
def smollm2():
    """``(model, tokenizer, info)``: bundled SmolLM2, float32, CPU, eager attention."""
    import torch

    from h2osim.model import load_model

    torch.set_num_threads(1)  # 2 threads on a shared 2-core box were 15x slower
    return load_model(device="cpu", dtype=torch.float32)
