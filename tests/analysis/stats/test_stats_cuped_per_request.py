"""CUPED for a ratio per exposure and of a built-in (issue 18): a numpy reference, statsmodels, simulation.

The denominator is the unit's requests n_u (``denominator: exposures``), the numerator
clicks or a built-in (the unit's summed latency). The reference is computed here from raw
units with numpy alone, as GrowthBook's ratio CUPED and Deng et al. 2013 (appendix B) do:
linearise each arm's ratio, z_u = R̂ + (x_u − R̂·n_u)/n̄, pool θ = Σ_arms S_zc / Σ_arms S_cc
over the arms' centred products, and take Welch's variance of z_u − θ·(c_u − c̄). statsmodels'
intercept-free OLS of z on the arm indicators and the centred covariate gives the same
estimate and, as HC0, the SE within θ's own sampling error.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import statsmodels.api as sm
from scipy import stats as sps

from abrouter.analysis.stats.compare import Comparison, compare
from abrouter.analysis.stats.sample import Sample

Units = tuple[np.ndarray, np.ndarray, np.ndarray]
KW = dict(kind="continuous", direction="increase", alpha=0.05, expected_units=1_000, variant="t", metric="ratio")


def clicks_per_request(rng: np.random.Generator, n: int, *, lift: float = 0.0, sigma: float = 0.8) -> Units:
    """Clicks x, requests n and the clicks of a 4x longer pre-period c, per user.

    Activity λ_u ~ lognormal(0, sigma) sets both periods' requests, a propensity p_u ~
    Beta(0.5, 9.5) (5% on average) both periods' clicks.
    """
    activity, p = rng.lognormal(0, sigma, n), rng.beta(0.5, 9.5, n)
    requests = rng.poisson(3 * activity) + 1
    x = rng.binomial(requests, np.minimum(p * (1 + lift), 1.0))
    c = rng.binomial(rng.poisson(12 * activity) + 1, p)
    return x.astype(float), requests.astype(float), c.astype(float)


def latency_per_request(rng: np.random.Generator, n: int, *, lift: float = 0.0) -> Units:
    """The built-in latency_ms: a unit's summed latency x, its requests n, and its mean
    latency over 5 pre-period requests c. Each user's payloads have a scale s_u ~
    lognormal(0, 0.5); a request takes Gamma(4, 10·s_u) ms, so x_u ~ Gamma(4·n_u, 10·s_u)."""
    activity, scale = rng.lognormal(0, 0.8, n), rng.lognormal(0, 0.5, n)
    requests = rng.poisson(3 * activity) + 1
    x = rng.gamma(4 * requests, 10 * scale * (1 + lift))
    c = rng.gamma(20, 10 * scale) / 5
    return x, requests.astype(float), c


def linearised(x: np.ndarray, y: np.ndarray) -> np.ndarray:
    """z_u = R̂ + (x_u − R̂·y_u)/ȳ: mean R̂, and s²_z/n the delta-method variance of R̂."""
    ratio = x.sum() / y.sum()
    return ratio + (x - ratio * y) / y.mean()


def reference(control: Units, candidate: Units) -> tuple[float, float, float]:
    """Δ̂, its variance and the unadjusted delta-method variance, from raw units (numpy only)."""
    z = [linearised(x, y) for x, y, _ in (control, candidate)]
    c = [arm[2] for arm in (control, candidate)]
    s_zc = sum(((zi - zi.mean()) * (ci - ci.mean())).sum() for zi, ci in zip(z, c))
    s_cc = sum(((ci - ci.mean()) ** 2).sum() for ci in c)
    theta, c_bar = s_zc / s_cc, np.r_[c[0], c[1]].mean()
    adjusted = [zi - theta * (ci - c_bar) for zi, ci in zip(z, c)]
    variance = sum(a.var(ddof=1) / a.size for a in adjusted)
    return float(adjusted[1].mean() - adjusted[0].mean()), float(variance), sum(zi.var(ddof=1) / zi.size for zi in z)


def ratio_compare(control: Units, candidate: Units, *, covariate: bool = True) -> Comparison:
    if covariate:
        return compare(Sample.from_ratio(*control), Sample.from_ratio(*candidate), **KW)  # type: ignore[arg-type]
    return compare(Sample.from_ratio(*control[:2]), Sample.from_ratio(*candidate[:2]), **KW)  # type: ignore[arg-type]


def reported_se(r: Comparison, control: Units, candidate: Units) -> float:
    """The SE behind the fixed-horizon CI: the t quantile at Kish's effective units − 1."""
    df = min(Sample.from_ratio(a[0], a[1]).effective_denominator_units for a in (control, candidate)) - 1
    return (r.absolute_ci[1] - r.absolute_ci[0]) / 2 / float(sps.t.isf(0.025, df))


@pytest.mark.parametrize("units", [clicks_per_request, latency_per_request])
def test_the_adjusted_ratio_and_its_se_are_the_numpy_reference_and_the_regression(units) -> None:  # type: ignore[no-untyped-def]
    rng = np.random.default_rng(31)
    control, candidate = units(rng, 2_500), units(rng, 3_500, lift=0.05)
    r = ratio_compare(control, candidate)
    difference, variance, plain = reference(control, candidate)
    assert r.cuped and r.absolute_lift == pytest.approx(difference, rel=1e-9)
    assert reported_se(r, control, candidate) == pytest.approx(math.sqrt(variance), rel=1e-9)
    assert r.variance_reduction == pytest.approx(1 - variance / plain, rel=1e-9)
    assert r.variance_reduction > 0.1
    # statsmodels: the arm contrast of z ~ arm_c + arm_t + (c − c̄), HC0. Its SE also carries
    # θ's sampling error, O(1/n): within 0.5%.
    z = np.r_[linearised(*control[:2]), linearised(*candidate[:2])]
    c = np.r_[control[2], candidate[2]]
    arm = np.r_[np.zeros(control[0].size), np.ones(candidate[0].size)]
    fit = sm.OLS(z, np.column_stack([1 - arm, arm, c - c.mean()])).fit(cov_type="HC0")
    contrast = np.array([-1.0, 1.0, 0.0])
    assert r.absolute_lift == pytest.approx(contrast @ fit.params, rel=1e-9)
    assert (r.control_mean, r.mean) == pytest.approx((fit.params[0], fit.params[1]), rel=1e-9)
    hc0 = math.sqrt(contrast @ fit.cov_params() @ contrast)
    assert reported_se(r, control, candidate) == pytest.approx(hc0, rel=0.005)


RUNS = 1_000


@pytest.mark.parametrize(("units", "least_reduction"), [(clicks_per_request, 0.2), (latency_per_request, 0.3)])
def test_aa_coverage_and_the_variance_reduction_by_simulation(units, least_reduction: float) -> None:  # type: ignore[no-untyped-def]
    # 1,000 A/A experiments of 800 users per arm: the adjusted 95% CI covers 0 in ≥ 93% and at
    # most 95% + 3 MC SE (± 0.69% per SE); the variance reduction compare() reports (its mean
    # over runs) is the true one, 1 − var(adjusted lift)/var(unadjusted lift) across runs,
    # within 3 MC SE of a variance ratio.
    rng = np.random.default_rng(18)
    covered, reported, adjusted, raw = 0, [], [], []
    for _ in range(RUNS):
        arms = units(rng, 800), units(rng, 800)
        r, p = ratio_compare(*arms), ratio_compare(*arms, covariate=False)
        assert r.cuped and not p.cuped
        covered += r.absolute_ci[0] <= 0 <= r.absolute_ci[1]
        reported.append(r.variance_reduction)
        adjusted.append(r.absolute_lift)
        raw.append(p.absolute_lift)
    rate, se = covered / RUNS, math.sqrt(0.05 * 0.95 / RUNS)
    assert 0.93 <= rate <= 0.95 + 3 * se, f"coverage {rate:.3f} ± {se:.3f}"
    true = 1 - np.var(adjusted) / np.var(raw)
    ratio_se = (1 - true) * math.sqrt(2 / RUNS)  # MC error of a variance ratio (upper bound)
    assert abs(true - float(np.mean(reported))) < 3 * ratio_se, f"true {true:.3f}, reported {np.mean(reported):.3f}"
    assert float(np.mean(reported)) > least_reduction
