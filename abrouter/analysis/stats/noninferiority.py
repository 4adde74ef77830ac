"""Guardrails: one-sided, always-valid non-inferiority of the candidate against the control."""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from typing import Any

from abrouter.analysis.stats import estimate, reasons, sequential
from abrouter.analysis.stats.compare import Direction, Kind, json_safe, strata
from abrouter.analysis.stats.sample import Sample


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
        return {key: json_safe(value) for key, value in asdict(self).items()}


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
    if not margin >= 0:
        raise ValueError(f"margin: must be >= 0, got {margin}")
    controls, candidates = strata(control, candidate, kind=kind)
    est = estimate.combine(controls, candidates, guardrail_variance(kind))
    header: dict[str, Any] = dict(metric=metric, variant=variant, margin=margin, relative=relative)
    reason = est.reason or (reasons.ZERO_BASELINE if relative and est.control_mean == 0 else None)
    harm, se = _harm(est, direction, relative) if not reason else (math.nan, math.nan)
    # The relative SE can vanish on its own: a constant candidate at zero has V_t = m_t = 0.
    reason = reason or (reasons.ZERO_VARIANCE if not se > 0 else None)
    if reason:
        return NonInferiority(
            **header, status=reasons.INSUFFICIENT, reason=reason, harm=math.nan, bound=math.nan, p_value=math.nan
        )
    # One side of the symmetric two-sided 1 − 2α sequence is (up to the negligible chance
    # of crossing both sides) a one-sided 1 − α bound.
    r = sequential.mixing_ratio(est.units_per_arm, expected_units, 2 * alpha)
    k = float(sequential.half_width_multiplier(r, 2 * alpha))
    upper, lower = harm + k * se, harm - k * se
    status = "breach" if lower > margin else "pass" if upper < margin else "inconclusive"
    return NonInferiority(
        **header,
        status=status,
        reason=None,
        harm=harm,
        bound=upper,
        p_value=_p_value((margin - harm) / se, float(r)),
        lower_bound=lower,
    )


def guardrail_variance(kind: Kind) -> estimate.Variance:
    """Like `estimate.arm_variance`, floored for binary metrics by the plus-one binomial variance.

    Guardrail events (errors) are often absent in both arms, and then the plain variance is
    zero and nothing could ever pass. The floor p̃(1 − p̃)/(N + 2), p̃ = (s + 1)/(N + 2)
    (Agresti–Caffo), with N the units or, for ratio metrics, the denominator (requests),
    keeps the bound honest.
    """
    return estimate.floored_variance(kind)


def _harm(est: estimate.Estimate, direction: Direction, relative: bool) -> tuple[float, float]:
    """The harm (positive = candidate worse) and its SE, on the margin's scale."""
    sign = -1.0 if direction == "increase" else 1.0
    if relative:
        return sign * est.relative, math.sqrt(est.relative_variance)
    return sign * est.difference, math.sqrt(est.variance)


def _p_value(z: float, r: float) -> float:
    """One-sided always-valid p for H0: harm >= margin, z = (margin − harm)/SE."""
    if z <= 0:
        return 1.0
    return min(1.0, float(sequential.p_value(z, r)) / 2)
