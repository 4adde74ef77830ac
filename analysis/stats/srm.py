"""Sample-ratio mismatch: do the units per arm match the split the weights promised?"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Mapping


@dataclass(frozen=True)
class SrmResult:
    #: Chi-square goodness-of-fit p; 1.0 when fewer than two arms had positive weight.
    p_value: float
    flagged: bool
    #: Units per arm, summed over the epochs used (arms with zero expected left out).
    observed: dict[str, float]
    #: Expected units per arm: Σ_e units_e · w_{e,v} / Σ_v w_{e,v}.
    expected: dict[str, float]


def srm_check(
    units_by_epoch: Mapping[int, Mapping[str, float]],
    weights_by_epoch: Mapping[int, Mapping[str, float]],
    *,
    alpha: float = 0.001,
) -> SrmResult:
    """Chi-square test of the observed units against the weight-integrated expected split.

    units_by_epoch[e][v] is the units assigned to variant v under epoch e;
    weights_by_epoch[e][v] the configured (relative) weights of that epoch. Arms with zero
    expected units are excluded; epochs without weights are skipped. flagged = p < alpha.
    """
    raise NotImplementedError
