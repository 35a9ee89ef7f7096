"""Shared command-line plumbing: user errors become one line on stderr and exit code 2."""

from __future__ import annotations

import argparse
import importlib
import os
import shlex
import sys
from collections.abc import Callable, Sequence
from typing import Any

from h2osim.errors import TraceError, UserError

MODEL_STACK = ("torch", "transformers", "gguf", "safetensors")  # what the model tools import
USER_ERRORS = (
    TraceError,
    ValueError,
    FileNotFoundError,
    KeyError,
    PermissionError,
    IsADirectoryError,
)


def limit_threads(threads: int | None = None) -> int:
    """Cap the BLAS/OpenMP thread pools of numpy and scipy for this process.

    ``threads`` defaults to the H2OSIM_THREADS environment variable, else 1: replays do
    many small matrix products, and on a busy 2-core machine OpenBLAS's own threads made
    a 512 x 512 x 64 product 15x slower than one thread. Returns the limit applied.
    """
    if threads is None:
        raw = os.environ.get("H2OSIM_THREADS", "1")
        try:
            threads = int(raw)
        except ValueError:
            raise ValueError(f"H2OSIM_THREADS must be a whole number >= 1, got {raw!r}") from None
    if threads < 1:
        raise ValueError(f"thread limit must be >= 1, got {threads}")
    from threadpoolctl import threadpool_limits

    threadpool_limits(limits=threads)
    return threads


def error_line(exc: BaseException) -> str:
    """The one-line message for ``exc`` (KeyError's repr quotes are dropped)."""
    message = exc.args[0] if isinstance(exc, KeyError) and exc.args else str(exc)
    return " ".join(str(message).split())


def run_cli(
    build_parser: Callable[[], argparse.ArgumentParser],
    run: Callable[[argparse.Namespace], int],
    argv: Sequence[str] | None = None,
) -> int:
    """Parse ``argv`` and call ``run``; bad input -> ``error: ...`` on stderr, exit 2."""
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        limit_threads()
        return run(args)
    except (UserError, *USER_ERRORS) as exc:
        print(f"{parser.prog}: error: {error_line(exc)}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"{parser.prog}: interrupted", file=sys.stderr)
        return 130


def parse_layers(spec: str | None, num_layers: int | None = None) -> list[int] | None:
    """``"all"``/None -> None (every layer); ``"0,5,10-12"`` -> [0, 5, 10, 11, 12].

    With ``num_layers`` each index is checked to lie in 0..num_layers-1.
    """
    if spec is None or spec.strip() in ("", "all"):
        return None
    layers: set[int] = set()
    for part in spec.split(","):
        part = part.strip()
        try:
            if "-" in part:
                low, high = (int(x) for x in part.split("-", 1))
                if low > high:
                    raise ValueError
                layers.update(range(low, high + 1))
            else:
                layers.add(int(part))
        except ValueError:
            raise ValueError(
                f"--layers takes 'all' or comma-separated indices and ranges like 0,5,10-12; got {spec!r}"
            ) from None
    if num_layers is not None:
        bad = sorted(layer for layer in layers if not 0 <= layer < num_layers)
        if bad:
            raise ValueError(
                f"--layers: layer {bad[0]} does not exist; this model has layers 0..{num_layers - 1}"
            )
    return sorted(layers)


def format_table(records: list[dict[str, Any]], columns: Sequence[tuple[str, str, str]]) -> str:
    """A plain-text table; ``columns`` are (key, header, format) triples."""
    cells = [[header for _, header, _ in columns]]
    for record in records:
        cells.append(
            [
                "-" if record.get(key) is None else format(record[key], spec)
                for key, _, spec in columns
            ]
        )
    widths = [max(len(row[i]) for row in cells) for i in range(len(columns))]
    lines = ["  ".join(cell.rjust(width) if i else cell.ljust(width)
                       for i, (cell, width) in enumerate(zip(row, widths, strict=True)))
             for row in cells]  # fmt: skip
    lines.insert(1, "  ".join("-" * width for width in widths))
    return "\n".join(lines)


# ------------------------------------------------------------------ replay options
def add_cache_arguments(
    parser: argparse.ArgumentParser,
    aggregations: Sequence[str] | None = None,
    sequence: str = "sequence length",
) -> None:
    """``--budget --budget-of --aggregation --prompt-mode``: the cache every unit keeps, shared
    by replay and live eviction (see :class:`h2osim.schedule.CacheSchedule`).
    ``aggregations`` narrows the GQA choices (live eviction has no per-head caches);
    ``sequence`` says what the sequence is for this tool."""
    from h2osim.engine import BUDGET_BASES, GQA_MODES, PROMPT_MODES

    parser.add_argument("--budget", default="0.2",
                        help="tokens per cache unit: a fraction in (0, 1] or a count > 1 (default 0.2)")  # fmt: skip
    parser.add_argument("--budget-of", choices=BUDGET_BASES, default="sequence",
                        help=f"what a fractional budget is a fraction of (default: the {sequence})")  # fmt: skip
    parser.add_argument("--aggregation", choices=aggregations or GQA_MODES, default="sum",
                        help="how a KV head's query heads combine their scores"
                        + ("" if aggregations else ", or one cache per query head")
                        + " (default sum)")  # fmt: skip
    parser.add_argument("--prompt-mode", choices=PROMPT_MODES, default="stream",
                        help="stream: prompt rows evict like decode rows; full: prompt attended in "
                        "full, eviction after prefill")  # fmt: skip


def add_replay_arguments(
    parser: argparse.ArgumentParser, observe_default: str = "renormalized", observe_help: str = ""
) -> None:
    """:func:`add_cache_arguments` plus ``--observe --layers``: how a trace is replayed, shared
    by every CLI that replays (see :class:`h2osim.engine.ReplayConfig`)."""
    from h2osim.engine import OBSERVATIONS

    add_cache_arguments(parser)
    parser.add_argument("--observe", choices=OBSERVATIONS, default=observe_default,
                        help=observe_help or "what policies observe: the row renormalised over kept "
                        f"tokens or the full row (default {observe_default})")  # fmt: skip
    parser.add_argument(
        "--layers", help="model layers to replay, e.g. 0,5,10-12 (default: all stored)"
    )


def replay_config_from_args(args: argparse.Namespace, **extra: Any):
    """The :class:`h2osim.engine.ReplayConfig` that :func:`add_replay_arguments` describes."""
    from h2osim.engine import ReplayConfig

    layers = parse_layers(args.layers)
    return ReplayConfig(aggregation=args.aggregation, prompt_mode=args.prompt_mode,
                        observation=args.observe, layers=None if layers is None else tuple(layers),
                        **extra)  # fmt: skip


# ------------------------------------------------------------------ policy options
def add_policy_arguments(parser: argparse.ArgumentParser) -> None:
    """One flag per hyperparameter in the registry (``--heavy-ratio``, ``--sinks``, ...)."""
    from h2osim.policies import all_parameters

    group = parser.add_argument_group(
        "policy parameters (each applies to the policies that have it)"
    )
    for name, spec in sorted(all_parameters().items()):
        kind = (
            spec.type
            if isinstance(spec.type, type)
            else {"int": int, "float": float, "str": str}[str(spec.type)]
        )
        group.add_argument("--" + name.replace("_", "-"), type=kind, default=None, dest=name,
                           help=f"{spec.metadata.get('help', '')} (default {spec.default})")  # fmt: skip


def policy_parameters(args: argparse.Namespace) -> dict[str, Any]:
    """The values given to :func:`add_policy_arguments`' flags (None = the policy's default)."""
    from h2osim.policies import all_parameters

    return {name: getattr(args, name) for name in all_parameters()}


def requested_policies(
    requested: Sequence[str] | None, everything: Sequence[str], default: str = "h2o"
) -> list[str]:
    """Expand repeatable, comma-separated ``--policy`` values; ``all`` means ``everything``.

    Example: ["h2o,window", "all"] with everything [a, h2o] -> [h2o, window, a].
    Unknown names raise ValueError listing the registry.
    """
    from h2osim.policies import policy_class

    names: list[str] = []
    for entry in requested or [default]:
        for name in (part.strip() for part in entry.split(",")):
            if name != "all":
                policy_class(name)
            names += [
                chosen
                for chosen in (everything if name == "all" else [name])
                if chosen not in names
            ]
    return names


# ------------------------------------------------------------------ model CLIs
def run_model_cli(
    prog: str,
    build_parser: Callable[[], argparse.ArgumentParser],
    run: Callable[[argparse.Namespace, str], int],
    argv: Sequence[str] | None = None,
) -> int:
    """:func:`run_cli` for CLIs that need torch + transformers: a missing model stack is one
    line naming the install command (exit 2); ``run`` also gets the command line, for the
    metadata of what it writes."""
    arguments = list(sys.argv[1:] if argv is None else argv)
    try:
        for name in MODEL_STACK:  # loaded by name: the CLI layer itself never imports torch
            importlib.import_module(name)
    except ImportError as exc:
        print(f"{prog}: error: the model stack is not installed ({exc}); "
              "run `make setup` (or pip install -e '.[model]')", file=sys.stderr)  # fmt: skip
        return 2
    command = f"{prog} " + shlex.join(arguments)
    return run_cli(build_parser, lambda args: run(args, command), arguments)
