"""Benchmark: how the cost of a long dump grows with n - wall time, peak RSS, file size.

Issue #16, item 1. Each n runs ``python -m h2osim.dump`` in its own process (one after
the other, never two at once), on the bundled SmolLM2, prompt only (``--max-new-tokens
0``, the prefill chunked by ``--prefill-chunk``), on a layer subset; the child reports
its own peak resident memory (``getrusage``). The attention store is what bounds memory:
layers x 9 heads x n(n+1)/2 entries (2 bytes each in float16), plus the model and one
layer's attention of one chunk at a time (the recorder's hooks).

    python bench/bench_long_dump.py                                  # n = 1024 ... 8192
    python bench/bench_long_dump.py --sizes 1024,2048 --layers 0,15,29 --out-dir /tmp/long
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

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
        store = layers * 9 * n * (n + 1) / 2 * (2 if args.encoding == "float16" else 4) / 1e6
        print(f"{n:>6} {time.perf_counter() - started:8.1f} {report['peak_rss_mb']:12.0f} "
              f"{target.stat().st_size / 1e6:8.1f} {store:9.0f}", flush=True)  # fmt: skip


if __name__ == "__main__":
    main()
