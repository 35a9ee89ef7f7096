"""h2osim: an educational simulator and theory-verification toolkit for KV-cache eviction.

Centred on H2O, the Heavy-Hitter Oracle (Zhang et al., NeurIPS 2023, arXiv 2306.14048).
Entry points: ``python -m h2osim.replay``, ``python -m h2osim.sweep``, ``python -m h2osim.dump``,
``python -m h2osim.live``; the layers are in docs/architecture.md.
"""

from __future__ import annotations

import functools
import hashlib
from collections.abc import Iterable
from pathlib import Path

__version__ = "0.1.0"


def source_hash(root: Path, paths: Iterable[Path]) -> str:
    """Hex SHA-256 of source files: each one's path relative to ``root`` and its bytes, in
    sorted order. What :func:`code_version` (and the app's own version) are made of."""
    digest = hashlib.sha256()
    for path in sorted(paths):
        digest.update(path.relative_to(root).as_posix().encode() + b"\0" + path.read_bytes())
    return digest.hexdigest()


@functools.cache
def code_version() -> str:
    """``__version__`` plus a hash of this package's source, e.g. ``0.1.0+3f2a9c1e4b7d``.

    Stored results (the results store, the app's precomputed race) are keyed by it, so an
    edited checkout never reuses numbers that other code computed.
    """
    package = Path(__file__).resolve().parent
    return f"{__version__}+{source_hash(package, package.rglob('*.py'))[:12]}"
