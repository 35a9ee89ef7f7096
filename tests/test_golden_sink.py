"""Decode-time StreamingLLM keeps exactly its sinks and the newest tokens, at every step.

kvpress's ``ScorerPress`` keeps the ``topk`` indices in score order, not in position
order, so a press applied again during decoding (decode-time compression) no longer keeps
"the first 4 + the last k - 4" of the sequence. Ours evicts by position rank at every step
(prompt mode ``stream``), in replay and live; this pins the set row by row. Physical slot
order in the live cache may differ (an evicted slot is overwritten in place) - the set is
what attention sees.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from h2osim.engine import ReplayConfig, replay
from h2osim.model.live import LiveConfig
from h2osim.policies import make_policy
from h2osim.trace import Trace
from tests.test_live import live_logits, tiny_ids, tiny_model

ROOT = Path(__file__).resolve().parent.parent


def sink_set(t: int, k: int, sinks: int = 4) -> list[int]:
    """The keys StreamingLLM holds at row t: sinks + the newest k - sinks. Example: t=9, k=6
    -> [0, 1, 2, 3, 8, 9]."""
    if t + 1 <= k:
        return list(range(t + 1))
    return list(range(sinks)) + list(range(t - (k - sinks) + 1, t + 1))


@pytest.mark.parametrize("k", [5, 12, 40])
def test_replayed_sink_keeps_four_sinks_and_the_newest_at_every_row(k):
    trace = Trace.load(ROOT / "traces/smollm2-chat.npz")
    result = replay(trace, make_policy("sink", sinks=4), k,
                    config=ReplayConfig(layers=(3,), output_error=False))  # fmt: skip
    for t in range(trace.n):
        for unit in range(len(result.unit_labels)):
            assert np.flatnonzero(result.kept_at(t)[unit]).tolist() == sink_set(t, k), (t, unit)


def test_live_sink_cache_holds_four_sinks_and_the_newest_at_every_step():
    model = tiny_model()
    ids = tiny_ids(30)
    held = {}

    def record(t0, attentions, slot_positions):
        held[t0] = slot_positions[0].copy()  # (units, slots) before row t0's update

    run, _ = live_logits(model, make_policy("sink", sinks=4), 9, ids,
                         config=LiveConfig(prefill_chunk=4), rows_out=record)  # fmt: skip
    for t in range(9, len(ids)):  # token-by-token steps: slots after admitting token t
        for unit_slots in held[t]:
            assert sorted(unit_slots.tolist()) == sink_set(t, 9), t
    final = run.controller.slot_positions[0]
    assert any(list(slots) != sorted(slots) for slots in final), "slots are reused in place"


def test_selecting_by_slot_order_would_fail_the_check():
    """Teeth: in a cache whose slots are not in position order (ours after in-place
    overwrites, kvpress's after an unsorted gather), "the last slots" are not the newest
    tokens - so a press that picks slots by index, as StreamingLLMPress does, keeps the
    wrong ones. The check above reads positions, not slots."""
    model = tiny_model()
    ids = tiny_ids(30)
    run, _ = live_logits(
        model, make_policy("sink", sinks=4), 9, ids, config=LiveConfig(prefill_chunk=4)
    )
    final = run.controller.slot_positions[0]  # (units, 9) positions held, in slot order
    newest = set(range(len(ids) - 3, len(ids)))
    assert any(set(slots[-3:].tolist()) != newest for slots in final)
    assert all(set(slots.tolist()) == set(sink_set(len(ids) - 1, 9)) for slots in final)
