"""``python -m h2osim.synth -o out.npz``: write a seeded synthetic trace (see h2osim.synthetic)."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

from h2osim.synthetic import synthetic_trace
from h2osim.trace import ENCODINGS


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m h2osim.synth",
        description="Write a seeded synthetic LLM-like attention trace (sink, recency, power-law heavy hitters, noise).",
    )
    parser.add_argument(
        "-o", "--output", required=True, help="output .npz path (written atomically)"
    )
    parser.add_argument("--n", type=int, default=256, help="tokens (default 256)")
    parser.add_argument("--layers", type=int, default=4, help="layers (default 4)")
    parser.add_argument("--heads", type=int, default=9, help="query heads per layer (default 9)")
    parser.add_argument(
        "--kv-heads", type=int, default=3, help="KV heads per layer (default 3, GQA 3:1)"
    )
    parser.add_argument("--head-dim", type=int, default=16, help="value vector size (default 16)")
    parser.add_argument("--prompt-length", type=int, help="prompt rows (default 3n/4)")
    parser.add_argument(
        "--heavy-share", type=float, default=0.08, help="share of tokens with power-law salience"
    )
    parser.add_argument(
        "--pareto-shape", type=float, default=1.2, help="Pareto tail index (smaller = heavier)"
    )
    parser.add_argument("--noise", type=float, default=0.6, help="logit noise standard deviation")
    parser.add_argument("--no-values", action="store_true", help="do not store value vectors")
    parser.add_argument(
        "--encoding",
        choices=ENCODINGS,
        default="float16",
        help="attention storage (default float16)",
    )
    parser.add_argument(
        "--uncompressed", action="store_true", help="store members raw (memory-mapped on load)"
    )
    parser.add_argument("--seed", type=int, default=0, help="random seed (default 0)")
    return parser


def run(args: argparse.Namespace) -> int:
    trace = synthetic_trace(
        args.n, layers=args.layers, heads=args.heads, kv_heads=args.kv_heads, head_dim=args.head_dim,
        prompt_length=args.prompt_length, heavy_share=args.heavy_share, pareto_shape=args.pareto_shape,
        noise=args.noise, values=not args.no_values, seed=args.seed,
    )  # fmt: skip
    trace.save(
        args.output, encoding=args.encoding, compress=not args.uncompressed, values_dtype="float16"
    )
    print(f"wrote {args.output}: {trace.describe()}")
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    from h2osim.cli import run_cli

    return run_cli(build_parser, run, argv)


if __name__ == "__main__":
    sys.exit(main())
