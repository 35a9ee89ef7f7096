"""``python -m h2osim.dump -o trace.npz``: dump an attention trace from a real model.

The command line over :mod:`h2osim.model.recorder`: choose a text (a pydoc topic, a file
or a prompt, optionally chat-wrapped), how many tokens to decode, which layers and how
to store them; the recorder runs the model with a full KV cache and writes a v1 trace
(docs/trace-format.md) atomically, with metadata saying exactly how it was made.
``--encoding sparse`` writes the v2 sparse encoding (largest entries per row until the
dropped mass is <= ``--epsilon``), sparsified chunk by chunk as the model runs.
``--convert IN -o OUT`` re-encodes an existing trace instead (no model, no torch needed).
"""

from __future__ import annotations

import argparse
import contextlib
import signal
import sys
import time
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from h2osim.cli import (
    check_outputs,
    check_text_input,
    check_text_length,
    number,
    parse_layers,
    run_cli,
    run_model_cli,
)
from h2osim.model.recorder import DEFAULT_MAX_TOKENS, DEFAULT_PREFILL_CHUNK
from h2osim.trace import (
    ALL_ENCODINGS,
    DEFAULT_EPSILON,
    DEFAULT_LEVELS,
    MAX_EPSILON,
    SPARSE,
    SPARSE_VALUE_DTYPES,
    LoadLimits,
    Trace,
    packed_size,
)


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
        "--max-new-tokens 200 -o chat.npz  |  python -m h2osim.dump --convert long.npz "
        "--encoding sparse --epsilon 1e-4 -o long-sparse.npz",
    )
    parser.add_argument("-o", "--output", required=True, metavar="PATH",
                        help="trace file to write (.npz; written atomically)")  # fmt: skip
    parser.add_argument("--convert", metavar="IN",
                        help="re-encode the existing trace IN into --output instead of running a "
                             "model (default --encoding sparse; text and model flags are refused)")  # fmt: skip
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
    add_storage_arguments(group)
    add_model_arguments(parser)
    parser.add_argument("--no-progress", action="store_true", help="hide the progress bar")
    return parser


def add_storage_arguments(group) -> None:
    """``--encoding --levels --epsilon --sparse-dtype --values-dtype --uncompressed``."""
    group.add_argument("--encoding", choices=ALL_ENCODINGS,
                       help="attention storage: float16 (default when dumping; rel. error <= "
                            "2^-11), float32 (exact), quantized (abs. error <= 1/levels, exact row "
                            "sums), sparse (format v2, default with --convert: per row the largest "
                            "entries until the dropped mass is <= --epsilon; retained-mass error "
                            "<= epsilon)")  # fmt: skip
    group.add_argument("--levels", type=number(int, 1, 65535), default=DEFAULT_LEVELS,
                       help=f"levels of the quantized encoding (default {DEFAULT_LEVELS})")  # fmt: skip
    group.add_argument("--epsilon", type=number(float, 0, MAX_EPSILON),
                       help=f"sparse only: most mass a row may drop, as a share of its total "
                            f"(default {DEFAULT_EPSILON:g})")  # fmt: skip
    group.add_argument("--sparse-dtype", choices=SPARSE_VALUE_DTYPES,
                       help="sparse only: type of the kept values (default float32; with "
                            "--convert, float16 from a float16 trace); the epsilon bound holds "
                            "against the dense rows in this type")  # fmt: skip
    group.add_argument("--values-dtype", choices=("float16", "float32"),
                       help="value vector storage (default float16; with --convert, as stored)")  # fmt: skip
    group.add_argument("--uncompressed", action="store_true",
                       help="store members raw (bigger; memory-mapped on load)")  # fmt: skip


def build_convert_parser() -> argparse.ArgumentParser:
    """The parser of ``--convert`` (no model flags: converting needs no torch)."""
    parser = argparse.ArgumentParser(
        prog="python -m h2osim.dump",
        description="Re-encode an existing trace (e.g. to the sparse encoding, format v2).",
    )
    parser.add_argument("-o", "--output", required=True, metavar="PATH",
                        help="trace file to write (.npz; written atomically)")  # fmt: skip
    parser.add_argument("--convert", required=True, metavar="IN", help="the trace to re-encode")
    add_storage_arguments(parser.add_argument_group("what is stored"))
    return parser


def _storage(args: argparse.Namespace, default_encoding: str) -> dict:
    """Keyword arguments of :meth:`Trace.save` from the storage flags; sparse-only flags
    with another encoding are refused."""
    encoding = args.encoding or default_encoding
    if encoding != SPARSE:
        for flag, value in (("--epsilon", args.epsilon), ("--sparse-dtype", args.sparse_dtype)):
            if value is not None:
                raise ValueError(
                    f"{flag} applies to --encoding sparse only (got --encoding {encoding})"
                )
    return {"encoding": encoding, "levels": args.levels, "compress": not args.uncompressed,
            "values_dtype": args.values_dtype, "epsilon": args.epsilon,
            "sparse_dtype": args.sparse_dtype}  # fmt: skip


def sparse_summary(trace: Trace) -> str:
    """One line on a sparse trace: share of entries kept, dropped mass per row.

    Example: "kept 41.2% of 75.5M entries (12.9 bytes -> 6 per kept entry); dropped mass
    per row: mean 6.1e-05, max 1e-04 (epsilon 0.0001)".
    """
    kept, dropped = 0, []
    for layer in trace.layers:
        kept += trace.sparse_layer(int(layer)).nnz
        dropped.append(trace.dropped_mass(int(layer)))
    everything = len(trace.layers) * trace.num_heads * packed_size(trace.n)
    masses = np.concatenate([part.reshape(-1) for part in dropped])
    return (f"kept {kept / everything:.1%} of {everything:,} entries; dropped mass per row: "
            f"mean {masses.mean():.2g}, max {masses.max():.2g} (epsilon {trace.epsilon:g})")  # fmt: skip


def convert(args: argparse.Namespace) -> int:
    """``--convert IN -o OUT``: re-encode a trace, one layer at a time."""
    source = Path(args.convert)
    check_outputs({"--output": args.output}, inputs=[source])
    target = Path(args.output)
    storage = _storage(args, SPARSE)
    trace = Trace.load(source, validate=False)  # each layer is checked as it is re-encoded
    started = time.perf_counter()
    trace.save(target, validate_source=True, **storage)
    seconds = time.perf_counter() - started
    written = Trace.load(target)
    size, before = target.stat().st_size / 1e6, source.stat().st_size / 1e6
    print(f"wrote {target} ({size:.1f} MB; {source} is {before:.1f} MB) in {seconds:.1f} s: "
          f"{written.describe()}")  # fmt: skip
    if written.encoding == SPARSE:
        print(sparse_summary(written))
    return 0


def _check_output(path: str, text_file: str | None = None) -> Path:
    """The output path, refused before the model loads if it cannot be written (see
    :func:`h2osim.cli.check_output_file`: folder, device, read-only or missing folder)."""
    check_outputs({"--output": path}, inputs=[text_file])
    return Path(path)


def run(args: argparse.Namespace, command: str = "") -> int:
    from h2osim.model import encode_text, load_model_from_args, text_source_from_args
    from h2osim.model.recorder import record, stop_tokens, to_trace

    if args.convert is not None:
        return convert(args)
    target = _check_output(args.output, args.text_file)  # cheap checks first: loading takes seconds
    storage = _storage(args, "float16")
    storage["values_dtype"] = storage["values_dtype"] or "float16"
    sparse = storage["encoding"] == SPARSE
    epsilon = sparse_dtype = None
    if sparse:
        epsilon = DEFAULT_EPSILON if args.epsilon is None else args.epsilon
        sparse_dtype = storage["sparse_dtype"] or "float32"
        storage.update(epsilon=None, sparse_dtype=None)  # the recorder applies them
    row_dtype = np.float16 if (sparse_dtype or storage["encoding"]) == "float16" else np.float32
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
        attention_dtype=row_dtype, progress=progress, sparse_epsilon=epsilon,
    )  # fmt: skip
    generation = {
        "mode": "sampled" if args.seed is not None else "greedy", "seed": args.seed,
        "temperature": args.temperature if args.seed is not None else None,
        "max_new_tokens": args.max_new_tokens, "ignore_eos": args.ignore_eos,
        "prefill_chunk": args.prefill_chunk,
    }  # fmt: skip
    metadata = {
        "command": command, "text": text.metadata(), "chat": args.chat, "system": args.system,
        "truncate": args.truncate, "generation": generation, "encoding": storage["encoding"],
    }  # fmt: skip
    if sparse:
        metadata["sparse"] = {"epsilon": epsilon, "values_dtype": sparse_dtype}
    trace = to_trace(recording, tokenizer, info, metadata)
    trace.save(target, **storage)
    size_mb = target.stat().st_size / 1e6
    written = Trace.load(target, validate=False)  # reads the header: says what is on disk
    print(f"wrote {target} ({size_mb:.1f} MB): {written.describe()}")
    print(f"prefill {recording.prompt_length} tokens in {recording.prefill_seconds:.1f} s, "
          f"decode {recording.decode_steps} tokens in {recording.decode_seconds:.1f} s"
          f"{' (stopped at end of sequence)' if recording.stopped_at_eos else ''}")  # fmt: skip
    if sparse:
        print(sparse_summary(written))
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
    arguments = list(sys.argv[1:] if argv is None else argv)
    converting = any(arg == "--convert" or arg.startswith("--convert=") for arg in arguments)
    try:
        if converting and not any(arg in ("-h", "--help") for arg in arguments):
            return run_cli(build_convert_parser, convert, arguments)
        return run_model_cli("python -m h2osim.dump", build_parser, run, arguments)
    finally:
        if previous is not None:
            signal.signal(signal.SIGTERM, previous)


if __name__ == "__main__":
    sys.exit(main())
