"""One command: dump the same tokens on a GPU and on the CPU and compare the attention rows.

Issue #16, item 5 (the GPU path). The recorder's hooks gather each chosen layer's
attention of one prefill chunk on the device and copy it off as the layer returns, so
device memory holds the model, the KV cache and one layer's ``heads x chunk x n`` block;
``--dtype bfloat16|float16`` runs the model in half precision there. This script records
``--tokens`` prompt tokens of one text twice - on ``--device`` in ``--dtype`` and on the
CPU in float32 (the exact reference) - and reports, per layer, the largest and mean
absolute difference of the rows and the worst row-sum error. It fails (exit 1) when the
largest difference exceeds ``--tolerance`` (default: 2e-3 for float16, 2e-2 for bfloat16,
1e-5 for float32). No test needs a GPU: the CPU-vs-CPU run of the same script is tested.

    python bench/gpu_dump_check.py --device cuda --dtype bfloat16 --tokens 4096
    python bench/gpu_dump_check.py --device cpu --dtype float32 --tokens 64 --layers 0   # no GPU
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

TOLERANCE = {"float32": 1e-5, "float16": 2e-3, "bfloat16": 2e-2}


def record_on(device: str, dtype: str, ids: list[int], layers: list[int], chunk: int, model_path):
    from h2osim.model import load_model
    from h2osim.model.recorder import record

    model, _, info = load_model(model_path, device=device, dtype=dtype)
    started = time.perf_counter()
    recording = record(model, ids, layers=layers, store_values=False, prefill_chunk=chunk,
                       attention_dtype=np.float32)  # fmt: skip
    peak = None
    if info.device.startswith("cuda"):
        import torch

        peak = torch.cuda.max_memory_allocated() / 2**20
    return recording, time.perf_counter() - started, peak, info


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)  # fmt: skip
    parser.add_argument("--device", default="cuda", help="device to check (default cuda)")
    parser.add_argument("--dtype", choices=sorted(TOLERANCE), default="bfloat16")
    parser.add_argument("--tokens", type=int, default=2048, help="prompt tokens (default 2048)")
    parser.add_argument("--layers", default="0,15,29", help="layers to compare (default 0,15,29)")
    parser.add_argument("--pydoc-topic", default="specialnames", help="the text (a pydoc topic)")
    parser.add_argument("--prefill-chunk", type=int, default=512)
    parser.add_argument("--tolerance", type=float, help="largest allowed |difference|")
    parser.add_argument("--model", help="local model folder or .gguf (default: bundled SmolLM2)")
    args = parser.parse_args(argv)
    import torch

    from h2osim.model import load_model
    from h2osim.model.text import pydoc_text
    from h2osim.trace import row_start

    torch.set_num_threads(1)
    if args.device.startswith("cuda") and not torch.cuda.is_available():
        print(f"--device {args.device}: no CUDA GPU here (torch {torch.__version__}); "
              "run this on a GPU machine, or --device cpu to try it", file=sys.stderr)  # fmt: skip
        return 2
    layers = [int(part) for part in args.layers.split(",")]
    _, tokenizer, _ = load_model(args.model)
    ids = tokenizer(pydoc_text(args.pydoc_topic))["input_ids"][: args.tokens]
    tolerance = args.tolerance if args.tolerance is not None else TOLERANCE[args.dtype]
    checked, check_seconds, peak, info = record_on(args.device, args.dtype, ids, layers,
                                                   args.prefill_chunk, args.model)  # fmt: skip
    reference, cpu_seconds, _, _ = record_on("cpu", "float32", ids, layers, args.prefill_chunk,
                                             args.model)  # fmt: skip
    print(f"{len(ids)} tokens, layers {layers}: {info.device} {args.dtype} {check_seconds:.1f} s"
          f"{f' (peak GPU memory {peak:.0f} MiB)' if peak is not None else ''}, "
          f"cpu float32 {cpu_seconds:.1f} s")  # fmt: skip
    starts = np.array([row_start(t) for t in range(len(ids))])
    worst = 0.0
    for layer in layers:
        difference = np.abs(checked.attention[layer] - reference.attention[layer])
        sums = np.add.reduceat(checked.attention[layer].astype(np.float64), starts, axis=1)
        worst = max(worst, float(difference.max()))
        print(f"  layer {layer:2d}: max |diff| {difference.max():.2e}  mean |diff| "
              f"{difference.mean():.2e}  worst |row sum - 1| {np.abs(sums - 1).max():.2e}")  # fmt: skip
    verdict = "PASS" if worst <= tolerance else "FAIL"
    print(f"{verdict}: max |diff| {worst:.2e} vs tolerance {tolerance:.0e}")
    return 0 if verdict == "PASS" else 1


if __name__ == "__main__":
    sys.exit(main())
