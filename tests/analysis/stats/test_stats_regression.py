"""Regression adjustment with several covariates (`stats.regression`) against statsmodels OLS.

statsmodels (a test dependency already) fits x ~ 1 + T + c₁ + … + c_k on the raw units; the
module works from the arms' sufficient statistics only. The treatment coefficient and its
non-robust standard error must agree to floating-point precision.
"""

from __future__ import annotations

import json

import numpy as np
import pytest
import statsmodels.api as sm

from abrouter.analysis import analyzer
from abrouter.analysis import summary as summary_format
from abrouter.analysis.errors import InputError
from abrouter.analysis.stats import cuped, regression
from abrouter.analysis.stats.compare import compare
from abrouter.analysis.stats.multisums import MultiSums
from abrouter.analysis.stats.sample import Sample


def units(rng: np.random.Generator, n: int, *, lift: float, k: int = 3) -> tuple[np.ndarray, np.ndarray]:
    """x depends on k correlated covariates (and, in the candidate, on `lift`), heteroscedastic noise."""
    c = rng.gamma(2.0, 1.5, (n, k)) + 0.5 * rng.normal(size=(n, 1))
    x = 2.0 + c @ np.linspace(1.0, 0.2, k) + lift + rng.normal(0.0, 1.0 + 0.3 * c[:, 0], n)
    return x, c


def fit(rng: np.random.Generator, k: int = 3) -> tuple[regression.Adjusted, object, np.ndarray, np.ndarray]:
    (xc, cc), (xt, ct) = units(rng, 400, lift=0.0, k=k), units(rng, 350, lift=0.3, k=k)
    design = np.column_stack([np.ones(750), np.r_[np.zeros(400), np.ones(350)], np.r_[cc, ct]])
    ols = sm.OLS(np.r_[xc, xt], design).fit()
    adjusted = regression.adjust(MultiSums.from_units(xc, cc), MultiSums.from_units(xt, ct))
    assert adjusted is not None
    return adjusted, ols, np.r_[xc, xt], np.r_[cc, ct]


@pytest.mark.parametrize("k", [1, 2, 3, 5])
def test_the_estimate_and_its_se_are_statsmodels_ols(k: int) -> None:
    adjusted, ols, _, _ = fit(np.random.default_rng(k), k)
    assert adjusted.difference == pytest.approx(ols.params[1], rel=1e-9, abs=1e-12)  # type: ignore[attr-defined]
    assert np.sqrt(adjusted.ols_variance) == pytest.approx(ols.bse[1], rel=1e-9)  # type: ignore[attr-defined]
    assert adjusted.theta == pytest.approx(ols.params[2:], rel=1e-8)  # type: ignore[attr-defined]


def test_the_welch_variance_is_that_of_the_adjusted_values() -> None:
    rng = np.random.default_rng(7)
    (xc, cc), (xt, ct) = units(rng, 300, lift=0.0), units(rng, 500, lift=0.0)
    a = regression.adjust(MultiSums.from_units(xc, cc), MultiSums.from_units(xt, ct))
    assert a is not None
    theta, centre = np.asarray(a.theta), np.r_[cc, ct].mean(axis=0)
    yc, yt = xc - (cc - centre) @ theta, xt - (ct - centre) @ theta
    assert a.means == pytest.approx((yc.mean(), yt.mean()), rel=1e-12)
    assert a.variance == pytest.approx(yc.var(ddof=1) / yc.size + yt.var(ddof=1) / yt.size, rel=1e-9)
    samples = regression.adjusted_samples(MultiSums.from_units(xc, cc), MultiSums.from_units(xt, ct))
    assert samples is not None
    for got, y in zip(samples, (yc, yt)):
        assert (got.n, got.sum, got.sum_sq) == pytest.approx((y.size, y.sum(), (y * y).sum()), rel=1e-9)


def test_one_covariate_is_cuped_exactly() -> None:
    rng = np.random.default_rng(3)
    (xc, cc), (xt, ct) = units(rng, 300, lift=0.1, k=1), units(rng, 320, lift=0.1, k=1)
    multi = regression.adjusted_samples(MultiSums.from_units(xc, cc), MultiSums.from_units(xt, ct))
    single = cuped.adjust(Sample.from_values(xc, cc[:, 0]), Sample.from_values(xt, ct[:, 0]))
    assert multi is not None
    for got, want in zip(multi, single[:2]):
        assert (got.sum, got.sum_sq) == pytest.approx((want.sum, want.sum_sq), rel=1e-9)


def test_more_covariates_reduce_the_variance_and_the_adjusted_samples_feed_compare() -> None:
    rng = np.random.default_rng(11)
    (xc, cc), (xt, ct) = units(rng, 2000, lift=0.0), units(rng, 2000, lift=0.0)
    one = regression.adjust(MultiSums.from_units(xc, cc[:, :1]), MultiSums.from_units(xt, ct[:, :1]))
    three = regression.adjust(MultiSums.from_units(xc, cc), MultiSums.from_units(xt, ct))
    assert one is not None and three is not None
    raw = xc.var(ddof=1) / xc.size + xt.var(ddof=1) / xt.size
    assert three.variance < one.variance < raw
    samples = regression.adjusted_samples(MultiSums.from_units(xc, cc), MultiSums.from_units(xt, ct))
    assert samples is not None
    c = compare(
        *samples, kind="continuous", direction="increase", alpha=0.05, expected_units=2000, variant="t", metric="x"
    )
    assert c.absolute_lift == pytest.approx(three.difference, rel=1e-9, abs=1e-12)


def test_a_collinear_or_constant_covariate_is_no_adjustment() -> None:
    rng = np.random.default_rng(5)
    (xc, cc), (xt, ct) = units(rng, 100, lift=0.0, k=1), units(rng, 100, lift=0.0, k=1)
    twice = (np.c_[cc, 2 * cc], np.c_[ct, 2 * ct])
    assert regression.adjust(MultiSums.from_units(xc, twice[0]), MultiSums.from_units(xt, twice[1])) is None
    flat = (np.ones((100, 1)), np.ones((100, 1)))
    assert regression.adjust(MultiSums.from_units(xc, flat[0]), MultiSums.from_units(xt, flat[1])) is None


# ------------------------------------------------------------ through a summary export


def summary(rng: np.random.Generator) -> tuple[dict[str, object], float]:
    """A summary (`--summary`) whose revenue carries two covariates' sums, and statsmodels' estimate."""
    (xc, cc), (xt, ct) = units(rng, 1500, lift=0.0, k=2), units(rng, 1500, lift=0.4, k=2)
    variants = []
    for name, x, c in (("control", xc, cc), ("candidate", xt, ct)):
        m = MultiSums.from_units(x, c)
        covariates = {"sum": list(m.cov_sum), "sum_products": list(m.cov_products), "cross_products": m.cov_cross}
        metric = {"n": x.size, "sum": float(x.sum()), "sum_squares": float(x @ x), "covariates": covariates}
        variants.append({"name": name, "weight": 50, "units": x.size, "metrics": {"revenue": metric}})
    design = np.column_stack([np.ones(3000), np.r_[np.zeros(1500), np.ones(1500)], np.r_[cc, ct]])
    ols = sm.OLS(np.r_[xc, xt], design).fit()
    doc = {"metrics": [{"name": "revenue", "kind": "continuous"}], "variants": variants}
    return doc, float(ols.params[1])


def test_a_summary_with_several_covariates_is_analysed_by_the_regression() -> None:
    doc, expected = summary(np.random.default_rng(21))
    data, _ = summary_format.parse(json.loads(json.dumps(doc)))
    result = analyzer.analyze(data, now=0.0)
    c = next(c for c in result.comparisons if c.metric == "revenue")
    assert c.cuped and c.variance_reduction > 0.3
    assert c.absolute_lift == pytest.approx(expected, rel=1e-9)


def test_bad_covariate_sums_are_refused_naming_the_field() -> None:
    doc, _ = summary(np.random.default_rng(22))
    bad = json.loads(json.dumps(doc))
    bad["variants"][1]["metrics"]["revenue"]["covariates"]["cross_products"][0][1] += 5.0
    with pytest.raises(InputError, match=r"variants\[1\].metrics.revenue.covariates.cross_products: must be symmetric"):
        summary_format.parse(bad)
    bad = json.loads(json.dumps(doc))
    bad["variants"][0]["metrics"]["revenue"]["covariates"]["sum"].append(1.0)
    with pytest.raises(InputError, match=r"variants\[0\].metrics.revenue.covariates: sum and sum_products need one"):
        summary_format.parse(bad)


def test_the_interval_covers_at_its_level() -> None:
    """95% Wald intervals on Welch's variance of the adjusted values, k = 3, 300 per arm, unequal
    residual variances: coverage within three Monte-Carlo SEs of 95% over 600 runs (seed 4)."""
    rng, runs, lift, hits = np.random.default_rng(4), 600, 0.3, 0
    for _ in range(runs):
        (xc, cc), (xt, ct) = units(rng, 300, lift=0.0), units(rng, 300, lift=lift)
        xt = xt + rng.normal(0.0, 1.0, xt.size)  # the candidate's residuals are wider
        a = regression.adjust(MultiSums.from_units(xc, cc), MultiSums.from_units(xt, ct))
        assert a is not None
        hits += abs(a.difference - lift) <= 1.959964 * np.sqrt(a.variance)
    assert abs(hits / runs - 0.95) <= 3 * np.sqrt(0.95 * 0.05 / runs), hits / runs


# ------------------------------------------------------------ two covariates against one


def test_a_second_correlated_covariate_cuts_the_lifts_variance_as_theory_says() -> None:
    """c₁, c₂ ~ N(0, 1), correlation 0.5; x = c₁ + c₂ + N(0, 1). The lift's variance with both
    over with c₁ alone is 1 / 1.75 = 0.571 (residual variances). 600 seeded runs of 300 units
    per arm through `compare`, the one-covariate path (CUPED) against `MultiSums`: the ratio
    of the estimates' empirical variances has a Monte-Carlo SE of about 0.035 (bootstrap over
    runs, bench/sim_two_covariates.py), so ± 0.12 is 3.5 SE; with no gain it would be 1."""
    rng, n = np.random.default_rng(2), 300
    cov = np.array([[1.0, 0.5], [0.5, 1.0]])
    one, two, reduction = [], [], []
    for _ in range(600):
        arms = []
        for lift in (0.0, 0.1):
            c = rng.multivariate_normal([0.0, 0.0], cov, n)
            arms.append((c.sum(axis=1) + rng.normal(0.0, 1.0, n) + lift, c))
        plain = [Sample.from_values(x, c[:, 0]) for x, c in arms]
        multi = [
            Sample(n=n, sum=float(x.sum()), sum_sq=float(x @ x), covariates=MultiSums.from_units(x, c)) for x, c in arms
        ]
        for out, (control, candidate) in ((one, plain), (two, multi)):
            r = compare(control, candidate, kind="continuous", direction="increase", alpha=0.05,
                        expected_units=2 * n, variant="t", metric="x")  # fmt: skip
            out.append(r.absolute_lift)
        reduction.append(r.variance_reduction)
    ratio = np.var(two, ddof=1) / np.var(one, ddof=1)
    assert abs(ratio - 1 / 1.75) < 0.12 and ratio < 0.75
    assert np.mean(reduction) == pytest.approx(0.75, abs=0.02)  # 1 − 1/4 against the raw variance
