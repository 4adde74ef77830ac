"""The p95 difference from latency histograms, against the raw samples and by coverage.

References: scipy's ``quantile_test(...).confidence_interval`` and numpy's quantile on the
raw samples each histogram was built from; coverage of the true difference by seeded
simulation, also where interpolating inside a bucket alone fails (a narrow distribution,
a bimodal tail): the normal interval without the interpolation gap covers 0–30% there.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import numpy as np
import pytest
from scipy import stats

from abrouter.analysis.stats import histogram, quantile, reasons
from abrouter.contract import keys

EDGES = np.array(keys.LATENCY_EDGES_MS)
Q = 0.95


def binned(samples: np.ndarray) -> tuple[int, ...]:
    """Counts per bucket as the router counts them (`keys.latency_bucket`: bisect right)."""
    buckets = np.searchsorted(EDGES, samples, side="right")
    return tuple(int(c) for c in np.bincount(buckets, minlength=keys.LATENCY_BUCKETS))


def test_binned_agrees_with_the_routers_bucket() -> None:
    x = np.random.default_rng(1).lognormal(2, 2, 2_000)
    counts = [0] * keys.LATENCY_BUCKETS
    for v in x:
        counts[keys.latency_bucket(float(v))] += 1
    assert binned(x) == tuple(counts)


@pytest.mark.parametrize("n", [60, 137, 1_000, 25_000])
@pytest.mark.parametrize("level", [0.9, 0.95, 0.9747])
def test_the_ranks_are_scipys(n: int, level: float) -> None:
    x = np.random.default_rng(n).lognormal(3, 0.6, n)
    low, high = stats.quantile_test(x, q=0, p=Q).confidence_interval(level)
    ranks = quantile.rank_interval(n, Q, level)
    ordered = np.sort(x)
    if ranks is None:
        assert math.isnan(low) or math.isnan(high)
    else:
        assert (ordered[ranks[0] - 1], ordered[ranks[1] - 1]) == (low, high)


@pytest.mark.parametrize("seed", range(4))
def test_each_arms_interval_holds_scipys_and_stays_within_its_buckets(seed: int) -> None:
    rng = np.random.default_rng(seed)
    x = rng.lognormal(math.log(20), 0.6 + 0.2 * seed, 5_000)
    level = math.sqrt(0.95)
    low, high = stats.quantile_test(x, q=0, p=Q).confidence_interval(level)
    interval = quantile.arm_interval(binned(x), Q, level)
    assert interval is not None
    # Contains the raw-sample interval, and is at most its bucket edges wider.
    assert interval[0] <= low and high <= interval[1]
    assert interval[0] == histogram.bounds(keys.latency_bucket(float(low)))[0]
    assert interval[1] == histogram.bounds(keys.latency_bucket(float(high)))[1]


def test_the_estimate_is_numpys_within_the_bucket_resolution() -> None:
    rng = np.random.default_rng(7)
    c, t = rng.lognormal(math.log(20), 0.6, 20_000), 1.2 * rng.lognormal(math.log(20), 0.6, 20_000)
    d = quantile.difference(binned(c), binned(t), variant="b", epoch=3)
    assert (d.status, d.variant, d.epoch, d.requests_control, d.requests) == ("ok", "b", 3, 20_000, 20_000)
    for estimate, raw in ((d.control_ms, c), (d.candidate_ms, t)):
        exact = float(np.quantile(raw, Q))
        assert 1 / histogram.RELATIVE_ERROR <= estimate / exact <= histogram.RELATIVE_ERROR
    exact_difference = float(np.quantile(t, Q) - np.quantile(c, Q))
    assert d.ci_ms[0] <= exact_difference <= d.ci_ms[1]
    assert d.bounds_ms[0] <= d.ci_ms[0] and d.ci_ms[1] <= d.bounds_ms[1]
    # A smooth distribution: the two interpolations nearly agree (well under a bucket).
    assert d.control_gap_ms < 0.02 * d.control_ms and d.candidate_gap_ms < 0.02 * d.candidate_ms
    assert d.difference_ms == pytest.approx(d.candidate_ms - d.control_ms)
    assert d.relative == pytest.approx(d.candidate_ms / d.control_ms - 1)
    assert d.resolution == pytest.approx(10**0.1 - 1)


def _normal(mean: float, sd: float) -> Callable[[np.random.Generator, int], np.ndarray]:
    return lambda rng, n: rng.normal(mean, sd, n)


def _lognormal(scale: float, sigma: float) -> Callable[[np.random.Generator, int], np.ndarray]:
    return lambda rng, n: scale * rng.lognormal(math.log(20), sigma, n)


def _bimodal(tail: float) -> Callable[[np.random.Generator, int], np.ndarray]:
    return lambda rng, n: np.where(rng.random(n) < 0.85, rng.normal(8, 1, n), rng.normal(tail, 80, n))


LN = stats.lognorm(0.3, scale=20)
# (control, candidate, the true p95 difference, requests per arm)
WORLDS = {
    # Where interpolating inside a bucket undercovers (bench: 31%, 0%, 11%).
    "lognormal sigma 0.3, candidate x1.1": (_lognormal(1.0, 0.3), _lognormal(1.1, 0.3), 0.1 * LN.ppf(Q), 20_000),
    "normal(50, 3) vs normal(52, 3)": (_normal(50, 3), _normal(52, 3), 2.0, 20_000),
    "85% near 8 ms, tail 900 vs 950 ms": (_bimodal(900), _bimodal(950), 50.0, 20_000),
    "A/A lognormal, few requests": (_lognormal(1.0, 0.6), _lognormal(1.0, 0.6), 0.0, 300),
}


@pytest.mark.parametrize("world", sorted(WORLDS))
def test_the_intervals_cover_the_true_difference_at_least_95_percent(world: str) -> None:
    """200 seeded runs per world; coverage ≥ 0.95 − 3 MC SE (SE = √(0.95·0.05/200) = 1.5%)."""
    control, candidate, true, n = WORLDS[world]
    rng = np.random.default_rng(2026)
    runs = 200
    covered = bounded = 0
    for _ in range(runs):
        d = quantile.difference(binned(np.clip(control(rng, n), 0.001, None)), binned(candidate(rng, n)))
        covered += d.ci_ms[0] <= true <= d.ci_ms[1]
        bounded += d.bounds_ms[0] <= true <= d.bounds_ms[1]
    floor = 0.95 - 3 * math.sqrt(0.95 * 0.05 / runs)
    assert covered / runs >= floor and bounded / runs >= floor


def test_a_real_regression_is_resolved() -> None:
    """Not vacuous: a p95 50% slower is outside the interval's reach of 0 in nearly every run."""
    rng = np.random.default_rng(11)
    excluded = 0
    for _ in range(100):
        c, t = rng.lognormal(math.log(20), 0.6, 5_000), 1.5 * rng.lognormal(math.log(20), 0.6, 5_000)
        d = quantile.difference(binned(c), binned(t))
        excluded += d.ci_ms[0] > 0 and d.relative_ci[0] > 0
    assert excluded == 100


def test_too_few_or_no_requests_are_insufficient() -> None:
    many = binned(np.random.default_rng(3).lognormal(3, 0.5, 1_000))
    few = binned(np.random.default_rng(4).lognormal(3, 0.5, 20))
    empty = (0,) * keys.LATENCY_BUCKETS
    assert quantile.difference(many, few).reason == reasons.N_TOO_SMALL
    d = quantile.difference(empty, many)
    assert (d.status, d.reason) == (reasons.INSUFFICIENT, reasons.EMPTY_ARM)
    assert d.to_dict()["ci_ms"] == [None, None] and d.to_dict()["difference_ms"] is None


def test_the_overflow_bucket_gives_an_open_upper_bound() -> None:
    slow = binned(np.full(1_000, 100_000.0))  # every request above the last edge (63 s)
    fast = binned(np.random.default_rng(5).lognormal(3, 0.5, 1_000))
    d = quantile.difference(fast, slow)
    assert d.status == "ok" and d.bounds_ms[1] == math.inf and d.bounds_ms[0] > 0
    assert d.to_dict()["bounds_ms"][1] is None


@pytest.mark.parametrize("sigma", [0.3, 0.6, 1.2])
def test_the_smooth_quantile_is_numpys_within_the_bucket_resolution(sigma: float) -> None:
    x = np.random.default_rng(8).lognormal(math.log(20), sigma, 20_000)
    for q in (0.5, 0.9, 0.95, 0.99):
        smooth = quantile.smooth_quantile(binned(x), q)
        assert smooth is not None
        assert abs(smooth / float(np.quantile(x, q)) - 1) < 0.02  # PCHIP: far inside the 26% bound
    assert quantile.smooth_quantile((0,) * keys.LATENCY_BUCKETS, 0.5) is None


def test_the_standard_error_is_the_asymptotic_one() -> None:
    """Siddiqui–Bofinger on histograms, averaged over 20 seeds, vs √(q(1 − q)/n)/f(ξ) of the lognormal.

    One sample's quotient is itself noisy (about 120 requests lie between its two order
    statistics: ±9%), so the average over seeds is compared, to 5%; so is the same
    quotient of numpy quantiles on the raw samples.
    """
    z, n = 1.959963984540054, 20_000
    dist = stats.lognorm(0.8, scale=20)
    asymptotic = math.sqrt(Q * (1 - Q) / n) / dist.pdf(dist.ppf(Q))
    h = z * math.sqrt(Q * (1 - Q) / n)
    rng = np.random.default_rng(9)
    ours, raw = [], []
    for _ in range(20):
        x = dist.rvs(n, random_state=rng)
        se = quantile.standard_error(binned(x), Q, z)
        assert se is not None
        ours.append(se)
        raw.append((np.quantile(x, Q + h) - np.quantile(x, Q - h)) / (2 * z))
    assert float(np.mean(ours)) == pytest.approx(asymptotic, rel=0.05)
    assert float(np.mean(raw)) == pytest.approx(asymptotic, rel=0.05)
