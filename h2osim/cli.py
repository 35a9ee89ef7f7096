"""Shared command-line plumbing: user errors become one line on stderr and exit code 2.

Every CLI builds its parser here (:func:`run_cli`): argparse's own usage errors print one
line plus "see --help"; numeric flags are finite and range-checked when parsed
(:func:`number`, :func:`budget_value`); output paths are checked before any work starts
(:func:`check_outputs`); anything printed from a file is made terminal-safe first.
"""

from __future__ import annotations

import argparse
import contextlib
import importlib
import math
import os
import shlex
import stat
import sys
import tempfile
from collections.abc import Callable, Collection, Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

from h2osim.errors import TraceError, UserError
from h2osim.files import FIGURE_FORMATS, printable

MODEL_STACK = ("torch", "transformers", "gguf", "safetensors")  # what the model tools import
USER_ERRORS = (
    TraceError,
    ValueError,
    FileNotFoundError,
    KeyError,
    PermissionError,
    IsADirectoryError,
    NotADirectoryError,
)
MAX_THREADS = 1024
MAX_COUNT = 10**9  # largest token count any flag takes (budgets, windows, ...)
MAX_LAYER_INDEX = 10_000  # no model has more layers; ranges are capped before expanding
NAME_MAX = 255  # bytes in one file name on Linux/macOS file systems
TEMP_NAME_EXTRA = 14  # atomic_write's temporary name: "." + name + "." + 8 random + ".tmp"
CHARS_PER_TOKEN = 64  # a text longer than 64 characters per allowed token is refused untokenised


def limit_threads(threads: int | None = None) -> int:
    """Cap the BLAS/OpenMP thread pools of numpy and scipy for this process.

    ``threads`` defaults to the H2OSIM_THREADS environment variable, else 1: replays do
    many small matrix products, and on a busy 2-core machine OpenBLAS's own threads made
    a 512 x 512 x 64 product 15x slower than one thread. Returns the limit applied.
    """
    if threads is None:
        raw = os.environ.get("H2OSIM_THREADS", "1")
        try:
            threads = int(raw) if len(raw) <= 20 else -1
        except ValueError:
            threads = -1
        if not 1 <= threads <= MAX_THREADS:
            raise ValueError(
                f"H2OSIM_THREADS must be a whole number in 1..{MAX_THREADS}, got {printable(raw[:40])!r}"
            )
    if not 1 <= threads <= MAX_THREADS:
        raise ValueError(f"thread limit must be in 1..{MAX_THREADS}, got {threads}")
    from threadpoolctl import threadpool_limits

    threadpool_limits(limits=threads)
    return threads


def error_line(exc: BaseException | str) -> str:
    """The one-line, terminal-safe message for ``exc`` (KeyError's repr quotes are dropped).

    Example: ``error_line(ValueError("bad\\n\\x1b[2J value"))`` -> ``'bad \\x1b[2J value'``.
    """
    if isinstance(exc, BaseException):
        message = exc.args[0] if isinstance(exc, KeyError) and exc.args else str(exc)
    else:
        message = exc
    return printable(" ".join(str(message).split()))


class ArgumentValueError(argparse.ArgumentTypeError):
    """A flag's value is out of range (raised by :func:`number` and :func:`budget_value`).

    :func:`run_cli` reports it like any bad input: one line, exit status 2 (returned).
    ``named`` says the message already names what it checks (e.g. ``heavy_ratio``).
    """

    def __init__(self, message: str, named: bool = False):
        super().__init__(message)
        self.named = named


class _BadValue(ValueError):
    """ArgumentValueError after argparse: caught by run_cli like any ValueError."""


def one_line_errors(parser: argparse.ArgumentParser) -> argparse.ArgumentParser:
    """Make argparse's usage errors one line, ``PROG: error: MESSAGE (see --help)``, exit 2.

    (argparse prints the whole usage block first; with many flags that is 10-18 lines.)
    Out-of-range values (:class:`ArgumentValueError`) become a ValueError instead, which
    :func:`run_cli` prints as one line and returns 2 like every other bad input.
    """

    def error(message: str):
        failure = sys.exc_info()[1]
        cause = getattr(failure, "__context__", None)
        if isinstance(failure, argparse.ArgumentError) and isinstance(cause, ArgumentValueError):
            flag = failure.argument_name or "value"
            raise _BadValue(str(cause) if cause.named else f"{flag} {cause}") from None
        print(f"{parser.prog}: error: {error_line(message)} (see --help)", file=sys.stderr)
        raise SystemExit(2)

    parser.error = error  # type: ignore[method-assign]
    return parser


def _check_single_values(parser: argparse.ArgumentParser, args: argparse.Namespace) -> None:
    """Refuse ``--flag=--``: argparse (3.11) stores [] for it, skipping the flag's type check."""
    for action in parser._actions:
        value = getattr(args, action.dest, None)
        if action.nargs is None and isinstance(action, argparse._StoreAction):
            values = [value]
        elif isinstance(action, argparse._AppendAction) and isinstance(value, list):
            values = value
        else:
            continue
        if any(isinstance(item, list) for item in values):
            raise ValueError(f"{action.option_strings[0] if action.option_strings else action.dest} "
                             "needs a value (got '--')")  # fmt: skip


def run_cli(
    build_parser: Callable[[], argparse.ArgumentParser],
    run: Callable[[argparse.Namespace], int],
    argv: Sequence[str] | None = None,
) -> int:
    """Parse ``argv`` and call ``run``; bad input -> ``error: ...`` on stderr, exit 2."""
    parser = one_line_errors(build_parser())
    try:
        args = parser.parse_args(argv)
        _check_single_values(parser, args)
        limit_threads()
        return run(args)
    except (UserError, *USER_ERRORS) as exc:
        print(f"{parser.prog}: error: {error_line(exc)}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"{parser.prog}: interrupted", file=sys.stderr)
        return 130


def parse_layers(
    spec: str | None, num_layers: int | None = None, stored: Iterable[int] | None = None
) -> list[int] | None:
    """``"all"``/None -> None (every layer); ``"0,5,10-12"`` -> [0, 5, 10, 11, 12].

    With ``num_layers`` each index is checked to lie in 0..num_layers-1; with ``stored``
    (a trace's layers) each must be stored. Ranges are checked before they are expanded
    (at most :data:`MAX_LAYER_INDEX`), so ``0-99999999999`` is refused, not allocated.
    """
    if spec is None or spec.strip() in ("", "all"):
        return None
    stored_set = None if stored is None else {int(layer) for layer in stored}
    top = MAX_LAYER_INDEX if num_layers is None else num_layers - 1
    if stored_set:
        top = min(top, max(stored_set))
    usage = f"--layers takes 'all' or comma-separated indices and ranges like 0,5,10-12; got {printable(spec[:80])!r}"
    if len(spec) > 10_000:
        raise ValueError(usage)
    layers: set[int] = set()
    for part in spec.split(","):
        part = part.strip()
        try:
            if len(part) > 25:
                raise ValueError
            low, high = (int(x) for x in part.split("-", 1)) if "-" in part else (int(part),) * 2
            if low > high or low < 0:
                raise ValueError
        except ValueError:
            raise ValueError(usage) from None
        if high > top and stored_set:
            raise ValueError(f"--layers: layer {high} is not stored in this trace; it stores "
                             f"layers {sorted(stored_set)}")  # fmt: skip
        if high > top:
            where = (f"this model has layers 0..{num_layers - 1}" if num_layers is not None else
                     f"layer indices stop at {MAX_LAYER_INDEX}")  # fmt: skip
            raise ValueError(f"--layers: layer {high} does not exist; {where}")
        layers.update(range(low, high + 1))
    if stored_set is not None:
        missing = sorted(layers - stored_set)
        if missing:
            raise ValueError(f"--layers: layer {missing[0]} is not stored in this trace; it stores "
                             f"layers {sorted(stored_set)}")  # fmt: skip
    if num_layers is not None:
        bad = sorted(layer for layer in layers if not 0 <= layer < num_layers)
        if bad:
            raise ValueError(
                f"--layers: layer {bad[0]} does not exist; this model has layers 0..{num_layers - 1}"
            )
    return sorted(layers)


# ------------------------------------------------------------------ argument values
def _bound(value: float) -> str:
    """A range end for messages: 65536 -> "65536", 1e9 -> "1000000000", 2**63 - 1 -> "2^63-1"."""
    if value == 2**63 - 1 or value == -(2**63):
        return "2^63-1" if value > 0 else "-2^63"
    return str(int(value)) if float(value).is_integer() else f"{value:g}"


def number(
    kind: type = float, low: float | None = None, high: float | None = None, *,
    low_open: bool = False, high_open: bool = False, name: str | None = None,
) -> Callable[[str], Any]:  # fmt: skip
    """An argparse ``type``: a finite ``kind`` (int or float) in [low, high] (open ends optional).

    NaN and infinities are refused, whatever the range (NaN passes every ``<`` test).
    ``name`` words the message (default: the flag). Example: ``number(float, 0, 1)("nan")``
    -> ArgumentValueError "must be in [0, 1], got 'nan'"; ``number(int, 1)("3")`` -> 3.
    """
    left, right = "(" if low_open else "[", ")" if high_open else "]"
    if low is not None and high is not None:
        expected = f"in {left}{_bound(low)}, {_bound(high)}{right}"
    elif low is not None:
        expected = f"{'>' if low_open else '>='} {_bound(low)}"
    elif high is not None:
        expected = f"{'<' if high_open else '<='} {_bound(high)}"
    else:
        expected = "a number"
    what = " (a whole number)" if kind is int else " (a finite number)"

    def parse(text: str) -> Any:
        message = f"must be {expected}{what}, got {printable(text[:40])!r}"
        problem = ArgumentValueError(f"{name} {message}" if name else message, named=bool(name))
        try:
            value = kind(text) if kind is not int or len(text.strip()) <= 25 else None
        except (ValueError, OverflowError):
            raise problem from None
        if value is None or not math.isfinite(value):
            raise problem
        if low is not None and (value <= low if low_open else value < low):
            raise problem
        if high is not None and (value >= high if high_open else value > high):
            raise problem
        return value

    parse.__name__ = kind.__name__
    return parse


def budget_value(text: str) -> str:
    """An argparse ``type`` for ``--budget``: a fraction in (0, 1] or a whole count in
    (1, MAX_COUNT]; returned unchanged (``resolve_budget`` turns it into k).

    Example: "0.2" -> "0.2"; "1e308", "nan", "-inf", "2.5" -> ArgumentValueError.
    """
    try:
        value = float(text) if len(text) <= 40 else math.nan
    except ValueError:
        value = math.nan
    shown = printable(text[:40])
    if not math.isfinite(value) or value <= 0:
        raise ArgumentValueError(
            f"budget must be in (0, 1] as a fraction or > 1 as a count, got {shown!r}", named=True
        )
    if value > 1 and value != int(value):
        raise ArgumentValueError(
            f"a budget above 1 is a token count and must be whole, got {shown!r}", named=True
        )
    if value > MAX_COUNT:
        raise ArgumentValueError(f"budget counts stop at {MAX_COUNT}, got {shown!r}", named=True)
    return text


def check_counts(params: Mapping[str, Any], n: int) -> None:
    """Refuse policy count parameters (windows, slots) larger than the sequence of n tokens.

    A ``--history`` of 10^10 rows on a 512-token trace would allocate 10^10 x units x n
    booleans; beyond n they change nothing. Only values the user gave are checked.
    """
    from h2osim.policies import all_parameters

    for name, spec in all_parameters().items():
        value = params.get(name)
        counts = spec.type in (int, "int") and spec.metadata.get("low") is not None
        if counts and value is not None and value > n:
            raise ValueError(f"--{name.replace('_', '-')} {value} is longer than the sequence "
                             f"(n={n} tokens); use at most {n}")  # fmt: skip


# ------------------------------------------------------------------ output paths
def _name_limit(folder: Path) -> int:
    with contextlib.suppress(OSError, ValueError, AttributeError):
        return int(os.pathconf(folder, "PC_NAME_MAX"))
    return NAME_MAX


def check_output_file(flag: str, value: str) -> Path:
    """Refuse an output path that cannot be written, before any work is done.

    Checked: not empty; the name fits the file system (with atomic_write's temporary
    name); not a folder, device, FIFO or socket; the folder exists and a file can be
    created in it (probed with a temporary file, so read-only mounts and /sys fail here).
    """
    if not value.strip():
        raise ValueError(f"{flag} needs a file path, got an empty string")
    path = Path(value)
    shown = printable(value if len(value) <= 120 else value[:60] + "..." + value[-40:])
    if len(os.fsencode(value)) > 4000:
        raise ValueError(f"{flag} {shown}: the path is over 4000 bytes long; use a shorter path")
    folder = path.parent if str(path.parent) else Path(".")
    limit = _name_limit(folder) if folder.is_dir() else NAME_MAX
    for part in path.parts:
        size = len(os.fsencode(part)) + (TEMP_NAME_EXTRA if part == path.name else 0)
        if size > limit:
            raise ValueError(f"{flag} {shown}: a file name is at most {limit - TEMP_NAME_EXTRA} "
                             f"bytes here, {printable(part[:30])}... has {len(os.fsencode(part))}")  # fmt: skip
    try:
        info = os.stat(path)
    except FileNotFoundError:
        info = None
    except OSError as exc:
        raise ValueError(f"{flag} {shown}: cannot use this path ({exc.strerror})") from None
    if info is not None and stat.S_ISDIR(info.st_mode):
        raise ValueError(f"{flag} {shown} is a folder; give a file name inside it")
    if info is not None and not stat.S_ISREG(info.st_mode):
        raise ValueError(f"{flag} {shown} is a device, FIFO or socket, not a file; give a file "
                         "path ('-' writes to stdout where the flag allows it)")  # fmt: skip
    if not folder.is_dir():
        raise ValueError(
            f"{flag}: output folder {printable(str(folder))} does not exist; create it first"
        )
    try:
        fd, probe = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=folder)
    except OSError as exc:
        raise ValueError(f"{flag} {shown}: cannot write in {printable(str(folder))} "
                         f"({exc.strerror}); choose a writable folder") from None  # fmt: skip
    os.close(fd)
    os.unlink(probe)
    return path


def check_output_folder(flag: str, value: str) -> Path:
    """Like :func:`check_output_file` for a folder that may not exist yet (made with parents)."""
    if not value.strip():
        raise ValueError(f"{flag} needs a folder path, got an empty string")
    path = Path(value)
    shown = printable(value[:120])
    if path.exists() and not path.is_dir():
        raise ValueError(f"{flag} {shown} exists and is not a folder; give a folder path")
    existing = path
    while not existing.exists():
        if existing == existing.parent:
            break
        existing = existing.parent
    existing = existing if str(existing) else Path(".")
    if not existing.is_dir():
        raise ValueError(f"{flag} {shown}: {printable(str(existing))} is not a folder")
    for part in path.parts:
        if len(os.fsencode(part)) > NAME_MAX - TEMP_NAME_EXTRA:
            raise ValueError(
                f"{flag} {shown}: a folder name is at most {NAME_MAX - TEMP_NAME_EXTRA} bytes"
            )
    if not os.access(existing, os.W_OK | os.X_OK):
        raise ValueError(
            f"{flag} {shown}: {printable(str(existing))} is not writable; choose another folder"
        )
    return path


def check_outputs(
    outputs: Mapping[str, str | None],
    inputs: Iterable[str | os.PathLike[str] | None] = (),
    stdout_ok: Collection[str] = (),
) -> None:
    """Check every output flag before any model runs or trace is read in full.

    ``outputs`` maps flag -> path (None: not given); flags in ``stdout_ok`` accept ``-``.
    Refused: an unwritable path (:func:`check_output_file`), an output that is one of
    ``inputs`` (compared after resolving symlinks), two outputs naming one file, two
    outputs both on stdout. Example: ``--json t.npz`` with input ``t.npz`` -> ValueError.
    """
    claimed: dict[str, str] = {}
    input_paths = [Path(item) for item in inputs if item]
    for flag, value in outputs.items():
        if value is None:
            continue
        if value == "-" and flag in stdout_ok:
            if "-" in claimed:
                raise ValueError(
                    f"{claimed['-']} and {flag} both write to stdout; send one to a file"
                )
            claimed["-"] = flag
            continue
        path = check_output_file(flag, value)
        real = os.path.realpath(path)
        for source in input_paths:
            same = os.path.realpath(source) == real
            with contextlib.suppress(OSError):
                same = same or (path.exists() and os.path.samefile(source, path))
            if same:
                raise ValueError(f"{flag} {printable(value[:120])} is the input file; writing it "
                                 "would replace the input; choose another path")  # fmt: skip
        if real in claimed:
            raise ValueError(f"{claimed[real]} and {flag} name the same file {printable(value[:120])}; "
                             "give each output its own path")  # fmt: skip
        if flag == "--plot" and path.suffix.lower().lstrip(".") not in ("", *FIGURE_FORMATS):
            raise ValueError(f"--plot {printable(value[:120])}: a figure is one of "
                             f"{', '.join(FIGURE_FORMATS)} (from the suffix); got {printable(path.suffix)!r}")  # fmt: skip
        claimed[real] = flag


# ------------------------------------------------------------------ text inputs
def check_text_input(text_file: str | None, max_tokens: int, truncate: int | None) -> None:
    """Refuse a ``--text-file`` that is not a regular file or is far too long, unread
    (and a ``--truncate`` below 1), before any model loads.

    A text of more than :data:`CHARS_PER_TOKEN` characters per allowed token cannot fit
    ``--max-tokens`` (or ``--truncate``) tokens usefully; it is refused before it is read
    and tokenised (a 6.6 MB file took 10 s and 1.3 GB to tokenise).
    """
    if truncate is not None and truncate < 1:
        raise ValueError(f"--truncate must be >= 1 token, got {truncate}")
    if text_file is None:
        return
    shown = printable(text_file[:120])
    try:
        info = os.stat(text_file)
    except FileNotFoundError:
        raise FileNotFoundError(f"--text-file {shown}: no such file") from None
    except OSError as exc:
        raise ValueError(f"--text-file {shown}: cannot open ({exc.strerror})") from None
    if not stat.S_ISREG(info.st_mode):
        raise ValueError(f"--text-file {shown} is not a regular file (a folder, FIFO or device)")
    check_text_length(
        info.st_size, max_tokens, truncate, what=f"--text-file {shown} has {info.st_size} bytes"
    )


def check_text_length(size: int, max_tokens: int, truncate: int | None, what: str = "") -> None:
    """Refuse a text of ``size`` characters (or bytes) over CHARS_PER_TOKEN x the tokens used."""
    by_truncate = truncate is not None and 0 < truncate < max_tokens
    tokens = truncate if by_truncate else max_tokens
    limit = CHARS_PER_TOKEN * tokens + 4096
    if size > limit:
        flag = f"--truncate {truncate}" if by_truncate else f"--max-tokens {max_tokens}"
        raise ValueError(f"{what or f'the text has {size} characters'}, over the {limit} that "
                         f"{flag} can use ({CHARS_PER_TOKEN} per token); cut the text "
                         "(e.g. head -c) or raise --max-tokens / --truncate")  # fmt: skip


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

    parser.add_argument("--budget", default="0.2", type=budget_value,
                        help="tokens per cache unit: a fraction in (0, 1] or a count > 1 (default 0.2)")  # fmt: skip
    parser.add_argument("--budget-of", choices=BUDGET_BASES, default="sequence",
                        help=f"what a fractional budget is a fraction of (default: the {sequence})")  # fmt: skip
    parser.add_argument("--aggregation", choices=aggregations or GQA_MODES, default="sum",
                        help="how a KV head's query heads combine their scores"
                        + ("" if aggregations else ", or one cache per query head")
                        + " (default sum)")  # fmt: skip
    parser.add_argument("--prompt-mode", choices=PROMPT_MODES, default="stream",
                        help="stream: prompt rows evict like decode rows; full: prompt attended in "
                        "full, eviction after prefill; prefill: the prompt compressed once after "
                        "prefill (kvpress), decode tokens appended without eviction")  # fmt: skip
    parser.add_argument("--compression-ratio", type=float, metavar="CR",
                        help="--prompt-mode prefill: keep int(P (1 - CR)) prompt tokens, as kvpress "
                        "counts them (instead of --budget)")  # fmt: skip


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


def replay_config_from_args(args: argparse.Namespace, trace=None, **extra: Any):
    """The :class:`h2osim.engine.ReplayConfig` that :func:`add_replay_arguments` describes
    (``--layers`` checked against ``trace``'s stored layers when given)."""
    from h2osim.engine import ReplayConfig

    layers = parse_layers(args.layers, stored=None if trace is None else trace.layers)
    return ReplayConfig(aggregation=args.aggregation, prompt_mode=args.prompt_mode,
                        observation=args.observe, layers=None if layers is None else tuple(layers),
                        compression_ratio=args.compression_ratio, **extra)  # fmt: skip


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
        if kind in (int, float):  # finite, within the range the policy declares
            low, high = spec.metadata.get("low"), spec.metadata.get("high")
            if kind is int:
                low, high = (-(2**63), 2**63 - 1) if low is None else (low, high or MAX_COUNT)
            kind = number(kind, low, high, low_open=spec.metadata.get("low_open", False), name=name)
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
