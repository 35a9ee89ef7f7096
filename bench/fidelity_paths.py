"""Claim 11 of the claims table re-measured with the exact official variants (docs/fidelity.md).

Every official H2O code path at the same k and heavy/recent split as h2o at a 20% budget
(the claims' ``path_parameters``; h2o-global / h2o-lmeval get ratios of n with int(hr n) =
heavy and int(rr n) = recent - 1, so that h + r + 1 = k), decode-row retained mass per
shipped trace and the mean over them. Run: ``python bench/fidelity_paths.py`` (~1 min).
Not a test: it prints measurements.
"""

import dataclasses

import numpy as np

from h2osim.engine import ReplayConfig, replay
from h2osim.policies import make_policy
from h2osim.studies.claims.measurements import path_parameters
from h2osim.trace import Trace

rows = {}
for name in ("smollm2-chat", "smollm2-code", "smollm2-pydoc"):
    trace = Trace.load(f"traces/{name}.npz")
    p = path_parameters(trace.n, trace.prompt_length, 0.2)
    if p is None or trace.decode_steps < 16:
        print(name, "skipped", p, trace.decode_steps)
        continue
    cfg = ReplayConfig(output_error=False)
    full = dataclasses.replace(cfg, prompt_mode="full")
    n = trace.n
    runs = {
        "h2o": (make_policy("h2o"), cfg),
        "h2o (prompt in full)": (make_policy("h2o"), full),
        "h2o-mask": (make_policy("h2o-mask", **p), full),
        "h2o-mask-2023": (
            make_policy(
                "h2o-mask-2023",
                heavy_prompt_ratio=p["heavy_prompt_ratio"],
                recent_prompt_ratio=(p["recent"] - 0.5) / trace.prompt_length,
            ),
            full,
        ),
        "h2o-drop": (make_policy("h2o-drop", **p), full),
        "h2o-flexgen": (
            make_policy(
                "h2o-flexgen", heavy_prompt_ratio=(p["k"] // 2 + 0.5) / trace.prompt_length
            ),
            full,
        ),
        "h2o-global": (
            make_policy(
                "h2o-global",
                heavy_ratio=(p["heavy"] + 0.5) / n,
                recent_ratio=(p["recent"] - 0.5) / n,
            ),
            cfg,
        ),
        "h2o-lmeval": (
            make_policy(
                "h2o-lmeval",
                heavy_ratio=(p["heavy"] + 0.5) / n,
                recent_ratio=(p["recent"] - 0.5) / n,
            ),
            cfg,
        ),
    }
    for label, (pol, c) in runs.items():
        r = replay(trace, pol, 0.2, config=c)
        sizes = r.row_sizes()[:, trace.prompt_length :]
        rows.setdefault(label, []).append(
            (r.summary["retained_mass_decode"], sizes.mean(), sizes.max())
        )
        print(
            name,
            label,
            r.budget,
            round(r.summary["retained_mass_decode"], 4),
            "row size mean/max",
            round(sizes.mean(), 1),
            sizes.max(),
        )
for label, v in rows.items():
    print(f"{label:22s} decode mass mean {np.mean([x[0] for x in v]):.4f}")
