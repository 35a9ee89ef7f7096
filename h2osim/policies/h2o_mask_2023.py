"""``h2o-mask-2023``: the masking simulation as it was when the paper appeared
(FMInference/H2O ``h2o_hf/utils_hh/modify_llama.py`` at 61e8089, before the 2024-06-12
``clone()`` fix). A mask, like ``h2o-mask``.

The only difference from HEAD: the next row's attention mask and the score mask were one
tensor, so writing the score mask ("the r newest keys keep their score") also unmasked
them. Row L therefore attends h + r + 1 keys - the top-h of keys 0..L-r-1 plus the
newest r + 1, L-r included - with no gap and no re-admission. With r = 0 that version
never zeroed the mask: every row is attended in full. Same parameters and budgets as
``h2o-mask`` (from the prompt length; ``--budget`` ignored).
"""

from __future__ import annotations

from dataclasses import dataclass

from h2osim.policies.base import register
from h2osim.policies.h2o_mask import MaskingSimulation


@register
@dataclass
class H2OMask2023(MaskingSimulation):
    """Example: P=20, ratios 0.2/0.1 -> row 30 attends keys 28, 29, 30 + the best 4 of 0..27."""

    name = "h2o-mask-2023"
    summary = "H2O masking simulation as of the paper (utils_hh, 61e8089): h + r + 1 keys"
    prompt_mode = "full"
    gap = False
