import math

import numpy as np
import pytest

from abrouter.analysis.stats.sample import Sample

RNG = np.random.default_rng(20240501)


def test_mean_and_variance_match_numpy_on_raw_data() -> None:
    x = RNG.normal(3.0, 2.0, size=500)
    sample = Sample.from_values(x)
    assert sample.mean == pytest.approx(x.mean(), rel=1e-12)
    assert sample.variance == pytest.approx(x.var(ddof=1), rel=1e-9)
    assert sample.mean_variance == pytest.approx(x.var(ddof=1) / len(x), rel=1e-9)


def test_binary_sample_without_sum_sq_uses_sum() -> None:
    x = (RNG.random(300) < 0.2).astype(float)
    assert Sample(300, x.sum()).variance == pytest.approx(x.var(ddof=1), rel=1e-12)
    assert Sample(300, x.sum()).binomial_mean_variance == pytest.approx(x.var(ddof=0) / 300, rel=1e-12)


def test_ratio_mean_variance_is_the_delta_method_with_covariance() -> None:
    # Users with correlated requests and conversions: the covariance term matters here.
    d = RNG.poisson(4.0, size=2000) + 1
    x = RNG.binomial(d, 0.1 + 0.05 * (d > 4))
    sample = Sample.from_ratio(x, d)
    ratio = x.sum() / d.sum()
    # Independent reference: gradient of f(mx, md) = mx/md against the covariance matrix of the means.
    grad = np.array([1 / d.mean(), -x.mean() / d.mean() ** 2])
    cov_of_means = np.cov(np.vstack([x, d]), ddof=1) / len(x)
    assert sample.mean == pytest.approx(ratio, rel=1e-12)
    assert sample.mean_variance == pytest.approx(grad @ cov_of_means @ grad, rel=1e-9)


def test_ratio_variance_is_not_the_naive_per_request_binomial() -> None:
    # Each user has their own rate, so requests of one user are correlated: with 20 requests
    # and intra-user correlation 1/11 the design effect is about 1 + 19/11 ≈ 2.7.
    rng = np.random.default_rng(7)
    d = np.full(3000, 20)
    x = rng.binomial(d, rng.beta(1, 9, size=3000))
    sample = Sample.from_ratio(x, d)
    naive = sample.mean * (1 - sample.mean) / d.sum()
    assert 2.0 < sample.mean_variance / naive < 3.5


def test_addition_merges_sums_and_matches_the_concatenated_data() -> None:
    a, b = RNG.normal(size=40), RNG.normal(1.0, size=60)
    merged = Sample.from_values(a) + Sample.from_values(b)
    whole = Sample.from_values(np.concatenate([a, b]))
    assert merged.n == whole.n and merged.mean == pytest.approx(whole.mean)
    assert merged.variance == pytest.approx(whole.variance, rel=1e-10)
    assert sum([Sample.from_values(a), Sample.from_values(b)]) == merged


def test_addition_of_ratio_samples_and_binary_mix() -> None:
    d1, d2 = np.array([1, 2, 3]), np.array([4, 5])
    x1, x2 = np.array([0, 1, 3]), np.array([2, 2])
    merged = Sample.from_ratio(x1, d1) + Sample.from_ratio(x2, d2)
    assert merged == Sample.from_ratio(np.concatenate([x1, x2]), np.concatenate([d1, d2]))
    # A binary sample without sum_sq added to one with it: Σx² = Σx fills in.
    assert (Sample(10, 3) + Sample(5, 2, 2)).sum_sq == 5
    assert Sample(10, 3) + Sample(5, 2) == Sample(15, 5)


def test_adding_ratio_to_mean_sample_is_a_bug() -> None:
    with pytest.raises(ValueError):
        Sample(3, 1) + Sample.empty(ratio=True)


@pytest.mark.parametrize(
    "kwargs",
    [
        dict(n=-1, sum=0),
        dict(n=3, sum=1, sum_sq=1, den_sum=3),
        dict(n=3, sum=1, den_sum=3, den_sum_sq=3, sum_products=1),
    ],
)
def test_invalid_samples_are_rejected(kwargs: dict[str, float]) -> None:
    with pytest.raises(ValueError):
        Sample(**kwargs)


def test_undefined_values_are_nan_not_errors() -> None:
    assert math.isnan(Sample(0, 0).mean)
    assert math.isnan(Sample(1, 1, 1).mean_variance)
    assert math.isnan(Sample(5, 0, 0, 0, 0, 0).mean)
    assert math.isnan(Sample(5, 0, 0, 0, 0, 0).mean_variance)
    # A constant metric has exactly zero variance, even when the sums do not cancel exactly.
    assert Sample(3, 0.3, 0.03).variance == 0.0
