"""Regression adjustment with k pre-exposure covariates (CUPED with a vector), from sufficient statistics.

Pure, numpy only. CUPED (`cuped`) adjusts a metric x by one covariate c; Statsig's CURE,
Eppo's CUPED++ and GrowthBook's post-stratification-free regression adjustment use several
(pre-experiment values of other metrics, assignment properties). Per arm and stratum the
sums it needs are

    n, Σx, Σx², Σc (k), Σx·c (k), Σc·cᵀ (k × k),

the vector form of the ones the router keeps for its one covariate (`multisums.MultiSums`,
which a `Sample` carries as `covariates`). With the
arms' centred sums S_cc = Σccᵀ − ΣcΣcᵀ/n, S_xc = Σxc − Σx·Σc/n, S_xx = Σx² − (Σx)²/n, the
slopes are pooled across the two arms (the within-arm least squares, as `cuped` pools its θ):

    θ = (S_cc,c + S_cc,t)⁻¹ (S_xc,c + S_xc,t),
    Δ̂ = (x̄_t − x̄_c) − θᵀ(c̄_t − c̄_c).

By Frisch–Waugh–Lovell Δ̂ is exactly the treatment coefficient of the ordinary least squares
fit x ~ 1 + T + c₁ + … + c_k (ANCOVA; `tests/analysis/stats/test_stats_regression.py`
checks it against statsmodels OLS). Its variance, two ways:

- `ols_variance`: the regression's own, σ̂²·[(XᵀX)⁻¹]_TT with σ̂² = RSS/(n_c + n_t − k − 2),
  RSS = S_xx,c + S_xx,t − θᵀ(S_xc,c + S_xc,t) and [(XᵀX)⁻¹]_TT = 1/n_c + 1/n_t +
  dᵀ(S_cc,c + S_cc,t)⁻¹d, d = c̄_t − c̄_c (the block inverse with arm dummies): exactly
  statsmodels' non-robust standard error, θ's sampling error included; it assumes one
  residual variance in both arms.
- `variance`: Welch's variance of the adjusted values y_u = x_u − θᵀ(c_u − c̄), per arm
  s²_y = (S_xx − 2θᵀS_xc + θᵀS_ccθ)/(n − 1), s²_y,t/n_t + s²_y,c/n_c: unequal residual
  variances allowed, θ's own error (O(k/n)) ignored, as `cuped` does for k = 1, with which
  it agrees exactly.

`adjusted_samples` turns a stratum into two plain mean `Sample`s of y, so everything
downstream (epoch weights, the fixed-horizon and sequential tests) runs on them unchanged:

    Σy = Σx − θᵀ(Σc − n·c̄),
    Σy² = Σx² − 2θᵀ(Σxc − c̄·Σx) + θᵀ(Σccᵀ − c̄Σcᵀ − Σc c̄ᵀ + n·c̄c̄ᵀ)θ,

c̄ the stratum's mean covariate vector over both arms. A singular pooled S_cc (a constant
or collinear covariate) gives no adjustment (None): the caller falls back to the raw means.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from abrouter.analysis.stats.multisums import MultiSums
from abrouter.analysis.stats.sample import Sample

#: The pooled covariate matrix must be this well conditioned (reciprocal condition number).
MIN_RCOND = 1e-12


@dataclass(frozen=True)
class Adjusted:
    """One stratum's regression-adjusted comparison (module docstring)."""

    #: The pooled slopes, one per covariate.
    theta: tuple[float, ...]
    #: Δ̂: the treatment coefficient of x ~ 1 + T + c.
    difference: float
    #: Welch's variance of the adjusted values (θ taken as known).
    variance: float
    #: The OLS variance of the treatment coefficient (one residual variance, θ's error included).
    ols_variance: float
    #: The control's and candidate's adjusted means (each arm's x̄ − θᵀ(c̄_arm − c̄)).
    means: tuple[float, float]


def adjust(control: MultiSums, candidate: MultiSums) -> Adjusted | None:
    """The pooled-slope regression adjustment of one stratum, or None when it cannot be fitted."""
    if control.k != candidate.k or control.k == 0 or min(control.n, candidate.n) < 2:
        return None
    k, n = control.k, control.n + candidate.n
    if n - k - 2 <= 0:
        return None
    (xx_c, xc_c, cc_c), (xx_t, xc_t, cc_t) = control.centred(), candidate.centred()
    pooled = cc_c + cc_t
    if not _invertible(pooled):
        return None
    theta = np.linalg.solve(pooled, xc_c + xc_t)
    overall = (np.asarray(control.cov_sum) + np.asarray(candidate.cov_sum)) / n
    means = tuple(arm.mean - float(theta @ (arm.cov_mean - overall)) for arm in (control, candidate))
    d = candidate.cov_mean - control.cov_mean
    rss = xx_c + xx_t - float(theta @ (xc_c + xc_t))
    leverage = 1 / control.n + 1 / candidate.n + float(d @ np.linalg.solve(pooled, d))
    welch = sum(_residual(xx, xc, cc, theta) / (arm.n - 1) / arm.n for arm, (xx, xc, cc) in
                ((control, (xx_c, xc_c, cc_c)), (candidate, (xx_t, xc_t, cc_t))))  # fmt: skip
    return Adjusted(
        theta=tuple(theta.tolist()),
        difference=means[1] - means[0],
        variance=welch,
        ols_variance=max(rss, 0.0) / (n - k - 2) * leverage,
        means=(means[0], means[1]),
    )


def adjusted_samples(control: MultiSums, candidate: MultiSums) -> tuple[Sample, Sample] | None:
    """The stratum's two arms as mean Samples of the adjusted values y (module docstring), or None."""
    fit = adjust(control, candidate)
    return None if fit is None else samples_of(control, candidate, fit)


def samples_of(control: MultiSums, candidate: MultiSums, fit: Adjusted) -> tuple[Sample, Sample]:
    """The stratum's arms as mean Samples of the values `fit` adjusted (`adjust` of the same sums)."""
    theta = np.asarray(fit.theta)
    overall = (np.asarray(control.cov_sum) + np.asarray(candidate.cov_sum)) / (control.n + candidate.n)
    return _samples_of_y(control, theta, overall), _samples_of_y(candidate, theta, overall)


def _samples_of_y(arm: MultiSums, theta: np.ndarray, centre: np.ndarray) -> Sample:
    sc, cc = np.asarray(arm.cov_sum), np.asarray(arm.cov_cross)
    total = arm.sum - float(theta @ (sc - arm.n * centre))
    spread = cc - np.outer(centre, sc) - np.outer(sc, centre) + arm.n * np.outer(centre, centre)
    squares = arm.sum_sq - 2 * float(theta @ (np.asarray(arm.cov_products) - centre * arm.sum))
    squares += float(theta @ spread @ theta)
    # Rounding can leave Σy² a hair below (Σy)²/n when the fit is near perfect.
    return Sample(n=arm.n, sum=total, sum_sq=max(squares, total * total / arm.n))


def _residual(xx: float, xc: np.ndarray, cc: np.ndarray, theta: np.ndarray) -> float:
    """Σ(y_u − ȳ)² of one arm's adjusted values: S_xx − 2θᵀS_xc + θᵀS_ccθ (never negative)."""
    return max(xx - 2 * float(theta @ xc) + float(theta @ cc @ theta), 0.0)


def _invertible(m: np.ndarray) -> bool:
    """Finite and well conditioned: the smallest singular value above `MIN_RCOND` of the largest."""
    if not np.all(np.isfinite(m)):
        return False
    singular = np.linalg.svd(m, compute_uv=False)
    return bool(singular[0] > 0 and singular[-1] > MIN_RCOND * singular[0])
