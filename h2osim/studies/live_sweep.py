"""Quality sweep of live eviction, and how well open-loop replay predicts it.

For each text (Python reference topics that ship with Python, first N tokens) and each
budget, every policy runs live in SmolLM2 under teacher forcing (h2osim.model.live: perplexity,
KL and top-1 agreement against the full cache), and the same text's full-cache trace is
replayed through the same policies at the same budgets (h2osim.engine: retained
attention mass, attention-output error). Budget 100% evicts nothing, so every policy
equals the full cache there (tested); it is filled in, not run.

Intermediate results are cached per (text, budget) as JSON under --cache-dir, so an
interrupted sweep resumes where it stopped. Outputs (--out): live-sweep.json (every
record + rank correlations), live-sweep.png (perplexity vs budget), live-replay-vs-live.png.

    nohup .venv/bin/python -m h2osim.studies.live_sweep > .cache/live-sweep.log 2>&1 &
    .venv/bin/python -m h2osim.studies.live_sweep --prototype   # 512 tokens, 25%: h2o/sink/window/full

Cost on 2 shared CPU cores (measured): ~0.6 s per batched step of 9 policies; with
256 tokens and budgets 5..50% about 970 steps per text, ~10 min per text.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np

from h2osim.engine import ReplayConfig, replay, resolve_budget
from h2osim.model.live import SWEEP_POLICIES, LiveConfig, teacher_forced
from h2osim.policies import make_policy

DEFAULT_TOPICS = ("for", "naming", "with")
DEFAULT_BUDGETS = (0.05, 0.1, 0.2, 0.35, 0.5, 1.0)
Y_TICKS = (1, 1.5, 2, 3, 5, 10, 20, 50, 100)


def log(message: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {message}", flush=True)


def live_records(model, ids, topic, budget, policies, cache_dir: Path) -> list[dict]:
    """Teacher-forced live run of every policy at one budget (cached)."""
    path = cache_dir / f"live-{topic}-{len(ids)}-{budget:g}.json"
    if path.is_file():
        return json.loads(path.read_text())
    started = time.perf_counter()
    report = teacher_forced(model, ids, list(policies), budget, config=LiveConfig())
    records = report.records()
    for record in records:
        record |= {"text": topic, "budget_requested": budget}
    path.write_text(json.dumps(records, indent=1))
    log(f"live {topic} n={len(ids)} budget {budget:g}: {time.perf_counter() - started:.0f} s")
    return records


def replay_records(
    model, tokenizer, info, ids, topic, budgets, policies, cache_dir: Path
) -> list[dict]:
    """The full-cache trace of the same tokens, replayed at the same budgets (cached).

    Besides replay's summary, means over the rows served after eviction began (t >= k),
    the rows whose predictions the live "evicted" metrics cover.
    """
    from h2osim.model.recorder import record, to_trace

    path = cache_dir / f"replay-{topic}-{len(ids)}.json"
    if path.is_file():
        return json.loads(path.read_text())
    started = time.perf_counter()
    trace = to_trace(record(model, ids, max_new_tokens=0, prefill_chunk=128), tokenizer, info)
    records = []
    for budget in budgets:
        for name in policies:
            result = replay(trace, make_policy(name), budget, config=ReplayConfig())
            k = result.budget
            row = result.record() | {"text": topic, "budget_requested": budget}
            evicted_rows = slice(k, None) if k < trace.n else slice(trace.n, None)
            for key, array in (("retained_mass", result.retained_mass),
                               ("output_error", result.output_error),
                               ("hit_rate", result.hit_rate)):  # fmt: skip
                values = array[evicted_rows]
                row[f"{key}_evicted"] = float(values.mean()) if values.size else None
            records.append(row)
    path.write_text(json.dumps(records, indent=1))
    log(f"replay {topic} n={len(ids)}: {time.perf_counter() - started:.0f} s")
    return records


def spearman(x, y) -> float | None:
    from scipy.stats import spearmanr

    x, y = np.asarray(x, dtype=float), np.asarray(y, dtype=float)
    if len(x) < 3 or np.ptp(x) == 0 or np.ptp(y) == 0:
        return None
    return float(spearmanr(x, y).statistic)


def combine(live: list[dict], replayed: list[dict]) -> list[dict]:
    """One row per (text, budget, policy): live metrics + replay metrics."""
    full = {r["text"]: r for r in live if r["policy"] == "full"}
    by_key = {(r["text"], r["budget_requested"], r["policy"]): r for r in replayed}
    rows = []
    for record in live:
        if record["policy"] == "full":
            continue
        reference = full[record["text"]]
        key = (record["text"], record["budget_requested"], record["policy"])
        other = by_key[key]
        rows.append({
            "text": record["text"], "n": record["n"], "policy": record["policy"],
            "budget": record["budget_requested"], "k": record["budget"],
            "perplexity": record["perplexity"], "perplexity_full": reference["perplexity"],
            "perplexity_ratio": record["perplexity"] / reference["perplexity"],
            "perplexity_evicted": record["perplexity_evicted"], "kl": record["kl"],
            "kl_evicted": record["kl_evicted"], "top1": record["top1"],
            "top1_evicted": record["top1_evicted"], "kv_fraction": record["kv_fraction"],
            "replay_retained_mass": other["retained_mass"],
            "replay_retained_mass_evicted": other["retained_mass_evicted"],
            "replay_output_error": other["output_error"],
            "replay_output_error_evicted": other["output_error_evicted"],
            "replay_hit_rate_evicted": other["hit_rate_evicted"],
        })  # fmt: skip
    return rows


PAIRS = (  # (replay predictor, live outcome); both "higher = worse"
    ("replay_mass_loss_evicted", "kl_evicted"),
    ("replay_mass_loss_evicted", "log_perplexity_ratio"),
    ("replay_output_error_evicted", "kl_evicted"),
    ("replay_output_error_evicted", "log_perplexity_ratio"),
    ("replay_miss_rate_evicted", "kl_evicted"),
)


def correlations(rows: list[dict]) -> dict:
    """Spearman rank correlations, pooled over everything and within each (text, budget)."""
    rows = [r for r in rows if r["budget"] < 1.0]
    for r in rows:
        r["replay_mass_loss_evicted"] = 1 - r["replay_retained_mass_evicted"]
        r["replay_miss_rate_evicted"] = 1 - r["replay_hit_rate_evicted"]
        r["log_perplexity_ratio"] = float(np.log(r["perplexity_ratio"]))
    result: dict = {"pooled": {}, "within_budget": {}, "per_budget": {}}
    cells = sorted({(r["text"], r["budget"]) for r in rows})
    budgets = sorted({r["budget"] for r in rows})
    for predictor, outcome in PAIRS:
        name = f"{predictor} vs {outcome}"
        result["pooled"][name] = spearman([r[predictor] for r in rows], [r[outcome] for r in rows])
        within = []
        for text, budget in cells:
            cell = [r for r in rows if r["text"] == text and r["budget"] == budget]
            within.append(spearman([r[predictor] for r in cell], [r[outcome] for r in cell]))
        values = [v for v in within if v is not None]
        result["within_budget"][name] = {
            "mean": float(np.mean(values)), "min": float(np.min(values)),
            "max": float(np.max(values)), "cells": len(values),
        }  # fmt: skip
        result["per_budget"][name] = {
            f"{budget:g}": float(np.mean([v for (t, b), v in zip(cells, within, strict=True)
                                          if b == budget and v is not None]))
            for budget in budgets
        }  # fmt: skip
    return result


def rank_disagreements(rows: list[dict]) -> list[dict]:
    """Per budget (mean over texts): each policy's rank by replay mass vs by live KL."""
    out = []
    for budget in sorted({r["budget"] for r in rows if r["budget"] < 1}):
        policies = sorted({r["policy"] for r in rows})
        mass = {p: np.mean([r["replay_retained_mass_evicted"] for r in rows
                            if r["budget"] == budget and r["policy"] == p]) for p in policies}  # fmt: skip
        kl = {p: np.mean([r["kl_evicted"] for r in rows if r["budget"] == budget and r["policy"] == p])
              for p in policies}  # fmt: skip
        by_replay = sorted(policies, key=lambda p: -mass[p])
        by_live = sorted(policies, key=lambda p: kl[p])
        for p in policies:
            out.append({"budget": budget, "policy": p, "replay_rank": by_replay.index(p) + 1,
                        "live_rank": by_live.index(p) + 1, "replay_mass_evicted": float(mass[p]),
                        "live_kl_evicted": float(kl[p])})  # fmt: skip
    return out


def print_tables(rows: list[dict], budgets, topics) -> None:
    from h2osim.cli import format_table

    policies = sorted({r["policy"] for r in rows})

    def table(metric: str, title: str, spec: str, texts) -> None:
        lines = []
        for p in policies:
            line = {"policy": p}
            for b in budgets:
                values = [r[metric] for r in rows if r["policy"] == p and r["budget"] == b
                          and r["text"] in texts and r[metric] is not None]  # fmt: skip
                line[f"{b:g}"] = float(np.mean(values)) if values else None
            lines.append(line)
        lines.sort(key=lambda line: line[f"{budgets[len(budgets) // 2]:g}"] or 0)
        print(title)
        print(
            format_table(
                lines, [("policy", "policy", "s")] + [(f"{b:g}", f"{b:.0%}", spec) for b in budgets]
            )
        )
        print()

    table("perplexity_ratio", "perplexity / full-cache perplexity (mean over texts)", ".3f", topics)
    table("kl", "KL(full || live) per token, nats (mean over texts)", ".4f", topics)
    table("top1", "top-1 agreement with the full cache (mean over texts)", ".3f", topics)
    for topic in topics:
        table("perplexity", f"perplexity, text {topic!r}", ".2f", [topic])
    table("replay_retained_mass_evicted", "replay: retained attention mass, rows t >= k (mean over texts)",
          ".4f", topics)  # fmt: skip


def plot(rows: list[dict], budgets, topics, out: Path) -> None:
    import matplotlib
    import matplotlib.ticker

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from h2osim.files import save_figure

    policies = sorted({r["policy"] for r in rows})
    colours = dict(zip(policies, plt.cm.tab10(np.linspace(0, 1, 10)), strict=False))
    panels = [*topics, "mean"]
    figure, axes = plt.subplots(1, len(panels), figsize=(4.2 * len(panels), 4.2), sharey=True)
    for axis, panel in zip(axes, panels, strict=True):
        texts = topics if panel == "mean" else [panel]
        for p in policies:
            ys = [np.exp(np.mean([np.log(r["perplexity_ratio"]) for r in rows
                                  if r["policy"] == p and r["budget"] == b and r["text"] in texts]))
                  for b in budgets]  # fmt: skip
            axis.plot([100 * b for b in budgets], ys, marker="o", label=p, color=colours[p],
                      linewidth=2.5 if p in ("h2o", "sink", "window") else 1.2)  # fmt: skip
        full = np.mean([r["perplexity_full"] for r in rows if r["text"] in texts])
        axis.set_title(f"{panel} (full ppl {full:.1f})" if panel != "mean" else "geometric mean")
        axis.set_xscale("log")
        axis.set_yscale("log")
        axis.set_xticks([100 * b for b in budgets], [f"{100 * b:g}" for b in budgets])
        axis.xaxis.set_minor_formatter(matplotlib.ticker.NullFormatter())
        axis.set_yticks(Y_TICKS, [f"{y:g}" for y in Y_TICKS])
        axis.yaxis.set_minor_formatter(matplotlib.ticker.NullFormatter())
        axis.set_xlabel("KV budget, % of the sequence")
        axis.grid(alpha=0.3, which="both")
    axes[0].set_ylabel("perplexity / full-cache perplexity")
    handles, labels = axes[0].get_legend_handles_labels()
    figure.legend(handles, labels, loc="center right", fontsize=9)
    figure.suptitle(
        f"Live eviction in SmolLM2-135M, teacher forcing, {rows[0]['n']} tokens per text"
    )
    figure.tight_layout(rect=(0, 0, 0.93, 1))
    save_figure(figure, out / "live-sweep.png", dpi=110)
    plt.close(figure)

    evicting = [r for r in rows if r["budget"] < 1]
    markers = dict(zip(sorted({r["budget"] for r in evicting}), "v^os*D", strict=False))
    figure, axes = plt.subplots(1, 2, figsize=(11, 4.6))
    for axis, (key, label) in zip(axes, (("replay_mass_loss_evicted", "replay: attention mass lost (rows t >= k)"),
                                         ("replay_output_error_evicted", "replay: attention-output error (rows t >= k)")),
                                  strict=True):  # fmt: skip
        for r in evicting:
            axis.scatter(r[key], r["kl_evicted"], color=colours[r["policy"]], marker=markers[r["budget"]],
                         s=28, alpha=0.8)  # fmt: skip
        axis.set_xscale("log")
        axis.set_yscale("log")
        axis.xaxis.set_minor_formatter(matplotlib.ticker.NullFormatter())
        axis.set_xlabel(label)
        axis.set_ylabel("live: KL(full || live), evicted rows")
        axis.grid(alpha=0.3, which="both")
    handles = [
        plt.Line2D([], [], color=colours[p], marker="o", linestyle="", label=p) for p in policies
    ]
    handles += [plt.Line2D([], [], color="grey", marker=m, linestyle="", label=f"{b:.0%}")
                for b, m in markers.items()]  # fmt: skip
    axes[1].legend(handles=handles, fontsize=7, ncol=2)
    figure.suptitle("Open-loop replay vs closed-loop truth (each point: text x policy x budget)")
    figure.tight_layout()
    save_figure(figure, out / "live-replay-vs-live.png", dpi=110)
    plt.close(figure)


def prototype_check(model, tokenizer, topic: str, tokens: int, cache_dir: Path) -> dict:
    """The prototype setting (docs/live.md): 512 tokens of Python docs, 25% budget."""
    from h2osim.model import encode_text, pydoc_text

    path = cache_dir / f"prototype-{topic}-{tokens}.json"
    if path.is_file():
        return json.loads(path.read_text())
    ids = encode_text(tokenizer, pydoc_text(topic), truncate=tokens)
    started = time.perf_counter()
    report = teacher_forced(model, ids, ["h2o", "sink", "window"], 0.25)
    result = {"text": topic, "n": len(ids), "budget": 0.25,
              "records": report.records(), "seconds": round(time.perf_counter() - started, 1)}  # fmt: skip
    path.write_text(json.dumps(result, indent=1))
    log(f"prototype check {topic} n={len(ids)}: {result['seconds']} s")
    return result


def decision_agreement(
    model, tokenizer, info, topic, tokens, budget, policies, cache_dir: Path
) -> dict:
    """Do live and replay make the same evictions? Per policy: the share of final kept sets
    they share (mean over units) and of evictions made at the same step."""
    from h2osim.model import encode_text, pydoc_text
    from h2osim.model.recorder import record, to_trace

    path = cache_dir / f"decisions-{topic}-{tokens}-{budget:g}.json"
    if path.is_file():
        return json.loads(path.read_text())
    ids = encode_text(tokenizer, pydoc_text(topic), truncate=tokens)
    started = time.perf_counter()
    report = teacher_forced(model, ids, list(policies), budget)
    trace = to_trace(record(model, ids, max_new_tokens=0, prefill_chunk=128), tokenizer, info)
    rows = {}
    for result in report.results:
        replayed = replay(trace, make_policy(result.policy), budget, config=ReplayConfig())
        live_kept = result.evicted_at < 0  # (units, n) at the end
        replay_kept = replayed.evicted_at < 0
        shared = (live_kept & replay_kept).sum(axis=1) / live_kept.sum(axis=1)
        evicted = (result.evicted_at >= 0) | (replayed.evicted_at >= 0)
        same_step = (result.evicted_at == replayed.evicted_at) & evicted
        rows[result.policy] = {
            "final_kept_overlap": float(shared.mean()),
            "worst_unit_overlap": float(shared.min()),
            "same_eviction_step": float(same_step.sum() / evicted.sum()),
        }
    result = {"text": topic, "n": len(ids), "budget": budget, "policies": rows}
    path.write_text(json.dumps(result, indent=1))
    log(f"decision agreement {topic} at {budget:g}: {time.perf_counter() - started:.0f} s")
    return result


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--topics", default=",".join(DEFAULT_TOPICS), help="pydoc topics (comma list)"
    )
    parser.add_argument("--tokens", type=int, default=256, help="first N tokens of each text")
    parser.add_argument("--budgets", default=",".join(f"{b:g}" for b in DEFAULT_BUDGETS))
    parser.add_argument("--policies", default=",".join(SWEEP_POLICIES))
    parser.add_argument("--cache-dir", default=".cache/live-sweep", help="intermediate results")
    parser.add_argument("--out", default="docs", help="folder for live-sweep.json and the PNGs")
    parser.add_argument("--prototype", action="store_true",
                        help="also run the prototype setting (512 tokens, 25%%, h2o/sink/window)")  # fmt: skip
    parser.add_argument("--prototype-topics", default="naming,with,class")
    parser.add_argument("--decisions", action="store_true",
                        help="also compare live and replay eviction decisions (first topic, 20%%)")  # fmt: skip
    args = parser.parse_args()

    from h2osim.model import encode_text, load_model, pydoc_text, set_threads

    set_threads(1)
    topics = [t.strip() for t in args.topics.split(",") if t.strip()]
    budgets = sorted(float(b) for b in args.budgets.split(","))
    policies = [p.strip() for p in args.policies.split(",") if p.strip()]
    cache_dir = Path(args.cache_dir)
    cache_dir.mkdir(parents=True, exist_ok=True)
    out = Path(args.out)
    started = time.perf_counter()
    model, tokenizer, info = load_model()
    log(f"{info.describe()}; topics {topics}, {args.tokens} tokens, budgets {budgets}")
    live, replayed = [], []
    for topic in topics:
        ids = encode_text(tokenizer, pydoc_text(topic), truncate=args.tokens)
        for budget in budgets:
            if budget >= 1.0 or resolve_budget(budget, len(ids), len(ids)) >= len(ids):
                continue
            live += live_records(model, ids, topic, budget, policies, cache_dir)
        full = next(r for r in live if r["text"] == topic and r["policy"] == "full")
        for budget in (b for b in budgets if b >= 1.0):  # nothing evicted: the full cache
            live += [
                full | {"policy": p, "description": p, "budget_requested": budget} for p in policies
            ]
        replayed += replay_records(model, tokenizer, info, ids, topic, budgets, policies, cache_dir)
    rows = combine(live, replayed)
    print_tables(rows, budgets, topics)
    stats = correlations(rows)
    print("Spearman rank correlation, replay predictor vs live outcome")
    for name, value in stats["pooled"].items():
        within = stats["within_budget"][name]
        print(f"  {name:58s} pooled {value:+.3f}   within (text, budget): mean {within['mean']:+.3f} "
              f"[{within['min']:+.2f}, {within['max']:+.2f}] over {within['cells']} cells")  # fmt: skip
    print("  per budget (within, mean over texts):")
    for name, per in stats["per_budget"].items():
        print(f"    {name:56s} " + "  ".join(f"{b}: {v:+.2f}" for b, v in per.items()))
    disagreements = rank_disagreements(rows)
    payload = {
        "command": "python -m h2osim.studies.live_sweep " + " ".join(sys.argv[1:]),
        "model": info.name, "topics": topics, "tokens": args.tokens, "budgets": budgets,
        "policies": policies, "live_config": "teacher forcing, stream prompt mode, sum aggregation",
        "rows": rows, "correlations": stats, "ranks": disagreements,
    }  # fmt: skip
    if args.prototype:
        payload["prototype"] = [prototype_check(model, tokenizer, topic, 512, cache_dir)
                                for topic in args.prototype_topics.split(",")]  # fmt: skip
        for check in payload["prototype"]:
            line = ", ".join(f"{r['policy']} {r['perplexity']:.2f}" for r in check["records"])
            print(f"prototype setting, {check['text']} n={check['n']} at 25%: {line}")
    if args.decisions:
        check = decision_agreement(
            model, tokenizer, info, topics[0], args.tokens, 0.2, policies, cache_dir
        )
        payload["decisions"] = check
        print(f"live vs replay decisions, {check['text']} n={check['n']} at 20%:")
        for name, agreement in check["policies"].items():
            print(f"  {name:13s} final kept sets overlap {agreement['final_kept_overlap']:.3f} "
                  f"(worst unit {agreement['worst_unit_overlap']:.3f}); evictions at the same step "
                  f"{agreement['same_eviction_step']:.3f}")  # fmt: skip
    out.mkdir(parents=True, exist_ok=True)
    (out / "live-sweep.json").write_text(json.dumps(payload, indent=1, default=float) + "\n")
    plot(rows, budgets, topics, out)
    log(f"done in {time.perf_counter() - started:.0f} s; wrote {out}/live-sweep.json, live-sweep.png, "
        "live-replay-vs-live.png")  # fmt: skip


if __name__ == "__main__":
    main()
