"""Bayesian summaries: chance to beat the control and the expected loss of choosing the candidate.

Two flavours:

- **Gaussian** (any metric): flat prior, the difference Δ = candidate − control has
  posterior N(Δ̂, V). With d = Δ signed so that positive is good (−Δ for "decrease"),
  chance = Φ(d̂/√V) and loss = E[max(0, −d)] = √V·φ(d̂/√V) − d̂·Φ(−d̂/√V).
- **Beta-Binomial** (binary mean metrics): Beta(1 + s, 1 + n − s) posteriors per arm.
  P(p_t > p_c) = ∫ f_t(y)·F_c(y) dy by Gauss–Legendre quadrature over the narrower
  posterior's central range; the loss uses x·Beta(a, b) = a/(a+b) · Beta(a+1, b)
  (Stucchio): E[max(0, p_c − p_t)] = E[p_c]·P(p_c' > p_t) − E[p_t]·P(p_c > p_t').
"""

from __future__ import annotations

import math

import numpy as np
from scipy import special
from scipy import stats as sps

from abrouter.analysis.stats.sample import Sample

# Beyond 40 standard deviations even the most skewed posterior, Beta(1, b), which is
# nearly exponential, has a tail below e^-41: nothing that matters in double precision.
_SPREAD = 40.0
# 128 nodes over ±40 sd agree with the exact sum to ~1e-10 (tests/analysis/test_stats_bayes.py).
_NODES, _WEIGHTS = np.polynomial.legendre.leggauss(128)


def gaussian_chance_to_beat(difference: float, variance: float, *, direction: str = "increase") -> float:
    """P(candidate better) under N(difference, variance) for candidate − control."""
    good = _signed(difference, direction) / math.sqrt(variance)
    return float(sps.norm.cdf(good))


def gaussian_expected_loss(difference: float, variance: float, *, direction: str = "increase") -> float:
    """E[max(0, harm)] in absolute units under N(difference, variance)."""
    sd = math.sqrt(variance)
    good = _signed(difference, direction)
    return float(sd * sps.norm.pdf(good / sd) - good * sps.norm.cdf(-good / sd))


def beta_binomial_chance_to_beat(control: Sample, candidate: Sample, *, direction: str = "increase") -> float:
    """Exact P(candidate's rate better than control's) under Beta(1 + s, 1 + n − s) posteriors."""
    c, t = _posterior(control), _posterior(candidate)
    return prob_greater(t, c) if direction == "increase" else prob_greater(c, t)


def beta_binomial_expected_loss(control: Sample, candidate: Sample, *, direction: str = "increase") -> float:
    """Exact E[max(0, harm)] of choosing the candidate, harm in the metric's bad direction."""
    c, t = _posterior(control), _posterior(candidate)
    # harm = high − low: control − candidate when higher is better, and vice versa.
    high, low = (c, t) if direction == "increase" else (t, c)
    loss = _mean(high) * prob_greater(_shift(high), low) - _mean(low) * prob_greater(high, _shift(low))
    return max(loss, 0.0)


def prob_greater(x: tuple[float, float], y: tuple[float, float]) -> float:
    """P(X > Y) for independent X ~ Beta(*x), Y ~ Beta(*y), by quadrature."""
    # Integrate over the narrower density so that the other's CDF is smooth on the grid.
    if _sd(x) < _sd(y):
        return 1.0 - _integrate(x, y)
    return _integrate(y, x)


def _integrate(density: tuple[float, float], other: tuple[float, float]) -> float:
    """∫ f_density(u) · (1 − F_other(u)) du = P(other > density)."""
    a, b = density
    center, spread = _mean(density), _SPREAD * _sd(density)
    lo, hi = max(center - spread, 0.0), min(center + spread, 1.0)
    u = (hi - lo) / 2 * _NODES + (hi + lo) / 2
    # scipy.special rather than scipy.stats: the same functions without the per-call overhead.
    pdf = np.exp((a - 1) * np.log(u) + (b - 1) * np.log1p(-u) - special.betaln(a, b))
    value = float((hi - lo) / 2 * np.dot(_WEIGHTS, pdf * special.betaincc(*other, u)))
    return min(max(value, 0.0), 1.0)


def _posterior(sample: Sample) -> tuple[float, float]:
    return (1.0 + sample.sum, 1.0 + sample.n - sample.sum)


def _shift(params: tuple[float, float]) -> tuple[float, float]:
    return (params[0] + 1, params[1])


def _mean(params: tuple[float, float]) -> float:
    return params[0] / (params[0] + params[1])


def _sd(params: tuple[float, float]) -> float:
    a, b = params
    return math.sqrt(a * b / ((a + b) ** 2 * (a + b + 1)))


def _signed(difference: float, direction: str) -> float:
    return difference if direction == "increase" else -difference
