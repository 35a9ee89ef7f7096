"""Atomic file writing, and the one file hash.

Every file h2osim writes (traces, reports, plots) goes through :func:`atomic_write`:
the bytes land in a temporary file in the target's folder, are flushed and fsynced,
and only then renamed over the target with ``os.replace``. A writer killed at any
point (Ctrl-C, SIGTERM, SIGKILL, power loss after the fsync) therefore leaves either
no file or the previous complete file at the target path, never a partial one.
A SIGKILL can leave the hidden temporary file behind; it never has the target's name.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import re
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import IO, Any


def file_sha256(path: str | os.PathLike[str], chunk: int = 1 << 22) -> str:
    """Hex SHA-256 of a file's bytes, read in 4 MiB chunks: a trace's identity in the
    results store and the app's setup files, and the model cache's key of a GGUF."""
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        while block := handle.read(chunk):
            digest.update(block)
    return digest.hexdigest()


@contextlib.contextmanager
def atomic_write(path: str | os.PathLike[str], mode: str = "wb") -> Iterator[IO]:
    """Open a temporary file next to ``path``; on success rename it onto ``path``.

    Example: ``with atomic_write("out.npz") as f: np.savez(f, a=a)``.
    If the block raises, the temporary file is removed and ``path`` is untouched.
    """
    if mode not in ("wb", "w"):
        raise ValueError(f"mode must be 'wb' or 'w', got {mode!r}")
    target = Path(path)
    folder = target.parent if str(target.parent) else Path(".")
    if not folder.is_dir():
        raise FileNotFoundError(f"output folder {folder} does not exist; create it first")
    fd, tmp_name = tempfile.mkstemp(prefix=f".{target.name}.", suffix=".tmp", dir=folder)
    umask = os.umask(0)
    os.umask(umask)
    os.chmod(tmp_name, 0o666 & ~umask)  # mkstemp makes 0600; give the usual file mode
    try:
        with os.fdopen(fd, mode, **({"encoding": "utf-8"} if mode == "w" else {})) as handle:
            yield handle
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp_name, target)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp_name)
        raise
    with contextlib.suppress(OSError):  # make the rename itself durable where supported
        dir_fd = os.open(folder, os.O_RDONLY)
        try:
            os.fsync(dir_fd)
        finally:
            os.close(dir_fd)


# C0/C1 controls (ESC starts terminal escape sequences), DEL, and the Unicode line
# separators and bidirectional overrides that can disguise what a terminal shows.
_UNPRINTABLE = re.compile("[\x00-\x1f\x7f-\x9f\u2028\u2029\u200e\u200f\u202a-\u202e\u2066-\u2069]")


def printable(text: str) -> str:
    """``text`` safe to print on a terminal: control characters shown as escapes.

    Use it for anything read from a file (trace metadata, member names) before printing.
    Example: ``printable("a\x1b[31mb\n")`` -> ``'a\\x1b[31mb\\n'``.
    """
    return _UNPRINTABLE.sub(
        lambda match: match.group().encode("unicode_escape").decode("ascii"), text
    )


def write_text(path: str | os.PathLike[str], text: str) -> None:
    """Atomically write a text file (UTF-8)."""
    with atomic_write(path, "w") as handle:
        handle.write(text)


def json_default(value: Any) -> Any:
    """``json.dumps`` fallback for numpy scalars and arrays."""
    import numpy as np

    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, np.ndarray):
        return value.tolist()
    raise TypeError(f"not JSON serialisable: {type(value).__name__}")


def write_output(target: str | os.PathLike[str], text: str) -> None:
    """Write ``text`` to stdout when ``target`` is ``-``, else atomically to the file."""
    text = text if text.endswith("\n") else text + "\n"
    if str(target) == "-":
        sys.stdout.write(text)
        return
    write_text(target, text)


def write_json(target: str | os.PathLike[str], payload: Any, indent: int = 2) -> None:
    """JSON (numpy values allowed) to stdout (``-``) or atomically to a file."""
    write_output(target, json.dumps(payload, indent=indent, default=json_default))


FIGURE_FORMATS = ("png", "pdf", "svg", "svgz", "jpg", "jpeg", "tif", "tiff", "webp", "eps", "ps")


def save_figure(figure, path: str | os.PathLike[str], **kwargs) -> None:
    """Atomically save a matplotlib figure; the format comes from the file suffix."""
    suffix = Path(path).suffix.lstrip(".") or "png"
    with atomic_write(path) as handle:
        figure.savefig(handle, format=suffix, **kwargs)
