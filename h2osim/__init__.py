"""h2osim: an educational simulator and theory-verification toolkit for KV-cache eviction.

Centred on H2O, the Heavy-Hitter Oracle (Zhang et al., NeurIPS 2023, arXiv 2306.14048).
Entry points: ``python -m h2osim.replay``, ``python -m h2osim.sweep``, ``python -m h2osim.dump``,
``python -m h2osim.live``; the layers are in docs/architecture.md.
"""

from __future__ import annotations

import functools
import hashlib
from pathlib import Path

__version__ = "0.1.0"


@functools.cache
def code_version() -> str:
    """``__version__`` plus a hash of this package's source, e.g. ``0.1.0+3f2a9c1e4b7d``.

    Stored results (the results store, the app's precomputed race) are keyed by it, so an
    edited checkout never reuses numbers that other code computed.
    """
    digest = hashlib.sha256()
    package = Path(__file__).resolve().parent
    for path in sorted(package.rglob("*.py")):
        digest.update(path.relative_to(package).as_posix().encode() + b"\0" + path.read_bytes())
    return f"{__version__}+{digest.hexdigest()[:12]}"
