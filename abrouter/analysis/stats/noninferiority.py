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
    #: Largest tolerated harm on the scale of `harm` and the bounds: absolute units, or a
    #: fraction of the control mean if `relative`. A floored relative guardrail
    #: (`min_margin` > 0) reports on the absolute scale (relative false), with the margin
    #: of the test that decided: the relative margin times the control's mean, or `min_margin`.
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
    #: The absolute floor of a relative margin: tolerated harm = max(margin × control, min_margin).
    min_margin: float = 0.0
    #: None: every epoch, stratified. An epoch id: that epoch's stratum alone (the current
    #: ramp step, where a load-dependent regression shows before the pooled data see it).
    epoch: int | None = None

    def to_dict(self) -> dict[str, Any]:
        return {key: json_safe(value) for key, value in asdict(self).items()}


@dataclass(frozen=True)
class _Test:
    """The harm on one scale, its SE and the mixing ratio of its confidence sequence."""

    harm: float
    se: float
    r: float
    reason: str | None = None

    def upper(self, alpha: float) -> float:
        """One-sided 1 − alpha upper bound: one side of the two-sided 1 − 2·alpha sequence."""
        return self.harm + float(sequential.half_width_multiplier(self.r, 2 * alpha)) * self.se

    def lower(self, alpha: float) -> float:
        return self.harm - float(sequential.half_width_multiplier(self.r, 2 * alpha)) * self.se

    def p(self, margin: float) -> float:
        return _p_value((margin - self.harm) / self.se, self.r)


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
    min_margin: float = 0.0,
    epoch: int | None = None,
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

    A relative margin m with a floor f = `min_margin` > 0 tolerates an absolute harm of
    max(m × control mean, f) (`_floored`): a healthy service often has no errors at all,
    and then a purely relative margin is 0 and nothing could ever pass.
    """
    if not margin >= 0:
        raise ValueError(f"margin: must be >= 0, got {margin}")
    if not min_margin >= 0:
        raise ValueError(f"min_margin: must be >= 0, got {min_margin}")
    controls, candidates = strata(control, candidate, kind=kind)
    est = estimate.combine(controls, candidates, guardrail_variance(kind))
    header: dict[str, Any] = dict(metric=metric, variant=variant, min_margin=min_margin, epoch=epoch)
    r = float(sequential.mixing_ratio(est.units_per_arm, expected_units, 2 * alpha)) if not est.reason else math.nan
    if relative and min_margin > 0:
        return _floored(header, est, direction, r, margin=margin, floor=min_margin, alpha=alpha)
    test = _test(est, direction, relative, r)
    header |= dict(margin=margin, relative=relative)
    if test.reason:
        return _insufficient(header, test.reason)
    status = "breach" if test.lower(alpha) > margin else "pass" if test.upper(alpha) < margin else "inconclusive"
    return _result(header, status, test, alpha_upper=alpha, alpha_lower=alpha, p_value=test.p(margin))


def _floored(
    header: dict[str, Any],
    est: estimate.Estimate,
    direction: Direction,
    r: float,
    *,
    margin: float,
    floor: float,
    alpha: float,
) -> NonInferiority:
    """Non-inferiority with the tolerated absolute harm max(margin × control mean, floor).

    H0 "harm ≥ max(m·c, f)" holds exactly when both "harm − m·c ≥ 0" and "harm ≥ f" do.
    Both are linear in the arm means, so both are tested on the absolute scale: the first
    as the contrast harm − m·c with its own variance (the Fieller form of a relative
    margin; the delta method on the ratio passed 5.6% of experiments at a 2.5% level with
    a 0.2% error rate, and the contrast needs no control events at all). Then:

    - "pass" when either test passes, each at alpha/2 (Bonferroni over the two ways to
      pass, so a false pass stays below alpha);
    - "breach" when both breach at alpha (harm above the larger margin);
    - the result reports the absolute harm, and the bounds and margin (m·ĉ or f) of the
      test that decided; when inconclusive or a breach, of the one with the larger margin.
    """
    harm, se = _harm(est, direction, False)
    # harm − m·c = s·(t − c) − m·c: the candidate's coefficient is ±1, the control's −(s + m).
    sign = 1.0 if direction == "decrease" else -1.0
    se_contrast = math.sqrt(est.var_candidate + (sign + margin) ** 2 * est.var_control)
    if not (se > 0 and se_contrast > 0):
        return _insufficient(header | dict(margin=floor, relative=False), est.reason or reasons.ZERO_VARIANCE)
    relative_margin = margin * abs(est.control_mean)
    tests = {"relative": (_Test(harm, se_contrast, r), relative_margin), "floor": (_Test(harm, se, r), floor)}
    half = alpha / 2
    passing = [name for name, (t, m) in tests.items() if t.upper(half) < m]
    binding = "relative" if relative_margin >= floor else "floor"
    if passing:
        status, name = "pass", passing[0]
    elif all(t.lower(alpha) > m for t, m in tests.values()):
        status, name = "breach", binding
    else:
        status, name = "inconclusive", binding
    test, used = tests[name]
    p = min(1.0, 2 * min(t.p(m) for t, m in tests.values()))
    return _result(
        header | dict(margin=used, relative=False), status, test, alpha_upper=half, alpha_lower=alpha, p_value=p
    )


def _test(est: estimate.Estimate, direction: Direction, relative: bool, r: float) -> _Test:
    reason = est.reason or (reasons.ZERO_BASELINE if relative and est.control_mean == 0 else None)
    if reason:
        return _Test(math.nan, math.nan, r, reason)
    harm, se = _harm(est, direction, relative)
    # The relative SE can vanish on its own: a constant candidate at zero has V_t = m_t = 0.
    return _Test(harm, se, r, None if se > 0 else reasons.ZERO_VARIANCE)


def _result(
    header: dict[str, Any], status: str, test: _Test, *, alpha_upper: float, alpha_lower: float, p_value: float
) -> NonInferiority:
    return NonInferiority(
        **header,
        status=status,
        reason=None,
        harm=test.harm,
        bound=test.upper(alpha_upper),
        p_value=p_value,
        lower_bound=test.lower(alpha_lower),
    )


def _insufficient(header: dict[str, Any], reason: str) -> NonInferiority:
    return NonInferiority(
        **header, status=reasons.INSUFFICIENT, reason=reason, harm=math.nan, bound=math.nan, p_value=math.nan
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
