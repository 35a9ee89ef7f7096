"""``python -m h2osim.dump -o trace.npz``: dump an attention trace from a real model.

The command line over :mod:`h2osim.model.recorder`: choose a text (a pydoc topic, a file
or a prompt, optionally chat-wrapped), how many tokens to decode, which layers and how
to store them; the recorder runs the model with a full KV cache and writes a v1 trace
(docs/trace-format.md) atomically, with metadata saying exactly how it was made.
"""

from __future__ import annotations

import argparse
import contextlib
import signal
import sys
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from h2osim.cli import (
    check_outputs,
    check_text_input,
    check_text_length,
    number,
    parse_layers,
    run_model_cli,
)
from h2osim.model.recorder import DEFAULT_MAX_TOKENS, DEFAULT_PREFILL_CHUNK
from h2osim.trace import DEFAULT_LEVELS, ENCODINGS, LoadLimits, Trace


def build_parser() -> argparse.ArgumentParser:
    from h2osim.model import add_model_arguments, add_text_arguments

    parser = argparse.ArgumentParser(
        prog="python -m h2osim.dump",
        description="Dump an attention trace (format v1) from a real model: prefill a text, "
        "decode some tokens with a full KV cache, record every attention row of the chosen "
        "layers and the cached value vectors.",
        epilog="Examples:  python -m h2osim.dump -o for.npz  |  python -m h2osim.dump "
        "--pydoc-topic naming --truncate 480 --max-new-tokens 32 --layers 0,7,15,23,29 -o "
        "naming.npz  |  python -m h2osim.dump --chat --prompt 'What is a generator?' "
        "--max-new-tokens 200 -o chat.npz",
    )
    parser.add_argument("-o", "--output", required=True, metavar="PATH",
                        help="trace file to write (.npz; written atomically)")  # fmt: skip
    add_text_arguments(parser)
    group = parser.add_argument_group("decoding")
    group.add_argument("--max-new-tokens", type=number(int, 0, LoadLimits.max_tokens), default=32, metavar="N",
                       help="tokens to decode after the prompt (default 32; 0 = prompt only)")  # fmt: skip
    group.add_argument("--seed", type=number(int, 0, 2**63 - 1),
                       help="sample with this seed instead of greedy decoding")  # fmt: skip
    group.add_argument("--temperature", type=number(float, 0, 1e6, low_open=True), default=1.0,
                       help="sampling temperature with --seed (default 1.0)")  # fmt: skip
    group.add_argument("--ignore-eos", action="store_true",
                       help="keep decoding after an end-of-sequence token")  # fmt: skip
    group.add_argument("--max-tokens", type=number(int, 1, LoadLimits.max_tokens), default=DEFAULT_MAX_TOKENS, metavar="N",
                       help=f"refuse traces longer than N tokens, prompt + new (default "
                            f"{DEFAULT_MAX_TOKENS}; memory grows with N^2)")  # fmt: skip
    group.add_argument("--prefill-chunk", type=number(int, 1), default=DEFAULT_PREFILL_CHUNK, metavar="N",
                       help=f"prefill the prompt N tokens at a time (default {DEFAULT_PREFILL_CHUNK})")  # fmt: skip
    group = parser.add_argument_group("what is stored")
    group.add_argument("--layers", default="all", metavar="SPEC",
                       help="layers to store: 'all' (default) or e.g. 0,7,15-17")  # fmt: skip
    group.add_argument("--no-values", action="store_true",
                       help="do not store value vectors (no attention-output error in replays)")  # fmt: skip
    group.add_argument("--encoding", choices=ENCODINGS, default="float16",
                       help="attention storage: float16 (default, rel. error <= 2^-11), float32 "
                            "(exact), quantized (abs. error <= 1/levels, exact row sums, smallest)")  # fmt: skip
    group.add_argument("--levels", type=number(int, 1, 65535), default=DEFAULT_LEVELS,
                       help=f"levels of the quantized encoding (default {DEFAULT_LEVELS})")  # fmt: skip
    group.add_argument("--values-dtype", choices=("float16", "float32"), default="float16",
                       help="value vector storage (default float16)")  # fmt: skip
    group.add_argument("--uncompressed", action="store_true",
                       help="store members raw (bigger; memory-mapped on load)")  # fmt: skip
    add_model_arguments(parser)
    parser.add_argument("--no-progress", action="store_true", help="hide the progress bar")
    return parser


def _check_output(path: str, text_file: str | None = None) -> Path:
    """The output path, refused before the model loads if it cannot be written (see
    :func:`h2osim.cli.check_output_file`: folder, device, read-only or missing folder)."""
    check_outputs({"--output": path}, inputs=[text_file])
    return Path(path)


def run(args: argparse.Namespace, command: str = "") -> int:
    from h2osim.model import encode_text, load_model_from_args, text_source_from_args
    from h2osim.model.recorder import record, stop_tokens, to_trace

    target = _check_output(args.output, args.text_file)  # cheap checks first: loading takes seconds
    layer_spec = parse_layers(args.layers)
    if args.max_new_tokens < 0:
        raise ValueError(f"--max-new-tokens must be >= 0, got {args.max_new_tokens}")
    if args.max_tokens < 1:
        raise ValueError(f"--max-tokens must be >= 1, got {args.max_tokens}")
    if args.seed is None and args.temperature != 1.0:
        raise ValueError("--temperature needs --seed (decoding is greedy without it)")
    check_text_input(args.text_file, args.max_tokens, args.truncate)  # before reading it
    text = text_source_from_args(args)
    check_text_length(len(text.text), args.max_tokens, args.truncate)  # before tokenising
    progress = not args.no_progress
    model, tokenizer, info = load_model_from_args(args, progress=progress)
    layers = parse_layers(args.layers, info.num_layers) if layer_spec is not None else None
    prompt_ids = encode_text(tokenizer, text.text, chat=args.chat, system=args.system,
                             truncate=args.truncate)  # fmt: skip
    total = len(prompt_ids) + args.max_new_tokens
    if total > args.max_tokens:
        raise ValueError(
            f"the text is {len(prompt_ids)} tokens + {args.max_new_tokens} new = {total}, over "
            f"--max-tokens {args.max_tokens}; keep the first N tokens with --truncate N or raise --max-tokens"
        )
    if progress:
        print(f"{info.describe()}; {len(prompt_ids)} prompt tokens", file=sys.stderr)
    recording = record(
        model, prompt_ids, max_new_tokens=args.max_new_tokens, layers=layers,
        store_values=not args.no_values, seed=args.seed, temperature=args.temperature,
        stop_token_ids=() if args.ignore_eos else stop_tokens(model, tokenizer),
        prefill_chunk=args.prefill_chunk,
        attention_dtype=np.float16 if args.encoding == "float16" else np.float32,
        progress=progress,
    )  # fmt: skip
    generation = {
        "mode": "sampled" if args.seed is not None else "greedy", "seed": args.seed,
        "temperature": args.temperature if args.seed is not None else None,
        "max_new_tokens": args.max_new_tokens, "ignore_eos": args.ignore_eos,
        "prefill_chunk": args.prefill_chunk,
    }  # fmt: skip
    metadata = {
        "command": command, "text": text.metadata(), "chat": args.chat, "system": args.system,
        "truncate": args.truncate, "generation": generation, "encoding": args.encoding,
    }  # fmt: skip
    trace = to_trace(recording, tokenizer, info, metadata)
    trace.save(target, encoding=args.encoding, levels=args.levels,
               compress=not args.uncompressed, values_dtype=args.values_dtype)  # fmt: skip
    size_mb = target.stat().st_size / 1e6
    written = Trace.load(target, validate=False)  # reads the header: says what is on disk
    print(f"wrote {target} ({size_mb:.1f} MB): {written.describe()}")
    print(f"prefill {recording.prompt_length} tokens in {recording.prefill_seconds:.1f} s, "
          f"decode {recording.decode_steps} tokens in {recording.decode_seconds:.1f} s"
          f"{' (stopped at end of sequence)' if recording.stopped_at_eos else ''}")  # fmt: skip
    if recording.decode_steps:
        answer = tokenizer.decode(recording.token_ids[recording.prompt_length :])
        print("generated: " + " ".join(answer.split())[:300])
    return 0


def _terminate(signum, frame) -> None:  # SIGTERM -> the same clean exit as Ctrl-C
    raise KeyboardInterrupt


def main(argv: Sequence[str] | None = None) -> int:
    previous = None
    with contextlib.suppress(ValueError):  # not the main thread: leave signals alone
        previous = signal.signal(signal.SIGTERM, _terminate)
    try:
        return run_model_cli("python -m h2osim.dump", build_parser, run, argv)
    finally:
        if previous is not None:
            signal.signal(signal.SIGTERM, previous)


if __name__ == "__main__":
    sys.exit(main())
