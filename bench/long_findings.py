"""The long-context rows of the claims table side by side: each text at n = 512 and n = 4096.

Issue #16, item 4. Reads the recorded long-context measurement (``docs/long-context.json``,
written by ``python -m h2osim.claims --long`` from the traces docs/long-context.md dumps)
and prints one markdown row per length-dependent claim (sparsity, power law, where heavy
hitters sit, h2o -> opt and belady -> opt at a 20% budget), one column per (text, length).
Each cell is the claims table's own numbers function and rule applied to that text and
length alone (:mod:`h2osim.studies.claims.rows`): nothing is defined here, so a verdict
that changes with n shows as two different words in one row, by the table's rules.

    python bench/long_findings.py [--json docs/long-context.json]
"""

from __future__ import annotations

import argparse
from pathlib import Path

from h2osim.studies.claims import SPECS
from h2osim.studies.claims.measurements import LONG_JSON, LONG_TEXTS, load_long, long_measured

ROWS = ("sparsity", "power-law", "early-bias", "opt-gap", "belady")


def table(payload: dict) -> str:
    """The markdown table: a row per claim, a column per (text, length)."""
    columns = [(text, which) for text in LONG_TEXTS for which in ("shortest", "longest")]
    measured = {column: long_measured(payload, column[1], column[0]) for column in columns}
    names = [f"{text} n={max(info['n'] for info in measured[text, which].traces.values())}"
             for text, which in columns]  # fmt: skip
    lines = ["| claim | " + " | ".join(names) + " |", "|---|" + "---|" * len(columns)]
    for claim_id in ROWS:
        claim = SPECS[claim_id]
        cells = []
        for column in columns:
            judged = claim.judge(claim.numbers(measured[column]))
            cells.append(f"{judged.reason} **{judged.verdict}**")
        lines.append(f"| {claim_id}: {claim.claim} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)  # fmt: skip
    parser.add_argument(
        "--json", default=LONG_JSON, help=f"the measurement file (default {LONG_JSON})"
    )
    args = parser.parse_args()
    payload = load_long(Path(args.json))
    print(
        f"# {args.json}: {payload['command']} ({payload['generated']}, {payload['seconds']:.0f} s)"
    )
    print(table(payload))


if __name__ == "__main__":
    main()
