"""CUPED for ratio metrics (stats/cuped.py, compare()): against statsmodels OLS, a bootstrap, by simulation.

The reference for the estimate and its SE is the intercept-free regression of the
linearised ratio z_u = R̂_arm + (x_u − R̂_arm·y_u)/ȳ_arm on the two arms' indicators and the
centred covariate, with statsmodels' HC0 covariance; the bootstrap resamples raw units and
recomputes everything (R̂, ȳ and θ included), so it also checks the linearisation.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import statsmodels.api as sm
from scipy import stats as sps

from abrouter.analysis.stats import cuped
from abrouter.analysis.stats.compare import compare
from abrouter.analysis.stats.sample import Sample

KW = dict(kind="continuous", direction="increase", alpha=0.05, expected_units=3_000, variant="t", metric="ctr")


def units(
    rng: np.random.Generator, n: int, *, lift: float = 0.0, sigma: float = 0.8
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Clicks x, impressions y and the clicks of a 4x longer pre-period c, per user.

    Activity λ_u ~ lognormal(0, sigma) sets both periods' impressions, a propensity
    p_u ~ Beta(0.5, 9.5) (mean 5%) both periods' clicks; ρ²(z, c) ≈ 0.37 at sigma 0.8.
    """
    activity, p = rng.lognormal(0, sigma, n), rng.beta(0.5, 9.5, n)
    y = rng.poisson(5 * activity) + 1
    x = rng.binomial(y, np.minimum(p * (1 + lift), 1.0))
    c = rng.binomial(rng.poisson(20 * activity) + 1, p)
    return x.astype(float), y.astype(float), c.astype(float)


def linearised(x: np.ndarray, y: np.ndarray) -> np.ndarray:
    ratio = x.sum() / y.sum()
    return ratio + (x - ratio * y) / y.mean()


def ratio_compare(control: tuple[np.ndarray, ...], candidate: tuple[np.ndarray, ...], **kw: object):  # type: ignore[no-untyped-def]
    return compare(Sample.from_ratio(*control), Sample.from_ratio(*candidate), **{**KW, **kw})  # type: ignore[arg-type]


def se_of(r, df: float) -> float:  # type: ignore[no-untyped-def]
    """The SE behind a comparison's fixed-horizon CI (t quantile at df)."""
    return (r.absolute_ci[1] - r.absolute_ci[0]) / 2 / float(sps.t.isf(0.025, df))


def kish_df(*arms: tuple[np.ndarray, ...]) -> float:
    return min(Sample.from_ratio(a[0], a[1]).effective_denominator_units for a in arms) - 1


def test_the_adjusted_ratio_and_its_se_are_the_regression_of_the_linearised_ratio_on_arm_and_covariate() -> None:
    rng = np.random.default_rng(3)
    control, candidate = units(rng, 3_000), units(rng, 4_000, lift=0.05)
    z = np.r_[linearised(*control[:2]), linearised(*candidate[:2])]
    c = np.r_[control[2], candidate[2]]
    arm = np.r_[np.zeros(3_000), np.ones(4_000)]
    fit = sm.OLS(z, np.column_stack([1 - arm, arm, c - c.mean()])).fit(cov_type="HC0")
    contrast = np.array([-1.0, 1.0, 0.0])
    reference, reference_se = contrast @ fit.params, math.sqrt(contrast @ fit.cov_params() @ contrast)
    r = ratio_compare(control, candidate)
    assert r.cuped and r.strata == 1
    assert r.absolute_lift == pytest.approx(reference, rel=1e-9)
    # HC0 also carries θ's sampling error; the two agree to O(1/n) (here 0.09%).
    assert se_of(r, kish_df(control, candidate)) == pytest.approx(reference_se, rel=0.005)
    # The arm means are the regression's arm coefficients: R̂_arm − θ·(c̄_arm − c̄).
    assert (r.control_mean, r.mean) == pytest.approx((fit.params[0], fit.params[1]), rel=1e-9)
    # θ = 0 (no covariate) is the delta method: the unadjusted comparison's SE.
    plain = compare(Sample.from_ratio(*control[:2]), Sample.from_ratio(*candidate[:2]), **KW)  # type: ignore[arg-type]
    delta = math.sqrt(Sample.from_ratio(*control[:2]).mean_variance + Sample.from_ratio(*candidate[:2]).mean_variance)
    assert not plain.cuped and se_of(plain, kish_df(control, candidate)) == pytest.approx(delta, rel=1e-9)
    assert r.variance_reduction == pytest.approx(1 - se_of(r, kish_df(control, candidate)) ** 2 / delta**2, rel=1e-9)


def test_the_se_matches_a_bootstrap_on_raw_units() -> None:
    # 2,000 resamples of units within each arm, R̂, ȳ and θ recomputed in each: the SD of the
    # adjusted difference over resamples is the reported SE within 5% (MC error of an SD
    # from 2,000 draws ≈ 1.6%).
    rng = np.random.default_rng(4)
    arms = units(rng, 3_000), units(rng, 3_000, lift=0.05)
    boot = []
    for x, y, c in arms:
        i = rng.integers(0, x.size, (2_000, x.size))
        boot.append(cuped.RatioSums.from_units(x[i], y[i], c[i]).linearised())
    got = cuped.adjusted_difference(boot[0], boot[1])
    r = ratio_compare(*arms)
    assert float(got.difference.std(ddof=1)) == pytest.approx(se_of(r, kish_df(*arms)), rel=0.05)
    assert float(got.raw_difference.std(ddof=1)) > float(got.difference.std(ddof=1))


RUNS = 1_000


def test_aa_coverage_and_the_variance_reduction_by_simulation() -> None:
    # 1,000 A/A experiments of 1,000 users per arm through compare(): the adjusted 95% CI
    # covers 0 at 95% ± 3 MC SE (±2.1%), the reduction it reports matches the true one
    # (var of the unadjusted over the adjusted lift across runs) within 3 MC SE, and the
    # adjusted interval is the narrower in (nearly) every run; the sequential test stays below α.
    rng = np.random.default_rng(11)
    covered, reported, adjusted, raw, narrower, sequential = 0, [], [], [], 0, 0
    for _ in range(RUNS):
        arms = units(rng, 1_000), units(rng, 1_000)
        r = ratio_compare(*arms)
        p = compare(Sample.from_ratio(*arms[0][:2]), Sample.from_ratio(*arms[1][:2]), **KW)  # type: ignore[arg-type]
        assert r.cuped and not p.cuped
        covered += r.absolute_ci[0] <= 0 <= r.absolute_ci[1]
        sequential += r.sequential_p_value < 0.05
        reported.append(r.variance_reduction)
        adjusted.append(r.absolute_lift)
        raw.append(p.absolute_lift)
        narrower += (r.absolute_ci[1] - r.absolute_ci[0]) < (p.absolute_ci[1] - p.absolute_ci[0])
    rate, se = covered / RUNS, math.sqrt(0.05 * 0.95 / RUNS)
    assert abs(rate - 0.95) < 3 * se, f"coverage {rate:.3f} ± {se:.3f}"
    true = 1 - np.var(adjusted) / np.var(raw)
    ratio_se = (1 - true) * math.sqrt(2 / RUNS)  # MC error of a variance ratio (upper bound)
    assert abs(true - float(np.mean(reported))) < 3 * ratio_se, f"true {true:.3f}, reported {np.mean(reported):.3f}"
    assert float(np.mean(reported)) > 0.25  # ρ²(z, c) ≈ 0.37 here
    assert narrower >= 0.95 * RUNS
    assert sequential / RUNS < 0.05  # the mSPRT on the adjusted estimate, one look


def test_a_ratio_stratum_without_a_denominator_is_skipped_and_strata_combine() -> None:
    rng = np.random.default_rng(5)
    control, candidate = [], []
    for n in (800, 1_200):
        for arms in (control, candidate):
            arms.append(Sample.from_ratio(*units(rng, n)))
    empty = Sample.from_ratio(np.zeros(5), np.zeros(5), np.ones(5))  # units but no impressions
    r = compare([empty, *control], [empty, *candidate], **KW)  # type: ignore[arg-type]
    assert r.cuped and r.strata == 2 and r.n_control == 2_000
    assert 0 < r.variance_reduction < 1


def test_ratio_samples_with_a_covariate_merge_and_validate() -> None:
    x, y, c = np.array([1.0, 0.0, 2.0]), np.array([3.0, 1.0, 4.0]), np.array([2.0, 0.0, 5.0])
    whole = Sample.from_ratio(x, y, c)
    assert whole.den_cov_products == 3 * 2 + 4 * 5 and whole.cov_products == 2 + 10
    assert Sample.from_ratio(x[:1], y[:1], c[:1]) + Sample.from_ratio(x[1:], y[1:], c[1:]) == whole
    assert not (whole + Sample.from_ratio(x, y)).has_covariate
    with pytest.raises(ValueError, match="go together"):
        Sample(
            n=3, sum=3, sum_sq=5, den_sum=8, den_sum_sq=26, sum_products=11, cov_sum=7, cov_sum_sq=29, cov_products=12
        )
    with pytest.raises(ValueError, match="go together"):
        Sample(n=3, sum=3, sum_sq=5, den_cov_products=1.0)


def test_a_ratio_without_reported_covariates_stays_the_unadjusted_delta_method() -> None:
    rng = np.random.default_rng(6)
    (xc, yc, _), (xt, yt, _) = units(rng, 500), units(rng, 500)
    zero = np.zeros(500)
    r = compare(Sample.from_ratio(xc, yc, zero), Sample.from_ratio(xt, yt, zero), **KW)  # type: ignore[arg-type]
    plain = compare(Sample.from_ratio(xc, yc), Sample.from_ratio(xt, yt), **KW)  # type: ignore[arg-type]
    assert not r.cuped and r.to_dict() == plain.to_dict()
