"""Shared command-line plumbing: user errors become one line on stderr and exit code 2."""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Callable, Sequence

from h2osim.trace import TraceError

USER_ERRORS = (
    TraceError,
    ValueError,
    FileNotFoundError,
    KeyError,
    PermissionError,
    IsADirectoryError,
)


class UserError(Exception):
    """Raised by CLIs for bad input that is not a ValueError (e.g. a missing install)."""


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
