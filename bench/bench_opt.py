"""Benchmark: the exact ``opt`` oracle per cache unit, n = 256 ... 4096, k = n/5, vs HiGHS LPs.

Issue #4 targets, measured in one run (absolute times drift on a shared machine):
  opt for one unit at n = 4096 within 10 s;
  opt >= 100x faster than a generic LP (scipy linprog, HiGHS) at n = 512.

What is timed: ``h2osim.oracles.solve_assignment`` on one unit's (n, n) metric weights -
building the future-mass costs and ``scipy.optimize.linear_sum_assignment`` - i.e. the
planning ``opt`` does per unit in ``reset``. The LPs at --lp-n solve the same problem
with HiGHS: the occupancy LP written straight from the engine's rules (the generic one,
``solve_lp``) and the assignment formulation as an LP (``solve_transport_lp``). Every
solver's retained mass is checked against the assignment's.

Attention: one synthetic LLM-like head (``h2osim.synthetic``: sink, recency, power-law
heavy hitters), in two storage encodings, because the assignment solver's speed depends
on them: "quantized" (1024 levels per row, the encoding of the shipped real traces:
exact zeros and ties) and "float32" (continuous values: many near-equal tiny costs make
the shortest-augmenting-path search explore most of the matrix). --real also times opt
per unit on the shipped SmolLM2 traces.

    python bench/bench_opt.py                          # everything (a few minutes)
    python bench/bench_opt.py --sizes 256,512 --encodings quantized --lp-n 256   # quick
"""

from __future__ import annotations

import argparse
import glob
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from h2osim.engine import ReplayConfig  # noqa: E402
from h2osim.oracles import (  # noqa: E402
    eviction_counts,
    solve_assignment,
    solve_lp,
    solve_transport_lp,
)
from h2osim.synthetic import synthetic_trace  # noqa: E402
from h2osim.trace import Trace, pack_lower, quantize_rows, unpack_lower  # noqa: E402

ENCODINGS = ("quantized", "float32")


def unit_weights(n: int, encoding: str, seed: int = 0) -> np.ndarray:
    """One synthetic head's (n, n) rows, float64, as stored in ``encoding``."""
    head = synthetic_trace(n, layers=1, heads=1, kv_heads=1, values=False, seed=seed)
    rows = head.head_matrix(0, 0)  # (n, n) float32
    if encoding == "quantized":
        rows = unpack_lower(quantize_rows(pack_lower(rows), n).astype(np.float64) / 1024, n)
    rows = rows.astype(np.float64)
    return rows / rows.sum(axis=1, keepdims=True)


def timed(function, repeats: int) -> tuple[float, object]:
    best, result = float("inf"), None
    for _ in range(repeats):
        started = time.perf_counter()
        result = function()
        best = min(best, time.perf_counter() - started)
    return best, result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)  # fmt: skip
    parser.add_argument("--sizes", default="256,512,1024,2048,4096", help="comma-separated n")
    parser.add_argument("--encodings", default=",".join(ENCODINGS),
                        help="comma-separated: quantized, float32 (default both)")  # fmt: skip
    parser.add_argument(
        "--lp-n", type=int, default=512, help="n for the LP comparison (default 512)"
    )
    parser.add_argument("--repeats", type=int, default=1, help="best of N timings (default 1)")
    parser.add_argument("--real", action="store_true", help="also time opt on traces/smollm2-*.npz")
    args = parser.parse_args()
    sizes = [int(part) for part in args.sizes.split(",")]
    encodings = [part.strip() for part in args.encodings.split(",")]
    if any(encoding not in ENCODINGS for encoding in encodings):
        parser.error(f"--encodings takes {', '.join(ENCODINGS)}")

    warm = unit_weights(16, "float32")  # import scipy and HiGHS before timing anything
    solve_assignment(warm, eviction_counts(16, 3, 16))
    solve_lp(warm, eviction_counts(16, 3, 16))
    print("opt per cache unit (assignment, scipy linear_sum_assignment), k = n/5, stream prompt")
    at_lp_n: dict[str, float] = {}
    for encoding in encodings:
        for n in sizes:
            weights = unit_weights(n, encoding)
            counts = eviction_counts(n, n // 5, n)
            seconds, schedule = timed(lambda: solve_assignment(weights, counts), args.repeats)  # noqa: B023
            if n == args.lp_n:
                at_lp_n[encoding] = seconds
            target = "  (target <= 10 s)" if n == 4096 else ""
            print(f"  {encoding:9s} n={n:5d}: {seconds:8.3f} s   retained {schedule.retained:9.3f} "
                  f"of {n} rows{target}", flush=True)  # fmt: skip

    print(f"\nLPs at n={args.lp_n} (HiGHS via scipy linprog), same problem")
    for encoding in encodings:
        weights = unit_weights(args.lp_n, encoding)
        counts = eviction_counts(args.lp_n, args.lp_n // 5, args.lp_n)
        fast, reference = at_lp_n.get(encoding), None
        if fast is None:
            fast, reference = timed(lambda: solve_assignment(weights, counts), args.repeats)  # noqa: B023
        reference = reference or solve_assignment(weights, counts)
        for label, solver in (("occupancy LP (generic)", solve_lp),
                              ("assignment LP", solve_transport_lp)):  # fmt: skip
            seconds, schedule = timed(lambda: solver(weights, counts), 1)  # noqa: B023
            agree = abs(schedule.retained - reference.retained)
            print(f"  {encoding:9s} {label:23s} {seconds:8.2f} s   |difference| {agree:.1e}   "
                  f"RATIO LP / opt = {seconds / fast:7.1f}x (target >= 100x)", flush=True)  # fmt: skip

    if args.real:
        print("\nopt per unit on the shipped real traces (every stored layer and KV head)")
        for path in sorted(glob.glob("traces/smollm2-*.npz")):
            trace = Trace.load(path)
            layout = ReplayConfig().layout(trace)
            counts = eviction_counts(trace.n, trace.n // 5, trace.prompt_length)
            times = []
            for unit in range(layout.units):
                weights = layout.weights(unit)
                seconds, _ = timed(lambda: solve_assignment(weights, counts), 1)  # noqa: B023
                times.append(seconds)
            print(f"  {Path(path).name}: n={trace.n}, {layout.units} units: mean {np.mean(times):.3f} s, "
                  f"max {np.max(times):.3f} s per unit", flush=True)  # fmt: skip


if __name__ == "__main__":
    main()
