"""The estimate of candidate − control, combined over weight-epoch strata.

Why stratify: when the weights change during an experiment, the arms' traffic mixes differ
between epochs. If the metric also drifts between epochs, pooling the epochs compares
different populations and can even reverse the sign (Simpson's paradox). Each epoch is a
randomised experiment of its own, so we estimate the difference per epoch and combine:

    w_s = 1 / (V_c,s + V_t,s),   Δ̂ = Σ w_s Δ̂_s / Σ w_s,   Var(Δ̂) = 1 / Σ w_s.

The arm means are combined with the same weights (so mean − control_mean = Δ̂) and their
variances are Σ w_s² V_s / (Σ w_s)², which the delta method for the relative lift needs.
Strata where either arm has n <= 1 (or no denominator) or the difference has no variance
are skipped.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable, Sequence

from analysis.stats import reasons
from analysis.stats.sample import Sample

Variance = Callable[[Sample], float]


@dataclass(frozen=True)
class Estimate:
    """The (combined) arm means with the variances of the means; `reason` when degenerate."""

    n_control: float
    n: float
    control_mean: float
    mean: float
    var_control: float
    var_candidate: float
    #: The (control, candidate) strata that entered the estimate.
    pairs: tuple[tuple[Sample, Sample], ...] = ()
    reason: str | None = None

    @property
    def units_per_arm(self) -> float:
        """The mean units per arm, the clock of the sequential test."""
        return (self.n_control + self.n) / 2

    @property
    def difference(self) -> float:
        return self.mean - self.control_mean

    @property
    def variance(self) -> float:
        return self.var_control + self.var_candidate

    @property
    def relative(self) -> float:
        return self.mean / self.control_mean - 1 if self.control_mean else math.nan

    @property
    def relative_variance(self) -> float:
        """Delta method: Var(t/c) ≈ V_t/c² + t²·V_c/c⁴ (arms independent)."""
        c = self.control_mean
        if not c:
            return math.nan
        return self.var_candidate / c**2 + self.mean**2 * self.var_control / c**4


def arm_variance(kind: str) -> Variance:
    """The variance of an arm's mean: binomial p(1−p)/n for binary means, else s²/n or delta."""
    def variance(sample: Sample) -> float:
        if kind == "binary" and not sample.is_ratio and sample.n > 1:
            return sample.binomial_mean_variance
        return sample.mean_variance
    return variance


def combine(controls: Sequence[Sample], candidates: Sequence[Sample], variance: Variance) -> Estimate:
    """Inverse-variance combination of per-stratum differences (see the module docstring)."""
    reason = _pooled_reason(sum(controls), sum(candidates))
    sized = [pair for pair in zip(controls, candidates) if _sized(*pair)]
    usable = [(c, t, variance(c), variance(t)) for c, t in sized]
    usable = [u for u in usable if _positive(u[2] + u[3])]
    reason = reason or (reasons.N_TOO_SMALL if not sized else None)
    reason = reason or (reasons.ZERO_VARIANCE if not usable else None)
    if reason:
        return _degenerate(controls, candidates, reason)
    return _weighted(usable)


def _weighted(usable: list[tuple[Sample, Sample, float, float]]) -> Estimate:
    weights = [1 / (vc + vt) for _, _, vc, vt in usable]
    total = sum(weights)
    share = [w / total for w in weights]
    return Estimate(
        n_control=sum(c.n for c, *_ in usable),
        n=sum(t.n for _, t, *_ in usable),
        control_mean=sum(s * c.mean for s, (c, *_) in zip(share, usable)),
        mean=sum(s * t.mean for s, (_, t, *_) in zip(share, usable)),
        var_control=sum(s**2 * vc for s, (_, _, vc, _) in zip(share, usable)),
        var_candidate=sum(s**2 * vt for s, (*_, vt) in zip(share, usable)),
        pairs=tuple((c, t) for c, t, *_ in usable),
    )


def _pooled_reason(control: Sample, candidate: Sample) -> str | None:
    if not (control.n and candidate.n) or not (_has_denominator(control) and _has_denominator(candidate)):
        return reasons.EMPTY_ARM
    if control.n <= 1 or candidate.n <= 1:
        return reasons.N_TOO_SMALL
    return None


def _sized(control: Sample, candidate: Sample) -> bool:
    return all(s.n > 1 and _has_denominator(s) for s in (control, candidate))


def _has_denominator(sample: Sample) -> bool:
    return not sample.is_ratio or sample.den_sum > 0


def _positive(value: float) -> bool:
    return math.isfinite(value) and value > 0


def _degenerate(controls: Sequence[Sample], candidates: Sequence[Sample], reason: str) -> Estimate:
    control, candidate = sum(controls), sum(candidates)
    return Estimate(control.n, candidate.n, control.mean, candidate.mean, math.nan, math.nan, reason=reason)
