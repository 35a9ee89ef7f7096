"""The claims table (h2osim.claims, h2osim.studies.claims): every registered claim has all
its parts and a rule that can give more than one verdict, known answers for every verdict
rule at its thresholds, the table built from the JSON (edit a number -> the table and the
verdict change), the README block rewrite (idempotent, nothing outside the markers), and
the command end to end on the reduced setting - without the model, and live with it."""

from __future__ import annotations

import copy
import json
from pathlib import Path

import numpy as np
import pytest

from h2osim.claims import main
from h2osim.engine import ReplayConfig, replay
from h2osim.studies import claims as table
from h2osim.studies.claims import (
    FAILS,
    FULL,
    HOLDS,
    MEASUREMENTS,
    MISSING,
    PARTLY,
    QUICK,
    VERDICTS,
    Claim,
    CommandContext,
    Judgement,
    Measurements,
    Settings,
    build_payload,
    early_positions,
    load_payload,
    measure,
    path_parameters,
    score_by_position,
    trace_prefix,
    uniform_score,
    update_readme,
)
from h2osim.studies.claims.plots import FIGURES
from h2osim.studies.claims.report import _cell
from h2osim.trace import Trace

REPO = Path(__file__).resolve().parents[1]


# --------------------------------------------------------------------------- rules
RULE_CASES = [
    # (claim id, numbers, expected verdict): each threshold from both sides
    ("sparsity", {"sparsity": 0.95}, HOLDS),
    ("sparsity", {"sparsity": 0.9499}, PARTLY),
    ("sparsity", {"sparsity": 0.80}, PARTLY),
    ("sparsity", {"sparsity": 0.7999}, FAILS),
    ("sparsity", {"sparsity": None}, MISSING),
    ("power-law", {"power_better_share": 0.8, "r2_power": 0.9}, HOLDS),
    ("power-law", {"power_better_share": 0.8, "r2_power": 0.89}, PARTLY),
    ("power-law", {"power_better_share": 0.79, "r2_power": 0.99}, PARTLY),
    ("power-law", {"power_better_share": 0.5, "r2_power": 0.99}, FAILS),
    ("budget-replay", {"h2o_mass": 0.95, "window_mass": 0.75}, HOLDS),
    ("budget-replay", {"h2o_mass": 0.94, "window_mass": 0.75}, PARTLY),
    ("budget-replay", {"h2o_mass": 0.96, "window_mass": 0.76}, PARTLY),
    ("budget-replay", {"h2o_mass": 0.90, "window_mass": 0.80}, FAILS),
    ("budget-replay", {"h2o_mass": 0.70, "window_mass": 0.72}, FAILS),  # window better
    ("budget-replay", {"h2o_mass": 0.95}, MISSING),
    ("budget-live", {"ratio_h2o": 1.10, "ratio_window": 1.5}, HOLDS),
    ("budget-live", {"ratio_h2o": 1.11, "ratio_window": 5.0}, PARTLY),
    ("budget-live", {"ratio_h2o": 1.05, "ratio_window": 1.49}, PARTLY),
    ("budget-live", {"ratio_h2o": 1.2, "ratio_window": 1.3}, FAILS),
    ("budget-live", {"ratio_h2o": 2.0, "ratio_window": 1.9}, FAILS),  # window better
    ("budget-live", {"ratio_h2o": None, "ratio_window": None}, MISSING),
    ("ablation", {"ratio_h2o": 0.95, "ratio_heavy": 1.0, "ratio_window": 2.0}, HOLDS),
    ("ablation", {"ratio_h2o": 1.0, "ratio_heavy": 1.04, "ratio_window": 2.0}, PARTLY),
    ("ablation", {"ratio_h2o": 1.0, "ratio_heavy": 1.0, "ratio_window": 1.0}, FAILS),
    # without live numbers the replay masses decide
    ("ablation", {"mass_h2o": 0.9, "mass_heavy": 0.88, "mass_window": 0.5}, HOLDS),
    ("ablation", {"mass_h2o": 0.9, "mass_heavy": 0.8899, "mass_window": 0.5}, PARTLY),
    ("ablation", {}, MISSING),
    ("kv-memory", {"reduction": 4.5, "ratio_h2o": 1.1}, HOLDS),
    ("kv-memory", {"reduction": 5.0, "ratio_h2o": 1.2}, PARTLY),
    ("kv-memory", {"reduction": 4.49, "ratio_h2o": 1.0}, FAILS),
    ("kv-memory", {"reduction": None}, MISSING),
    ("early-bias", {"early_share_h2o": 0.15, "position_share": 0.1}, HOLDS),
    ("early-bias", {"early_share_h2o": 0.149, "position_share": 0.1}, PARTLY),
    ("early-bias", {"early_share_h2o": 0.1, "position_share": 0.1}, FAILS),
    ("a2sf", {"mass_h2o": 0.9, "mass_a2sf": 0.903, "ratio_h2o": 1.2, "ratio_a2sf": 1.1}, HOLDS),
    ("a2sf", {"mass_h2o": 0.9, "mass_a2sf": 0.903, "ratio_h2o": 1.2, "ratio_a2sf": 1.2}, PARTLY),
    ("a2sf", {"mass_h2o": 0.9, "mass_a2sf": 0.901, "ratio_h2o": 1.2, "ratio_a2sf": 1.3}, FAILS),
    ("a2sf", {"mass_h2o": 0.9, "mass_a2sf": 0.903}, HOLDS),  # replay only
    ("a2sf", {}, MISSING),
    ("opt-gap", {"max_gap": 0.05}, HOLDS),
    ("opt-gap", {"max_gap": 0.0501}, PARTLY),
    ("opt-gap", {"max_gap": 0.1001}, FAILS),
    ("belady", {"max_gap": 0.0001}, FAILS),  # optimal up to rounding: the claim fails
    ("belady", {"max_gap": 0.02}, HOLDS),
    ("belady", {"max_gap": 0.0201}, PARTLY),
    ("official-paths", {"spread_online": 0.01}, HOLDS),
    ("official-paths", {"spread_online": 0.03}, PARTLY),
    ("official-paths", {"spread_online": 0.0301}, FAILS),
    ("official-paths", {"spread_online": None}, MISSING),
    ("concave", {"identical": 8, "compared": 8}, HOLDS),
    ("concave", {"identical": 7, "compared": 8}, FAILS),
    ("concave", {"identical": 0, "compared": 0}, MISSING),
    # the long-context rows: the same rules on the n = 4096 numbers
    ("long-sparsity", {"sparsity": 0.95}, HOLDS),
    ("long-sparsity", {"sparsity": 0.9499}, PARTLY),
    ("long-sparsity", {"sparsity": 0.7999}, FAILS),
    ("long-power-law", {"power_better_share": 0.8, "r2_power": 0.9}, HOLDS),
    ("long-power-law", {"power_better_share": 0.67, "r2_power": 0.7}, PARTLY),
    ("long-power-law", {"power_better_share": 0.5, "r2_power": 0.99}, FAILS),
    ("long-early-bias", {"early_share_h2o": 0.15, "position_share": 0.1}, HOLDS),
    ("long-early-bias", {"early_share_h2o": 0.12, "position_share": 0.1}, PARTLY),
    ("long-early-bias", {"early_share_h2o": 0.1, "position_share": 0.1}, FAILS),
    ("long-opt-gap", {"max_gap": 0.05}, HOLDS),
    ("long-opt-gap", {"max_gap": 0.0501}, PARTLY),
    ("long-opt-gap", {"max_gap": 0.1001}, FAILS),
    ("long-belady", {"max_gap": 0.0001}, FAILS),
    ("long-belady", {"max_gap": 0.0065}, HOLDS),
    ("long-belady", {"max_gap": 0.0201}, PARTLY),
    # needle retrieval: h2o's accuracy over the full cache's, per prompt mode
    ("needle", {"min_relative": 0.9, "max_relative": 1.0}, HOLDS),
    ("needle", {"min_relative": 0.2, "max_relative": 0.9}, PARTLY),
    ("needle", {"min_relative": 0.2, "max_relative": 0.5}, PARTLY),
    ("needle", {"min_relative": 0.2, "max_relative": 0.4999}, FAILS),
    ("needle", {"min_relative": 0.8999, "max_relative": 0.8999}, PARTLY),
    ("needle", {"min_relative": None, "max_relative": None}, MISSING),
]


@pytest.mark.parametrize(("claim_id", "numbers", "expected"), RULE_CASES)
def test_rule_known_answers(claim_id, numbers, expected):
    verdict, ours = table.judge(claim_id, numbers)
    assert verdict == expected
    assert isinstance(ours, str) and ours  # the "ours" cell renders even with missing numbers


def test_every_claim_has_known_answers_and_a_documented_rule():
    assert {case[0] for case in RULE_CASES} == set(table.SPECS)
    for spec in table.CLAIMS:
        assert len(spec.rule_text) > 40, spec.id  # the docstring is the printed rule
        assert table.judge(spec.id, {})[0] == MISSING  # no numbers, no verdict


def test_nan_counts_as_missing():
    assert table.judge("sparsity", {"sparsity": float("nan")})[0] == MISSING


def test_unknown_claim_id_is_refused():
    with pytest.raises(ValueError, match="unknown claim id 'nope'"):
        table.judge("nope", {})


def verdicts_reached(claim: Claim, cases: list[dict]) -> set[str]:
    """The verdicts other than ``not measured`` that ``claim``'s rule gives on ``cases``."""
    return {claim.judge(numbers).verdict for numbers in cases} - {MISSING}


def test_every_registered_claim_has_all_its_parts():
    assert len({claim.id for claim in table.CLAIMS}) == len(table.CLAIMS) == 18
    empty = Measurements(settings=FULL)  # nothing measured yet
    for claim in table.CLAIMS:
        assert claim.claim and claim.source and claim.paper, claim.id  # the text
        assert claim.needs and set(claim.needs) <= set(MEASUREMENTS), claim.id  # the measurement
        assert claim.figure is None or claim.figure in FIGURES, claim.id  # the figure
        numbers = claim.numbers(empty)  # the numbers: a JSON object even when nothing was run
        assert isinstance(numbers, dict) and json.loads(json.dumps(numbers)) == numbers, claim.id
        judgement = claim.judge(numbers)  # the rule: says why it cannot judge
        assert isinstance(judgement, Judgement) and judgement.verdict == MISSING, claim.id
        assert judgement.reason, claim.id
        assert isinstance(claim.ours(numbers), str), claim.id  # the cell
        commands = claim.commands(CommandContext(empty))  # the commands
        assert isinstance(commands, list) and all(isinstance(c, str) for c in commands), claim.id
    # every shared measurement is read by some claim (none runs for nothing)
    assert set(table.needed_measurements()) == set(MEASUREMENTS)


def test_every_rule_gives_different_verdicts_and_says_why():
    """A rule that cannot fail checks nothing: each reaches >= 2 verdicts on its known answers."""
    for claim in table.CLAIMS:
        cases = [numbers for claim_id, numbers, _ in RULE_CASES if claim_id == claim.id]
        assert len(verdicts_reached(claim, cases)) >= 2, claim.id
        for numbers in cases:
            reason = claim.judge(numbers).reason
            assert isinstance(reason, str) and len(reason) > 5, (claim.id, numbers)


def test_a_rule_that_cannot_fail_is_caught():
    sparsity = table.SPECS["sparsity"]

    def always(numbers):
        """holds whatever the numbers say - a rule like this must be refused by the test above."""
        return Judgement(HOLDS, "always")

    broken = Claim(sparsity.id, sparsity.claim, sparsity.source, sparsity.paper,
                   needs=sparsity.needs, numbers=sparsity.numbers, rule=always, ours=sparsity.ours)  # fmt: skip
    cases = [numbers for claim_id, numbers, _ in RULE_CASES if claim_id == "sparsity"]
    assert verdicts_reached(sparsity, cases) == {HOLDS, PARTLY, FAILS}
    assert verdicts_reached(broken, cases) == {HOLDS}
    wrong = Claim(sparsity.id, sparsity.claim, sparsity.source, sparsity.paper,
                  needs=sparsity.needs, numbers=sparsity.numbers, rule=lambda x: "holds",
                  ours=sparsity.ours)  # fmt: skip
    with pytest.raises(RuntimeError, match="rule of 'sparsity' returned 'holds'"):
        wrong.judge({})  # a bare verdict without its reason is refused


def test_adding_a_claim_as_the_package_docstring_shows():
    """The "How to add a claim" example in h2osim/studies/claims/__init__.py works as written."""
    import h2osim.studies.claims as package
    from h2osim.studies.claims import base, measurements, rows

    example = package.__doc__.split("::", 1)[1]
    code = "\n".join(line[4:] for line in example.splitlines())
    namespace = {**vars(base), **vars(measurements), **vars(rows)}
    try:
        exec(code, namespace)
        assert table.CLAIMS[-1].id == "sink" and table.CLAIMS[-1].needs == ("observe",)
        assert table.judge("sink", {"sink_mass": 0.3}) == (HOLDS, "token 0 holds 0.300 of each row")
        assert table.judge("sink", {"sink_mass": 0.1})[0] == FAILS
        assert table.judge("sink", {})[0] == MISSING
    finally:
        if table.CLAIMS and table.CLAIMS[-1].id == "sink":
            table.CLAIMS.pop()
        table.SPECS.pop("sink", None)
    assert "sink" not in table.SPECS and len(table.CLAIMS) == 18


def test_committed_claims_json_rejudges_to_its_own_verdicts():
    """docs/claims.json is in step with the rules: re-judging it changes no verdict or cell."""
    stored = json.loads((REPO / "docs" / "claims.json").read_text())
    rejudged = load_payload(REPO / "docs" / "claims.json")
    for before, after in zip(stored["claims"], rejudged["claims"], strict=True):
        claim_id = before["id"]
        assert (before["verdict"], before["ours"]) == (after["verdict"], after["ours"]), claim_id
        assert before.get("reason") == after["reason"], claim_id


def test_numbers_and_commands_recomputed_from_the_committed_details():
    """Each claim's ``numbers`` and ``commands``, fed the full run's stored details
    (docs/claims.json), give back the numbers and commands stored beside them - the full
    setting's code path, checked without the 7-minute run. early-bias (and its long-context
    row) is left out of the numbers: its inputs (curves by position, what each cache kept)
    are not stored there."""
    payload = json.loads((REPO / "docs" / "claims.json").read_text())
    assert payload["mode"] == "full"
    stored = {row["id"]: row for row in payload["claims"]}
    details = payload["details"]
    measured = Measurements(
        settings=FULL, sweep=details["sweep"], live=details["live"], observe=details["observe"],
        paths=[r for r in details["paths"] if "parameters" in r],  # not the official defaults
        concave=stored["concave"]["numbers"],
        mask_drop_identical=stored["official-paths"]["numbers"]["mask_drop_identical"],
        long=details["long"], needle=details["needle"],
    )  # fmt: skip
    assert table.claim_commands(measured, payload["command"]) == {
        claim_id: row["commands"] for claim_id, row in stored.items()
    }
    for claim in table.CLAIMS:
        if claim.id not in ("early-bias", "long-early-bias"):
            numbers = json.loads(json.dumps(claim.numbers(measured)))
            assert numbers == stored[claim.id]["numbers"], claim.id


def test_measure_runs_only_the_measurements_asked_for():
    settings = Settings(mode="test", traces=("chat",), n=48, layers=(16,), budgets=(0.2,),
                        live_texts=(), live_n=16, live_budgets=(0.2,))  # fmt: skip
    measured = measure(settings, root=REPO, needs=("observe",))
    assert list(measured.observe) == ["chat"] and len(measured.observe["chat"]) == 1
    assert not measured.sweep and not measured.bias and not measured.paths and not measured.live
    with pytest.raises(ValueError, match="unknown measurement 'replays'"):
        measure(settings, root=REPO, needs=("replays",))


# --------------------------------------------------------------------------- README block
README = (
    "# Title\n\nintro\n<!-- claims:begin -->\nold table\n<!-- claims:end -->\n\n## Later\ntext\n"
)


def test_replace_block_known_answer_and_idempotent():
    once = table.replace_block(README, "new table")
    assert (
        once
        == "# Title\n\nintro\n<!-- claims:begin -->\nnew table\n<!-- claims:end -->\n\n## Later\ntext\n"
    )
    assert table.replace_block(once, "new table") == once


def test_replace_block_without_markers_returns_none():
    assert table.replace_block("# no markers\n", "x") is None


@pytest.mark.parametrize(
    "text",
    [
        "<!-- claims:end -->\n<!-- claims:begin -->\n",  # reversed
        "<!-- claims:begin -->\n<!-- claims:begin -->\n<!-- claims:end -->\n",  # twice
        "<!-- claims:begin -->\nno end\n",
    ],
)
def test_replace_block_refuses_broken_markers(text):
    with pytest.raises(ValueError, match="claims:"):
        table.replace_block(text, "x")


# --------------------------------------------------------------------------- helpers
def test_score_by_position_known_answer():
    rows = np.array([[1.0, 0.0], [0.5, 0.5]])
    np.testing.assert_allclose(score_by_position(rows, 1.0), [1.5, 0.5])  # column sums
    np.testing.assert_allclose(score_by_position(rows, 0.5), [1.0, 0.5])  # row 0 weighs 0.5


def test_uniform_score_is_harmonic():
    # n=3: token j collects sum_{t>=j} 1/(t+1): [1 + 1/2 + 1/3, 1/2 + 1/3, 1/3]
    np.testing.assert_allclose(uniform_score(3, 1.0), [11 / 6, 5 / 6, 1 / 3])


def test_early_positions():
    assert early_positions(50) == slice(1, 6)
    assert early_positions(512) == slice(1, 53)


def test_path_parameters_match_h2o_split():
    params = path_parameters(435, 48, 0.2)
    assert params == {"k": 87, "heavy": 43, "recent": 44, "heavy_prompt_ratio": round(43.5 / 48, 6),
                      "recent_prompt_ratio": round(44.5 / 48, 6), "heavy_size": 43,
                      "recent_size": 43}  # fmt: skip
    assert int(params["heavy_prompt_ratio"] * 48) == 43
    assert int(params["recent_prompt_ratio"] * 48) == 44
    assert path_parameters(512, 20, 0.2) is None  # prompt shorter than the recent window


@pytest.fixture(scope="module")
def chat_trace():
    return Trace.load(REPO / "traces" / "smollm2-chat.npz")


def test_trace_prefix_is_the_trace_of_the_first_tokens(chat_trace):
    prefix = trace_prefix(chat_trace, 40, (3, 16))
    assert (prefix.n, prefix.prompt_length, prefix.layers.tolist()) == (40, 40, [3, 16])
    np.testing.assert_array_equal(
        prefix.head_matrix(16, 4), chat_trace.head_matrix(16, 4)[:40, :40]
    )
    np.testing.assert_array_equal(prefix.values(3), chat_trace.values(3)[:, :40])
    assert prefix.token_ids.tolist() == chat_trace.token_ids[:40].tolist()
    # causal: replaying the prefix = the first 40 steps of replaying the whole trace
    config = ReplayConfig(layers=(3, 16), output_error=False)
    whole = replay(chat_trace, "h2o", 8, config=config)
    part = replay(prefix, "h2o", 8, config=ReplayConfig(output_error=False))
    np.testing.assert_array_equal(part.retained_mass, whole.retained_mass[:40])


# --------------------------------------------------------------------------- end to end
@pytest.fixture(scope="module")
def quick_run(tmp_path_factory):
    """``python -m h2osim.claims --quick --no-live`` once, into a temporary folder."""
    out = tmp_path_factory.mktemp("claims")
    code = main(["--quick", "--no-live", "--out-dir", str(out), "--no-progress", "--root", str(REPO),
                 "--store", str(out / "store")])  # fmt: skip
    assert code == 0
    return out


def test_quick_run_writes_json_markdown_and_figures(quick_run):
    payload = json.loads((quick_run / "claims.json").read_text())
    assert payload["mode"] == "quick" and payload["format_version"] == 1
    assert [row["id"] for row in payload["claims"]] == [spec.id for spec in table.CLAIMS]
    for row in payload["claims"]:
        assert row["verdict"] in VERDICTS and row["commands"][0].startswith(
            "python -m h2osim.claims"
        )
        # the stored verdict is the rule's answer on the stored numbers
        assert table.judge(row["id"], row["numbers"]) == (row["verdict"], row["ours"])
    verdicts = {row["id"]: row["verdict"] for row in payload["claims"]}
    assert verdicts["budget-live"] == verdicts["kv-memory"] == MISSING  # --no-live
    assert verdicts["concave"] == HOLDS  # provable: h increasing keeps h2o's ranking
    assert verdicts["sparsity"] != MISSING and verdicts["opt-gap"] != MISSING
    for figure in ("claims-budget-curves.png", "claims-ablation.png", "claims-official-paths.png",
                   "early-token-bias.png"):  # fmt: skip
        assert (quick_run / figure).stat().st_size > 10_000
    assert not (quick_run / "claims-live.png").exists()
    text = (quick_run / "claims.md").read_text()
    assert text == table.markdown(payload)
    for row in payload["claims"]:
        assert f"**{row['verdict']}**" in text and _cell(row["ours"]) in text


def test_opt_bounds_every_policy_in_the_quick_sweep(quick_run):
    payload = json.loads((quick_run / "claims.json").read_text())
    for record in payload["details"]["sweep"]:
        if record.get("gap_to_opt") is not None and record["policy"] != "topk":
            assert record["gap_to_opt"] >= -2e-5, record


def test_editing_a_number_changes_the_table_and_flips_the_verdict(quick_run, tmp_path):
    source = json.loads((quick_run / "claims.json").read_text())
    edited = copy.deepcopy(source)
    row = next(r for r in edited["claims"] if r["id"] == "sparsity")
    row["numbers"]["sparsity"] = 0.9612
    path = tmp_path / "claims.json"
    path.write_text(json.dumps(edited))
    assert main(["--from-json", str(path), "--no-readme"]) == 0
    rendered = (tmp_path / "claims.md").read_text()
    assert "0.961 mean" in rendered
    line = next(line for line in rendered.splitlines() if "0.961 mean" in line)
    assert f"**{HOLDS}**" in line
    rewritten = json.loads(path.read_text())
    assert next(r for r in rewritten["claims"] if r["id"] == "sparsity")["verdict"] == HOLDS
    row["numbers"]["sparsity"] = 0.5
    path.write_text(json.dumps(edited))
    assert load_payload(path)["claims"][0]["verdict"] == FAILS


def test_readme_block_rewrite_touches_only_the_block(quick_run, tmp_path):
    payload = load_payload(quick_run / "claims.json")
    readme = tmp_path / "README.md"
    readme.write_text(README)
    first = update_readme(readme, payload, "docs/claims.md")
    assert first.endswith("claims block rewritten")
    text = readme.read_text()
    head, rest = text.split("<!-- claims:begin -->\n")
    block, tail = rest.split("<!-- claims:end -->")
    assert head == "# Title\n\nintro\n" and tail == "\n\n## Later\ntext\n"
    assert block == table.readme_block(payload, "docs/claims.md") + "\n"
    assert "| 18 |" in block and "python -m h2osim.claims" in block
    assert update_readme(readme, payload, "docs/claims.md").endswith("already up to date")
    assert readme.read_text() == text
    bare = tmp_path / "BARE.md"
    bare.write_text("# nothing here\n")
    assert "markers" in update_readme(bare, payload, "docs/claims.md")
    assert bare.read_text() == "# nothing here\n"


def test_cli_from_json_rewrites_the_readme_between_markers(quick_run, tmp_path):
    readme = tmp_path / "README.md"
    readme.write_text(README)
    target = tmp_path / "out"
    assert main(["--from-json", str(quick_run / "claims.json"), "--out-dir", str(target),
                 "--readme", str(readme)]) == 0  # fmt: skip
    assert "[../claims.md]" not in readme.read_text() and "out/claims.md" in readme.read_text()
    assert readme.read_text().endswith("<!-- claims:end -->\n\n## Later\ntext\n")


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["--from-json", "no/such/claims.json"], "no/such/claims.json"),
        (["--root", "/nonexistent", "--no-live"], "run from the repository root"),
        (["--quick", "--live-n", "4"], "--live-n must be >= 16"),
        (["--store", "x", "--no-store", "--no-live"], "--store and --no-store exclude each other"),
        (
            ["--quick", "--no-live", "--store", str(REPO / "README.md")],
            "is a file, not a store folder",
        ),
    ],
)
def test_cli_errors_are_one_line(argv, message, capsys):
    assert main([*argv, "--no-progress"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("python -m h2osim.claims: error:") and message in err
    assert err.count("\n") == 1


def test_from_json_refuses_other_files(tmp_path, capsys):
    path = tmp_path / "x.json"
    path.write_text('{"results": []}')
    assert main(["--from-json", str(path), "--no-readme"]) == 2
    assert "not a claims file" in capsys.readouterr().err


# --------------------------------------------------------------------------- live (model)
@pytest.mark.model
def test_live_rows_on_the_real_model():
    from tests.conftest_model import smollm2

    model = smollm2()[0]
    settings = Settings(mode="test", traces=("chat",), n=64, layers=(16,), budgets=(0.2,),
                        live_texts=("pydoc",), live_n=40, live_budgets=(0.2,),
                        forgetting_grid=(0.95,))  # fmt: skip
    measured = measure(settings, model=model, root=REPO)
    policies = {record["policy"] for record in measured.live}
    assert policies == {"full", "h2o", "window", "heavy", "sink", "a2sf"}
    full = next(r for r in measured.live if r["policy"] == "full")
    assert full["perplexity_ratio"] == 1.0 and full["kv_fraction"] == 1.0
    payload = build_payload(measured, "python -m h2osim.claims --test", 1.0)
    rows = {row["id"]: row for row in payload["claims"]}
    memory = rows["kv-memory"]["numbers"]
    assert memory["reduction"] == pytest.approx(40 / 8)  # k = 0.2 * 40 = 8 of 40 tokens
    for claim_id in ("budget-live", "kv-memory", "ablation", "a2sf"):
        assert rows[claim_id]["verdict"] != MISSING
        assert table.judge(claim_id, rows[claim_id]["numbers"])[0] == rows[claim_id]["verdict"]


@pytest.mark.model
def test_live_commands_encode_the_traces_tokens():
    """The table's `python -m h2osim.live --pydoc-topic naming --truncate N` (and the code
    text) feed the model the same tokens as the shipped traces' first N."""
    import bisect

    from h2osim.model import encode_text, pydoc_text, read_text_file
    from tests.conftest_model import smollm2

    tokenizer = smollm2()[1]
    for name, text in (("pydoc", pydoc_text("naming")), ("code", read_text_file(bisect.__file__))):
        trace = Trace.load(REPO / "traces" / f"smollm2-{name}.npz", validate=False)
        assert (
            encode_text(tokenizer, text, truncate=QUICK.live_n * 6)
            == trace.token_ids[: QUICK.live_n * 6].tolist()
        )


# --------------------------------------------------------------------------- the results store
def _store_numbers(measured):
    """What the store-backed sweep must reproduce: every claim's numbers, the sweep records
    (their timings aside), the cache contents at the last row and the concave comparison."""
    sweep = [{k: v for k, v in r.items() if k != "seconds"} for r in measured.sweep]
    return table.claim_numbers(measured), sweep, measured.kept, measured.concave


def test_store_backed_sweep_equals_in_process_and_a_second_run_computes_nothing(
    quick_run, tmp_path
):
    """The claims' sweep through the results store (issue #15): on the --quick setting, the
    numbers from a fresh store, from the same store read back, and from replays in process
    without a store are identical; the second run computes no cell."""
    from h2osim.store import ResultStore

    needs = ("bias", "sweep")  # the sweep rows and the early-bias row's cache contents
    plain = measure(QUICK, root=REPO, needs=needs)
    store = ResultStore(tmp_path / "store")
    first = measure(QUICK, root=REPO, needs=needs, store=store)
    second = measure(QUICK, root=REPO, needs=needs, store=ResultStore(tmp_path / "store"))
    cells = 2 * (2 * (10 + 1) + 3)  # traces x (budgets x (policies + topk) + a2sf grid)
    assert plain.grid == {"cells": cells, "computed": cells, "reused": 0}
    assert first.grid == {"cells": cells, "computed": cells, "reused": 0}
    assert second.grid == {"cells": cells, "computed": 0, "reused": cells}
    assert _store_numbers(first) == _store_numbers(plain)
    assert _store_numbers(second) == _store_numbers(plain)
    assert second.concave == {"identical": 8, "compared": 8}
    assert len(second.kept["chat"]["opt"]) == 160
    # the CLI's run into its own store (the quick_run fixture) gave the same sweep numbers
    payload = json.loads((quick_run / "claims.json").read_text())
    assert payload["grid"]["cells"] == cells and payload["grid"]["computed"] == cells
    sweep_rows = [c.id for c in table.CLAIMS if c.needs and set(c.needs) <= {"sweep", "bias"}]
    numbers = table.claim_numbers(plain)
    for row in payload["claims"]:
        if row["id"] in sweep_rows:
            assert row["numbers"] == json.loads(json.dumps(numbers[row["id"]])), row["id"]
    again = main(["--quick", "--no-live", "--out-dir", str(tmp_path / "again"), "--no-progress",
                  "--no-plots", "--root", str(REPO), "--store", str(quick_run / "store")])  # fmt: skip
    assert again == 0
    rerun = json.loads((tmp_path / "again" / "claims.json").read_text())
    assert rerun["grid"] == {"cells": cells, "computed": 0, "reused": cells}
    assert [r["numbers"] for r in rerun["claims"]] == [r["numbers"] for r in payload["claims"]]


def test_sweep_records_are_the_replays_of_the_traces(chat_trace):
    """A sweep record read from a grid row is the record of replaying the trace directly."""
    settings = Settings(mode="test", traces=("chat",), n=48, layers=(16,), budgets=(0.2,),
                        live_texts=(), live_n=16, live_budgets=(0.2,), forgetting_grid=(0.95,),
                        sweep_policies=("h2o", "h2o-log", "a2sf", "opt"))  # fmt: skip
    measured = measure(settings, root=REPO, needs=("sweep",))
    prefix = trace_prefix(chat_trace, 48, (16,))
    config = ReplayConfig(output_error=False)
    for record in measured.sweep:
        if record["policy"] == "topk":
            continue
        from h2osim.policies import make_policy

        direct = replay(prefix, make_policy(record["policy"], forgetting=0.95), 0.2, config=config)
        expected = {"trace": "chat", **direct.record(), "budget_requested": 0.2}
        if record["policy"] == "a2sf":
            expected["forgetting"] = 0.95
        drop = ("seconds", "gap_to_opt")
        assert {k: v for k, v in record.items() if k not in drop} == {
            k: v for k, v in expected.items() if k not in drop
        }, record["policy"]
    assert measured.concave == {"identical": 1, "compared": 1}


# --------------------------------------------------------------------------- long context
def _long_folder(folder: Path) -> Path:
    """Two small synthetic traces named as the long-context texts (560 tokens: a 512 view)."""
    from h2osim.synthetic import synthetic_trace

    folder.mkdir(parents=True, exist_ok=True)
    for seed, name in enumerate(("prose-4096.npz", "code-4096.npz")):
        synthetic_trace(560, layers=1, heads=2, kv_heads=1, head_dim=4, seed=seed).save(
            folder / name
        )
    return folder


def test_long_rows_use_the_claims_rules_on_the_recorded_file(tmp_path):
    """--long measures observe, bias and the 20% sweep at each length into the long-context
    file; the long rows' numbers come from it through the same numbers functions and rules
    as the short rows, and a wrong number in the file flips the verdict."""
    from h2osim.studies.claims.measurements import load_long, long_measured

    folder = _long_folder(tmp_path / "long")
    target = tmp_path / "long-context.json"
    measured = measure(QUICK, root=tmp_path, needs=("long",), long=True, long_dir="long",
                       long_json=target)  # fmt: skip
    stored = load_long(target)
    assert stored == json.loads(json.dumps(measured.long))
    assert [block["n"] for block in stored["lengths"]] == [512, None]
    longest = long_measured(stored, "longest")
    assert {info["n"] for info in longest.traces.values()} == {560}
    assert {r["policy"] for r in longest.sweep} == {"opt", "belady", "h2o", "window", "topk"}
    numbers = table.claim_numbers(measured)
    for base in ("sparsity", "power-law", "early-bias", "opt-gap", "belady"):
        row = numbers[f"long-{base}"]
        assert row["n"] == 560 and row["texts"] == ["code", "prose"] and row["short"]["n"] == 512
        same = table.SPECS[base].numbers(longest)  # the short row's numbers function
        assert {k: v for k, v in row.items() if k not in ("n", "texts", "short")} == same
        assert table.SPECS[f"long-{base}"].rule is table.SPECS[base].rule  # one definition
        assert table.judge(f"long-{base}", row)[0] != MISSING
    # bench/long_findings.py judges each text and length by the same rules (none of its own)
    import importlib.util

    spec = importlib.util.spec_from_file_location(
        "long_findings", REPO / "bench" / "long_findings.py"
    )
    findings = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(findings)
    printed = findings.table(stored)
    assert "| prose n=512 | prose n=560 | code n=512 | code n=560 |" in printed
    prose = long_measured(stored, "longest", "prose")
    verdict = table.SPECS["opt-gap"].judge(table.SPECS["opt-gap"].numbers(prose))
    row = next(line for line in printed.splitlines() if line.startswith("| opt-gap"))
    assert row.split(" | ")[2] == f"{verdict.reason} **{verdict.verdict}**"
    assert folder.is_dir()
    # a wrong value in the recorded file flips the verdict of the row that reads it
    for block in stored["lengths"]:
        for record in block["sweep"]:
            if record["policy"] == "h2o":
                record["retained_mass"] -= 0.2  # h2o far below opt
    target.write_text(json.dumps(stored))
    reread = measure(QUICK, root=tmp_path, needs=("long",), long_json=target)
    gap = table.claim_numbers(reread)["long-opt-gap"]
    assert gap["max_gap"] > 0.2 and table.judge("long-opt-gap", gap)[0] == FAILS
    assert table.judge("long-opt-gap", numbers["long-opt-gap"])[0] != FAILS


def test_long_rows_without_the_file_are_not_measured(tmp_path):
    measured = measure(QUICK, root=tmp_path, needs=("long",))
    assert any("long-context rows are not measured" in note for note in measured.notes)
    for claim in table.CLAIMS:
        if claim.needs == ("long",):
            verdict, ours = table.judge(claim.id, claim.numbers(measured))
            assert verdict == MISSING and "--long" in ours
    bad = tmp_path / "bad.json"
    bad.write_text('{"format": 9}')
    with pytest.raises(ValueError, match="not a long-context measurement file"):
        measure(QUICK, root=tmp_path, needs=("long",), long_json=bad)
    with pytest.raises(FileNotFoundError, match="docs/long-context.md"):
        measure(QUICK, root=tmp_path, needs=("long",), long=True, long_json=tmp_path / "x.json")


# --------------------------------------------------------------------------- needle
def _needle(policy, mode, correct, depth, budget=0.2, length=512):
    return {"task": "passkey", "length": length, "depth": depth, "seed": 0, "filler": "repeat",
            "needle": "digits", "question": "end", "keys": 3, "n": length - 2, "policy": policy,
            "budget_requested": budget, "prompt_mode": mode, "correct": correct,
            "output": " 12345.", "needle_held": 1.0}  # fmt: skip


def test_needle_row_reads_records_by_field_and_prompt_mode(tmp_path):
    """The needle row reads the study's records by their fields, any prompt mode (a
    "prefill" mode added later is one more mode), h2o against the full cache on the same
    prompts; a wrong accuracy flips the verdict."""
    records = [_needle("full", "-", True, d) for d in (0.0, 0.5, 1.0)]
    records += [_needle("h2o", "full", d == 1.0, d) for d in (0.0, 0.5, 1.0)]
    records += [_needle("h2o", "prefill", True, d) for d in (0.0, 0.5, 1.0)]
    records += [
        _needle("h2o", "full", True, 0.0, budget=0.5),
        _needle("window", "full", True, 0.0),
        _needle("h2o", "stream", True, 0.25),
    ]  # other budget, policy; a prompt without full
    path = tmp_path / "needle.json"
    path.write_text(json.dumps({"command": "python -m h2osim.needle --out x", "records": records}))
    measured = measure(QUICK, root=tmp_path, needs=("needle",), needle_json=path)
    numbers = table.claim_numbers(measured)["needle"]
    assert numbers["modes"] == {"full": {"trials": 3, "h2o": pytest.approx(1 / 3), "full": 1.0},
                                "prefill": {"trials": 3, "h2o": 1.0, "full": 1.0}}  # fmt: skip
    assert numbers["min_relative"] == pytest.approx(1 / 3) and numbers["max_relative"] == 1.0
    assert table.judge("needle", numbers)[0] == PARTLY  # matches in prefill, not in full
    only_full = [r for r in records if r["prompt_mode"] != "prefill"]
    path.write_text(json.dumps({"command": "c", "records": only_full}))
    numbers = table.claim_numbers(measure(QUICK, root=tmp_path, needs=("needle",),
                                          needle_json=path))["needle"]  # fmt: skip
    assert table.judge("needle", numbers)[0] == FAILS
    right = [{**r, "correct": True} for r in only_full]  # h2o right everywhere: it matches
    path.write_text(json.dumps({"command": "c", "records": right}))
    numbers = table.claim_numbers(measure(QUICK, root=tmp_path, needs=("needle",),
                                          needle_json=path))["needle"]  # fmt: skip
    assert table.judge("needle", numbers)[0] == HOLDS
    path.write_text('{"records": "nope"}')
    with pytest.raises(ValueError, match="not a needle study file"):
        measure(QUICK, root=tmp_path, needs=("needle",), needle_json=path)


def test_committed_needle_study_gives_its_documented_answer():
    """docs/needle.md: full cache 1.00, h2o 0.20 at 20% (prompt mode full) -> does not hold."""
    measured = measure(QUICK, root=REPO, needs=("needle",))
    numbers = table.claim_numbers(measured)["needle"]
    assert numbers["modes"]["full"] == {"trials": 20, "h2o": 0.2, "full": 1.0}
    assert table.judge("needle", numbers)[0] == FAILS
