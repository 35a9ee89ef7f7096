"""``python -m h2osim.live``: run eviction policies inside the real model and compare them.

The command line over :mod:`h2osim.model.live`. Teacher forcing (default) feeds a text
and reports each policy's perplexity, KL and top-1 agreement against the full cache;
``--generate N`` prints each policy's greedy continuation beside the full cache's.
"""

from __future__ import annotations

import argparse
import dataclasses
import sys
from collections.abc import Sequence
from typing import Any

from h2osim.cli import (
    MAX_COUNT,
    add_cache_arguments,
    add_policy_arguments,
    check_counts,
    check_outputs,
    check_text_input,
    check_text_length,
    format_table,
    number,
    policy_parameters,
    requested_policies,
    run_model_cli,
)
from h2osim.files import write_json
from h2osim.model.live import (
    DEFAULT_MAX_TOKENS,
    DEFAULT_PREFILL_CHUNK,
    LIVE_AGGREGATIONS,
    LiveConfig,
    check_live_policy,
    check_prompt_needed,
    generate,
    live_policy_names,
    teacher_forced,
)
from h2osim.policies import Policy, make_policy
from h2osim.schedule import resolve_budget


def build_parser() -> argparse.ArgumentParser:
    from h2osim.model import add_model_arguments, add_text_arguments

    online = live_policy_names()
    parser = argparse.ArgumentParser(
        prog="python -m h2osim.live",
        description="Live (closed-loop) KV-cache eviction inside the real model: the policies "
        "evict from the model's own cache while it runs. Teacher forcing (default) reports "
        "perplexity, KL and top-1 agreement against the full cache; --generate N prints "
        "each policy's greedy continuation beside the full cache's.",
        epilog="Examples:  python -m h2osim.live --policy h2o --policy sink --budget 0.25 "
        "--pydoc-topic for --truncate 512  |  python -m h2osim.live --policy all --budget 0.2 "
        "--prompt-length 64 --json live.json  |  python -m h2osim.live --generate 40 --chat --prompt 'What is a "
        "Python generator?' --policy h2o --policy window --budget 0.3",
    )
    parser.add_argument("--policy", action="append", metavar="NAME",
                        help=f"policy to run live, repeatable, or 'all' (default: h2o). Online "
                             f"policies only: {', '.join(online)}")  # fmt: skip
    add_cache_arguments(parser, aggregations=LIVE_AGGREGATIONS,
                        sequence="n = text tokens, or prompt + new tokens with --generate")  # fmt: skip
    parser.add_argument("--generate", type=int, metavar="N",
                        help="generate N tokens greedily after the text instead of teacher forcing")  # fmt: skip
    parser.add_argument("--ignore-eos", action="store_true",
                        help="--generate: show continuations past an end-of-sequence token")  # fmt: skip
    parser.add_argument("--prompt-length", type=number(int, 0, MAX_COUNT), default=0, metavar="P",
                        help="teacher forcing: treat the first P tokens as the prompt (for "
                             "--prompt-mode full and --budget-of prompt; default 0)")  # fmt: skip
    parser.add_argument("--prefill-chunk", type=number(int, 1), default=DEFAULT_PREFILL_CHUNK, metavar="N",
                        help=f"rows per forward pass before eviction starts (default {DEFAULT_PREFILL_CHUNK})")  # fmt: skip
    parser.add_argument("--batch", type=number(int, 0, MAX_COUNT), default=0, metavar="N",
                        help="most policies per forward pass (default 0: all that share a budget)")  # fmt: skip
    parser.add_argument("--max-tokens", type=number(int, 2, 65_536), default=DEFAULT_MAX_TOKENS, metavar="N",
                        help=f"refuse sequences longer than N tokens (default {DEFAULT_MAX_TOKENS})")  # fmt: skip
    parser.add_argument(
        "--json", metavar="PATH", help="write results as JSON to PATH ('-' for stdout)"
    )
    parser.add_argument("--no-progress", action="store_true", help="hide the progress bar")
    add_text_arguments(parser)
    add_model_arguments(parser)
    add_policy_arguments(parser)
    return parser


def selected_policies(requested: Sequence[str] | None, params: dict[str, Any]) -> list[Policy]:
    """Policies named on the command line ('all' = every online policy but ``full``)."""
    everything = live_policy_names()
    policies = [make_policy(name, **params) for name in requested_policies(requested, everything)]
    for policy in policies:
        check_live_policy(policy)
    return policies


TEACHER_COLUMNS = (
    ("policy", "policy", "s"), ("budget", "k", "d"), ("perplexity", "ppl", ".2f"),
    ("perplexity_gap", "ppl gap", "+.2f"), ("kl", "KL", ".4f"), ("top1", "top-1", ".3f"),
    ("perplexity_evicted", "ppl(evicted)", ".2f"), ("kv_fraction", "KV", ".3f"),
    ("decode_ms_per_step", "ms/step", ".1f"), ("policy_ms_per_step", "policy ms", ".1f"),
)  # fmt: skip
GENERATE_COLUMNS = (
    ("policy", "policy", "s"), ("budget", "k", "d"), ("agree_prefix", "same first", "d"),
    ("agree_rate", "same", ".3f"), ("kv_fraction", "KV", ".3f"),
    ("decode_ms_per_step", "ms/step", ".1f"),
)  # fmt: skip


def run(args: argparse.Namespace, command: str = "") -> int:
    from h2osim.model import (
        encode_text,
        library_versions,
        load_model_from_args,
        resolve_device,
        text_source_from_args,
    )
    from h2osim.model.recorder import stop_tokens

    # cheap checks first: loading the model takes seconds
    check_outputs({"--json": args.json}, inputs=[args.text_file], stdout_ok={"--json"})
    config = LiveConfig(aggregation=args.aggregation, prompt_mode=args.prompt_mode,
                        prefill_chunk=args.prefill_chunk, batch=args.batch,
                        compression_ratio=args.compression_ratio)  # fmt: skip
    policies = selected_policies(args.policy, policy_parameters(args))
    resolve_budget(args.budget, 1, 1)  # syntax: a fraction in (0, 1] or a whole count
    if args.generate is not None and args.generate < 1:
        raise ValueError(f"--generate needs at least 1 new token, got {args.generate}")
    if args.max_tokens < 2:
        raise ValueError(f"--max-tokens must be >= 2, got {args.max_tokens}")
    if args.generate is not None and args.prompt_length:
        raise ValueError(
            "--prompt-length is for teacher forcing; with --generate the text is the prompt"
        )
    if args.generate is None:
        check_prompt_needed(args.prompt_length, args.budget_of, config, policies)
    check_text_input(args.text_file, args.max_tokens, args.truncate)  # before reading it
    text = text_source_from_args(args)
    check_text_length(len(text.text), args.max_tokens, args.truncate)  # before tokenising
    resolve_device(args.device)
    progress = not args.no_progress
    model, tokenizer, info = load_model_from_args(args, progress=progress)
    ids = encode_text(
        tokenizer, text.text, chat=args.chat, system=args.system, truncate=args.truncate
    )
    total = len(ids) + (args.generate or 0)
    if total > args.max_tokens:
        raise ValueError(f"the sequence is {total} tokens, over --max-tokens {args.max_tokens}; "
                         "keep the first N tokens with --truncate N or raise --max-tokens")  # fmt: skip
    check_counts(policy_parameters(args), total)
    if progress:
        print(f"{info.describe()}; {len(ids)} text tokens", file=sys.stderr)
    if args.generate is None:
        report = teacher_forced(model, ids, policies, args.budget, budget_of=args.budget_of,
                                prompt_length=args.prompt_length, config=config, progress=progress)  # fmt: skip
        reference_ppl = report.reference.summary["perplexity"]
        records = report.records()
        for record in records:
            record["perplexity_gap"] = record["perplexity"] - reference_ppl
        scope = (f" over the continuation, rows {args.prompt_length}..{len(ids) - 2}"
                 if args.prompt_mode == "prefill" else "")  # fmt: skip
        print(f"teacher forcing, n = {len(ids)} tokens ({text.kind} {text.name}); "
              f"full-cache perplexity {reference_ppl:.3f}{scope}")  # fmt: skip
        columns = list(TEACHER_COLUMNS)
        if len({record["prompt_mode"] for record in records[1:]}) > 1:
            columns.insert(2, ("prompt_mode", "prompt", "s"))
            print("prompt modes differ (full: the prompt attended in full, compressed after "
                  "prefill): compare policies within one mode")  # fmt: skip
        print(format_table(records, columns))
        print("ppl(evicted): rows served over a compressed cache only; KV: bytes vs the full cache; "
              "ms/step: one batched step of all policies sharing a budget")  # fmt: skip
    else:
        report = generate(model, ids, policies, args.budget, max_new_tokens=args.generate,
                          budget_of=args.budget_of, config=config, progress=progress)  # fmt: skip
        records = report.records()
        print(f"greedy generation, prompt {len(ids)} tokens + {args.generate} new")
        print(format_table(records, GENERATE_COLUMNS))
        stops = set() if args.ignore_eos else set(stop_tokens(model, tokenizer))
        for result in [report.reference, *report.results]:
            new = [int(token) for token in result.token_ids[len(ids) :]]
            cut = next((i + 1 for i, token in enumerate(new) if token in stops), len(new))
            continuation = " ".join(tokenizer.decode(new[:cut]).split())
            print(f"\n[{result.policy} k={result.budget}] {continuation}")
            result.summary["continuation"] = tokenizer.decode(new[:cut])
        records = report.records()
    if args.json:
        payload = {
            "command": command, "mode": report.mode, "text": text.metadata(), "n": total,
            "model": info.metadata(), "library_versions": library_versions(),
            "config": dataclasses.asdict(config), "budget": args.budget,
            "budget_of": args.budget_of, "results": records,
        }  # fmt: skip
        write_json(args.json, payload)
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point; user errors print one line to stderr and exit 2."""
    return run_model_cli("python -m h2osim.live", build_parser, run, argv)


if __name__ == "__main__":
    sys.exit(main())
