"""The difference in a latency quantile (p95) between two arms, from the router's histograms.

Pure. The router keeps per (epoch, arm) a histogram of request latencies in log-spaced
buckets 26% wide (`keys.LATENCY_EDGES_MS`, `histogram`), never the requests themselves.
The CDF is known exactly at the bucket edges and only interpolated between them, so a
quantile's interval must own up to two uncertainties: sampling, and what the buckets hide.

- **`ci_ms`** (the one reported): the normal approximation on the interpolated histogram,
  each arm's standard error by the Siddiqui–Bofinger difference quotient of the order
  statistics around the quantile, SE = (Q(q + h) − Q(q − h)) / (2z), h = z·√(q(1 − q)/n),
  read from the PCHIP curve below
  (Price & Bonett 2002 use the same order-statistic SE for medians), **widened by each
  arm's interpolation gap**: |Q_log-uniform − Q_pchip|, the distance between two
  interpolations of the CDF between its known values at the bucket edges, linear in log
  latency (`histogram.quantile`) and monotone cubic (PCHIP, Fritsch–Carlson). Where the
  latencies spread smoothly over several buckets the two agree and the interval is the
  normal one; where they crowd into a bucket or two (a narrow distribution, a bimodal tail)
  they disagree, and the interval widens. Without the gap the normal interval covered 20.5%
  (lognormal σ = 0.3), 7% (a bimodal tail) and 0% (a narrow normal) at 50,000 requests per
  arm; with it ≥ 96.8% in every world measured (bench/sim_latency_quantile.py, seed 1,
  400 runs per row). A measured property, not a theorem.
- **`bounds_ms`**, for the record: an interval that holds for any distribution. Each arm's
  distribution-free order-statistic interval [x₍ₗ₎, x₍ᵤ₎] (the binomial ranks of scipy's
  ``quantile_test(...).confidence_interval``) at level √(1 − alpha), widened to the outer
  edges of those order statistics' buckets; both hold together with probability
  ≥ 1 − alpha, and then ξ_t − ξ_c ∈ [L_t − U_c, U_t − L_c]. Its price is resolution: it is
  never narrower than about ± one bucket (±26% of the quantile), so it separates only
  differences of about two buckets.

Requests are treated as independent draws: latency depends on the server far more than on
the user who sent the request (the unit-level ``latency_ms`` and its guardrail do not
assume this). Fixed-horizon: valid for one look, informational; no decision uses it.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np
from scipy import interpolate, optimize
from scipy import stats as sps

from abrouter.analysis.stats import histogram, reasons
from abrouter.contract.keys import LATENCY_EDGES_MS

#: The width of a histogram bucket relative to its lower edge (10^0.1 − 1 = 0.259).
RESOLUTION = histogram.RELATIVE_ERROR - 1
NAN_PAIR = (math.nan, math.nan)
_LOG_EDGES = np.log(np.array(LATENCY_EDGES_MS))


@dataclass(frozen=True)
class QuantileDifference:
    """Candidate vs control on the q-quantile of latency (ms), from histograms; intervals two-sided at 1 − alpha."""

    variant: str
    q: float
    #: "ok" or "insufficient_data" (`reason`: `empty_arm`, or `n_too_small` when an arm has
    #: too few requests for the quantile's intervals: about 80 for p95).
    status: str
    reason: str | None
    #: The epoch whose histograms were compared (None: not said).
    epoch: int | None
    requests_control: int
    requests: int
    #: The interpolated quantiles (`histogram.quantile`) and their difference.
    control_ms: float
    candidate_ms: float
    difference_ms: float
    #: The normal interval widened by both arms' interpolation gaps (module docstring).
    ci_ms: tuple[float, float]
    #: candidate_ms / control_ms − 1, and its interval on the log scale, widened likewise.
    relative: float
    relative_ci: tuple[float, float]
    #: [L_t − U_c, U_t − L_c]: holds for any distribution, at the buckets' resolution.
    bounds_ms: tuple[float, float]
    #: Each arm's |log-uniform − PCHIP| quantile (ms): what the buckets hide about it.
    control_gap_ms: float
    candidate_gap_ms: float
    #: The buckets' relative width.
    resolution: float = RESOLUTION

    def to_dict(self) -> dict[str, Any]:
        """JSON-safe: tuples become lists, NaN and infinities None."""
        return {k: _safe(v) for k, v in asdict(self).items()}


@dataclass(frozen=True)
class _Arm:
    """One arm's quantile: estimate, standard error, interpolation gap, distribution-free interval."""

    estimate: float
    se: float
    gap: float
    bounds: tuple[float, float]


def rank_interval(n: int, q: float, level: float) -> tuple[int, int] | None:
    """1-based ranks (l, u) of the order statistics bounding the q-quantile at `level`.

    As scipy's ``quantile_test(x, p=q).confidence_interval(level)``: l = F⁻¹(γ/2) and
    u = F̄⁻¹(γ/2) + 1 of Binomial(n, q), γ = 1 − level. None when a rank falls outside 1..n
    (too few observations for that level).
    """
    binomial = sps.binom(n, q)
    tail = (1.0 - level) / 2
    low, high = int(binomial.ppf(tail)), int(binomial.isf(tail)) + 1
    return (low, high) if 1 <= low and high <= n else None


def bucket_of_rank(counts: Sequence[int], rank: int) -> int:
    """The bucket holding the `rank`-th smallest observation (1-based)."""
    seen = 0
    for bucket, count in enumerate(counts):
        seen += count
        if seen >= rank:
            return bucket
    raise ValueError(f"rank {rank} is above the {seen} observations")


def arm_interval(counts: Sequence[int], q: float, level: float) -> tuple[float, float] | None:
    """[lower edge of x₍ₗ₎'s bucket, upper edge of x₍ᵤ₎'s] (ms): covers the q-quantile with P ≥ `level`."""
    ranks = rank_interval(sum(counts), q, level)
    if ranks is None:
        return None
    low, _ = histogram.bounds(bucket_of_rank(counts, ranks[0]))
    _, high = histogram.bounds(bucket_of_rank(counts, ranks[1]))
    return low, high


def smooth_quantile(counts: Sequence[int], q: float) -> float | None:
    """The q-quantile (ms) by a monotone cubic (PCHIP) through the CDF at the bucket edges, in log latency.

    Inside the first bucket (from 0) and the overflow bucket it is `histogram.quantile`.
    """
    n = sum(counts)
    if n <= 0:
        return None
    cdf = np.cumsum(np.asarray(counts[: len(LATENCY_EDGES_MS)], dtype=float)) / n
    bucket = bucket_of_rank(counts, max(1, math.ceil(q * n)))
    if bucket == 0 or bucket >= len(LATENCY_EDGES_MS) or cdf[bucket] <= q:
        return histogram.quantile(counts, q)
    curve = interpolate.PchipInterpolator(_LOG_EDGES, cdf)
    low, high = _LOG_EDGES[bucket - 1], _LOG_EDGES[bucket]
    if cdf[bucket - 1] >= q:
        return float(math.exp(low))
    return float(math.exp(optimize.brentq(lambda x: float(curve(x)) - q, low, high, xtol=1e-12)))


def standard_error(counts: Sequence[int], q: float, z: float) -> float | None:
    """Siddiqui–Bofinger: (Q(q + h) − Q(q − h)) / (2z), h = z·√(q(1 − q)/n); None if q ± h leaves [0, 1].

    Q is `smooth_quantile`: with q ± h inside one bucket the log-uniform step would read
    the bucket's average density instead of the density at the quantile (9% low at a
    lognormal's p95, `tests/analysis/stats/test_stats_quantile.py`).
    """
    n = sum(counts)
    h = z * math.sqrt(q * (1 - q) / n)
    above, below = smooth_quantile(counts, q + h) if q + h <= 1 else None, smooth_quantile(counts, q - h)
    if above is None or below is None or q - h < 0:
        return None
    return (above - below) / (2 * z)


def _arm(counts: Sequence[int], q: float, alpha: float) -> _Arm | None:
    if sum(counts) <= 0:
        return None
    z = float(sps.norm.isf(alpha / 2))
    estimate, smooth = histogram.quantile(counts, q), smooth_quantile(counts, q)
    se, bounds = standard_error(counts, q, z), arm_interval(counts, q, math.sqrt(1.0 - alpha))
    if estimate is None or smooth is None or se is None or bounds is None:
        return None
    return _Arm(estimate=estimate, se=se, gap=abs(smooth - estimate), bounds=bounds)


def difference(
    control: Sequence[int],
    candidate: Sequence[int],
    *,
    q: float = 0.95,
    alpha: float = 0.05,
    variant: str = "candidate",
    epoch: int | None = None,
) -> QuantileDifference:
    """Compare the q-quantiles of two latency histograms (counts per `keys.latency_bucket`)."""
    n_c, n_t = sum(control), sum(candidate)
    c, t = _arm(control, q, alpha), _arm(candidate, q, alpha)
    head = {"variant": variant, "q": q, "epoch": epoch, "requests_control": n_c, "requests": n_t}
    if c is None or t is None:
        reason = reasons.EMPTY_ARM if min(n_c, n_t) == 0 else reasons.N_TOO_SMALL
        return _insufficient(head, reason)
    z = float(sps.norm.isf(alpha / 2))
    d = t.estimate - c.estimate
    half = z * math.hypot(c.se, t.se) + c.gap + t.gap
    return QuantileDifference(
        variant=variant,
        q=q,
        status=reasons.OK,
        reason=None,
        epoch=epoch,
        requests_control=n_c,
        requests=n_t,
        control_ms=c.estimate,
        candidate_ms=t.estimate,
        difference_ms=d,
        ci_ms=(d - half, d + half),
        relative=_ratio(t.estimate, c.estimate) - 1,
        relative_ci=_relative_ci(c, t, z),
        bounds_ms=(t.bounds[0] - c.bounds[1], t.bounds[1] - c.bounds[0]),
        control_gap_ms=c.gap,
        candidate_gap_ms=t.gap,
    )


def _relative_ci(c: _Arm, t: _Arm, z: float) -> tuple[float, float]:
    """exp(log(t/c) ± (z·√(SE_t²/t² + SE_c²/c²) + gap_t/t + gap_c/c)) − 1; NaN when a quantile is 0."""
    if c.estimate <= 0 or t.estimate <= 0:
        return NAN_PAIR
    log_ratio = math.log(t.estimate / c.estimate)
    half = z * math.hypot(c.se / c.estimate, t.se / t.estimate) + c.gap / c.estimate + t.gap / t.estimate
    return math.exp(log_ratio - half) - 1, math.exp(log_ratio + half) - 1


def _insufficient(head: dict[str, Any], reason: str) -> QuantileDifference:
    nan = math.nan
    return QuantileDifference(
        variant=str(head["variant"]),
        q=float(head["q"]),
        status=reasons.INSUFFICIENT,
        reason=reason,
        epoch=head["epoch"],
        requests_control=int(head["requests_control"]),
        requests=int(head["requests"]),
        control_ms=nan,
        candidate_ms=nan,
        difference_ms=nan,
        ci_ms=NAN_PAIR,
        relative=nan,
        relative_ci=NAN_PAIR,
        bounds_ms=NAN_PAIR,
        control_gap_ms=nan,
        candidate_gap_ms=nan,
    )


def _ratio(a: float, b: float) -> float:
    """a / b for latencies (>= 0): inf when b is 0 and a is not, NaN for 0/0."""
    if b == 0.0:
        return math.inf if a > 0 else math.nan
    return a / b


def _safe(value: Any) -> Any:
    if isinstance(value, tuple):
        return [_safe(v) for v in value]
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value
