"""The results store: one row per grid cell, shared by the sweep CLI, the claims and the app.

docs/scale.md, "The store". A store is a folder of Parquet files (Apache Arrow's
``pyarrow``): a marker ``h2osim-store.json`` and immutable parts ``part-*.parquet``,
each a batch of complete rows written by :func:`h2osim.files.atomic_write` (temporary
file, fsync, rename). A run killed at any moment therefore leaves the parts it finished
and no partial one; the hidden temporaries it may leave are never read. A row is keyed
by :attr:`h2osim.grid.Cell.key` (trace content hash, policy, all hyperparameters,
requested budget, replay config, h2osim version) and holds the record ``replay --sweep``
prints, plus, when asked, per-step curves (mean over cache units) and the eviction
schedule (``evicted_at``: the step at which each token left each cache unit, what the
claims table compares and reads its cache contents from).

Why Parquet and not DuckDB: pyarrow is already installed with Streamlit, a part is a
plain file that one atomic rename publishes (no database lock: the app can read while
a sweep writes, and two sweeps may write to one store), and any tool (pandas, DuckDB,
polars) reads the folder directly. Simplification: queries load the whole store (fine
for the ~1e5 rows of a study; a bigger one would push filters into ``pyarrow.dataset``).

API (what the app and the claims call)::

    store = ResultStore("results/")        # opens or creates
    store.get(cell)                        # the row of one cell (a Cell or a key), or None
    store.rows(policy="h2o", trace="traces/smollm2-pydoc.npz")   # rows matching filters
    h2osim.sweep.ensure(store, grid)       # compute the missing rows, return every row
"""

from __future__ import annotations

import json
import os
import time
import uuid
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

from h2osim.errors import UserError
from h2osim.files import atomic_write, write_text

FORMAT = 1
MARKER = "h2osim-store.json"

# The record ``replay --sweep`` prints and writes, in its key order.
RECORD_FIELDS = (
    "policy", "description", "online", "bound", "budget", "budget_fraction", "prompt_mode",
    "retained_mass", "retained_mass_decode", "worst_unit_mass", "hit_rate", "output_error",
    "output_error_decode", "seconds",
)  # fmt: skip
STEP_FIELDS = ("retained_mass_steps", "hit_rate_steps", "output_error_steps")  # (n,) each
# Optional columns, added after format 1 first shipped: a part written before them (every
# other column, in order) still loads, its rows reading None there.
EVICTION_FIELDS = ("evicted_at", "evicted_shape")  # (units * n,) int32 row-major, [units, n]


def schema():
    """The Arrow schema every part must have (checked on load)."""
    import pyarrow as pa

    f64, text, steps = pa.float64(), pa.string(), pa.list_(pa.float64())
    return pa.schema([
        ("key", text), ("trace_sha256", text), ("trace_name", text), ("params", text),
        ("budget_requested", f64), ("budget_of", text), ("config", text),
        ("h2osim_version", text), ("n", pa.int64()), ("prompt_length", pa.int64()),
        ("units", pa.int64()),
        ("policy", text), ("description", text), ("online", pa.bool_()), ("bound", pa.bool_()),
        ("budget", pa.int64()), ("budget_fraction", f64), ("prompt_mode", text),
        ("retained_mass", f64), ("retained_mass_decode", f64), ("worst_unit_mass", f64),
        ("hit_rate", f64), ("output_error", f64), ("output_error_decode", f64),
        ("seconds", f64),
        *((name, steps) for name in STEP_FIELDS),
        ("evicted_at", pa.list_(pa.int32())), ("evicted_shape", pa.list_(pa.int64())),
    ])  # fmt: skip


COLUMNS = tuple(schema().names)


def legacy_schema():
    """The schema of parts written before the optional :data:`EVICTION_FIELDS` existed."""
    full = schema()
    return full.remove(full.get_field_index("evicted_shape")).remove(
        full.get_field_index("evicted_at")
    )


def evictions_of(row: dict[str, Any]):
    """A row's eviction schedule as ``(units, n)`` int32 (-1: never left), or None when the
    row was computed without it. Example: a row of h2o on 2 units, n = 3, k = 2 ->
    array([[-1, 2, -1], [2, -1, -1]], dtype=int32)."""
    import numpy as np

    flat = row.get("evicted_at")
    if flat is None:
        return None
    return np.asarray(flat, dtype=np.int32).reshape(tuple(row["evicted_shape"]))


class StoreError(UserError):
    """A store folder that cannot be read; the message says which file and what to do."""


def record_of(row: dict[str, Any], budget_requested: float | None = None) -> dict[str, Any]:
    """The ``replay --sweep`` record of a store row (bound rows keep ``bound``; policy rows
    do not have it). ``budget_requested`` fills in rows of fixed-budget policies.

    Example: a row of h2o at 0.2 -> {"policy": "h2o", ..., "seconds": 0.41,
    "budget_requested": 0.2}."""
    record = {name: row[name] for name in RECORD_FIELDS if name != "bound" or row["bound"]}
    requested = row["budget_requested"]
    record["budget_requested"] = float(budget_requested if requested is None else requested)
    return record


class ResultStore:
    """A results store folder (created on first write). Rows are plain dicts (COLUMNS)."""

    def __init__(self, path: str | os.PathLike[str]) -> None:
        self.path = Path(path)
        if self.path.exists() and not self.path.is_dir():
            raise StoreError(f"results store {self.path} is a file, not a store folder; "
                             "give --store a folder path")  # fmt: skip
        if self.path.is_dir():
            self._check_marker()
        self._rows: dict[str, dict[str, Any]] | None = None
        self._loaded_parts: tuple[str, ...] = ()

    # ----------------------------------------------------------------- layout
    def _check_marker(self) -> None:
        marker = self.path / MARKER
        if not marker.exists():
            if any(self.path.iterdir()):
                raise StoreError(f"{self.path} is not an h2osim results store (no {MARKER}); "
                                 "give --store an empty or new folder")  # fmt: skip
            return
        try:
            data = json.loads(marker.read_text(encoding="utf-8"))
            version = int(data["format"])
        except (ValueError, KeyError, TypeError, UnicodeDecodeError):
            raise StoreError(f"results store {self.path}: {MARKER} is corrupt; "
                             f"write {{\"format\": {FORMAT}}} into it or use a new folder") from None  # fmt: skip
        if version != FORMAT:
            raise StoreError(f"results store {self.path} has format {version}; this h2osim "
                             f"reads format {FORMAT}; use a new folder")  # fmt: skip

    def parts(self) -> list[Path]:
        """The published part files, oldest first (names start with a time stamp)."""
        if not self.path.is_dir():
            return []
        return sorted(self.path.glob("part-*.parquet"))

    # ----------------------------------------------------------------- reading
    def _load(self) -> dict[str, dict[str, Any]]:
        parts = self.parts()
        names = tuple(part.name for part in parts)
        if self._rows is not None and names == self._loaded_parts:
            return self._rows
        rows: dict[str, dict[str, Any]] = {}
        for part in parts:
            for row in read_part(part):
                old = rows.get(row["key"])
                # A row appears once; a recomputation that added per-step curves or the
                # eviction schedule adds them (its replay is the same, deterministic).
                rows[row["key"]] = row if old is None else _merged(old, row)
        self._rows, self._loaded_parts = rows, names
        return rows

    def __len__(self) -> int:
        return len(self._load())

    def keys(self) -> set[str]:
        return set(self._load())

    def get(self, cell_or_key: Any) -> dict[str, Any] | None:
        """The row of a :class:`h2osim.grid.Cell` (or of a key string), or None."""
        key = cell_or_key if isinstance(cell_or_key, str) else cell_or_key.key
        return self._load().get(key)

    def lookup(self, keys: Iterable[str]) -> dict[str, dict[str, Any]]:
        """The stored rows of ``keys`` (those that have one), by key; one load for all."""
        rows = self._load()
        return {key: rows[key] for key in keys if key in rows}

    def rows(self, *, trace: str | os.PathLike[str] | None = None,
             **equal: Any) -> list[dict[str, Any]]:  # fmt: skip
        """Rows whose columns equal ``equal`` (e.g. ``policy="h2o"``, ``budget_requested=0.2``,
        ``prompt_mode="stream"``); ``trace`` is a trace file, matched by content hash.
        Unknown column names raise ValueError."""
        unknown = set(equal) - set(COLUMNS)
        if unknown:
            raise ValueError(
                f"no store column {sorted(unknown)[0]!r}; columns: {', '.join(COLUMNS)}"
            )
        if trace is not None:
            from h2osim.grid import file_hash

            equal["trace_sha256"] = file_hash(trace)
        return [row for row in self._load().values()
                if all(row[name] == value for name, value in equal.items())]  # fmt: skip

    def table(self):
        """Every row as a ``pyarrow.Table`` (``.to_pandas()`` for a DataFrame)."""
        return _arrow_table(list(self._load().values()))

    # ----------------------------------------------------------------- writing
    def write(self, rows: Sequence[dict[str, Any]]) -> Path | None:
        """Publish ``rows`` as one new part, atomically; returns its path (None if empty)."""
        if not rows:
            return None
        import pyarrow.parquet as pq

        self.path.mkdir(parents=True, exist_ok=True)
        if not (self.path / MARKER).exists():
            write_text(self.path / MARKER, json.dumps({"format": FORMAT}) + "\n")
        table = _arrow_table(rows)
        target = self.path / f"part-{time.time_ns():020d}-{uuid.uuid4().hex[:8]}.parquet"
        with atomic_write(target) as handle:
            pq.write_table(table, handle)
        return target

    def compact(self) -> None:
        """Rewrite every row into one part, then remove the old parts. A kill in between
        leaves duplicates of identical rows, which loading reads once."""
        old = self.parts()
        if len(old) < 2:
            return
        rows = list(self._load().values())
        self.write(rows)
        for part in old:
            part.unlink(missing_ok=True)
        self._rows = None

    # ----------------------------------------------------------------- computing
    def missing(self, cells: Iterable[Any], per_step: bool = False,
                evictions: bool = False) -> list[Any]:  # fmt: skip
        """The cells without a row (or, with ``per_step``, without per-step curves; with
        ``evictions``, a replay's row without its eviction schedule - bounds have none)."""
        rows = self._load()
        return [cell for cell in cells
                if cell.key not in rows
                or (per_step and rows[cell.key]["retained_mass_steps"] is None)
                or (evictions and not cell.bound and rows[cell.key]["evicted_at"] is None)]  # fmt: skip


OPTIONAL_PARTS = (STEP_FIELDS, EVICTION_FIELDS)  # each group is present or absent as a whole


def _merged(old: dict[str, Any], new: dict[str, Any]) -> dict[str, Any]:
    """One cell's row read twice: the first, with the optional parts it lacks taken from
    the second. Example: old with per-step curves, new with evictions -> both."""
    merged = old
    for group in OPTIONAL_PARTS:
        if old[group[0]] is None and new[group[0]] is not None:
            merged = merged if merged is not old else dict(old)
            merged.update({name: new[name] for name in group})
    return merged


def _arrow_table(rows: Sequence[dict[str, Any]]):
    """``rows`` as a table of the store schema; an ``evicted_at`` given as an array
    ``(units, n)`` is stored flat, its shape beside it."""
    import numpy as np
    import pyarrow as pa

    columns: dict[str, list[Any]] = {name: [row.get(name) for row in rows] for name in COLUMNS}
    flat, shapes = [], []
    for row in rows:
        evicted = row.get("evicted_at")
        if evicted is None:
            flat.append(None)
            shapes.append(None)
            continue
        evicted = np.asarray(evicted, dtype=np.int32)
        shape = row.get("evicted_shape") if evicted.ndim == 1 else None
        flat.append(evicted.ravel())
        shapes.append(list(shape) if shape is not None else list(evicted.shape))
    columns["evicted_at"], columns["evicted_shape"] = flat, shapes
    full = schema()
    return pa.table({name: pa.array(columns[name], type=full.field(name).type) for name in COLUMNS},
                    schema=full)  # fmt: skip


def read_part(part: Path) -> list[dict[str, Any]]:
    """The rows of one part; a file that is not a Parquet part of this schema -> StoreError."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    try:
        table = pq.read_table(part)
    except (pa.ArrowException, OSError) as exc:
        raise StoreError(f"results store part {part} is corrupt ({' '.join(str(exc).split())}); "
                         "delete that file (its rows are recomputed) or use a new --store") from None  # fmt: skip
    found_schema = table.schema.remove_metadata()
    if found_schema == legacy_schema():  # written before the eviction columns: none stored
        return [{**row, "evicted_at": None, "evicted_shape": None} for row in table.to_pylist()]
    if found_schema != schema():
        expected, found = set(COLUMNS), set(table.schema.names)
        what = (f"missing {sorted(expected - found)}" if expected - found
                else f"unexpected {sorted(found - expected)}" if found - expected
                else "column types differ")  # fmt: skip
        raise StoreError(f"results store part {part} does not have the store schema ({what}); "
                         "delete that file (its rows are recomputed) or use a new --store")  # fmt: skip
    try:
        return _rows_of(table)
    except (ValueError, TypeError) as exc:  # an evicted_shape that does not fit its schedule
        raise StoreError(f"results store part {part} is corrupt ({exc}); delete that file "
                         "(its rows are recomputed) or use a new --store") from None  # fmt: skip


def _rows_of(table) -> list[dict[str, Any]]:
    """The rows of a part of the store schema; ``evicted_at`` as ``(units, n)`` int32
    arrays (read straight from the Arrow buffers, not as Python lists), or None."""
    import numpy as np

    evicted = table.column("evicted_at").combine_chunks()
    rows = table.drop_columns(["evicted_at"]).to_pylist()
    offsets = np.asarray(evicted.offsets)
    values = np.asarray(evicted.values, dtype=np.int32)
    for i, row in enumerate(rows):
        shape = row["evicted_shape"]
        row["evicted_at"] = (None if shape is None
                             else values[offsets[i]:offsets[i + 1]].reshape(shape).copy())  # fmt: skip
    return [{name: row[name] for name in COLUMNS} for row in rows]


__all__ = ["COLUMNS", "EVICTION_FIELDS", "RECORD_FIELDS", "ResultStore", "StoreError", "evictions_of",
           "legacy_schema", "record_of", "schema"]  # fmt: skip
