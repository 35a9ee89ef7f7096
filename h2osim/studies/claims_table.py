"""The claims table: which claim each row checks, the rule that judges it, and the Markdown.

Pure functions over numbers (no replay, no model): :mod:`h2osim.claims` measures and
writes ``claims.json``; everything a reader sees - the "ours" cell and the verdict - is
derived here from that file's numbers, so editing a number in the JSON and re-rendering
(``python -m h2osim.claims --from-json docs/claims.json``) changes the table, and a
number crossing its threshold flips the verdict.

Every rule is a small function with its thresholds as module constants; its docstring is
the rule, printed under the table. Verdicts: ``holds``, ``partly``, ``does not hold here``
(SmolLM2 disagrees - a finding, not a failure), ``not measured`` (a number is missing,
e.g. the live runs were skipped). Comparisons at a threshold forgive float rounding (1e-9).

Rows come from the H2O paper (Zhang et al., NeurIPS 2023, arXiv 2306.14048), from A2SF
(Jo & Shin, arXiv 2407.20485), and from this project ("ours": no paper reports them).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

HOLDS = "holds"
PARTLY = "partly"
FAILS = "does not hold here"
MISSING = "not measured"
VERDICTS = (HOLDS, PARTLY, FAILS, MISSING)

README_BEGIN = "<!-- claims:begin -->"
README_END = "<!-- claims:end -->"

# ----------------------------------------------------------------------- thresholds
SPARSITY_PAPER = 0.95  # H2O Sec. 3.1: over 95% of entries below 1% of the row max
SPARSITY_PARTLY = 0.80  # "most entries are tiny", short of the paper's figure
POWER_R2 = 0.90  # a log-log fit this good counts as a power law
POWER_MAJORITY = 0.80  # ... in at least this share of layers (beating an exponential fit)
CLOSE_MASS_LOSS = 0.05  # replay: "close to the full cache" = loses <= 5% of attention mass
COLLAPSE_MASS_LOSS = 0.25  # replay: "collapses" = loses >= 25% of attention mass
CLOSE_PPL_RATIO = 1.10  # live: "close to the full cache" = perplexity within +10%
COLLAPSE_PPL_RATIO = 1.50  # live: "collapses" = perplexity >= 1.5x the full cache's
ABLATION_PPL_MARGIN = 0.95  # live: h2o beats a half if its perplexity is >= 5% lower
ABLATION_MASS_MARGIN = 0.02  # replay (without live): ... if it retains >= 0.02 more mass
MEMORY_REDUCTION = 4.5  # "5x" within rounding of the budget to whole tokens
EARLY_BIAS = 1.5  # early tokens hold >= 1.5x their positional share of the score
A2SF_MASS_MARGIN = 0.002  # replay: a2sf better = retains >= 0.002 more mass than h2o
A2SF_PPL_MARGIN = 0.99  # live: a2sf better = perplexity >= 1% lower than h2o's
OPT_GAP_HOLDS = 0.05  # h2o within 0.05 retained mass of opt at every budget measured
OPT_GAP_PARTLY = 0.10
BELADY_EXACT = 1e-4  # below this belady and opt are equal up to float rounding
BELADY_CLOSE = 0.02
PATHS_SPREAD_HOLDS = 0.01  # online code paths within 0.01 decode-row mass of each other
PATHS_SPREAD_PARTLY = 0.03


TOLERANCE = 1e-9  # comparisons at a threshold forgive float rounding (0.15 / 0.1 = 1.4999...)


def _ge(value: float, threshold: float) -> bool:
    """value >= threshold up to float rounding. Example: _ge(0.15 / 0.1, 1.5) -> True."""
    return value >= threshold - TOLERANCE


def _le(value: float, threshold: float) -> bool:
    """value <= threshold up to float rounding. Example: _le(1 - 0.95, 0.05) -> True."""
    return value <= threshold + TOLERANCE


def _has(numbers: Mapping[str, Any], *keys: str) -> bool:
    """All ``keys`` present, not None and not NaN."""
    for key in keys:
        value = numbers.get(key)
        if value is None or (isinstance(value, float) and math.isnan(value)):
            return False
    return True


# ----------------------------------------------------------------------- rules
def rule_sparsity(numbers: Mapping[str, Any]) -> str:
    """holds if the mean sparsity (share of causal entries below 1% of their row's max,
    mean over the stored layers, then over the traces) is >= 0.95; partly if >= 0.80;
    else does not hold."""
    if not _has(numbers, "sparsity"):
        return MISSING
    if _ge(numbers["sparsity"], SPARSITY_PAPER):
        return HOLDS
    return PARTLY if _ge(numbers["sparsity"], SPARSITY_PARTLY) else FAILS


def rule_power_law(numbers: Mapping[str, Any]) -> str:
    """holds if a power law fits accumulated score vs rank better than an exponential
    (higher R^2, log-log vs log-linear) in >= 80% of layers and its mean R^2 is >= 0.90;
    partly if it fits better in more than half of the layers; else does not hold."""
    if not _has(numbers, "power_better_share", "r2_power"):
        return MISSING
    share, r2 = numbers["power_better_share"], numbers["r2_power"]
    if _ge(share, POWER_MAJORITY) and _ge(r2, POWER_R2):
        return HOLDS
    return PARTLY if share > 0.5 else FAILS


def _close_and_collapse(h2o_close: bool, window_collapses: bool, h2o_better: bool) -> str:
    if not h2o_better:
        return FAILS
    if h2o_close and window_collapses:
        return HOLDS
    return PARTLY if h2o_close or window_collapses else FAILS


def rule_budget_replay(numbers: Mapping[str, Any]) -> str:
    """Replay at a 20% budget, retained attention mass (1 = the full cache), mean over
    traces. holds if h2o loses <= 0.05 of the mass ("close") and window loses >= 0.25
    ("collapses"); partly if only one of the two; does not hold if neither, or if
    window retains at least as much as h2o."""
    if not _has(numbers, "h2o_mass", "window_mass"):
        return MISSING
    h2o, window = numbers["h2o_mass"], numbers["window_mass"]
    return _close_and_collapse(_le(1 - h2o, CLOSE_MASS_LOSS), _ge(1 - window, COLLAPSE_MASS_LOSS),
                               h2o > window)  # fmt: skip


def rule_budget_live(numbers: Mapping[str, Any]) -> str:
    """Live teacher forcing at a 20% budget, perplexity / full-cache perplexity (geometric
    mean over texts). holds if h2o is within 1.10x ("close") and window is >= 1.5x
    ("collapses"); partly if only one of the two; does not hold if neither, or if
    window's perplexity is not above h2o's."""
    if not _has(numbers, "ratio_h2o", "ratio_window"):
        return MISSING
    h2o, window = numbers["ratio_h2o"], numbers["ratio_window"]
    return _close_and_collapse(
        _le(h2o, CLOSE_PPL_RATIO), _ge(window, COLLAPSE_PPL_RATIO), h2o < window
    )


def rule_ablation(numbers: Mapping[str, Any]) -> str:
    """H2O (heavy + recent) against each half alone at a 20% budget: heavy (heavy hitters
    only) and window (recent only). On live perplexity when measured (h2o beats a half if
    its perplexity ratio is <= 0.95x the half's), else on replay mass (>= 0.02 more).
    holds if h2o beats both halves; partly if one; does not hold if neither."""
    if _has(numbers, "ratio_h2o", "ratio_heavy", "ratio_window"):
        h2o = numbers["ratio_h2o"]
        beats = sum(_le(h2o, ABLATION_PPL_MARGIN * numbers[f"ratio_{half}"])
                    for half in ("heavy", "window"))  # fmt: skip
    elif _has(numbers, "mass_h2o", "mass_heavy", "mass_window"):
        h2o = numbers["mass_h2o"]
        beats = sum(_ge(h2o, numbers[f"mass_{half}"] + ABLATION_MASS_MARGIN)
                    for half in ("heavy", "window"))  # fmt: skip
    else:
        return MISSING
    return {2: HOLDS, 1: PARTLY}.get(int(beats), FAILS)


def rule_memory(numbers: Mapping[str, Any]) -> str:
    """Live KV bytes at a 20% budget. holds if the full cache is >= 4.5x h2o's and h2o's
    perplexity is within 1.10x the full cache's; partly if the memory is cut >= 4.5x but
    perplexity rises more; does not hold if memory is cut less than 4.5x."""
    if not _has(numbers, "reduction"):
        return MISSING
    if not _ge(numbers["reduction"], MEMORY_REDUCTION):
        return FAILS
    if not _has(numbers, "ratio_h2o"):
        return MISSING
    return HOLDS if _le(numbers["ratio_h2o"], CLOSE_PPL_RATIO) else PARTLY


def rule_early_bias(numbers: Mapping[str, Any]) -> str:
    """Accumulated score (h2o's, no forgetting), token 0 (the sink) left out: holds if
    positions 1..10% of n hold >= 1.5x their positional share (10%) of the score; partly
    if more than 1x; else does not hold."""
    if not _has(numbers, "early_share_h2o", "position_share"):
        return MISSING
    bias = numbers["early_share_h2o"] / numbers["position_share"]
    if _ge(bias, EARLY_BIAS):
        return HOLDS
    return PARTLY if bias > 1.0 else FAILS


def rule_a2sf(numbers: Mapping[str, Any]) -> str:
    """a2sf (forgetting factor) against h2o at a 20% budget: better in replay if it keeps
    >= 0.002 more mass; better live if its perplexity ratio is <= 0.99x h2o's. holds if
    better in every measured setting; partly if in some; does not hold if in none."""
    measured = wins = 0
    if _has(numbers, "mass_h2o", "mass_a2sf"):
        measured += 1
        wins += _ge(numbers["mass_a2sf"], numbers["mass_h2o"] + A2SF_MASS_MARGIN)
    if _has(numbers, "ratio_h2o", "ratio_a2sf"):
        measured += 1
        wins += _le(numbers["ratio_a2sf"], A2SF_PPL_MARGIN * numbers["ratio_h2o"])
    if not measured:
        return MISSING
    if wins == measured:
        return HOLDS
    return PARTLY if wins else FAILS


def rule_opt_gap(numbers: Mapping[str, Any]) -> str:
    """Gap = opt's retained mass minus h2o's, every trace and budget measured. holds if
    the largest gap is <= 0.05; partly if <= 0.10; else does not hold."""
    if not _has(numbers, "max_gap"):
        return MISSING
    if _le(numbers["max_gap"], OPT_GAP_HOLDS):
        return HOLDS
    return PARTLY if _le(numbers["max_gap"], OPT_GAP_PARTLY) else FAILS


def rule_belady(numbers: Mapping[str, Any]) -> str:
    """Gap = opt's retained mass minus belady's, every trace and budget. does not hold
    if the largest gap is <= 1e-4 (belady optimal up to rounding); holds if it is above
    1e-4 (not optimal) and <= 0.02 (close); partly if above 0.02."""
    if not _has(numbers, "max_gap"):
        return MISSING
    if _le(numbers["max_gap"], BELADY_EXACT):
        return FAILS
    return HOLDS if _le(numbers["max_gap"], BELADY_CLOSE) else PARTLY


def rule_paths(numbers: Mapping[str, Any]) -> str:
    """Online code paths at the same budget and prompt handling, decode-row retained
    mass (mean over traces). holds if best minus worst is <= 0.01; partly if <= 0.03;
    else does not hold (the path matters)."""
    if not _has(numbers, "spread_online"):
        return MISSING
    if _le(numbers["spread_online"], PATHS_SPREAD_HOLDS):
        return HOLDS
    return PARTLY if _le(numbers["spread_online"], PATHS_SPREAD_PARTLY) else FAILS


def rule_concave(numbers: Mapping[str, Any]) -> str:
    """holds if h2o-sqrt and h2o-log evict exactly the tokens h2o evicts (every unit, step,
    trace and budget compared); else does not hold."""
    if not _has(numbers, "identical", "compared") or not numbers["compared"]:
        return MISSING
    return HOLDS if numbers["identical"] == numbers["compared"] else FAILS


# ----------------------------------------------------------------------- "ours" cells
def _f(value: Any, spec: str = ".3f") -> str:
    return "-" if value is None else format(value, spec)


def _range(per: Mapping[str, Any] | None, spec: str = ".3f") -> str:
    values = [v for v in (per or {}).values() if v is not None]
    if len(values) < 2:
        return ""
    return f" (traces {format(min(values), spec)}-{format(max(values), spec)})"


def ours_sparsity(x: Mapping[str, Any]) -> str:
    return (f"{_f(x.get('sparsity'))} mean{_range(x.get('per_trace'))}; decode rows "
            f"{_f(x.get('sparsity_decode'))}; {x.get('layers_above', '-')} of "
            f"{x.get('layers', '-')} (trace, layer) pairs > 95%")  # fmt: skip


def ours_power_law(x: Mapping[str, Any]) -> str:
    share = x.get("power_better_share")
    return (f"power law beats exponential in {_f(share and 100 * share, '.0f')}% of (trace, layer) pairs; "
            f"R^2 {_f(x.get('r2_power'), '.2f')} (exp. {_f(x.get('r2_exponential'), '.2f')}); "
            f"alpha {_f(x.get('alpha'), '.2f')}; top 10% of tokens hold "
            f"{_f(x.get('top10_share'), '.0%')} of the accumulated score")  # fmt: skip


def ours_budget_replay(x: Mapping[str, Any]) -> str:
    return (f"retained mass h2o {_f(x.get('h2o_mass'))}{_range(x.get('h2o_per_trace'))}, "
            f"window {_f(x.get('window_mass'))}, sink {_f(x.get('sink_mass'))} (full = 1)")  # fmt: skip


def ours_budget_live(x: Mapping[str, Any]) -> str:
    if not _has(x, "ratio_h2o"):
        return "live runs skipped"
    return (f"perplexity vs full: h2o {_f(x.get('ratio_h2o'), '.2f')}x, window "
            f"{_f(x.get('ratio_window'), '.2f')}x, sink {_f(x.get('ratio_sink'), '.2f')}x "
            f"(full {_f(x.get('ppl_full'), '.1f')}; {x.get('texts', '-')} texts, n = {x.get('n', '-')})")  # fmt: skip


def ours_ablation(x: Mapping[str, Any]) -> str:
    replay = (f"replay mass both {_f(x.get('mass_h2o'))}, heavy only {_f(x.get('mass_heavy'))}, "
              f"recent only {_f(x.get('mass_window'))}")  # fmt: skip
    if not _has(x, "ratio_h2o"):
        return replay
    return (f"live perplexity vs full: both {_f(x.get('ratio_h2o'), '.2f')}x, heavy only "
            f"{_f(x.get('ratio_heavy'), '.2f')}x, recent only {_f(x.get('ratio_window'), '.2f')}x; "
            + replay)  # fmt: skip


def ours_memory(x: Mapping[str, Any]) -> str:
    if not _has(x, "reduction"):
        return "live runs skipped"
    return (f"KV bytes {_f(x.get('kv_bytes_h2o') and x['kv_bytes_h2o'] / 2**20, '.1f')} MiB vs "
            f"{_f(x.get('kv_bytes_full') and x['kv_bytes_full'] / 2**20, '.1f')} MiB full: "
            f"{_f(x.get('reduction'), '.2f')}x smaller; perplexity {_f(x.get('ratio_h2o'), '.2f')}x full")  # fmt: skip


def ours_early_bias(x: Mapping[str, Any]) -> str:
    return (f"positions 1..10% hold {_f(x.get('early_share_h2o'), '.1%')} of h2o's score, "
            f"{_f(_ratio(x.get('early_share_h2o'), x.get('position_share')), '.1f')}x their share "
            f"(uniform attention {_f(x.get('uniform_share'), '.1%')}; forgetting {x.get('forgetting', '-')}: "
            f"{_f(x.get('early_share_a2sf'), '.1%')}); token 0 {_f(x.get('sink_share_h2o'), '.0%')} of the "
            f"score; at the last row (20% budget) caches hold positions 1..10% at rate h2o "
            f"{_f(x.get('kept_early_h2o'), '.0%')}, a2sf {_f(x.get('kept_early_a2sf'), '.0%')}, "
            f"opt {_f(x.get('kept_early_opt'), '.0%')}")  # fmt: skip


def _ratio(a: Any, b: Any) -> float | None:
    return None if a is None or not b else a / b


def ours_a2sf(x: Mapping[str, Any]) -> str:
    text = (f"replay mass a2sf {_f(x.get('mass_a2sf'))} vs h2o {_f(x.get('mass_h2o'))} "
            f"(forgetting {x.get('forgetting', '-')}; best of {x.get('grid', '-')}: "
            f"{x.get('best_forgetting', '-')} -> {_f(x.get('best_mass'))})")  # fmt: skip
    if _has(x, "ratio_a2sf"):
        text += (f"; live perplexity vs full a2sf {_f(x.get('ratio_a2sf'), '.2f')}x vs h2o "
                 f"{_f(x.get('ratio_h2o'), '.2f')}x")  # fmt: skip
    return text


def ours_opt_gap(x: Mapping[str, Any]) -> str:
    return (f"gap {_f(x.get('gap_at_20'))} at 20%; largest {_f(x.get('max_gap'))} (at "
            f"{_f(x.get('budget_of_max'), 'g')}); h2o/opt >= {_f(x.get('min_ratio'))}; at 20% "
            f"h2o closes {_f(x.get('headroom_captured'), '.0%')} of the window-to-opt gap")  # fmt: skip


def ours_belady(x: Mapping[str, Any]) -> str:
    return (f"opt - belady: largest {_f(x.get('max_gap'), '.4f')}, mean {_f(x.get('mean_gap'), '.4f')}; "
            f"strictly below opt in {x.get('strictly_worse', '-')} of {x.get('cases', '-')} "
            f"(trace, budget) cases; h2o's gap is {_f(x.get('h2o_over_belady'), '.0f')}x larger")  # fmt: skip


def ours_paths(x: Mapping[str, Any]) -> str:
    ranking = x.get("ranking") or []
    masses = x.get("decode_mass") or {}
    ranked = " > ".join(f"{name} {masses.get(name, float('nan')):.3f}" for name in ranking)
    same = x.get("mask_drop_identical")
    same_text = {True: "h2o-mask, h2o-drop evict exactly as h2o (prompt in full)",
                 False: "h2o-mask/h2o-drop differ from h2o (prompt in full)"}.get(same, "")  # fmt: skip
    return (f"decode-row mass: {ranked}; online spread {_f(x.get('spread_online'))}"
            + (f"; {same_text}" if same_text else ""))  # fmt: skip


def ours_concave(x: Mapping[str, Any]) -> str:
    return (
        f"identical evictions in {x.get('identical', '-')} of {x.get('compared', '-')} "
        "replays (every unit and step)"
    )


# ----------------------------------------------------------------------- the rows
@dataclass(frozen=True)
class ClaimSpec:
    """One row: the claim, who makes it, what they report, and how ours is judged."""

    id: str
    claim: str  # the statement the verdict is about
    source: str  # who makes it
    paper: str  # what the source reports (its numbers only where certain)
    rule: Callable[[Mapping[str, Any]], str]
    ours: Callable[[Mapping[str, Any]], str]
    figure: str | None = None  # a PNG in the output folder, when the row is better seen

    @property
    def rule_text(self) -> str:
        return " ".join((self.rule.__doc__ or "").split())


H2O = "H2O (arXiv 2306.14048)"
CLAIMS: tuple[ClaimSpec, ...] = (
    ClaimSpec("sparsity", "Attention is sparse: > 95% of entries below 1% of the row max",
              f"{H2O}, Sec. 3.1", "> 95% sparsity in almost all layers (OPT)",
              rule_sparsity, ours_sparsity),
    ClaimSpec("power-law", "Accumulated attention follows a power law (a few heavy hitters)",
              f"{H2O}, Sec. 3.2", "power-law distribution of accumulated attention scores (qualitative)",
              rule_power_law, ours_power_law),
    ClaimSpec("budget-replay", "At a 20% budget H2O is close to the full cache, the local window collapses (replay)",
              f"{H2O}, Sec. 5", "H2O with a 20% KV budget matches the full cache; Local degrades (task accuracy, OPT/LLaMA/GPT-NeoX)",
              rule_budget_replay, ours_budget_replay, "claims-budget-curves.png"),
    ClaimSpec("budget-live", "At a 20% budget H2O is close to the full cache, the local window collapses (live)",
              f"{H2O}, Sec. 5", "as above (task accuracy)",
              rule_budget_live, ours_budget_live, "claims-live.png"),
    ClaimSpec("ablation", "Heavy hitters and recent tokens are both needed (heavy only < both > recent only)",
              f"{H2O}, Table 9", "either set alone falls short of the combination (qualitative)",
              rule_ablation, ours_ablation, "claims-ablation.png"),
    ClaimSpec("kv-memory", "5x smaller KV cache at a 20% budget, quality kept",
              f"{H2O}", "5x KV memory reduction (20% budget) at comparable accuracy",
              rule_memory, ours_memory),
    ClaimSpec("early-bias", "Accumulated scores are biased toward early tokens",
              "A2SF (arXiv 2407.20485)", "accumulative attention scores favour early tokens (qualitative)",
              rule_early_bias, ours_early_bias, "early-token-bias.png"),
    ClaimSpec("a2sf", "A forgetting factor on accumulated scores beats plain H2O at equal budget",
              "A2SF (arXiv 2407.20485)", "higher accuracy than H2O at the same cache size (qualitative)",
              rule_a2sf, ours_a2sf, "early-token-bias.png"),
    ClaimSpec("opt-gap", "H2O is within 0.05 retained mass of the exact offline optimum at every budget",
              "ours", "not reported (the theorem bounds greedy only against a per-step optimum)",
              rule_opt_gap, ours_opt_gap, "claims-budget-curves.png"),
    ClaimSpec("belady", "Evicting the least future mass (Belady analogue) is close to, but not, optimal",
              "ours", "not reported",
              rule_belady, ours_belady, "claims-budget-curves.png"),
    ClaimSpec("official-paths", "The official code paths (mask, drop, FlexGen, h2o) agree within 0.01 at equal budget",
              "ours (FMInference/H2O code)", "not reported (the repository implements H2O four ways)",
              rule_paths, ours_paths, "claims-official-paths.png"),
    ClaimSpec("concave", "A concave score h(z) = sqrt(z+1), log(z+1) (App. D) changes no eviction",
              f"ours ({H2O}, App. D)", "Algorithm 2 allows any non-decreasing concave h (identity in the code)",
              rule_concave, ours_concave),
)  # fmt: skip
SPECS: dict[str, ClaimSpec] = {spec.id: spec for spec in CLAIMS}


def judge(claim_id: str, numbers: Mapping[str, Any]) -> tuple[str, str]:
    """``(verdict, ours)`` of a row from its numbers, by the row's rule."""
    if claim_id not in SPECS:
        raise ValueError(f"unknown claim id {claim_id!r}; known: {', '.join(SPECS)}")
    spec = SPECS[claim_id]
    verdict = spec.rule(numbers)
    if verdict not in VERDICTS:
        raise RuntimeError(f"rule of {claim_id!r} returned {verdict!r}")
    return verdict, spec.ours(numbers)


def rejudge(payload: dict[str, Any]) -> dict[str, Any]:
    """Recompute every row's verdict and "ours" text from its numbers (in place; returned)."""
    rows = payload.get("claims")
    if not isinstance(rows, list):
        raise ValueError("claims file: expected a list under 'claims'")
    for row in rows:
        if not isinstance(row, dict) or "id" not in row or not isinstance(row.get("numbers"), dict):
            raise ValueError(
                f"claims file: each row needs an 'id' and a 'numbers' object, got {row!r:.80}"
            )
        row["verdict"], row["ours"] = judge(row["id"], row["numbers"])
        spec = SPECS[row["id"]]
        row.setdefault("claim", spec.claim)
        row.setdefault("source", spec.source)
        row.setdefault("paper", spec.paper)
        row["rule"] = spec.rule_text
    return payload


# ----------------------------------------------------------------------- Markdown
def _cell(text: Any) -> str:
    """Table-safe text: pipes escaped, newlines flattened."""
    return " ".join(str(text).split()).replace("|", "\\|")


def _commands_cell(commands: Sequence[str]) -> str:
    return "<br>".join(f"`{_cell(command)}`" for command in commands)


def summary_table(payload: Mapping[str, Any]) -> str:
    """The compact table (README block): claim, source, paper, ours, verdict."""
    lines = ["| # | claim | source | paper | SmolLM2-135M (ours) | verdict |",
             "|---|---|---|---|---|---|"]  # fmt: skip
    for i, row in enumerate(payload["claims"], 1):
        lines.append(f"| {i} | {_cell(row['claim'])} | {_cell(row['source'])} | {_cell(row['paper'])} "
                     f"| {_cell(row['ours'])} | **{row['verdict']}** |")  # fmt: skip
    return "\n".join(lines)


def _header(payload: Mapping[str, Any]) -> str:
    settings = payload.get("settings", {})
    traces = ", ".join(
        f"{name} (n = {info.get('n')})" for name, info in settings.get("traces", {}).items()
    )
    live = settings.get("live") or {}
    live_text = (f"live teacher forcing on {', '.join(live.get('texts', []))} (n = {live.get('n')}, "
                 f"budgets {', '.join(f'{b:g}' for b in live.get('budgets', []))})"
                 if live else "no live runs")  # fmt: skip
    return (f"Mode `{payload.get('mode', '?')}`, generated {payload.get('generated', '?')} in "
            f"{payload.get('seconds', 0):.0f} s by `{payload.get('command', 'python -m h2osim.claims')}`. "
            f"Replay on {traces or 'no traces'}; {live_text}. Model: SmolLM2-135M-Instruct (bundled Q4_1 GGUF, "
            "float32 on CPU).")  # fmt: skip


def markdown(payload: Mapping[str, Any]) -> str:
    """docs/claims.md: the full table (with commands), the rules, the figures."""
    out = ["# Claims table: the H2O paper and its follow-ups, checked on SmolLM2", "",
           "<!-- generated by python -m h2osim.claims from claims.json; do not edit by hand -->", "",
           _header(payload), "",
           "Verdicts are computed from the numbers by the rules below (`h2osim/claims_table.py`), "
           "never typed in: *holds*, *partly*, *does not hold here* (SmolLM2 disagrees with the "
           "claim - a finding), *not measured*. Replay is open loop (later rows come from the "
           "full-cache model); live runs evict inside the model (closed loop).", "",
           "| # | claim | source | paper | SmolLM2-135M (ours) | verdict | reproduce |",
           "|---|---|---|---|---|---|---|"]  # fmt: skip
    for i, row in enumerate(payload["claims"], 1):
        out.append(f"| {i} | {_cell(row['claim'])} | {_cell(row['source'])} | {_cell(row['paper'])} "
                   f"| {_cell(row['ours'])} | **{row['verdict']}** | {_commands_cell(row.get('commands', []))} |")  # fmt: skip
    out += ["", "## Rules", ""]
    for i, row in enumerate(payload["claims"], 1):
        out.append(f"{i}. **{row['id']}**: {SPECS[row['id']].rule_text}")
    figures = []
    for row in payload["claims"]:
        figure = row.get("figure")
        if figure and figure not in figures:
            figures.append(figure)
    if figures:
        out += ["", "## Figures", ""]
        out += [f"![{figure}]({figure})" for figure in figures]
    notes = payload.get("notes") or []
    if notes:
        out += ["", "## Notes", ""] + [f"- {note}" for note in notes]
    return "\n".join(out) + "\n"


def readme_block(payload: Mapping[str, Any], link: str = "docs/claims.md") -> str:
    """What goes between the README markers: the compact table and how to regenerate it."""
    return "\n".join([
        summary_table(payload), "",
        f"Regenerate with `python -m h2osim.claims` (about {max(1, round(payload.get('seconds', 0) / 60))} "
        f"min on 2 CPU cores; `--quick` for a smoke run). Rules, per-row commands and figures: [{link}]({link}).",
    ])  # fmt: skip


def replace_block(
    text: str, block: str, begin: str = README_BEGIN, end: str = README_END
) -> str | None:
    """``text`` with everything between the ``begin`` and ``end`` marker lines replaced by
    ``block``; None when the markers are absent. Idempotent, and nothing outside the markers
    changes. Example: "a\\n<!-- claims:begin -->\\nold\\n<!-- claims:end -->\\nb" with
    block "new" -> "a\\n<!-- claims:begin -->\\nnew\\n<!-- claims:end -->\\nb"."""
    starts, ends = text.count(begin), text.count(end)
    if starts == 0 and ends == 0:
        return None
    if starts != 1 or ends != 1:
        raise ValueError(
            f"README needs exactly one {begin} and one {end}; found {starts} and {ends}"
        )
    if text.index(end) < text.index(begin):
        raise ValueError(f"{end} comes before {begin} in the README")
    head, rest = text.split(begin, 1)
    _, tail = rest.split(end, 1)
    return f"{head}{begin}\n{block.strip(chr(10))}\n{end}{tail}"
