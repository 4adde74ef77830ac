"""Latency quantiles from the router's bounded histogram (the ``latency`` key).

Pure. The router counts each request in a log-spaced bucket (`keys.LATENCY_EDGES_MS`: ten
per decade, each 26% wide), per (epoch, variant), so histograms merge by adding counts
and the stored size never depends on traffic. A quantile is read by finding the bucket
where the cumulative count reaches q·N and interpolating inside it, geometrically (a
log-spaced bucket is assumed log-uniform; the first bucket, which starts at 0, linearly).
The exact sample quantile lies in the same bucket, so the estimate is off by at most the
bucket's width, a factor of 10^0.1 = 1.26 either way (`RELATIVE_ERROR`); on smooth
distributions it is far closer (`tests/analysis/stats/test_histogram.py` measures it
against numpy). Above the last edge (63 s) only "at least 63 s" is known: the overflow
bucket answers its lower edge.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence

from abrouter.contract.keys import LATENCY_BUCKETS, LATENCY_EDGES_MS

#: The largest ratio between a quantile read from the histogram and the exact one
#: (either way), when both fall in the same bucket: the buckets' width.
RELATIVE_ERROR = 10**0.1


def merge(histograms: Iterable[Sequence[int]]) -> tuple[int, ...]:
    """Counts per bucket, summed (e.g. an arm's epochs)."""
    total = [0] * LATENCY_BUCKETS
    for counts in histograms:
        for i, c in enumerate(counts):
            total[i] += c
    return tuple(total)


def bounds(bucket: int) -> tuple[float, float]:
    """[low, high) of a bucket in milliseconds; the overflow bucket's high is inf."""
    low = 0.0 if bucket == 0 else LATENCY_EDGES_MS[bucket - 1]
    high = LATENCY_EDGES_MS[bucket] if bucket < len(LATENCY_EDGES_MS) else math.inf
    return low, high


def quantile(counts: Sequence[int], q: float) -> float | None:
    """The q-quantile (0 <= q <= 1) in milliseconds, or None when no request was counted."""
    if not 0.0 <= q <= 1.0:
        raise ValueError(f"q must be within [0, 1], got {q}")
    n = sum(counts)
    if n <= 0:
        return None
    target = q * n
    below = 0
    for bucket, count in enumerate(counts):
        if count > 0 and below + count >= target:
            return _inside(bucket, (target - below) / count)
        below += count
    return _inside(len(counts) - 1, 1.0)  # unreachable: the last non-empty bucket holds q = 1


def _inside(bucket: int, fraction: float) -> float:
    low, high = bounds(bucket)
    if math.isinf(high):
        return low
    if fraction >= 1.0:
        return high
    if low == 0.0:
        return fraction * high
    return low * (high / low) ** fraction
