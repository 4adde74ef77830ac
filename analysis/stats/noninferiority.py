"""Guardrails: one-sided, always-valid non-inferiority of the candidate against the control."""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from typing import Any, Sequence

from analysis.stats.compare import Direction, Kind, _json_safe
from analysis.stats.sample import Sample


@dataclass(frozen=True)
class NonInferiority:
    """Is the candidate no worse than the control by more than `margin`?"""

    metric: str
    variant: str
    #: "pass", "breach", "inconclusive" or "insufficient_data".
    status: str
    reason: str | None
    #: Largest tolerated harm: absolute units, or a fraction of the control mean if relative.
    margin: float
    relative: bool
    #: Estimated harm (candidate worse than control, in the metric's bad direction).
    harm: float
    #: One-sided always-valid upper confidence bound on the harm (same scale as margin).
    bound: float
    #: One-sided always-valid p for H0 "harm >= margin" (small: confidently within margin).
    p_value: float
    #: One-sided always-valid lower confidence bound on the harm.
    lower_bound: float = math.nan

    def to_dict(self) -> dict[str, Any]:
        return {key: _json_safe(value) for key, value in asdict(self).items()}


def non_inferiority(
    control: Sample | Sequence[Sample],
    candidate: Sample | Sequence[Sample],
    *,
    kind: Kind,
    direction: Direction,
    margin: float,
    relative: bool,
    alpha: float,
    expected_units: int,
    variant: str,
    metric: str,
) -> NonInferiority:
    """One-sided sequential non-inferiority test of `candidate` against `control`.

    `direction` is the GOOD direction of the metric ("decrease" for errors and latency).
    harm = control − candidate for "increase", candidate − control for "decrease"
    (divided by the control mean when `relative`). From the confidence sequence at level
    1 − 2·alpha, one side of which is a one-sided 1 − alpha bound:

    - "breach": the lower bound on the harm exceeds the margin (confidently worse);
    - "pass": the upper bound on the harm is below the margin (confidently not worse);
    - "inconclusive" otherwise.

    Repeated looks stay valid because the bounds come from a confidence sequence.
    """
    raise NotImplementedError
