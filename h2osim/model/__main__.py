"""``python -m h2osim.model``: prepare the model cache ahead of time and say what the model is."""

from __future__ import annotations

import argparse
import json
import sys
import time
from collections.abc import Sequence

from h2osim.cli import run_cli
from h2osim.model.loading import (
    CACHE_ENV,
    DEFAULT_CACHE,
    prepare_cache,
    resolve_model_source,
    set_threads,
)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m h2osim.model",
        description="Prepare the model: convert the GGUF once into the safetensors cache "
        f"(${CACHE_ENV}, default {DEFAULT_CACHE}) so later loads take about a second, and "
        "print what the model is.",
    )
    parser.add_argument("--model", metavar="PATH", help="a .gguf file (default: bundled SmolLM2)")
    parser.add_argument("--rebuild", action="store_true", help="delete and rebuild the cache")
    parser.add_argument("--threads", type=int, default=1, help="torch CPU threads (default 1)")
    return parser


def run(args: argparse.Namespace) -> int:
    set_threads(args.threads)
    started = time.perf_counter()
    folder = prepare_cache(args.model, rebuild=args.rebuild)
    config = json.loads((folder / "config.json").read_text(encoding="utf-8"))
    print(f"cache: {folder} (ready in {time.perf_counter() - started:.1f} s)")
    print(f"{resolve_model_source(args.model).name}: {config.get('model_type')}, "
          f"{config.get('num_hidden_layers')} layers, {config.get('num_attention_heads')} query "
          f"heads -> {config.get('num_key_value_heads')} KV heads")  # fmt: skip
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    return run_cli(build_parser, run, argv)


if __name__ == "__main__":
    sys.exit(main())
