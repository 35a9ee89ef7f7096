"""The claims table (the library under ``python -m h2osim.claims``): one object per claim.

Checks the H2O paper's claims (Zhang et al., NeurIPS 2023, arXiv 2306.14048), A2SF's
(arXiv 2407.20485) and this project's own findings on the real SmolLM2-135M: Section 3
statistics and open-loop replays on the shipped traces (``traces/smollm2-*.npz``),
closed-loop (live) eviction inside the model, teacher-forced on the same tokens, and the
recorded long-context (``docs/long-context.json``) and needle-retrieval
(``docs/needle/needle.json``) studies.

Each row of the table is one :class:`~h2osim.studies.claims.base.Claim` holding all of it:
the claim text, its source and what the paper says, the shared measurements it reads
(``needs``), ``numbers`` (measured data -> the row's numbers), ``rule`` (numbers -> verdict
and reason; its docstring is the printed rule), ``ours`` (the table cell), ``commands`` and
``figure``. The claims are registered, in table order, in :mod:`.rows`.

The modules, in import order (each imports only those above it):

* :mod:`.measurements` - settings (``FULL``, ``QUICK``) and the shared measurements
  (:data:`~h2osim.studies.claims.measurements.MEASUREMENTS`: observe, bias, sweep, paths, live,
  long, needle), each run once for all claims that need it; the sweep's replays are cells of
  the results store (:mod:`h2osim.store`), so a second run reads them;
* :mod:`.base` - :class:`Claim`, the verdicts, the threshold helpers;
* :mod:`.rows` - the eighteen claims, one block each (five of them the length-dependent
  claims again at n = 4096, with the same rules);
* :mod:`.report` - ``claims.json`` (:func:`build_payload`), re-judging a stored file
  (:func:`rejudge`), ``claims.md`` and the README block;
* :mod:`.plots` - the figures (matplotlib; imported only when drawing).

How to add a claim
------------------
Add one block to :mod:`.rows`: ``numbers``, ``rule``, ``ours`` (and ``commands``) functions
and ``register(Claim(...))`` naming what it ``needs``; then its known answers in
tests/test_claims.py. Nothing else changes: the measurement, the JSON, the Markdown, the
README block and ``--from-json`` pick it up. Example (a rule on numbers the ``observe``
measurement already has)::

    def numbers_sink(measured):
        layers = [r for records in measured.observe.values() for r in records]
        return {"sink_mass": mean([r["sink_mass"] for r in layers])}

    def rule_sink(numbers):
        \"\"\"holds if token 0 draws >= 0.2 of the attention mass on average; else does not hold.\"\"\"
        if missing := not_measured(numbers, "sink_mass"):
            return missing
        mass = numbers["sink_mass"]
        return Judgement(HOLDS if ge(mass, 0.2) else FAILS, f"sink mass {mass:.3f} vs 0.2")

    register(Claim("sink", "Token 0 is an attention sink", "StreamingLLM (arXiv 2309.17453)",
                   "initial tokens draw a large share of attention", needs=("observe",),
                   numbers=numbers_sink, rule=rule_sink,
                   ours=lambda x: f"token 0 holds {fmt(x.get('sink_mass'))} of each row"))
"""

from h2osim.studies.claims.base import (
    FAILS,
    HOLDS,
    MISSING,
    PARTLY,
    VERDICTS,
    Claim,
    CommandContext,
    Judgement,
)
from h2osim.studies.claims.measurements import (
    FULL,
    LIVE_POLICIES,
    LIVE_TEXT_ARGS,
    MEASUREMENTS,
    QUICK,
    TRACE_FILES,
    Measurement,
    Measurements,
    Settings,
    measure,
    path_parameters,
    score_by_position,
    trace_prefix,
    uniform_score,
)
from h2osim.studies.claims.report import (
    FORMAT_VERSION,
    build_payload,
    load_payload,
    markdown,
    readme_block,
    rejudge,
    replace_block,
    update_readme,
    write_outputs,
)
from h2osim.studies.claims.rows import (
    CLAIMS,
    SPECS,
    claim_commands,
    claim_numbers,
    judge,
    needed_measurements,
    register,
)
from h2osim.studies.observe import early_positions

__all__ = [
    "CLAIMS", "FAILS", "FORMAT_VERSION", "FULL", "HOLDS", "LIVE_POLICIES", "LIVE_TEXT_ARGS",
    "MEASUREMENTS", "MISSING", "PARTLY", "QUICK", "SPECS", "TRACE_FILES", "VERDICTS", "Claim",
    "CommandContext", "Judgement", "Measurement", "Measurements", "Settings", "build_payload",
    "claim_commands", "claim_numbers", "early_positions", "judge", "load_payload", "markdown",
    "measure", "needed_measurements", "path_parameters", "readme_block", "register", "rejudge",
    "replace_block", "score_by_position", "trace_prefix", "uniform_score", "update_readme",
    "write_outputs",
]  # fmt: skip
