"""Latency quantiles from the bounded histogram agree with numpy's on the raw samples."""

from __future__ import annotations

import math

import numpy as np
import pytest

from abrouter.analysis.stats import histogram
from abrouter.contract import keys

QUANTILES = (0.05, 0.5, 0.9, 0.95, 0.99)


def binned(samples: np.ndarray) -> tuple[int, ...]:
    counts = [0] * keys.LATENCY_BUCKETS
    for x in samples:
        counts[keys.latency_bucket(float(x))] += 1
    return tuple(counts)


def distributions() -> dict[str, np.ndarray]:
    rng = np.random.default_rng(20261202)
    n = 20_000
    return {
        "lognormal around 20 ms": rng.lognormal(math.log(20), 0.6, n),
        "exponential, mean 5 ms": rng.exponential(5.0, n),
        # 15% slow: every quantile tested lies inside a mode (numpy interpolates across the gap)
        "bimodal: 8 ms and a 900 ms tail": np.where(rng.random(n) < 0.85, rng.normal(8, 1, n), rng.normal(900, 80, n)),
        "sub-millisecond": rng.uniform(0.02, 0.4, n),
    }


@pytest.mark.parametrize("name", sorted(distributions()))
def test_a_quantile_lies_in_the_bucket_of_the_exact_order_statistic(name: str) -> None:
    samples = np.clip(distributions()[name], 0.001, None)
    counts, ordered = binned(samples), np.sort(samples)
    for q in QUANTILES:
        exact = ordered[math.ceil(q * len(samples)) - 1]  # the order statistic at rank q·N
        low, high = histogram.bounds(keys.latency_bucket(float(exact)))
        estimate = histogram.quantile(counts, q)
        assert estimate is not None and low <= estimate <= high, (q, exact, estimate)


@pytest.mark.parametrize("name", sorted(distributions()))
def test_quantiles_match_numpy_within_the_bucket_width(name: str) -> None:
    samples = np.clip(distributions()[name], 0.001, None)
    counts = binned(samples)
    errors = []
    for q in QUANTILES:
        exact = float(np.quantile(samples, q))
        estimate = histogram.quantile(counts, q)
        assert estimate is not None
        if exact >= keys.LATENCY_EDGES_MS[0]:  # log buckets: a relative bound
            assert 1 / histogram.RELATIVE_ERROR <= estimate / exact <= histogram.RELATIVE_ERROR, (q, exact, estimate)
            errors.append(abs(estimate / exact - 1))
        else:  # the first bucket, [0, 0.1 ms): an absolute one
            assert abs(estimate - exact) <= keys.LATENCY_EDGES_MS[0], (q, exact, estimate)
    # Interpolation does much better than the bound on smooth distributions (measured: a
    # few percent at most, the bimodal gap aside).
    assert not errors or float(np.median(errors)) < 0.05, errors


def test_edge_cases() -> None:
    empty = (0,) * keys.LATENCY_BUCKETS
    assert histogram.quantile(empty, 0.5) is None
    one = list(empty)
    one[keys.latency_bucket(12.0)] = 1
    low, high = histogram.bounds(keys.latency_bucket(12.0))
    assert histogram.quantile(one, 0.0) == low and histogram.quantile(one, 1.0) == pytest.approx(high)
    overflow = list(empty)
    overflow[-1] = 3
    assert histogram.quantile(overflow, 0.5) == keys.LATENCY_EDGES_MS[-1], "beyond 63 s: only a lower bound"
    with pytest.raises(ValueError, match="q must be"):
        histogram.quantile(one, 1.5)


def test_the_bucket_layout_is_the_stored_one() -> None:
    # The edges are part of the stored format: changing them would misread existing data.
    assert keys.LATENCY_BUCKETS == 60
    assert keys.LATENCY_EDGES_MS[0] == pytest.approx(0.1) and keys.LATENCY_EDGES_MS[-1] == pytest.approx(
        63095.73, rel=1e-6
    )
    assert [keys.latency_bucket(x) for x in (0.0, 0.0999, 0.1, 1.0, 1000.0, 63_096.0, math.inf, math.nan)] == [
        0, 0, 1, 11, 41, 59, 59, 59,
    ]  # fmt: skip
    assert histogram.merge([(1,) * 60, (2,) * 60]) == (3,) * 60
