"""CUPED (stats/cuped.py and compare()): against a direct regression on raw unit data, and by simulation."""

from __future__ import annotations

import math

import numpy as np
import pytest

from abrouter.analysis.stats import cuped, sequential
from abrouter.analysis.stats.compare import compare
from abrouter.analysis.stats.sample import Sample


def _units(rng: np.random.Generator, n: int, rho: float, effect: float = 0.0) -> tuple[np.ndarray, np.ndarray]:
    """x and c with correlation rho, unit variance, and mean `effect` for x."""
    c = rng.standard_normal(n)
    x = effect + rho * c + math.sqrt(1 - rho**2) * rng.standard_normal(n)
    return x, 3.0 + 2.0 * c  # the covariate's scale and location do not matter


def _ols(x: np.ndarray, design: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Coefficients and HC0 (White) sandwich covariance of x ~ design."""
    beta, *_ = np.linalg.lstsq(design, x, rcond=None)
    resid = x - design @ beta
    bread = np.linalg.inv(design.T @ design)
    meat = design.T @ (design * resid[:, None] ** 2)
    return beta, bread @ meat @ bread


def test_the_adjusted_difference_is_the_ancova_coefficient_and_its_variance_the_robust_one() -> None:
    rng = np.random.default_rng(3)
    xc, cc = _units(rng, 4_000, 0.6)
    xt, ct = _units(rng, 6_000, 0.6, effect=0.05)
    xt = xt * 1.5  # unequal variances: Welch, not pooled
    x, c = np.concatenate([xc, xt]), np.concatenate([cc, ct])
    arm = np.r_[np.zeros(xc.size), np.ones(xt.size)]
    # ANCOVA x ~ 1 + arm + c: its arm coefficient is Δ̂_cuped exactly, and its
    # heteroscedasticity-robust (HC0) variance is V_cuped to O(1/n).
    beta, cov = _ols(x, np.column_stack([np.ones_like(x), arm, c]))
    got = cuped.adjusted_difference(cuped.Sums.from_units(xc, cc), cuped.Sums.from_units(xt, ct))
    assert float(got.difference) == pytest.approx(beta[1], rel=1e-10)
    assert float(got.variance) == pytest.approx(cov[1, 1], rel=0.005)
    # Directly: θ the within-arm slope, y = x − θ(c − c̄), Welch on y.
    theta = (np.cov(xc, cc)[0, 1] * (xc.size - 1) + np.cov(xt, ct)[0, 1] * (xt.size - 1)) / (
        cc.var() * cc.size + ct.var() * ct.size
    )
    yc, yt = xc - theta * (cc - c.mean()), xt - theta * (ct - c.mean())
    assert float(got.theta) == pytest.approx(theta, rel=1e-10)
    assert float(got.variance) == pytest.approx(yc.var(ddof=1) / yc.size + yt.var(ddof=1) / yt.size, rel=1e-9)
    # compare() on Samples gives the same numbers (one stratum).
    r = compare(
        Sample.from_values(xc, cc),
        Sample.from_values(xt, ct),
        kind="continuous",
        direction="increase",
        alpha=0.05,
        expected_units=5_000,
        variant="candidate",
        metric="m",
    )
    assert r.cuped and r.absolute_lift == pytest.approx(beta[1], rel=1e-10)
    half = (r.absolute_ci[1] - r.absolute_ci[0]) / 2
    assert half / 1.96 == pytest.approx(math.sqrt(float(got.variance)), rel=1e-3)
    assert r.variance_reduction == pytest.approx(float(got.variance_reduction), rel=1e-9)


def test_strata_are_adjusted_separately_and_combined_like_the_unadjusted_estimate() -> None:
    rng = np.random.default_rng(8)
    controls, candidates, direct = [], [], []
    for n_c, n_t, shift in ((900, 100, 0.0), (500, 500, 1.0)):  # a ramp, and a drift between epochs
        xc, cc = _units(rng, n_c, 0.5)
        xt, ct = _units(rng, n_t, 0.5, effect=0.1)
        controls.append(Sample.from_values(xc + shift, cc))
        candidates.append(Sample.from_values(xt + shift, ct))
        d = cuped.adjusted_difference(cuped.Sums.from_units(xc, cc), cuped.Sums.from_units(xt, ct))
        direct.append((float(d.difference), float(d.variance)))
    r = compare(
        controls,
        candidates,
        kind="continuous",
        direction="increase",
        alpha=0.05,
        expected_units=1_000,
        variant="candidate",
        metric="m",
    )
    assert r.cuped and r.strata == 2
    # Inside the interval of the two per-stratum estimates, nearer the more precise one.
    (d1, v1), (d2, v2) = direct
    assert min(d1, d2) <= r.absolute_lift <= max(d1, d2)
    assert abs(r.absolute_lift - d2) < abs(r.absolute_lift - d1) if v2 < v1 else True
    unadjusted = compare(
        [Sample(s.n, s.sum, s.sum_sq) for s in controls],
        [Sample(s.n, s.sum, s.sum_sq) for s in candidates],
        kind="continuous",
        direction="increase",
        alpha=0.05,
        expected_units=1_000,
        variant="candidate",
        metric="m",
    )
    assert not unadjusted.cuped and math.isnan(unadjusted.variance_reduction)
    assert 0.1 < r.variance_reduction < 0.4


def test_no_reported_covariate_leaves_the_analysis_unadjusted() -> None:
    x = np.r_[np.ones(30), np.zeros(270)]
    zero = np.zeros_like(x)
    r = compare(
        Sample(n=300, sum=30, cov_sum=0.0, cov_sum_sq=0.0, cov_products=0.0),
        Sample.from_values(x[::-1].copy(), zero),
        kind="binary",
        direction="increase",
        alpha=0.05,
        expected_units=1_000,
        variant="candidate",
        metric="m",
    )
    assert not r.cuped and r.bayes_method == "beta_binomial"


# ------------------------------------------------------------------ simulations

RUNS = 2_000


def test_correlation_half_removes_a_quarter_of_the_variance() -> None:
    # Vectorised over runs: 2,000 experiments of 1,000 units per arm, rho = 0.5.
    rng = np.random.default_rng(21)
    n = 1_000
    xc, cc = _units(rng, RUNS * n, 0.5)
    xt, ct = _units(rng, RUNS * n, 0.5)
    got = cuped.adjusted_difference(
        cuped.Sums.from_units(xc.reshape(RUNS, n), cc.reshape(RUNS, n)),
        cuped.Sums.from_units(xt.reshape(RUNS, n), ct.reshape(RUNS, n)),
    )
    # The estimated reduction, averaged (its MC error is tiny), and the true one: the
    # ratio of the empirical variances of the two estimators over runs.
    assert float(got.variance_reduction.mean()) == pytest.approx(0.25, abs=0.005)
    true_ratio = got.difference.var() / got.raw_difference.var()
    se = true_ratio * math.sqrt(2 / RUNS)  # MC error of a variance ratio, ~0.024
    assert abs((1 - true_ratio) - 0.25) < 3 * se
    # The reported variance is right: var(Δ̂_cuped) over runs / mean reported V ≈ 1.
    assert got.difference.var() / got.variance.mean() == pytest.approx(1.0, abs=3 * math.sqrt(2 / RUNS))


@pytest.mark.parametrize("kind", ["continuous", "binary"])
def test_aa_false_positives_of_the_adjusted_tests_stay_at_alpha(kind: str) -> None:
    # 2,000 A/A experiments through compare(), one look at the end: the fixed-horizon test
    # at its nominal 5% (MC error 0.49%), and the sequential test below 5%.
    rng = np.random.default_rng(5 if kind == "continuous" else 6)
    n, hits, seq_hits, reductions = 800, 0, 0, []
    for _ in range(RUNS):
        arms = []
        for _arm in range(2):
            x, c = _units(rng, n, 0.5)
            if kind == "binary":
                x = (x > 1.2).astype(float)  # ~11.5% conversion, correlated with c
            arms.append(Sample.from_values(x, c))
        r = compare(
            arms[0],
            arms[1],
            kind=kind,
            direction="increase",
            alpha=0.05,
            expected_units=n,
            variant="candidate",
            metric="m",
        )
        assert r.cuped
        hits += r.p_value < 0.05
        seq_hits += r.sequential_p_value < 0.05
        reductions.append(r.variance_reduction)
    rate, se = hits / RUNS, math.sqrt(0.05 * 0.95 / RUNS)
    assert abs(rate - 0.05) < 3 * se, f"A/A fixed-horizon rate {rate:.4f} ± {se:.4f}"
    assert seq_hits / RUNS < 0.05
    # ρ² = 0.25; a threshold of a latent normal keeps less of the correlation.
    assert np.mean(reductions) > (0.2 if kind == "continuous" else 0.05)


def test_the_sequential_test_runs_on_the_adjusted_difference_and_variance() -> None:
    rng = np.random.default_rng(2)
    xc, cc = _units(rng, 2_000, 0.5)
    xt, ct = _units(rng, 2_000, 0.5, effect=0.08)
    kw = dict(kind="continuous", direction="increase", alpha=0.05, expected_units=2_000, variant="t", metric="m")
    adjusted = compare(Sample.from_values(xc, cc), Sample.from_values(xt, ct), **kw)  # type: ignore[arg-type]
    plain = compare(Sample.from_values(xc), Sample.from_values(xt), **kw)  # type: ignore[arg-type]
    d = cuped.adjusted_difference(cuped.Sums.from_units(xc, cc), cuped.Sums.from_units(xt, ct))
    r = sequential.mixing_ratio(2_000, 2_000, 0.05)
    assert adjusted.sequential_p_value == pytest.approx(
        float(sequential.p_value(d.difference / np.sqrt(d.variance), r))
    )
    assert plain.sequential_p_value == pytest.approx(
        float(sequential.p_value(d.raw_difference / np.sqrt(d.raw_variance), r))
    )
    width = adjusted.sequential_ci_absolute[1] - adjusted.sequential_ci_absolute[0]
    assert width == pytest.approx(2 * float(sequential.half_width_multiplier(r, 0.05)) * math.sqrt(float(d.variance)))


def test_samples_with_a_covariate_merge_with_plus() -> None:
    x, c = np.array([1.0, 0.0, 1.0, 1.0]), np.array([2.0, 0.0, 5.0, 1.0])
    whole = Sample.from_values(x, c)
    assert Sample.from_values(x[:2], c[:2]) + Sample.from_values(x[2:], c[2:]) == whole
    binary = Sample(n=2, sum=1, cov_sum=2.0, cov_sum_sq=4.0, cov_products=2.0)  # Σx² left out
    assert (binary + binary).cov_products == 4.0 and (binary + binary).sum_sq is None
    assert not (whole + Sample.from_values(x)).has_covariate  # one without: none
    with pytest.raises(ValueError, match="go together"):
        Sample(n=2, sum=1, sum_sq=1, cov_sum=1.0)
    with pytest.raises(ValueError, match="shape"):
        Sample.from_values(x, c[:3])
