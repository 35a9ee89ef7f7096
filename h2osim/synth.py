"""``python -m h2osim.synth -o out.npz``: write a seeded synthetic trace (see h2osim.synthetic)."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

from h2osim.cli import check_outputs, number
from h2osim.synthetic import synthetic_trace
from h2osim.trace import ENCODINGS, LoadLimits, memory_ceiling

MAX_SYNTH_BYTES = 4 * 2**30  # working memory synth may use (also at most trace.memory_ceiling())
MAX_SYNTH_HEADS = 16_384  # layers x query heads (each is a loop of dense n x n work)


def _working_bytes(n: int, layers: int, heads: int) -> int:
    """Estimated peak memory of :func:`synthetic_trace` plus saving: the float32 attention
    held about three times (generated, re-encoded, the trace's copy), one layer's float64
    quantization temporaries, and ~64 bytes per (t, j) pair of one head's dense arrays.
    Example: n=256, 4 layers, 9 heads -> ~23 MB."""
    packed = n * (n + 1) // 2
    return 12 * layers * heads * packed + 40 * heads * packed + 64 * n * n


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m h2osim.synth",
        description="Write a seeded synthetic LLM-like attention trace (sink, recency, power-law heavy hitters, noise).",
    )
    parser.add_argument(
        "-o", "--output", required=True, help="output .npz path (written atomically)"
    )
    parser.add_argument(
        "--n", type=number(int, 1, LoadLimits.max_tokens), default=256, help="tokens (default 256)"
    )
    parser.add_argument(
        "--layers", type=number(int, 1, LoadLimits.max_layers), default=4, help="layers (default 4)"
    )
    parser.add_argument(
        "--heads",
        type=number(int, 1, LoadLimits.max_heads),
        default=9,
        help="query heads per layer (default 9)",
    )
    parser.add_argument(
        "--kv-heads",
        type=number(int, 1, LoadLimits.max_heads),
        default=3,
        help="KV heads per layer (default 3, GQA 3:1)",
    )
    parser.add_argument(
        "--head-dim",
        type=number(int, 1, LoadLimits.max_head_dim),
        default=16,
        help="value vector size (default 16)",
    )
    parser.add_argument(
        "--prompt-length",
        type=number(int, 1, LoadLimits.max_tokens),
        help="prompt rows (default 3n/4)",
    )
    parser.add_argument(
        "--heavy-share",
        type=number(float, 0, 1),
        default=0.08,
        help="share of tokens with power-law salience",
    )
    parser.add_argument(
        "--pareto-shape",
        type=number(float, 0, 1e6, low_open=True),
        default=1.2,
        help="Pareto tail index (smaller = heavier)",
    )
    parser.add_argument(
        "--noise", type=number(float, 0, 1e6), default=0.6, help="logit noise standard deviation"
    )
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
    parser.add_argument(
        "--seed", type=number(int, 0, 2**63 - 1), default=0, help="random seed (default 0)"
    )
    return parser


def run(args: argparse.Namespace) -> int:
    check_outputs({"--output": args.output})
    if args.layers * args.heads > MAX_SYNTH_HEADS:
        raise ValueError(f"--layers {args.layers} x --heads {args.heads} is over {MAX_SYNTH_HEADS} "
                         "heads in all; use fewer layers or heads")  # fmt: skip
    needed, limit = (
        _working_bytes(args.n, args.layers, args.heads),
        min(MAX_SYNTH_BYTES, memory_ceiling()),
    )
    if needed > limit:
        raise ValueError(f"--n {args.n} with {args.layers} layers x {args.heads} heads needs about "
                         f"{needed / 2**30:.2f} GiB while generating (limit here {limit / 2**30:.2f} GiB); "
                         "use a smaller --n, --layers or --heads")  # fmt: skip
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
