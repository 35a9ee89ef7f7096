"""``python -m h2osim.needle``: needle-in-a-haystack (passkey) accuracy under live eviction.

The command line over :mod:`h2osim.studies.needle`: a grid of prompts (context lengths x
needle depths x seeds), each answered greedily by the full cache and by every policy x
budget x prompt mode inside the real model; prints the accuracy tables (per length and
per depth; the full cache is the ceiling) and, with ``--replay``, how well open-loop
replay's "the needle was still cached at the answer row" predicts live accuracy. Writes
``needle.json``, ``needle.csv`` and the heatmap ``needle-<mode>.png`` under ``--out``.
Runs in this process by default; ``--workers N`` (a local Dask cluster) or ``--scheduler
ADDRESS`` (any Dask cluster) run one task per prompt, each worker loading the model once
(the client from :func:`h2osim.sweep.dask_client`). See docs/needle.md.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from h2osim.cli import format_table, requested_policies, run_model_cli
from h2osim.files import write_json, write_text
from h2osim.schedule import PROMPT_MODES, resolve_budget
from h2osim.studies.needle import (
    ACCURACY_COLUMNS,
    CONFUSION_COLUMNS,
    FILLERS,
    NEEDLES,
    QUESTIONS,
    QUICK_GRID,
    TASKS,
    ModelOptions,
    StudyGrid,
    TaskSpec,
    accuracy_table,
    confusion_table,
    depth_table,
    heatmap_figure,
    model_metadata,
    run_study,
    table_columns,
    to_csv,
    trial_key,
)

DEFAULT = StudyGrid()


def _numbers(kind: type, what: str):
    def parse(text: str) -> tuple:
        try:
            return tuple(kind(part) for part in text.split(",") if part.strip())
        except ValueError:
            raise argparse.ArgumentTypeError(
                f"{what} takes comma-separated numbers, got {text!r}"
            ) from None

    return parse


def build_parser() -> argparse.ArgumentParser:
    from h2osim.model import add_model_arguments
    from h2osim.policies import policy_names

    online = [name for name in policy_names(online=True) if name != "full"]
    parser = argparse.ArgumentParser(
        prog="python -m h2osim.needle",
        description="Needle in a haystack: a passkey (or key-value entry) hidden in filler at a "
        "chosen depth, asked for at the end, answered greedily by the real model with the full "
        "cache and under each eviction policy; exact-match accuracy tables, heatmap, and what "
        "open-loop replay predicts of it (--replay).",
        epilog="Examples:  python -m h2osim.needle --quick  |  python -m h2osim.needle "
        "--lengths 512,1024 --budgets 0.1,0.2,0.5 --replay --out needle-out",
    )
    grid = parser.add_argument_group("grid")
    grid.add_argument("--quick", action="store_true",
                      help="a small grid (256 tokens, depths 0,0.5,1, one seed, h2o and window "
                           "at 0.2, prompt mode full); explicit flags still override it")  # fmt: skip
    grid.add_argument("--lengths", type=_numbers(int, "--lengths"), metavar="L,..",
                      help=f"context lengths in tokens, 128..4096 (default {_show(DEFAULT.lengths)})")  # fmt: skip
    grid.add_argument("--depths", type=_numbers(float, "--depths"), metavar="D,..",
                      help=f"needle depths in 0..1 (default {_show(DEFAULT.depths)})")  # fmt: skip
    grid.add_argument("--seeds", type=int, metavar="N",
                      help=f"seeds 0..N-1 per cell (default {len(DEFAULT.seeds)})")  # fmt: skip
    grid.add_argument("--policy", action="append", metavar="NAME",
                      help=f"policy, repeatable or comma-separated, or 'all' (default "
                           f"{_show(DEFAULT.policies)}). Online policies: {', '.join(online)}")  # fmt: skip
    grid.add_argument("--budgets", type=_numbers(float, "--budgets"), metavar="B,..",
                      help=f"tokens per cache unit: fractions of the prompt or counts "
                           f"(default {_show(DEFAULT.budgets)})")  # fmt: skip
    grid.add_argument("--prompt-mode", action="append", choices=PROMPT_MODES, dest="prompt_modes",
                      help="repeatable: stream (evict from token k on, before the question is "
                           "read), full (prompt in full, then k tokens from the first answer token "
                           "on) or prefill (kvpress: the prompt, question included, compressed once "
                           "to k, then the answer appended); default full. stream decodes every "
                           "token after k one by one: slow")  # fmt: skip
    task = parser.add_argument_group("task")
    task.add_argument("--task", choices=TASKS, default="passkey",
                      help="passkey (one needle) or kv (key-value lookup with distractor entries)")  # fmt: skip
    task.add_argument("--filler", choices=FILLERS, default="repeat",
                      help="repeat: five sentences over and over; pydoc: Python's reference prose")  # fmt: skip
    task.add_argument("--needle", choices=NEEDLES, default="digits",
                      help="the answer: a five-digit number or a word")  # fmt: skip
    task.add_argument("--question", choices=QUESTIONS, default="end",
                      help="end: asked after the haystack; both: also before it")  # fmt: skip
    task.add_argument("--keys", type=int, default=TaskSpec().keys,
                      help=f"kv: entries in the haystack, the asked one included (default {TaskSpec().keys})")  # fmt: skip
    output = parser.add_argument_group("replay and output")
    output.add_argument("--replay", action="store_true",
                        help="also record each prompt's full-cache trace and replay it open loop: "
                             "was the needle still cached at the answer row?")  # fmt: skip
    output.add_argument("--held-threshold", type=float, default=0.5,
                        help="replay predicts success when at least this share of (cache unit, "
                             "needle token) pairs is held (default 0.5)")  # fmt: skip
    output.add_argument("--out", metavar="DIR",
                        help="write needle.json, needle.csv and needle-<mode>.png here; "
                             "needle-trials.jsonl lets an interrupted run resume")  # fmt: skip
    output.add_argument("--no-progress", action="store_true", help="print no per-trial lines")
    engine = parser.add_argument_group("where the trials run")
    engine.add_argument("--workers", type=int, default=1, metavar="N",
                        help="1 (default): in this process; N > 1: a local Dask cluster of N "
                             "single-threaded worker processes, one task per prompt, each worker "
                             "loading the model once")  # fmt: skip
    engine.add_argument("--scheduler", metavar="tcp://HOST:PORT",
                        help="run the trials on this existing Dask cluster instead (its workers "
                             "need h2osim and the model)")  # fmt: skip
    add_model_arguments(parser)
    return parser


def _show(values: Sequence) -> str:
    return ",".join(f"{value:g}" if isinstance(value, float) else str(value) for value in values)


def grid_from_args(args: argparse.Namespace) -> StudyGrid:
    """The :class:`StudyGrid` the flags describe (checked before the model loads)."""
    from h2osim.model.live import check_live_policy
    from h2osim.policies import make_policy, policy_names

    start = QUICK_GRID if args.quick else DEFAULT
    online = [name for name in policy_names(online=True) if name != "full"]
    policies = (tuple(requested_policies(args.policy, online)) if args.policy
                else start.policies)  # fmt: skip
    for name in policies:
        check_live_policy(make_policy(name))
    base = TaskSpec(task=args.task, filler=args.filler, needle=args.needle,
                    question=args.question, keys=args.keys)  # fmt: skip
    grid = StudyGrid(
        lengths=args.lengths or start.lengths, depths=args.depths or start.depths,
        seeds=tuple(range(args.seeds)) if args.seeds is not None else start.seeds,
        policies=policies, budgets=args.budgets or start.budgets,
        prompt_modes=tuple(dict.fromkeys(args.prompt_modes or start.prompt_modes)), base=base,
    )  # fmt: skip
    if not grid.seeds:
        raise ValueError(f"--seeds must be >= 1, got {args.seeds}")
    if not (grid.lengths and grid.depths and grid.budgets and grid.policies):
        raise ValueError("--lengths, --depths, --budgets and --policy need at least one value each")
    for budget in grid.budgets:
        resolve_budget(budget, 1, 1)
    grid.specs()  # TaskSpec checks every length and depth
    if not 0 <= args.held_threshold <= 1:
        raise ValueError(f"--held-threshold must be in 0..1, got {args.held_threshold}")
    if args.workers < 1:
        raise ValueError(f"--workers must be >= 1, got {args.workers}")
    if args.threads is not None and args.threads < 1:
        raise ValueError(f"--threads must be >= 1, got {args.threads}")
    return grid


def model_options(args: argparse.Namespace) -> ModelOptions:
    """What each Dask worker loads: the model flags."""
    return ModelOptions(model=args.model, device=args.device, dtype=args.dtype,
                        threads=args.threads, use_cache=not args.no_cache)  # fmt: skip


def on_dask(args: argparse.Namespace) -> bool:
    return args.scheduler is not None or args.workers > 1


def _resume(path: Path) -> dict[str, list[dict[str, Any]]]:
    done: dict[str, list[dict[str, Any]]] = {}
    if path.is_file():
        for line in path.read_text(encoding="utf-8").splitlines():
            if line.strip():
                entry = json.loads(line)
                done[entry["key"]] = entry["records"]
    return done


def run(args: argparse.Namespace, command: str = "") -> int:
    from h2osim.model import library_versions, load_model_from_args, resolve_device
    from h2osim.plots import plt

    grid = grid_from_args(args)
    resolve_device(args.device)
    out = Path(args.out) if args.out else None
    if out is not None:
        if out.exists() and not out.is_dir():
            raise ValueError(f"--out {out} is a file; give a folder")
        out.mkdir(parents=True, exist_ok=True)
    progress = not args.no_progress
    trials_file = out / "needle-trials.jsonl" if out else None
    done = _resume(trials_file) if trials_file else {}
    total = len(grid.specs())
    finished = [sum(trial_key(spec, grid, args.replay) in done for spec in grid.specs())]

    def on_trial(key: str, records: list[dict[str, Any]], seconds: float) -> None:
        finished[0] += 1
        if trials_file is not None:
            with trials_file.open("a", encoding="utf-8") as handle:
                handle.write(json.dumps({"key": key, "records": records}, default=str) + "\n")
        if progress:
            first = records[0]
            wrong = [f"{r['policy']}@{r['budget_requested']:g}/{r['prompt_mode']}" for r in records
                     if not r["correct"]]  # fmt: skip
            print(f"[{finished[0]}/{total}] L={first['length']} n={first['n']} depth={first['depth']:g} "
                  f"seed={first['seed']} answer={first['answer']} full={first['output'].strip()!r} "
                  f"({seconds:.0f} s) wrong: {', '.join(wrong) or 'none'}",
                  file=sys.stderr, flush=True)  # fmt: skip

    study = {"replay": args.replay, "held_threshold": args.held_threshold, "done": done,
             "on_trial": on_trial}  # fmt: skip
    if on_dask(args):
        from h2osim.sweep import dask_client

        options = model_options(args)
        with dask_client(args.scheduler, args.workers) as client:
            started = time.perf_counter()
            metadata = client.submit(model_metadata, options, pure=False).result()
            records = run_study(None, grid, client=client, model=options, **study)
            where = (f"on Dask ({args.scheduler or f'{args.workers} local workers'}, "
                     f"one task per prompt)")  # fmt: skip
    else:
        loaded = load_model_from_args(args, progress=progress)
        metadata = loaded[2].metadata()
        started = time.perf_counter()
        records = run_study(loaded, grid, **study)
        where = "in this process"
    seconds = time.perf_counter() - started
    accuracy, depths = accuracy_table(records), depth_table(records)
    spec = grid.base
    print(f"needle study: task {spec.task}, filler {spec.filler}, needle {spec.needle}, question "
          f"{spec.question}; {total} prompts x {len(grid.policies)} policies x "
          f"{len(grid.budgets)} budgets x {len(grid.prompt_modes)} modes; {seconds:.0f} s {where}")  # fmt: skip
    print(
        "\naccuracy (exact match; full = the ceiling; budget: share of the prompt per cache unit)"
    )
    print(format_table(accuracy, table_columns(accuracy, ACCURACY_COLUMNS, "acc@")))
    print("\naccuracy by needle depth (0 = first, 1 = just before the question; lengths pooled)")
    print(format_table(depths, table_columns(depths, ACCURACY_COLUMNS[:3], "d=")))
    confusion = confusion_table(records) if args.replay else []
    if confusion:
        print(f"\nopen-loop replay vs live: replay says 'held' when >= {args.held_threshold:g} of "
              "the needle's (unit, token) pairs are cached at the answer row")  # fmt: skip
        print(format_table(confusion, CONFUSION_COLUMNS))
    if out is not None:
        payload = {"command": command, "seconds": round(seconds, 1), "ran": where, "grid": {
            "lengths": grid.lengths, "depths": grid.depths, "seeds": grid.seeds,
            "policies": grid.policies, "budgets": grid.budgets, "prompt_modes": grid.prompt_modes,
            "task": spec.task, "filler": spec.filler, "needle": spec.needle,
            "question": spec.question, "keys": spec.keys},
            "model": metadata, "library_versions": library_versions(),
            "accuracy": accuracy, "depth": depths, "confusion": confusion, "records": records}  # fmt: skip
        write_json(out / "needle.json", payload)
        write_text(out / "needle.csv", to_csv(records))
        for mode in grid.prompt_modes:
            figure = heatmap_figure(records, mode, title=f"{spec.task} retrieval in SmolLM2-135M, "
                                    f"prompt mode {mode} ({len(grid.seeds)} seeds per cell)")  # fmt: skip
            from h2osim.files import save_figure

            save_figure(figure, out / f"needle-{mode}.png", dpi=110)
            plt.close(figure)
        print(f"\nwrote {out}/needle.json, needle.csv, "
              + ", ".join(f"needle-{mode}.png" for mode in grid.prompt_modes))  # fmt: skip
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point; user errors print one line to stderr and exit 2."""
    return run_model_cli("python -m h2osim.needle", build_parser, run, argv)


if __name__ == "__main__":
    sys.exit(main())
