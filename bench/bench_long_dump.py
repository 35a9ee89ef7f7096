"""Benchmark: how the cost of a long dump grows with n - wall time, peak RSS, file size.

Issue #16, item 1. Each n runs ``python -m h2osim.dump`` in its own process (one after
the other, never two at once), on the bundled SmolLM2, prompt only (``--max-new-tokens
0``, the prefill chunked by ``--prefill-chunk``), on a layer subset; the child reports
its own peak resident memory (``getrusage``). The attention store is what bounds memory:
layers x 9 heads x n(n+1)/2 entries (2 bytes each in float16), plus the model and one
layer's attention of one chunk at a time (the recorder's hooks).

    python bench/bench_long_dump.py                                  # n = 1024 ... 8192
    python bench/bench_long_dump.py --sizes 1024,2048 --layers 0,15,29 --out-dir /tmp/long

Encodings (issue #16, item 2): ``--convert`` re-encodes each dump (best made in float32,
the exact rows) into every listed encoding and prints file sizes side by side; with
``--replay`` it also replays each policy on the dense dump and on every sparse copy and
prints what epsilon bounds - the largest change of a row's retained mass under the dense
replay's own (fixed) eviction schedule, and of the summary - and how often the policy,
running on the sparse rows itself, evicts a token at a different step:

    python bench/bench_long_dump.py --sizes 4096 --encoding float32 \
        --convert float32,float16,quantized,sparse:1e-4,sparse:1e-3 --replay h2o,tova
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

CHILD = """
import json, resource, runpy, sys, time
sys.argv = ["h2osim.dump"] + json.loads(sys.argv[1])
started = time.perf_counter()
code = 0
try:
    runpy.run_module("h2osim.dump", run_name="__main__")
except SystemExit as exit:
    code = exit.code or 0
print("BENCH " + json.dumps({"seconds": time.perf_counter() - started, "code": code,
      "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}))
"""


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)  # fmt: skip
    parser.add_argument("--sizes", default="1024,2048,4096,8192", help="comma-separated n")
    parser.add_argument("--layers", default="0,15,29", help="layers to store (default 0,15,29)")
    parser.add_argument("--pydoc-topic", default="specialnames",
                        help="the text (default specialnames: ~14k tokens of reference prose)")  # fmt: skip
    parser.add_argument("--text-file", help="a text file instead of the pydoc topic")
    parser.add_argument("--encoding", default="float16", help="trace encoding (default float16)")
    parser.add_argument("--prefill-chunk", type=int, default=512)
    parser.add_argument("--out-dir", default=".cache/long", help="where traces go (git-ignored)")
    parser.add_argument("--convert", metavar="LIST",
                        help="re-encode each dump: e.g. float32,float16,quantized,sparse:1e-4")  # fmt: skip
    parser.add_argument("--replay", metavar="POLICIES",
                        help="with --convert: replay these policies on the dense and sparse copies")  # fmt: skip
    parser.add_argument("--budget", type=float, default=0.2, help="replay budget (default 0.2)")
    parser.add_argument("--existing", action="store_true",
                        help="reuse bench-N.npz already in --out-dir instead of dumping")  # fmt: skip
    args = parser.parse_args()
    out = Path(args.out_dir)
    out.mkdir(parents=True, exist_ok=True)
    text = (
        ["--text-file", args.text_file] if args.text_file else ["--pydoc-topic", args.pydoc_topic]
    )
    print(f"python -m h2osim.dump, prompt only, layers {args.layers}, {args.encoding}, "
          f"prefill chunk {args.prefill_chunk}, one process per n")  # fmt: skip
    print(f"{'n':>6} {'wall s':>8} {'peak RSS MB':>12} {'file MB':>8} {'store MB':>9}")
    layers = len(args.layers.split(","))
    for n in (int(part) for part in args.sizes.split(",")):
        target = out / f"bench-{n}.npz"
        if args.existing and target.exists():
            print(f"{n:>6} (existing {target}, {target.stat().st_size / 1e6:.1f} MB)")
            encodings(target, args)
            continue
        argv = [*text, "--truncate", str(n), "--max-new-tokens", "0", "--max-tokens", str(n),
                "--layers", args.layers, "--encoding", args.encoding, "--prefill-chunk",
                str(args.prefill_chunk), "--no-progress", "-o", str(target)]  # fmt: skip
        started = time.perf_counter()
        child = subprocess.run([sys.executable, "-c", CHILD, json.dumps(argv)],
                               capture_output=True, text=True)  # fmt: skip
        lines = [line for line in child.stdout.splitlines() if line.startswith("BENCH ")]
        if child.returncode or not lines or json.loads(lines[-1][6:])["code"]:
            print(f"{n:>6} failed: {child.stderr.strip().splitlines()[-1:]}", flush=True)
            continue
        report = json.loads(lines[-1][6:])
        item = {"float16": 2, "float32": 4}.get(args.encoding)  # quantized: float32 rows
        store = f"{layers * 9 * n * (n + 1) / 2 * (item or 4) / 1e6:9.0f}"
        if args.encoding == "sparse":  # the kept entries only, read back from the file
            from h2osim.trace import Trace

            written = Trace.load(target, validate=False)
            kept = sum(written.sparse_layer(int(layer)).nnz for layer in written.layers)
            store = f"{kept * (2 + written.sparse_dtype.itemsize) / 1e6:9.0f}"
        print(f"{n:>6} {time.perf_counter() - started:8.1f} {report['peak_rss_mb']:12.0f} "
              f"{target.stat().st_size / 1e6:8.1f} {store}", flush=True)  # fmt: skip
        encodings(target, args)


def fixed_schedule(evicted_at: np.ndarray):
    """A policy that replays a given schedule (``evicted_at``, (units, n)): the same
    evictions on another encoding of the trace."""
    from h2osim.policies.base import Policy

    class FixedSchedule(Policy):
        name = "fixed-schedule"

        def evict(self, t: int, kept: np.ndarray, count: int) -> np.ndarray:
            return np.stack([np.flatnonzero(row == t) for row in evicted_at])

    return FixedSchedule()


def encodings(source: Path, args: argparse.Namespace) -> None:
    """--convert / --replay on one dump (in this process; one layer at a time)."""
    if not args.convert:
        return
    from h2osim.dump import sparse_summary
    from h2osim.trace import SPARSE, Trace, packed_size

    dense = Trace.load(source, validate=False)
    entries = len(dense.layers) * dense.num_heads * packed_size(dense.n)
    print(f"\n{source}: {dense.describe()}; {entries:,} attention entries")
    print(f"{'encoding':>14} {'file MB':>8} {'vs float16':>10} {'save s':>7}  notes")
    copies, sizes = {}, {}
    for spec in args.convert.split(","):
        name, _, epsilon = spec.partition(":")
        target = source.with_name(f"{source.stem}-{spec.replace(':', '-')}.npz")
        options = {"epsilon": float(epsilon)} if name == SPARSE and epsilon else {}
        started = time.perf_counter()
        dense.save(target, encoding=name, **options)
        seconds = time.perf_counter() - started
        sizes[spec] = target.stat().st_size / 1e6
        copy = Trace.load(target, validate=False)
        note = sparse_summary(copy) if name == SPARSE else ""
        if name == SPARSE:
            copies[spec] = copy
        reference = sizes.get("float16")
        ratio = f"{sizes[spec] / reference:10.2f}" if reference else f"{'-':>10}"
        print(f"{spec:>14} {sizes[spec]:8.1f} {ratio} {seconds:7.1f}  {note}", flush=True)
    if not args.replay:
        return
    from h2osim.engine import ReplayConfig, replay

    config = ReplayConfig(output_error=False)
    print(f"\nreplay at budget {args.budget}: per-row retained mass under the dense replay's "
          "schedule; decisions of the policy run on the sparse rows")  # fmt: skip
    print(f"{'policy':>8} {'encoding':>14} {'max row diff':>13} {'/ epsilon':>9} "
          f"{'summary diff':>13} {'own summary diff':>16} {'evictions differ':>16}")  # fmt: skip
    for policy in args.replay.split(","):
        exact = replay(dense, policy, args.budget, config=config)
        for spec, copy in copies.items():
            fixed = replay(copy, fixed_schedule(exact.evicted_at), args.budget, config=config)
            rows = np.abs(fixed.retained_mass.astype(np.float64) - exact.retained_mass)
            own = replay(copy, policy, args.budget, config=config)
            evicted = exact.evicted_at >= 0
            differ = float(np.mean(own.evicted_at[evicted] != exact.evicted_at[evicted]))
            print(f"{policy:>8} {spec:>14} {rows.max():13.2e} {rows.max() / copy.epsilon:9.3f} "
                  f"{abs(fixed.summary['retained_mass'] - exact.summary['retained_mass']):13.2e} "
                  f"{abs(own.summary['retained_mass'] - exact.summary['retained_mass']):16.2e} "
                  f"{differ:16.2%}", flush=True)  # fmt: skip


if __name__ == "__main__":
    main()
