"""Record attention traces while a real model runs (the library under ``python -m h2osim.dump``).

:func:`record` runs a causal LM with a full (never evicted) KV cache over a prompt, then decodes
``--max-new-tokens`` tokens one at a time, and records every attention row of the
chosen layers: prompt rows from the prefill (chunked, ``--prefill-chunk``), one row
per decoded token after that, plus the value vectors left in the cache. The result is a
trace in the v1 format (h2osim.trace) with metadata saying exactly how it was made, or in
the sparse v2 encoding (``sparse_epsilon``), whose rows are sparsified chunk by chunk as the
model returns them, so only the kept entries are ever held.

Follows the H2O paper's setting (Zhang et al. 2023, Sec. 3: attention of pre-trained
models at inference) with transformers' eager attention, the only implementation that
returns attention weights; a model that returns none is refused. Batch size 1.

Exactness (tested on SmolLM2): rows from prefill + decode equal one forward pass over
the same tokens within 1e-5 in float32; the stored values are the cache's own tensors.
"""

from __future__ import annotations

import contextlib
import datetime
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from h2osim.trace import (
    SparseRows,
    Trace,
    packed_size,
    row_start,
    sparse_block_rows,
    sparse_index_dtype,
    sparsify_rows,
)

DEFAULT_MAX_TOKENS = 1024  # guard: a full 30-layer SmolLM2 trace at n=1024 is ~280 MB in fp16
DEFAULT_PREFILL_CHUNK = 512  # bounds prefill memory: layers x heads x chunk x n attention floats


@dataclass
class Recording:
    """One traced run: tokens, packed attention rows and values of the recorded layers."""

    token_ids: list[int]
    prompt_length: int
    layers: list[int]
    attention: dict[int, np.ndarray | SparseRows]  # layer -> (H, n(n+1)/2) or sparse rows
    values: dict[int, np.ndarray] | None  # layer -> (KVH, n, head_dim) float32
    stopped_at_eos: bool
    prefill_seconds: float
    decode_seconds: float
    cache: Any = field(default=None, repr=False)  # the model's DynamicCache after the run
    key_norms: dict[int, np.ndarray] | None = None  # layer -> (KVH, n) float32 L2 norms
    epsilon: float | None = None  # the sparse encoding's epsilon (None: dense rows)

    @property
    def n(self) -> int:
        return len(self.token_ids)

    @property
    def decode_steps(self) -> int:
        return self.n - self.prompt_length


class _RowStore:
    """Preallocated packed lower triangles, filled block by block as the model runs."""

    def __init__(self, layers: Sequence[int], num_heads: int, n_max: int, dtype) -> None:
        self.layers = list(layers)
        self.num_heads = num_heads
        self.packed = {layer: np.zeros((num_heads, packed_size(n_max)), dtype=dtype)
                       for layer in self.layers}  # fmt: skip
        self.torch_dtype = _torch_dtype(dtype)
        self._index_key: Any = None
        self._index: Any = None
        self.window = (0, 0)  # rows of the forward pass running now (set by record)

    def hook(self, layer: int):
        """A forward hook for layer ``layer``'s attention module: stores its weights
        (output ``[1]``) as the module returns them, so no layer's attention outlives its
        own forward and only the chosen layers' are ever copied."""

        def store(module, args, output) -> None:
            weights = output[1] if isinstance(output, (tuple, list)) and len(output) > 1 else None
            self.add_layer(layer, weights, *self.window)

        return store

    def add_block(self, attentions, start: int, stop: int) -> None:
        """Rows ``start..stop-1`` from one forward pass: ``attentions[l]`` is (1, H, stop-start, stop)."""
        if attentions is None:
            raise _no_weights("the forward pass returned no attentions")
        for layer in self.layers:
            weights = attentions[layer] if layer < len(attentions) else None
            self.add_layer(layer, weights, start, stop)

    def add_layer(self, layer: int, weights, start: int, stop: int) -> None:
        """One layer's rows ``start..stop-1``, ``weights`` (1, H, stop-start, stop) on any
        device: gathered there (only the lower triangle), then copied off it."""
        import torch

        check_weights(layer, weights, self.num_heads, start, stop)
        begin, end = row_start(start), row_start(stop)
        if stop - start == 1:  # one decode row
            self.packed[layer][:, begin:end] = weights[0, :, 0].float().cpu().numpy()  # (H, t+1)
            return
        key = (start, stop, weights.device)
        if self._index_key != key:  # the same block's indices serve every layer
            lengths = np.arange(start + 1, stop + 1)  # row t holds t+1 entries
            block_rows = np.repeat(np.arange(stop - start), lengths)
            block_cols = np.arange(end - begin) - np.repeat(np.cumsum(lengths) - lengths, lengths)
            self._index = (torch.as_tensor(block_rows, device=weights.device),
                           torch.as_tensor(block_cols, device=weights.device))  # fmt: skip
            self._index_key = key
        rows, cols = self._index
        gathered = weights[0][:, rows, cols]  # (H, entries of rows start..stop-1)
        self.packed[layer][:, begin:end] = gathered.to(self.torch_dtype).cpu().numpy()

    def truncated(self, n: int) -> dict[int, np.ndarray]:
        """The packed arrays for the first n rows (rows are stored in order, so a prefix)."""
        return {layer: packed[:, : packed_size(n)] for layer, packed in self.packed.items()}


class _SparseRowStore(_RowStore):
    """The row store of the sparse encoding: each block of rows is sparsified as it arrives
    (:func:`h2osim.trace.sparsify_rows`) and only its kept entries are held, so memory is
    bounded by what is stored, never by a dense ``n(n+1)/2`` triangle per head."""

    def __init__(self, layers: Sequence[int], num_heads: int, n_max: int, dtype,
                 epsilon: float) -> None:  # fmt: skip
        self.layers = list(layers)
        self.num_heads = num_heads
        self.dtype = np.dtype(dtype)
        self.epsilon = epsilon
        self.index_dtype = sparse_index_dtype(n_max)  # n <= n_max: uint16 up to 65,536 tokens
        self.pieces: dict[int, list[tuple[np.ndarray, ...]]] = {layer: [] for layer in self.layers}
        self.window = (0, 0)

    def add_layer(self, layer: int, weights, start: int, stop: int) -> None:
        """One layer's rows ``start..stop-1`` (``weights`` (1, H, stop-start, stop), any
        device), sparsified a block at a time on the CPU and appended in row order."""
        check_weights(layer, weights, self.num_heads, start, stop)
        first = start
        while first < stop:
            count = min(stop - first, sparse_block_rows(first, self.num_heads, stop))
            block = weights[0, :, first - start : first - start + count, : first + count]
            rows = block.float().cpu().numpy()  # (H, count, first+count): a view on the CPU
            counts, indices, values, dropped = sparsify_rows(rows, first, self.epsilon, self.dtype)
            self.pieces[layer].append((counts, indices.astype(self.index_dtype), values, dropped))
            first += count

    def truncated(self, n: int) -> dict[int, SparseRows]:
        """Every layer's rows as :class:`SparseRows` (rows arrive in order: all n are here)."""
        rows = {}
        for layer in self.layers:
            rows[layer] = SparseRows.concatenate(self.pieces[layer], sparse_index_dtype(n))
            self.pieces[layer] = []  # the joined arrays replace the pieces
        return rows


def _torch_dtype(dtype):
    import torch

    return torch.float16 if np.dtype(dtype) == np.float16 else torch.float32


def attention_modules(model, num_layers: int) -> list | None:
    """The model's per-layer attention modules in layer order, found the way transformers
    records ``output_attentions`` (``_can_record_outputs["attentions"]``: a module class,
    or an OutputRecorder with a class, a name suffix and the output index 1), or None
    when that does not give exactly one module per layer (then the recorder falls back
    to ``output_attentions=True``)."""
    spec = None
    for module in model.modules():
        spec = (getattr(module, "_can_record_outputs", None) or {}).get("attentions")
        if spec is not None:
            break
    if spec is None:
        return None
    target = getattr(spec, "target_class", spec)
    suffix = getattr(spec, "layer_name", None)
    if not isinstance(target, type) or getattr(spec, "index", 1) != 1:
        return None
    found = [module for name, module in model.named_modules()
             if isinstance(module, target) and (suffix is None or name.endswith(suffix))]  # fmt: skip
    return found if len(found) == num_layers else None


def _no_weights(what: str) -> Exception:
    from h2osim.model.loading import AttentionUnavailableError

    return AttentionUnavailableError(
        f"{what}; attention weights need attn_implementation='eager' (sdpa/flash kernels "
        "never materialise them)"
    )


def check_weights(layer: int, weights, num_heads: int, start: int, stop: int) -> None:
    """A layer's attention for rows ``start..stop-1`` must be ``(1, H, stop-start, stop)``."""
    if weights is None:
        raise _no_weights(f"layer {layer} returned no attention weights")
    want = (1, num_heads, stop - start, stop)
    if tuple(weights.shape) != want:
        raise ValueError(
            f"layer {layer} returned attention of shape {tuple(weights.shape)} at rows "
            f"{start}..{stop - 1}, expected {want}: a sliding-window or otherwise "
            "limited cache cannot be traced; choose full-attention layers with --layers"
        )


def record(
    model,
    prompt_ids: Sequence[int],
    *,
    max_new_tokens: int = 0,
    layers: Sequence[int] | None = None,
    capture: bool = True,
    store_values: bool = True,
    forced_tokens: Sequence[int] | None = None,
    seed: int | None = None,
    temperature: float = 1.0,
    stop_token_ids: Sequence[int] = (),
    prefill_chunk: int | None = DEFAULT_PREFILL_CHUNK,
    attention_dtype=np.float32,
    progress: bool = False,
    sparse_epsilon: float | None = None,
) -> Recording:
    """Run ``model`` over ``prompt_ids`` then decode, recording attention rows.

    Decoding is greedy (argmax) unless ``seed`` is given (sampling at ``temperature``),
    or replays ``forced_tokens`` (teacher forcing; used to time the same tokens with and
    without capture). Decoding stops after a token in ``stop_token_ids`` (that token's
    row is recorded). ``capture=False`` runs the identical loop without asking for
    attention weights - the benchmark's baseline. With ``sparse_epsilon`` the rows are
    stored in the sparse encoding as they arrive (values in ``attention_dtype``; see
    :class:`_SparseRowStore`): memory holds only the kept entries.
    """
    import torch
    from tqdm import tqdm
    from transformers import DynamicCache

    from h2osim.model.loading import attention_shape, require_attention_weights

    if capture:
        require_attention_weights(model)
    prompt = [int(token) for token in prompt_ids]
    if not prompt:
        raise ValueError("the prompt has no tokens")
    if max_new_tokens < 0:
        raise ValueError(f"--max-new-tokens must be >= 0, got {max_new_tokens}")
    if forced_tokens is not None and len(forced_tokens) < max_new_tokens:
        raise ValueError(f"forced_tokens has {len(forced_tokens)} tokens, need {max_new_tokens}")
    if temperature <= 0:
        raise ValueError(f"--temperature must be > 0, got {temperature}")
    if prefill_chunk is not None and prefill_chunk < 1:
        raise ValueError(f"--prefill-chunk must be >= 1, got {prefill_chunk}")
    num_layers, num_heads, _, _ = attention_shape(model.config)
    chosen = list(range(num_layers)) if layers is None else [int(layer) for layer in layers]
    bad = [layer for layer in chosen if not 0 <= layer < num_layers]
    if bad:
        raise ValueError(
            f"layer {bad[0]} does not exist; this model has layers 0..{num_layers - 1}"
        )
    device = next(model.parameters()).device
    prompt_length = len(prompt)
    n_max = prompt_length + max_new_tokens
    if sparse_epsilon is not None and not capture:
        raise ValueError("sparse_epsilon needs capture=True")
    store: _RowStore | None = None
    if capture and sparse_epsilon is not None:
        store = _SparseRowStore(chosen, num_heads, n_max, attention_dtype, sparse_epsilon)
    elif capture:
        store = _RowStore(chosen, num_heads, n_max, attention_dtype)
    modules = attention_modules(model, num_layers) if capture else None
    hooks = ([modules[layer].register_forward_hook(store.hook(layer)) for layer in chosen]
             if modules is not None and store is not None else [])  # fmt: skip
    whole = capture and not hooks  # no hooks: the model returns every layer's attention
    generator = torch.Generator().manual_seed(seed) if seed is not None else None
    stops = {int(token) for token in stop_token_ids}
    cache = DynamicCache(config=model.config)
    token_ids = list(prompt)
    stopped = False
    bar = tqdm(total=n_max, unit="tok", desc="tracing", disable=not progress, file=sys.stderr,
               dynamic_ncols=True)  # fmt: skip
    with torch.inference_mode(), bar, _removing(hooks):
        started = time.perf_counter()
        chunk = prefill_chunk or prompt_length
        for start in range(0, prompt_length, chunk):
            stop = min(prompt_length, start + chunk)
            ids = torch.tensor([prompt[start:stop]], device=device)
            if store is not None:
                store.window = (start, stop)
            output = model(ids, cache=cache, use_cache=True, output_attentions=whole,
                           logits_to_keep=1)  # fmt: skip
            if whole and store is not None:
                store.add_block(output.attentions, start, stop)
            bar.update(stop - start)
        prefill_seconds = time.perf_counter() - started
        if progress:
            bar.set_postfix_str(f"prefill {prompt_length / max(prefill_seconds, 1e-9):.0f} tok/s")
        started = time.perf_counter()
        logits = output.logits[0, -1]
        for step in range(max_new_tokens):
            if forced_tokens is not None:
                token = int(forced_tokens[step])
            elif generator is None:
                token = int(torch.argmax(logits))
            else:
                probabilities = torch.softmax(logits.float().cpu() / temperature, dim=-1)
                token = int(torch.multinomial(probabilities, 1, generator=generator))
            token_ids.append(token)
            t = len(token_ids) - 1
            ids = torch.tensor([[token]], device=device)
            if store is not None:
                store.window = (t, t + 1)
            output = model(ids, cache=cache, use_cache=True, output_attentions=whole)
            if whole and store is not None:
                store.add_block(output.attentions, t, t + 1)
            logits = output.logits[0, -1]
            bar.update(1)
            if progress:
                rate = (step + 1) / max(time.perf_counter() - started, 1e-9)
                bar.set_postfix_str(f"decode {rate:.1f} tok/s")
            if forced_tokens is None and token in stops:
                stopped = True
                break
        decode_seconds = time.perf_counter() - started
    n = len(token_ids)
    values = None
    if store_values and capture:
        values = {}
        for layer in chosen:
            stored = cache.layers[layer].values  # (1, KVH, n, d)
            if stored.shape[0] != 1 or stored.shape[2] != n:
                raise ValueError(
                    f"layer {layer}'s cache holds values of shape {tuple(stored.shape)}, "
                    f"expected (1, KV heads, {n}, head_dim): not a full cache"
                )
            values[layer] = stored[0].float().cpu().numpy()
    key_norms = None
    if capture:  # (KVH, n) per layer: tiny, and all that knorm needs
        key_norms = {layer: cache.layers[layer].keys[0, :, :n].float().norm(dim=-1).cpu().numpy()
                     for layer in chosen}  # fmt: skip
    return Recording(
        token_ids=token_ids, prompt_length=prompt_length, layers=chosen,
        attention=store.truncated(n) if store is not None else {}, values=values,
        stopped_at_eos=stopped, prefill_seconds=prefill_seconds, decode_seconds=decode_seconds,
        cache=cache, key_norms=key_norms, epsilon=sparse_epsilon,
    )  # fmt: skip


@contextlib.contextmanager
def _removing(hooks):
    try:
        yield
    finally:
        for hook in hooks:
            hook.remove()


def stop_tokens(model, tokenizer) -> list[int]:
    """End-of-sequence ids from the tokenizer and the generation config."""
    ids: set[int] = set()
    candidates = [getattr(tokenizer, "eos_token_id", None)]
    generation = getattr(model, "generation_config", None)
    candidates.append(getattr(generation, "eos_token_id", None))
    for candidate in candidates:
        if isinstance(candidate, int):
            ids.add(candidate)
        elif isinstance(candidate, (list, tuple)):
            ids.update(int(c) for c in candidate)
    return sorted(ids)


def to_trace(recording: Recording, tokenizer, info, metadata: dict[str, Any] | None = None,
             validate: bool = True) -> Trace:  # fmt: skip
    """A v1 :class:`Trace` (in memory) from a recording, with model metadata merged in."""
    from h2osim.model.loading import library_versions
    from h2osim.model.text import token_pieces

    if not recording.attention:
        raise ValueError("this recording was made without capture; it holds no attention")
    full_metadata = {
        "tool": "h2osim.dump",
        "model": info.name,
        "model_sha256": info.source_sha256,
        "model_info": info.metadata(),
        "library_versions": library_versions(),
        "device": info.device,
        "dtype": info.dtype,
        "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "prompt_length": recording.prompt_length,
        "decode_steps": recording.decode_steps,
        "stopped_at_eos": recording.stopped_at_eos,
        "prefill_seconds": round(recording.prefill_seconds, 3),
        "decode_seconds": round(recording.decode_seconds, 3),
    } | dict(metadata or {})
    return Trace.from_arrays(
        recording.attention, head_map=info.head_map, token_ids=recording.token_ids,
        tokens=token_pieces(tokenizer, recording.token_ids), prompt_length=recording.prompt_length,
        layers=recording.layers, values=recording.values, metadata=full_metadata, validate=validate,
        key_norms=recording.key_norms, epsilon=recording.epsilon,
    )  # fmt: skip
