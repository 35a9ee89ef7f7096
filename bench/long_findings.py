"""The length-dependent claims at n = 512 and n = 4096, side by side, with verdicts.

Issue #16, item 4. Reads what ``python -m h2osim.observe --json`` and ``python -m
h2osim.replay --json`` wrote for each trace (the commands are in docs/long-context.md)
and prints one markdown row per claim and trace length: sparsity, the power law of
accumulated attention, where the heavy hitters sit (token 0, positions 1..10%), the gap
h2o -> opt and belady -> opt at a 20% budget. Verdicts use the claims table's rules
(docs/claims.md, rules 1, 2, 7, 9, 10; rule 9 at the one budget 20%) on each length's numbers, so a verdict that
changes with n shows as two different words in one row.

    python bench/long_findings.py --dir .cache/long --texts prose,code --sizes 512,4096
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np


def sparsity_verdict(value: float) -> str:
    return "holds" if value >= 0.95 else "partly" if value >= 0.80 else "does not hold"


def power_verdict(share_better: float, r2: float) -> str:
    if share_better >= 0.8 and r2 >= 0.90:
        return "holds"
    return "partly" if share_better > 0.5 else "does not hold"


def early_verdict(ratio: float) -> str:
    return "holds" if ratio >= 1.5 else "partly" if ratio > 1 else "does not hold"


def gap_verdict(gap: float) -> str:
    return "holds" if gap <= 0.05 else "partly" if gap <= 0.10 else "does not hold"


def belady_verdict(gap: float) -> str:
    return "does not hold" if gap <= 1e-4 else "holds" if gap <= 0.02 else "partly"


def measure(folder: Path, name: str) -> dict[str, float]:
    observed = json.loads((folder / f"observe-{name}.json").read_text())
    layers = observed["layers"]
    mean = observed["mean"]
    replay = folder / f"replay-{name}.json"
    if not replay.exists():  # the trace replayed through every policy instead
        replay = folder / f"replay-all-{name}.json"
    replayed = json.loads(replay.read_text())["results"]
    mass = {record["policy"]: record["retained_mass"] for record in replayed}
    better = np.mean([layer["power_law_r2"] > layer["exponential_r2"] for layer in layers])
    return {
        "n": observed["n"], "sparsity": mean["sparsity"], "power_better": float(better),
        "sparse_layers": "/".join(f"{layer['sparsity']:.3f}" for layer in layers),
        "r2_power": mean["power_law_r2"], "alpha": mean["power_law_exponent"],
        "hh10": mean["heavy_hitter_share"], "sink": mean["sink_mass"],
        "early10": mean["early_share"], "uniform_early": observed["uniform_early_share"],
        "h2o": mass["h2o"], "belady": mass["belady"], "opt": mass["opt"],
    }  # fmt: skip


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)  # fmt: skip
    parser.add_argument("--dir", default=".cache/long")
    parser.add_argument("--texts", default="prose,code")
    parser.add_argument("--sizes", default="512,4096")
    args = parser.parse_args()
    folder = Path(args.dir)
    texts = args.texts.split(",")
    sizes = args.sizes.split(",")
    numbers = {(text, size): measure(folder, f"{text}-{size}") for text in texts for size in sizes}
    header = " | ".join(f"{text} n={size}" for text in texts for size in sizes)
    print(f"| claim | {header} |")
    print("|---|" + "---|" * (len(texts) * len(sizes)))

    def row(label, cell) -> None:
        cells = " | ".join(cell(numbers[text, size]) for text in texts for size in sizes)
        print(f"| {label} | {cells} |")

    row(
        "1 sparsity (share of entries < 1% of row max: mean (per layer))",
        lambda m: (
            f"{m['sparsity']:.3f} ({m['sparse_layers']}) **{sparsity_verdict(m['sparsity'])}**"
        ),
    )
    row(
        "2 power law (layers where it beats exponential; mean R^2; alpha; top-10% share)",
        lambda m: (
            f"{m['power_better']:.0%}; R^2 {m['r2_power']:.2f}; alpha {m['alpha']:.2f}; "
            f"top10 {m['hh10']:.2f} **{power_verdict(m['power_better'], m['r2_power'])}**"
        ),
    )
    row(
        "7 where heavy hitters sit (token 0 mass; share of the score on positions 1..10%, "
        "/ 10%; uniform attention's share)",
        lambda m: (
            f"sink {m['sink']:.2f}; early {m['early10']:.3f} = {m['early10'] / 0.1:.2f}x "
            f"(uniform {m['uniform_early']:.3f}) **{early_verdict(m['early10'] / 0.1)}**"
        ),
    )
    row(
        "9 h2o within 0.05 of opt at 20% (retained mass)",
        lambda m: (
            f"h2o {m['h2o']:.4f}, opt {m['opt']:.4f}, gap {m['opt'] - m['h2o']:.4f} "
            f"**{gap_verdict(m['opt'] - m['h2o'])}**"
        ),
    )
    row("10 belady close to, not, optimal at 20%",
        lambda m: f"belady {m['belady']:.4f}, gap {m['opt'] - m['belady']:.4f} "
                  f"**{belady_verdict(m['opt'] - m['belady'])}**")  # fmt: skip


if __name__ == "__main__":
    main()
