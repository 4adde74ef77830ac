"""CUPED: the difference of means adjusted by a pre-exposure covariate (Deng et al. 2013).

Pure, numpy only. Each unit u has its metric x_u and a covariate c_u measured before
the experiment (e.g. its clicks in the 28 days before), so c is independent of the arm.
Within one weight-epoch stratum, with the arms' *centred* sums

    S_xc = Σx_u·c_u − Σx_u·Σc_u / n,   S_cc = Σc_u² − (Σc_u)² / n       (per arm),

θ is pooled across the two arms, as Deng et al. and GrowthBook do:

    θ = (S_xc,control + S_xc,candidate) / (S_cc,control + S_cc,candidate),

the within-arm least-squares slope of x on c. Each unit's adjusted value is
y_u = x_u − θ·(c_u − c̄), c̄ the stratum's mean covariate over both arms, and

    Δ̂_cuped = ȳ_t − ȳ_c = (x̄_t − x̄_c) − θ·(c̄_t − c̄_c),
    V_cuped  = s²_y,t / n_t + s²_y,c / n_c,   s²_y = s²_x − 2θ·s_xc + θ²·s²_c   (per arm, ddof 1).

Δ̂_cuped is the treatment coefficient of the regression x ~ 1 + arm + c (ANCOVA), exactly;
V_cuped is Welch's variance of the adjusted values, ignoring θ's own sampling error
(O(1/n), as Deng et al. do). With correlation ρ between x and c, V_cuped ≈ (1 − ρ²)·V.

The adjusted values' sums are exact functions of the stored sums (Σx, Σx², Σc, Σc², Σxc):

    Σy  = Σx − θ·(Σc − n·c̄),
    Σy² = Σx² − 2θ·(Σxc − c̄·Σx) + θ²·(Σc² − 2c̄·Σc + n·c̄²),

so `adjust` turns each stratum's two `Sample`s into two plain mean `Sample`s of y, and
everything downstream (the epoch weights, the fixed-horizon and the sequential test, the
Bayesian summaries) runs unchanged on them (`compare.compare`).

`adjusted_difference` is the vectorised core, for simulations: it broadcasts over numpy
arrays of sums (`Sums`), one stratum per element.

**Ratio metrics** (issue 18). R = Σx_u/Σy_u has no per-unit value to adjust, but the delta
method gives one: per arm, with R̂ = Σx/Σy and ȳ = Σy/n, the linearised unit value

    z_u = R̂ + (x_u − R̂·y_u)/ȳ

has mean exactly R̂, and its Welch variance s²_z/n is the delta-method variance of R̂
(`Sample.mean_variance`). CUPED on z is then CUPED for the ratio, by the delta method as
Deng et al. 2013 (appendix B) and GrowthBook's CUPED for ratio metrics do: θ pooled as
above from S_zc = (S_xc − R̂·S_yc)/ȳ, R̂_adj = R̂ − θ·(c̄_arm − c̄), and

    Var(R̂_adj) = (s²_z − 2θ·s_zc + θ²·s²_c)/n   per arm.

Every sum of z follows from the stored ones (`linearised`), Σy·c being the one a ratio adds
(`Sample.den_cov_products`), so a ratio stratum enters `adjust` like a mean one. The
linearisation ignores the sampling error of R̂ and ȳ inside z (O(1/n), as the delta method
does); Δ̂ is the arm contrast of the intercept-free regression z ~ arm_c + arm_t + (c − c̄)
and V its robust variance (`tests/analysis/stats/test_stats_cuped_ratio.py`). With
heavy-tailed exposures the few units that carry Σy still carry z, so `compare` keeps the
t quantile at Kish's effective units of the raw denominators.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
from numpy.typing import ArrayLike

from abrouter.analysis.stats import estimate, regression
from abrouter.analysis.stats.sample import Sample

Array = np.ndarray


@dataclass(frozen=True)
class Sums:
    """One arm's sums of a metric and its covariate; every field broadcasts (arrays of strata/runs)."""

    n: ArrayLike
    sum: ArrayLike
    sum_sq: ArrayLike
    cov_sum: ArrayLike
    cov_sum_sq: ArrayLike
    cov_products: ArrayLike

    @classmethod
    def from_units(cls, x: ArrayLike, c: ArrayLike, axis: int = -1) -> Sums:
        """The sums of raw per-unit values x and covariates c, summed along `axis`."""
        xa, ca = np.asarray(x, dtype=float), np.asarray(c, dtype=float)
        return cls(
            n=np.asarray(xa.shape[axis], dtype=float),
            sum=xa.sum(axis=axis),
            sum_sq=(xa**2).sum(axis=axis),
            cov_sum=ca.sum(axis=axis),
            cov_sum_sq=(ca**2).sum(axis=axis),
            cov_products=(xa * ca).sum(axis=axis),
        )

    @classmethod
    def of(cls, s: Sample) -> Sums:
        """A mean Sample's sums; a ratio Sample's are those of its linearised values (`linearised`)."""
        if not s.has_covariate:
            raise ValueError("the sample carries no covariate sums")
        if s.is_ratio:
            return RatioSums(
                s.n, s.sum, s.effective_sum_sq, s.den_sum, s.den_sum_sq, s.sum_products,  # type: ignore[arg-type]
                s.cov_sum, s.cov_sum_sq, s.cov_products, s.den_cov_products,  # type: ignore[arg-type]
            ).linearised()  # fmt: skip
        return cls(s.n, s.sum, s.effective_sum_sq, s.cov_sum, s.cov_sum_sq, s.cov_products)  # type: ignore[arg-type]


@dataclass(frozen=True)
class RatioSums:
    """One arm's sums of a ratio Σx/Σy and the covariate c; every field broadcasts."""

    n: ArrayLike
    sum: ArrayLike
    sum_sq: ArrayLike
    den_sum: ArrayLike
    den_sum_sq: ArrayLike
    sum_products: ArrayLike
    cov_sum: ArrayLike
    cov_sum_sq: ArrayLike
    cov_products: ArrayLike
    den_cov_products: ArrayLike

    @classmethod
    def from_units(cls, x: ArrayLike, y: ArrayLike, c: ArrayLike, axis: int = -1) -> RatioSums:
        """The sums of raw per-unit numerators x, denominators y and covariates c along `axis`."""
        xa, ya, ca = (np.asarray(v, dtype=float) for v in (x, y, c))
        return cls(
            np.asarray(xa.shape[axis], dtype=float),
            *(v.sum(axis=axis) for v in (xa, xa**2, ya, ya**2, xa * ya, ca, ca**2, xa * ca, ya * ca)),
        )

    def linearised(self) -> Sums:
        """The sums of z_u = R̂ + (x_u − R̂·y_u)/ȳ (the module docstring), with the covariate's.

        Σz = n·R̂, Σz² = n·R̂² + (Σx² − 2R̂·Σxy + R̂²·Σy²)/ȳ², Σz·c = R̂·Σc + (Σxc − R̂·Σyc)/ȳ.
        NaN where the arm has no denominator.
        """
        n, sx, sy = (np.asarray(v, dtype=float) for v in (self.n, self.sum, self.den_sum))
        with np.errstate(divide="ignore", invalid="ignore"):
            r, ybar = sx / sy, sy / n
            dd = np.asarray(self.sum_sq) - 2 * r * np.asarray(self.sum_products) + r**2 * np.asarray(self.den_sum_sq)
            zc = (
                r * np.asarray(self.cov_sum)
                + (np.asarray(self.cov_products) - r * np.asarray(self.den_cov_products)) / ybar
            )
            return Sums(n, n * r, n * r**2 + np.maximum(dd, 0.0) / ybar**2, self.cov_sum, self.cov_sum_sq, zc)


@dataclass(frozen=True)
class Difference:
    """What `adjusted_difference` returns, element-wise."""

    #: Δ̂_cuped and its variance.
    difference: Array
    variance: Array
    #: The unadjusted Δ̂ = x̄_t − x̄_c and its Welch variance, for the variance reduction.
    raw_difference: Array
    raw_variance: Array
    theta: Array

    @property
    def variance_reduction(self) -> Array:
        """1 − V_cuped / V: the share of the variance the covariate removed (≈ ρ²)."""
        with np.errstate(divide="ignore", invalid="ignore"):
            return 1 - self.variance / self.raw_variance


def theta(control: Sums, candidate: Sums) -> Array:
    """The slope pooled across arms, (S_xc,c + S_xc,t)/(S_cc,c + S_cc,t); 0 where S_cc is 0."""
    sxc = _centred(control, "xc") + _centred(candidate, "xc")
    scc = _centred(control, "cc") + _centred(candidate, "cc")
    with np.errstate(divide="ignore", invalid="ignore"):
        return np.where(scc > 0, sxc / np.where(scc > 0, scc, 1.0), 0.0)


def adjusted_sums(control: Sums, candidate: Sums) -> tuple[Array, Array, Array, Array, Array]:
    """θ and each arm's (Σy, Σy²) of y = x − θ·(c − c̄) (the module docstring's formulas)."""
    t = theta(control, candidate)
    n_c, n_t = np.asarray(control.n, dtype=float), np.asarray(candidate.n, dtype=float)
    with np.errstate(divide="ignore", invalid="ignore"):
        cbar = (np.asarray(control.cov_sum) + np.asarray(candidate.cov_sum)) / (n_c + n_t)
    cbar = np.where(np.isfinite(cbar), cbar, 0.0)
    out = [t]
    for arm, n in ((control, n_c), (candidate, n_t)):
        sx, sxx = np.asarray(arm.sum, dtype=float), np.asarray(arm.sum_sq, dtype=float)
        sc, scc, sxc = (np.asarray(v, dtype=float) for v in (arm.cov_sum, arm.cov_sum_sq, arm.cov_products))
        out.append(sx - t * (sc - n * cbar))
        out.append(sxx - 2 * t * (sxc - cbar * sx) + t**2 * (scc - 2 * cbar * sc + n * cbar**2))
    return out[0], out[1], out[2], out[3], out[4]


def adjusted_difference(control: Sums, candidate: Sums) -> Difference:
    """Δ̂_cuped, V_cuped and the unadjusted Δ̂, V, element-wise over arrays of one-stratum sums.

    NaN where an arm has n <= 1. This is the function a simulation calls; `compare()`
    reaches the same numbers through `adjust` and the stratified combination.
    """
    t, sy_c, syy_c, sy_t, syy_t = adjusted_sums(control, candidate)
    n_c, n_t = np.asarray(control.n, dtype=float), np.asarray(candidate.n, dtype=float)
    with np.errstate(divide="ignore", invalid="ignore"):
        diff = sy_t / n_t - sy_c / n_c
        var = _mean_var(n_c, sy_c, syy_c) + _mean_var(n_t, sy_t, syy_t)
        raw = np.asarray(candidate.sum) / n_t - np.asarray(control.sum) / n_c
        raw_var = _mean_var(n_c, np.asarray(control.sum), np.asarray(control.sum_sq)) + _mean_var(
            n_t, np.asarray(candidate.sum), np.asarray(candidate.sum_sq)
        )
    return Difference(difference=diff, variance=var, raw_difference=raw, raw_variance=raw_var, theta=t)


def adjust(control: Sample, candidate: Sample) -> tuple[Sample, Sample, float]:
    """One stratum's two Samples as plain mean Samples of the adjusted values y, and θ."""
    t, sy_c, syy_c, sy_t, syy_t = adjusted_sums(Sums.of(control), Sums.of(candidate))
    return (
        Sample(n=control.n, sum=float(sy_c), sum_sq=float(syy_c)),
        Sample(n=candidate.n, sum=float(sy_t), sum_sq=float(syy_t)),
        float(t),
    )


@dataclass(frozen=True)
class Adjustment:
    """The strata of both arms with x replaced by y, ready for `estimate.combine`."""

    controls: tuple[Sample, ...]
    candidates: tuple[Sample, ...]
    #: θ per stratum (0 where the stratum was too small to adjust).
    thetas: tuple[float, ...]
    #: Binary metrics: per adjusted Sample (by identity), the floor the sequential test adds.
    floors: dict[int, float]

    def sequential_variance(self) -> estimate.Variance:
        """The adjusted arm variance plus, for binary metrics, the unadjusted floor's excess.

        The sequential test floors a binary arm's variance (`estimate.floored_variance`) so
        that it cannot fire on a handful of conversions. Under CUPED the same absolute
        excess (floored − plain, 0 once there are enough conversions) is added to the
        adjusted variance: as conservative as without the covariate.
        """
        plain, floors = estimate.arm_variance("continuous"), self.floors
        return lambda s: plain(s) + floors.get(id(s), 0.0)


def adjust_strata(controls: Sequence[Sample], candidates: Sequence[Sample], *, kind: str) -> Adjustment | None:
    """Every stratum adjusted, or None when CUPED cannot apply.

    None when a stratum with units lacks the covariate's sums, or when the covariate has no
    within-arm variance in any stratum (nobody reported one): then the unadjusted analysis
    stands unchanged. Strata with n <= 1 (or a ratio's without a denominator) are passed
    through; the combination skips them. Ratio strata become mean Samples of their adjusted
    linearised values (the module docstring).
    """
    sized = [(c, t) for c, t in zip(controls, candidates) if _sized(c, t)]
    if sized and all(c.covariates is not None and t.covariates is not None for c, t in sized):
        return _by_regression(controls, candidates, kind=kind)  # [regression] several covariates
    if not sized or not all(c.has_covariate and t.has_covariate for c, t in sized):
        return None
    if not any(float(_centred(Sums.of(c), "cc") + _centred(Sums.of(t), "cc")) > 0 for c, t in sized):
        return None
    out_c, out_t, thetas, floors = [], [], [], {}
    plain, floored = estimate.arm_variance(kind), estimate.floored_variance(kind)
    for c, t in zip(controls, candidates):
        if not _sized(c, t):
            out_c.append(_passed_through(c))
            out_t.append(_passed_through(t))
            thetas.append(0.0)
            continue
        yc, yt, th = adjust(c, t)
        if kind == "binary":
            for raw, adjusted in ((c, yc), (t, yt)):
                floors[id(adjusted)] = max(floored(raw) - plain(raw), 0.0)
        out_c.append(yc)
        out_t.append(yt)
        thetas.append(th)
    return Adjustment(tuple(out_c), tuple(out_t), tuple(thetas), floors)


def _by_regression(controls: Sequence[Sample], candidates: Sequence[Sample], *, kind: str) -> Adjustment | None:
    """[regression] Every stratum adjusted by its k covariates (`regression`), as `adjust_strata` does by one.

    A stratum the regression cannot fit (too small, collinear covariates) passes through
    unadjusted; None when none could be fitted. `thetas` holds each stratum's first slope.
    """
    out_c, out_t, thetas, floors = [], [], [], {}
    plain, floored = estimate.arm_variance(kind), estimate.floored_variance(kind)
    for c, t in zip(controls, candidates):
        fit = regression.adjust(c.covariates, t.covariates) if c.covariates and t.covariates else None
        if fit is None or not _sized(c, t):
            out_c.append(_passed_through(c))
            out_t.append(_passed_through(t))
            thetas.append(0.0)
            continue
        assert c.covariates is not None and t.covariates is not None  # `fit` needs them
        fitted = regression.samples_of(c.covariates, t.covariates, fit)
        if kind == "binary":
            for raw, adjusted in zip((c, t), fitted):
                floors[id(adjusted)] = max(floored(raw) - plain(raw), 0.0)
        out_c.append(fitted[0])
        out_t.append(fitted[1])
        thetas.append(fit.theta[0])
    if not any(th for th in thetas):
        return None
    return Adjustment(tuple(out_c), tuple(out_t), tuple(thetas), floors)


def _sized(control: Sample, candidate: Sample) -> bool:
    """Both arms have n > 1 and, for a ratio, a denominator: the stratum can be adjusted."""
    return all(s.n > 1 and (not s.is_ratio or bool(s.den_sum)) for s in (control, candidate))


def _passed_through(s: Sample) -> Sample:
    """A stratum too small to adjust, as a mean Sample the combination skips (a ratio: no spread)."""
    if s.is_ratio:
        return Sample(n=s.n, sum=0.0, sum_sq=0.0)
    return Sample(n=s.n, sum=s.sum, sum_sq=s.effective_sum_sq)


def _centred(s: Sums, which: str) -> Array:
    n = np.asarray(s.n, dtype=float)
    with np.errstate(divide="ignore", invalid="ignore"):
        if which == "xc":
            value = np.asarray(s.cov_products) - np.asarray(s.sum) * np.asarray(s.cov_sum) / n
        else:
            value = np.asarray(s.cov_sum_sq) - np.asarray(s.cov_sum) ** 2 / n
    return np.where(n > 0, value, 0.0)


def _mean_var(n: Array, s: Array, ss: Array) -> Array:
    """s²/n with ddof 1 from sums; rounding below 0 is clipped; NaN for n <= 1."""
    with np.errstate(divide="ignore", invalid="ignore"):
        v = np.maximum((ss - s**2 / n) / (n - 1), 0.0) / n
    return np.where(n > 1, v, np.nan)
