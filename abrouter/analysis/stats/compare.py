"""Compare a candidate arm with the control on one metric: frequentist, sequential, Bayesian.

`compare()` is the one entry point the decision policy needs per (variant, metric). It
returns a `Comparison` with every number the report shows; see docs/statistics.md for the
conventions. Degenerate data gives ``status="insufficient_data"`` and a reason code.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from typing import Any, Literal

from scipy import special
from scipy import stats as sps

from abrouter.analysis.stats import (
    bayes,
    clock,
    cuped,
    estimate,
    fixed_horizon,
    horizon,
    reasons,
    sequential,
    stability,
)
from abrouter.analysis.stats.sample import Sample

Kind = Literal["binary", "continuous"]
Direction = Literal["increase", "decrease"]
NAN_PAIR = (math.nan, math.nan)


@dataclass(frozen=True)
class Running:
    """What one look hands to the next: the sequential results so far.

    An always-valid p stays valid when minimised over looks, and an always-valid confidence
    sequence when intersected over looks; each needs only the previous look's value.
    """

    #: Running minima of the mSPRT p over the looks where the candidate was better / worse.
    p_better: float = 1.0
    p_worse: float = 1.0
    #: Running intersections of the confidence sequences; None before the first look.
    ci_absolute: tuple[float, float] | None = None
    ci_relative: tuple[float, float] | None = None
    #: The decision design's estimates at earlier looks (`stability.advance`), which split
    #: the data by time for the novelty check.
    anchors: tuple[stability.Anchor, ...] = ()
    #: The decision design's first look, whose per-unit variance sets its information clock
    #: (`clock`); None before there is one.
    reference: stability.Anchor | None = None


FRESH = Running()


@dataclass(frozen=True)
class Comparison:
    """Candidate vs control on one metric. Intervals are two-sided at level 1 − alpha."""

    variant: str
    metric: str
    #: "ok" or "insufficient_data".
    status: str
    #: Reason code when insufficient (see `abrouter.analysis.stats.reasons`), else None.
    reason: str | None
    n_control: float
    n: float
    control_mean: float
    mean: float
    #: mean − control_mean, and its fixed-horizon CI (unpooled SE; Welch t for continuous).
    absolute_lift: float
    absolute_ci: tuple[float, float]
    #: mean / control_mean − 1; CI by the delta method, including Var(control mean).
    relative_lift: float
    relative_ci: tuple[float, float]
    #: Fixed horizon, two-sided: pooled two-proportion z (binary), Welch t (continuous),
    #: z with the delta-method SE (ratio metrics, and stratified estimates).
    p_value: float
    #: Always-valid mSPRT p on the absolute difference: min(sequential_p_better,
    #: sequential_p_worse), the running minimum over all looks.
    sequential_p_value: float
    #: Confidence sequence on the relative scale (same multiplier as the absolute one,
    #: times the delta-method relative SE, floored binary variances), intersected with the
    #: previous looks'.
    sequential_ci: tuple[float, float]
    #: Confidence sequence on the absolute scale (inverts the mSPRT), intersected likewise.
    sequential_ci_absolute: tuple[float, float]
    #: P(candidate better than control), respecting direction.
    chance_to_beat: float
    #: E[max(0, harm)] of choosing the candidate, in the metric's absolute units (>= 0).
    expected_loss: float
    #: Epoch strata that entered the estimate (degenerate strata are skipped).
    strata: int = 1
    #: "beta_binomial" (exact, binary single stratum) or "gaussian".
    bayes_method: str = "gaussian"
    #: Running minimum of the mSPRT p over the looks where the candidate's estimate was
    #: better (respecting `direction`) than the control's. For the record (history, report).
    #: (Defaults only so hand-built Comparisons stay valid; compare() always sets them.)
    sequential_p_better: float = math.nan
    #: The same over the looks where it was worse. Decisions about harm use this.
    sequential_p_worse: float = math.nan
    #: [cuped] Whether the estimate is adjusted by the covariate (then the means are the
    #: adjusted means and every interval and test above uses the adjusted Δ̂ and V).
    cuped: bool = False
    #: [cuped] 1 − V_cuped / V (the unadjusted Welch variance); NaN without CUPED.
    variance_reduction: float = math.nan
    #: Information time t = effective units per arm in the strata from `confirm_from` on,
    #: over `expected_units` (1 at the planned horizon), times the per-unit variance over
    #: the pinned reference's (`clock`; not for ratio metrics): the decision design's clock.
    information: float = math.nan
    #: This look's one-sided p of the decision design (`horizon.p_value`) on the strata
    #: from `confirm_from` on, for "the candidate is better" (respecting `direction`). Not
    #: a running minimum: a promotion rests on the evidence of the look that promotes
    #: (issue 9, defect 5). Decisions to promote use this (Holm-adjusted).
    p_better_now: float = math.nan
    #: The same for "the candidate is worse".
    p_worse_now: float = math.nan
    #: [novelty] The design's absolute difference in its data up to an earlier look (the
    #: latest anchor with at most half the information) and since then, and the one-sided p
    #: that the effect declined (in the good direction) from the first to the second
    #: (`stats.stability`). NaN until there is an anchor to split at. A promotion is held
    #: while `decline_p` < alpha.
    early_lift: float = math.nan
    late_lift: float = math.nan
    late_variance: float = math.nan
    split_information: float = math.nan
    decline_p: float = math.nan
    #: [novelty] When the look that splits the data was taken (unix seconds; NaN when unknown).
    split_at: float = math.nan
    #: [novelty] The anchors to hand to the next look (not part of `to_dict`).
    anchors: tuple[stability.Anchor, ...] = ()
    #: The information clock's reference to hand to the next look (`clock`; not part of `to_dict`).
    reference: stability.Anchor | None = None

    def to_dict(self) -> dict[str, Any]:
        """JSON-safe: tuples become lists, NaN and infinities become None."""
        return {key: json_safe(value) for key, value in asdict(self).items() if key not in ("anchors", "reference")}

    def running(self) -> Running:
        """The sequential state after this look, for the next one."""
        return Running(
            self.sequential_p_better,
            self.sequential_p_worse,
            _finite_or_none(self.sequential_ci_absolute),
            _finite_or_none(self.sequential_ci),
            self.anchors,
            self.reference,
        )


def compare(
    control: Sample | Sequence[Sample],
    candidate: Sample | Sequence[Sample],
    *,
    kind: Kind,
    direction: Direction,
    alpha: float,
    expected_units: int,
    variant: str,
    metric: str,
    previous: Running = FRESH,
    use_cuped: bool = True,
    confirm_from: int = 0,
    at: float = math.nan,
) -> Comparison:
    """Compare `candidate` with `control`.

    A Sequence is a list of epoch strata aligned by index (stratum i of the control and
    stratum i of the candidate come from the same weight epoch). Per-stratum differences
    are combined with weights from their sizes (`estimate.combine`); strata where either arm is degenerate are
    skipped. A single Sample is one stratum.

    `expected_units` is the number of units *per arm* at which the sequential test should
    be most powerful (the experiment's `expected_units_per_arm`); it tunes the mSPRT mixing
    variance. `previous` is the previous look's `Comparison.running()` (`FRESH` on the
    first look): the sequential p's are running minima, each over the looks where the
    estimate pointed its way, and the confidence sequences running intersections. If an
    intersection comes out empty (the effect moved more than a constant effect allows),
    this look's sequence is reported alone.

    `confirm_from` is the index of the first stratum the decision design (`information`,
    `p_better_now`, `p_worse_now`) counts: the decision policy passes the first epoch of
    the final ramp step, so that a promotion rests on data gathered at full exposure and
    not on an early novelty effect (`candidates.confirmation_start`). Every other field uses
    every stratum.

    A zero control mean leaves the absolute comparison intact: the status stays "ok" with
    reason `zero_baseline`, and only the relative fields are NaN.

    [cuped] When the samples carry a covariate's sums (`Sample.cov_sum`, ...) and
    `use_cuped`, every stratum is adjusted (`cuped.adjust_strata`) and the whole comparison
    (means, intervals, fixed-horizon and sequential tests, Bayesian summaries) runs on the
    adjusted values, as a continuous metric; `variance_reduction` reports 1 − V_cuped/V. A
    ratio metric's strata (with Σy·c, `Sample.den_cov_products`) are adjusted through their
    linearisation and keep the ratio's t quantile (Kish's df of the raw denominators).
    """
    better, worse = float(previous.p_better), float(previous.p_worse)
    controls, candidates = strata(control, candidate, kind=kind)
    est, tested_kind, reduction = _estimate(controls, candidates, kind, use_cuped)
    # Ratio metrics: t at Kish's effective units of the raw denominators, adjusted or not.
    raw = est.pairs if est.pairs and est.pairs[0][0].is_ratio else _usable_pairs(controls, candidates)
    df = fixed_horizon.ratio_df(raw) if controls[0].is_ratio else None
    header: dict[str, Any] = dict(
        variant=variant, metric=metric, n_control=est.n_control, n=est.n, control_mean=est.control_mean, mean=est.mean
    )
    if est.reason:
        return _insufficient(header, est.reason, previous)
    header.update(cuped=math.isfinite(reduction), variance_reduction=reduction)
    fixed, abs_ci = _fixed_horizon(est, tested_kind, alpha, df)
    seq_p, k = _sequential(est, alpha, expected_units)
    signed = est.difference if direction == "increase" else -est.difference
    design = stability.anchor_of(
        _confirmed(controls, candidates, kind, use_cuped, confirm_from, est),
        start=confirm_from,
        expected_units=expected_units,
        at=at,
    )
    # Ratio metrics keep the units clock (`clock`: a ratio's per-unit variance falls as
    # returning users add exposures, and the information clock would stand still).
    reference = None if controls[0].is_ratio else clock.reference(previous.reference, design)
    information, now_better, now_worse = _design(
        clock.on_information(design, reference), direction=direction, alpha=alpha
    )
    anchor = stability.anchor_of(est, start=0, expected_units=expected_units, at=at)
    drift = stability.decline(previous.anchors, anchor, increase=direction == "increase")
    if signed > 0:
        better = min(better, seq_p)
    elif signed < 0:
        worse = min(worse, seq_p)
    chance, loss, method = _bayes(est, tested_kind, direction)
    rel_se = math.sqrt(est.relative_variance)
    seq_rel_se, seq_abs_se = math.sqrt(est.sequential_relative_variance), math.sqrt(est.sequential_variance)
    z = _z(alpha / 2)
    control_ratio = controls[0].is_ratio
    return Comparison(
        **header,
        status=reasons.OK,
        reason=reasons.ZERO_BASELINE if est.control_mean == 0 else None,
        absolute_lift=est.difference,
        absolute_ci=abs_ci,
        relative_lift=est.relative,
        relative_ci=est.log_relative_interval(_t(alpha / 2, fixed.df))
        if control_ratio
        else _around(est.relative, z * rel_se),
        p_value=fixed.p_value,
        sequential_p_value=min(better, worse),
        sequential_ci=_intersect(_around(est.relative, k * seq_rel_se), previous.ci_relative),
        sequential_ci_absolute=_intersect(_around(est.difference, k * seq_abs_se), previous.ci_absolute),
        chance_to_beat=chance,
        expected_loss=loss,
        strata=len(est.pairs),
        bayes_method=method,
        sequential_p_better=better,
        sequential_p_worse=worse,
        information=information,
        p_better_now=now_better,
        p_worse_now=now_worse,
        early_lift=drift.early,
        late_lift=drift.late,
        late_variance=drift.late_variance,
        split_information=drift.split,
        decline_p=drift.p_value,
        split_at=drift.split_at,
        anchors=stability.advance(previous.anchors, anchor),
        reference=reference,
    )


def _confirmed(
    controls: list[Sample],
    candidates: list[Sample],
    kind: Kind,
    use_cuped: bool,
    confirm_from: int,
    est: estimate.Estimate,
) -> estimate.Estimate | None:
    """The decision design's estimate: on the strata from `confirm_from` on (None when there are none)."""
    if confirm_from <= 0:
        return est
    later = (controls[confirm_from:], candidates[confirm_from:])
    return _estimate(*later, kind, use_cuped)[0] if later[0] else None


def _estimate(
    controls: list[Sample], candidates: list[Sample], kind: Kind, use_cuped: bool
) -> tuple[estimate.Estimate, Kind, float]:
    """The estimate, the kind its tests take, and the variance reduction (NaN: no CUPED).

    [cuped] The adjusted values are not 0/1, so an adjusted binary metric is tested as a
    continuous one (Welch); an adjustment that leaves no usable stratum falls back.
    """
    plain = estimate.combine(controls, candidates, estimate.arm_variance(kind), estimate.floored_variance(kind))
    adj = cuped.adjust_strata(controls, candidates, kind=kind) if use_cuped and not plain.reason else None
    if adj is None:
        return plain, kind, math.nan
    est = estimate.combine(adj.controls, adj.candidates, estimate.arm_variance("continuous"), adj.sequential_variance())
    raw = estimate.combine(controls, candidates, estimate.arm_variance("continuous"))
    if est.reason or raw.reason:
        return plain, kind, math.nan
    return est, "continuous", 1 - est.variance / raw.variance


def strata(
    control: Sample | Sequence[Sample], candidate: Sample | Sequence[Sample], *, kind: Kind
) -> tuple[list[Sample], list[Sample]]:
    """Both arms as aligned lists of strata; ValueError for inputs that are bugs, not bad luck."""
    controls = [control] if isinstance(control, Sample) else list(control)
    candidates = [candidate] if isinstance(candidate, Sample) else list(candidate)
    if not controls or len(controls) != len(candidates):
        raise ValueError(f"strata: need the same non-zero number per arm, got {len(controls)} and {len(candidates)}")
    for sample in controls + candidates:
        _validate(sample, kind)
    return controls, candidates


def _validate(sample: Sample, kind: Kind) -> None:
    if kind not in ("binary", "continuous"):
        raise ValueError(f"kind: must be binary or continuous, got {kind!r}")
    if sample.is_ratio:
        return
    if kind == "binary" and not 0 <= sample.sum <= sample.n:
        raise ValueError(f"binary metric: need 0 <= sum <= n, got sum={sample.sum}, n={sample.n}")
    if kind == "continuous" and sample.sum_sq is None:
        raise ValueError("continuous metric: sum_sq is required")


def _usable_pairs(controls: list[Sample], candidates: list[Sample]) -> list[tuple[Sample, Sample]]:
    """The raw strata with more than one unit and a denominator in both arms (ratio metrics)."""
    return [(c, t) for c, t in zip(controls, candidates) if all(s.n > 1 and s.den_sum for s in (c, t))]


def _fixed_horizon(
    est: estimate.Estimate, kind: Kind, alpha: float, ratio_df: float | None
) -> tuple[fixed_horizon.TestResult, tuple[float, float]]:
    """The classic test and CI for one stratum; a z on the combined estimate for several.

    `ratio_df`: a ratio metric's df (`fixed_horizon.ratio_df` of its raw strata, also when
    CUPED turned them into mean Samples); None for a mean metric.
    """
    (control, candidate), *rest = est.pairs
    if rest or ratio_df is not None:  # ratio metrics: t at the smaller arm's effective units (`ratio_df`)
        result = fixed_horizon.t_test(est.difference, est.variance, math.inf if ratio_df is None else ratio_df)
    elif kind == "binary":
        result = fixed_horizon.two_proportion_z(control, candidate)
    else:
        result = fixed_horizon.welch_t(control, candidate)
    # Welch's and ratio metrics' CIs use the t quantile; every other CI is a Wald interval.
    quantile = sps.t.isf(alpha / 2, result.df) if math.isfinite(result.df) else _z(alpha / 2)
    return result, _around(est.difference, float(quantile) * math.sqrt(est.variance))


def _sequential(est: estimate.Estimate, alpha: float, expected_units: int) -> tuple[float, float]:
    """This look's mSPRT p on the absolute difference and the confidence-sequence multiplier."""
    r = sequential.mixing_ratio(est.units_per_arm, expected_units, alpha)
    z = est.difference / math.sqrt(est.sequential_variance)
    return float(sequential.p_value(z, r)), float(sequential.half_width_multiplier(r, alpha))


def _t(tail: float, df: float) -> float:
    return float(sps.t.isf(tail, df)) if math.isfinite(df) else _z(tail)


def _z(tail: float) -> float:
    """The normal quantile z with Φ̄(z) = tail; `special.ndtri` costs a fraction of `norm.isf` per call."""
    return float(-special.ndtri(tail))


def _design(evidence: stability.Anchor | None, *, direction: Direction, alpha: float) -> tuple[float, float, float]:
    """Information time and this look's one-sided p's (better, worse) of the decision design.

    NaN p's (no evidence) when the design has no strata yet or they hold no usable estimate.
    """
    if evidence is None or not evidence.information > 0 or not evidence.variance > 0:
        return 0.0, math.nan, math.nan
    z = evidence.difference / math.sqrt(evidence.variance)
    z = z if direction == "increase" else -z
    both = horizon.p_value([z, -z], evidence.information, alpha)
    return evidence.information, float(both[0]), float(both[1])


def _bayes(est: estimate.Estimate, kind: Kind, direction: Direction) -> tuple[float, float, str]:
    (control, candidate), *rest = est.pairs
    if kind == "binary" and not rest and not control.is_ratio:
        return (
            bayes.beta_binomial_chance_to_beat(control, candidate, direction=direction),
            bayes.beta_binomial_expected_loss(control, candidate, direction=direction),
            "beta_binomial",
        )
    return (
        bayes.gaussian_chance_to_beat(est.difference, est.variance, direction=direction),
        bayes.gaussian_expected_loss(est.difference, est.variance, direction=direction),
        "gaussian",
    )


def _insufficient(header: dict[str, Any], reason: str, previous: Running) -> Comparison:
    # Nothing was learned at this look, so the sequential results so far carry over.
    return Comparison(
        **header,
        status=reasons.INSUFFICIENT,
        reason=reason,
        absolute_lift=math.nan,
        absolute_ci=NAN_PAIR,
        relative_lift=math.nan,
        relative_ci=NAN_PAIR,
        p_value=math.nan,
        sequential_p_value=min(previous.p_better, previous.p_worse),
        sequential_ci=previous.ci_relative or NAN_PAIR,
        sequential_ci_absolute=previous.ci_absolute or NAN_PAIR,
        chance_to_beat=math.nan,
        expected_loss=math.nan,
        strata=0,
        sequential_p_better=previous.p_better,
        sequential_p_worse=previous.p_worse,
        anchors=previous.anchors,
        reference=previous.reference,
    )


def _intersect(now: tuple[float, float], before: tuple[float, float] | None) -> tuple[float, float]:
    """The running intersection; this look's interval when there is none before or it is empty."""
    if before is None or not all(math.isfinite(x) for x in now):
        return now
    low, high = max(now[0], before[0]), min(now[1], before[1])
    return (low, high) if low <= high else now


def _finite_or_none(pair: tuple[float, float]) -> tuple[float, float] | None:
    return pair if all(math.isfinite(x) for x in pair) else None


def _around(center: float, half_width: float) -> tuple[float, float]:
    return (center - half_width, center + half_width)


def json_safe(value: Any) -> Any:
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, (tuple, list)):
        return [json_safe(v) for v in value]
    return value
