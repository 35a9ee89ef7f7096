"""``a2sf``: accumulated attention with a forgetting factor (A2SF, Jo & Shin, arXiv 2407.20485).

H2O's accumulated score favours early tokens: token 0 is summed over every row, token
t-1 over one. A2SF multiplies every past score by ``forgetting`` (< 1) at each step, so
a token's score is sum_s forgetting^(t-s) a_s: recent attention counts more, and old
tokens must keep earning attention to stay. ``forgetting = 1`` is exactly ``h2o``.
Heavy/recent split as in ``h2o``.
"""

from __future__ import annotations

from dataclasses import dataclass

from h2osim.policies.base import param, register
from h2osim.policies.h2o import H2O


@register
@dataclass
class A2SF(H2O):
    """Score_j(t) = sum over rows s <= t-1 of forgetting^(t-1-s) x attention_s(j).

    Example: forgetting 0.5, token j got [0.8, 0.0, 0.0] in the last three rows -> 0.2,
    while a token that got [0.0, 0.0, 0.3] scores 0.3 and now outranks it.
    """

    name = "a2sf"
    summary = "accumulated attention with a forgetting factor (A2SF)"
    forgetting: float = param(
        0.95, "a2sf: factor applied to past scores at every step (1 = h2o)", low=0.0, high=1.0,
        low_open=True,
    )  # fmt: skip

    def decay(self) -> float:
        return self.forgetting
