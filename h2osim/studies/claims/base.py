"""The shape of one claims-table row (:class:`Claim`), its verdicts, and the small helpers rules use.

A :class:`Claim` holds everything about one row: the statement and who makes it, the shared
measurements it reads (``needs``, keys of :data:`h2osim.studies.claims.measurements.MEASUREMENTS`),
``numbers`` (measured data -> the row's numbers, stored in ``claims.json``), ``rule``
(numbers -> verdict and reason; pure, so a claims.json can be re-judged), ``ours`` (numbers
-> the table cell), ``commands`` (the tool commands that reproduce the numbers) and the
``figure`` (a key of :data:`h2osim.studies.claims.plots.FIGURES`). The rows themselves are in
:mod:`h2osim.studies.claims.rows`.

Verdicts: ``holds``, ``partly``, ``does not hold here`` (SmolLM2 disagrees - a finding, not a
failure), ``not measured`` (a number is missing, e.g. the live runs were skipped).
Comparisons at a threshold forgive float rounding (1e-9).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any, NamedTuple

from h2osim.studies.claims.measurements import LIVE_POLICIES, LIVE_TEXT_ARGS, Measurements, Settings

HOLDS = "holds"
PARTLY = "partly"
FAILS = "does not hold here"
MISSING = "not measured"
VERDICTS = (HOLDS, PARTLY, FAILS, MISSING)

TOLERANCE = 1e-9  # comparisons at a threshold forgive float rounding (0.15 / 0.1 = 1.4999...)

Numbers = Mapping[str, Any]


class Judgement(NamedTuple):
    """A rule's answer: the verdict and why, in a few words with the deciding numbers.
    Example: ``Judgement("partly", "sparsity 0.834 < 0.95 but >= 0.80")``."""

    verdict: str
    reason: str


def ge(value: float, threshold: float) -> bool:
    """value >= threshold up to float rounding. Example: ge(0.15 / 0.1, 1.5) -> True."""
    return value >= threshold - TOLERANCE


def le(value: float, threshold: float) -> bool:
    """value <= threshold up to float rounding. Example: le(1 - 0.95, 0.05) -> True."""
    return value <= threshold + TOLERANCE


def absent(numbers: Numbers, *keys: str) -> list[str]:
    """The ``keys`` that are missing, None or NaN. Example: absent({"a": 1, "b": None}, "a", "b")
    -> ["b"]."""
    missing = []
    for key in keys:
        value = numbers.get(key)
        if value is None or (isinstance(value, float) and math.isnan(value)):
            missing.append(key)
    return missing


def has(numbers: Numbers, *keys: str) -> bool:
    """All ``keys`` present, not None and not NaN."""
    return not absent(numbers, *keys)


def not_measured(numbers: Numbers, *keys: str) -> Judgement | None:
    """``not measured`` naming the first absent key, or None when all ``keys`` are there."""
    missing = absent(numbers, *keys)
    return Judgement(MISSING, f"no {missing[0]}") if missing else None


def tiers(label: str, value: float, holds_at: float, partly_at: float, *, higher: bool = True,
          spec: str = ".3f") -> Judgement:  # fmt: skip
    """The common three-step rule: holds at or past ``holds_at``, partly at or past
    ``partly_at``, else does not hold; "past" is above when ``higher``, else below.
    Example: tiers("spread", 0.02, 0.01, 0.03, higher=False) ->
    Judgement("partly", "spread 0.020 > 0.01, <= 0.03")."""
    at, short = (ge, ("<", ">=")) if higher else (le, (">", "<="))
    said = f"{label} {value:{spec}}"
    if at(value, holds_at):
        return Judgement(HOLDS, f"{said} {short[1]} {holds_at:g}")
    if at(value, partly_at):
        return Judgement(PARTLY, f"{said} {short[0]} {holds_at:g}, {short[1]} {partly_at:g}")
    return Judgement(FAILS, f"{said} {short[0]} {partly_at:g}")


def fmt(value: Any, spec: str = ".3f") -> str:
    """``value`` formatted, "-" for None. Example: fmt(0.12345) -> "0.123"."""
    return "-" if value is None else format(value, spec)


# ----------------------------------------------------------------------- commands
@dataclass(frozen=True)
class CommandContext:
    """What a claim's ``commands`` builds on: the settings and what was measured.

    Tool commands are added only in the exact setting (whole traces, all stored layers):
    only there do they reproduce the table's numbers; otherwise a row lists the claims
    command alone (see :func:`h2osim.studies.claims.rows.claim_commands`).
    """

    measured: Measurements

    @property
    def settings(self) -> Settings:
        return self.measured.settings

    @property
    def exact(self) -> bool:
        return self.settings.n is None and self.settings.layers is None

    @property
    def main(self) -> str:
        return f"{self.settings.main_budget:g}"

    @property
    def budgets(self) -> str:
        return ",".join(f"{b:g}" for b in self.settings.budgets)

    def loop(self, tool: str, args: str) -> str:
        """A shell loop running ``python -m h2osim.TOOL`` on every trace of the settings.
        Example: loop("observe", "--no-plots") -> "for t in pydoc code chat; do python -m
        h2osim.observe traces/smollm2-$t.npz --no-plots; done"."""
        traces = " ".join(self.settings.traces)
        return f"for t in {traces}; do python -m h2osim.{tool} traces/smollm2-$t.npz {args}; done"

    def live_at_main(self) -> list[str]:
        """The live CLI runs at the main budget, one per live text (none when not measured)."""
        settings = self.settings  # (Settings requires main_budget among the live budgets)
        if not self.measured.live:
            return []
        return [f"python -m h2osim.live {LIVE_TEXT_ARGS[name]} --truncate {settings.live_n} "
                f"--policy {','.join(LIVE_POLICIES)} --budget {settings.main_budget:g}"
                for name in settings.live_texts]  # fmt: skip


def _no_commands(context: CommandContext) -> list[str]:
    return []


# ----------------------------------------------------------------------- the row
@dataclass(frozen=True)
class Claim:
    """One row of the claims table, everything about it in one object.

    ``rule``'s docstring is the rule as printed under the table; the rule must be pure (it
    sees only ``numbers``, so ``--from-json`` can re-judge a stored file) and must be able to
    give more than one verdict (a rule that cannot fail checks nothing; a test asks).
    """

    id: str
    claim: str  # the statement the verdict is about
    source: str  # who makes it
    paper: str  # what the source reports (its numbers only where certain)
    needs: tuple[str, ...]  # shared measurements read (keys of measurements.MEASUREMENTS)
    numbers: Callable[[Measurements], dict[str, Any]]  # measured data -> the row's numbers
    rule: Callable[[Numbers], Judgement]  # numbers -> verdict and reason
    ours: Callable[[Numbers], str]  # numbers -> the "SmolLM2-135M (ours)" cell
    commands: Callable[[CommandContext], list[str]] = _no_commands  # tool commands (exact setting)
    figure: str | None = None  # a key of plots.FIGURES, when the row is better seen

    @property
    def rule_text(self) -> str:
        return " ".join((self.rule.__doc__ or "").split())

    def judge(self, numbers: Numbers) -> Judgement:
        """The rule's judgement of ``numbers``, checked to be one of :data:`VERDICTS`."""
        judgement = self.rule(numbers)
        if not isinstance(judgement, Judgement) or judgement.verdict not in VERDICTS:
            raise RuntimeError(f"rule of {self.id!r} returned {judgement!r}")
        return judgement
