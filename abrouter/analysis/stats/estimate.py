"""The estimate of candidate − control, combined over weight-epoch strata.

Why stratify: when the weights change during an experiment, the arms' traffic mixes differ
between epochs. If the metric also drifts between epochs, pooling the epochs compares
different populations and can even reverse the sign (Simpson's paradox). Each epoch is a
randomised experiment of its own, so we estimate the difference per epoch and combine:

    w_s = 1 / (σ²_c/n_c,s + σ²_t/n_t,s),   Δ̂ = Σ w_s Δ̂_s / Σ w_s,
    Var(Δ̂) = Σ w_s² (V_c,s + V_t,s) / (Σ w_s)²,

where σ²_arm = N·V(pooled arm) is the per-unit variance of the arm pooled over the usable
strata, and V_s the stratum's own variance of the mean. These are inverse-variance weights
under a variance that is constant across epochs, and with equal arm variances they are the
Mantel–Haenszel weights n_c·n_t/(n_c + n_t). Why not each stratum's own estimated variance:
for a binary metric the estimated variance p̂(1 − p̂)/n rises with p̂, so strata where the
candidate happened to do well get less weight. With rare outcomes in many small epochs
(bandit mode) that biased the difference by −13% and its variance by −15% (simulated:
p = 1% vs 1.2%, ten epochs of 200–800 units per arm); with the pooled σ² both are within
simulation error (`test_epoch_weights_do_not_bias_rare_binary_outcomes`).

The arm means are combined with the same weights (so mean − control_mean = Δ̂) and their
variances are Σ w_s² V_s / (Σ w_s)², which the delta method for the relative lift needs.
Strata where either arm has n <= 1 (or no denominator) or the difference has no variance
are skipped.

Binary arms also get a *floored* variance, max(p(1 − p)/N, p̃(1 − p̃)/(N + 2)) with the
Agresti–Caffo plus-one p̃ = (s + 1)/(N + 2) (`floored_variance`). The weights and the point
estimate use the plain variance (so the fixed-horizon CI matches the Wald interval), but the
sequential test and its confidence sequences use the floored one, combined with the same
weights: an arm with 0 (or all) conversions has a zero Wald variance, which would make the
sequential test fire on a handful of events.

The clock of the sequential test is the *effective* units per arm,
n_eff = Σ_s 2·n_c,s·n_t,s/(n_c,s + n_t,s). With a common unit variance σ², a stratum has
V_s = σ²(1/n_c,s + 1/n_t,s) = 2σ²/n_eff,s and the combination 1/V = Σ 1/V_s, so
V = 2σ²/n_eff and τ² = V·r stays constant across looks with r ∝ n_eff, whatever the split.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
from numpy.typing import ArrayLike

from abrouter.analysis.stats import reasons
from abrouter.analysis.stats.sample import Sample

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
    #: The arm variances for the sequential test (binary: floored); None = the plain ones.
    seq_var_control: float | None = None
    seq_var_candidate: float | None = None

    @property
    def units_per_arm(self) -> float:
        """The effective units per arm, the clock of the sequential test (`effective_units`)."""
        if not self.pairs:
            return float(effective_units(self.n_control, self.n))
        # One vectorised call: a bandit's many epochs made the per-pair calls a hot spot.
        n = np.array([(c.n, t.n) for c, t in self.pairs], dtype=float)
        return float(effective_units(n[:, 0], n[:, 1]).sum())

    @property
    def sequential_variance(self) -> float:
        """Var(Δ̂) for the sequential test and confidence sequences (floored for binary)."""
        vc = self.var_control if self.seq_var_control is None else self.seq_var_control
        vt = self.var_candidate if self.seq_var_candidate is None else self.seq_var_candidate
        return vc + vt

    @property
    def sequential_relative_variance(self) -> float:
        """The delta-method relative variance with the sequential (floored) arm variances."""
        c = self.control_mean
        vc = self.var_control if self.seq_var_control is None else self.seq_var_control
        vt = self.var_candidate if self.seq_var_candidate is None else self.seq_var_candidate
        if not c:
            return math.nan
        return vt / c**2 + self.mean**2 * vc / c**4

    def log_relative_interval(self, quantile: float) -> tuple[float, float]:
        """The relative CI on the log scale: exp(log(m_t/m_c) ± q·√(V_t/m_t² + V_c/m_c²)) − 1.

        For ratio metrics: the ratio of two means is skewed, and with heavy-tailed exposures
        the symmetric delta-method interval covered 83–91% where this covers 93–94% (issue
        18, finding 5). The symmetric one when a mean is not positive.
        """
        mc, mt = self.control_mean, self.mean
        if not (mc > 0 and mt > 0):
            half = quantile * math.sqrt(self.relative_variance)
            return (self.relative - half, self.relative + half)
        half = quantile * math.sqrt(self.var_candidate / mt**2 + self.var_control / mc**2)
        centre = math.log(mt / mc)
        return (math.expm1(centre - half), math.expm1(centre + half))

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


def floored_variance(kind: str) -> Variance:
    """`arm_variance`, floored for binary metrics by the plus-one binomial variance.

    max(plain, p̃(1 − p̃)/(N + 2)) with p̃ = (s + 1)/(N + 2) (Agresti–Caffo), N the units or,
    for ratio metrics, the denominator. Never zero for a binary arm with data.
    """
    plain = arm_variance(kind)

    def variance(sample: Sample) -> float:
        value = plain(sample)
        if kind != "binary" or not math.isfinite(value):
            return value
        trials = sample.den_sum if sample.den_sum is not None else sample.n
        p = (sample.sum + 1) / (trials + 2)
        return max(value, p * (1 - p) / (trials + 2))

    return variance


def effective_units(n_control: ArrayLike, n_candidate: ArrayLike) -> np.ndarray:
    """2·n_c·n_t/(n_c + n_t): the units per arm of a balanced split with the same 1/n_c + 1/n_t.

    Broadcasts over numpy arrays; 0 when either arm is empty.
    """
    n_c, n_t = np.asarray(n_control, dtype=float), np.asarray(n_candidate, dtype=float)
    total = n_c + n_t
    with np.errstate(divide="ignore", invalid="ignore"):
        return np.where(total > 0, 2 * n_c * n_t / np.where(total > 0, total, 1.0), 0.0)


def combine(
    controls: Sequence[Sample],
    candidates: Sequence[Sample],
    variance: Variance,
    sequential_variance: Variance | None = None,
) -> Estimate:
    """Weighted combination of per-stratum differences (see the module docstring).

    `variance` sets the weights and the plain variances; `sequential_variance` (optional)
    gives the arm variances for the sequential test, combined with the same weights.
    """
    reason = _pooled_reason(_total(controls), _total(candidates))
    sized = [pair for pair in zip(controls, candidates) if _sized(*pair)]
    usable = [(c, t, variance(c), variance(t)) for c, t in sized]
    usable = [u for u in usable if _positive(u[2] + u[3])]
    reason = reason or (reasons.N_TOO_SMALL if not sized else None)
    reason = reason or (reasons.ZERO_VARIANCE if not usable else None)
    if reason:
        return _degenerate(controls, candidates, reason)
    return _weighted(usable, variance, sequential_variance)


def _weighted(
    usable: list[tuple[Sample, Sample, float, float]], variance: Variance, sequential_variance: Variance | None
) -> Estimate:
    weights = _epoch_weights([(c, t) for c, t, *_ in usable], variance)
    total = sum(weights)
    share = [w / total for w in weights]
    seq: dict[str, Any] = {}
    if sequential_variance is not None:
        seq = dict(
            seq_var_control=sum(s**2 * sequential_variance(c) for s, (c, *_) in zip(share, usable)),
            seq_var_candidate=sum(s**2 * sequential_variance(t) for s, (_, t, *_) in zip(share, usable)),
        )
    return Estimate(
        n_control=sum(c.n for c, *_ in usable),
        n=sum(t.n for _, t, *_ in usable),
        control_mean=sum(s * c.mean for s, (c, *_) in zip(share, usable)),
        mean=sum(s * t.mean for s, (_, t, *_) in zip(share, usable)),
        var_control=sum(s**2 * vc for s, (_, _, vc, _) in zip(share, usable)),
        var_candidate=sum(s**2 * vt for s, (*_, vt) in zip(share, usable)),
        pairs=tuple((c, t) for c, t, *_ in usable),
        **seq,
    )


def _epoch_weights(pairs: list[tuple[Sample, Sample]], variance: Variance) -> list[float]:
    """1/(σ²_c/n_c,s + σ²_t/n_t,s) with per-unit variances σ² of the arms pooled over the strata.

    The weights depend on the strata's sizes, not on their outcomes (see the module docstring).
    """
    if len(pairs) == 1:
        return [1.0]
    sigma2_c, sigma2_t = (_unit_variance(_total(arm), variance) for arm in zip(*pairs))
    if not sigma2_c + sigma2_t > 0:  # cannot happen with a usable stratum; equal variances then
        sigma2_c = sigma2_t = 1.0
    return [1 / (sigma2_c / c.n + sigma2_t / t.n) for c, t in pairs]


def _unit_variance(pooled: Sample, variance: Variance) -> float:
    value = pooled.n * variance(pooled)
    return value if math.isfinite(value) else 0.0


def _total(samples: Sequence[Sample]) -> Sample:
    """The samples pooled (`Sample` adds; an empty sequence cannot occur: every arm has a stratum)."""
    first, *rest = samples
    return sum(rest, first)


def _pooled_reason(control: Sample, candidate: Sample) -> str | None:
    if not (control.n and candidate.n) or not (_has_denominator(control) and _has_denominator(candidate)):
        return reasons.EMPTY_ARM
    if control.n <= 1 or candidate.n <= 1:
        return reasons.N_TOO_SMALL
    return None


def _sized(control: Sample, candidate: Sample) -> bool:
    return all(s.n > 1 and _has_denominator(s) for s in (control, candidate))


def _has_denominator(sample: Sample) -> bool:
    return sample.den_sum is None or sample.den_sum > 0


def _positive(value: float) -> bool:
    return math.isfinite(value) and value > 0


def _degenerate(controls: Sequence[Sample], candidates: Sequence[Sample], reason: str) -> Estimate:
    control, candidate = _total(controls), _total(candidates)
    return Estimate(control.n, candidate.n, control.mean, candidate.mean, math.nan, math.nan, reason=reason)
