"""The decision design: a one-sided boundary that spends α on information time up to the plan.

Why not the mixture alone (`sequential`): it is built for an unknown horizon and for both
directions, so at the plan's sample size it promotes only about half as often as the
fixed-horizon test (50% against 80% at `abrouter plan`'s n). Promotion and rollback are
each one-sided, and the experiment has a planned size (`expected_units_per_arm`), so the
α can be spent where it buys power: by the horizon, most of it.

Model: information time t = n/n*, with n the effective units per arm so far
(`estimate.effective_units`, summed over epoch strata) and n* the planned units per arm,
scaled by the per-unit variance over a pinned reference's (`clock`: t = U/U*, the variance
of the sum; the units clock while the per-unit variance stays put). The score B(t) = z·√t
(z = Δ̂/√V, signed so that positive is the tested direction) is then, under H0 and
asymptotically, a standard Brownian motion in t, whatever the split and however the looks
fall (the same approximation as the mixture's, Waudby-Smith et al. 2021). The boundary on B is

    g(t) = b            for t ≤ 1     (constant on the B scale: O'Brien-Fleming's shape)
    g(t) = b + c·(t−1)  for t > 1     (a straight line: Wald's SPRT shape)

and the test crosses at a look when B ≥ g(t) there. For a Brownian path the chance of ever
crossing is, by the reflection principle for t ≤ 1 and the linear-boundary formula
P(sup B − c·s ≥ a) = exp(−2ac) from t = 1 on, integrated over the killed density of B(1):

    A(b, c) = 2Φ̄(b) + e^{2c(c−b)}·Φ(b − 2c) − e^{2c(c+b)}·Φ(−b − 2c).

The looks only sample the path, so the chance of crossing *at a look* is at most A, for any
number of looks at any (irregular, data-dependent) information times: this is the
continuous-monitoring limit of the Lan-DeMets O'Brien-Fleming spending function
α(t) = 2Φ̄(z_{α/2}/√t), which needs no record of past looks. With few looks it spends
less than α (20 looks: about 3.3% of 5%).

Tuning: b solves A(b, c) = α. The slope c is the planned effect's drift per unit of
information, c = z_{1−α/2} + z_{0.8} (the effect `abrouter plan` sizes n* for, with 80%
power): beyond the horizon the boundary rises as fast as that effect's score does, so an
effect of the planned size still crosses, and the α left for t > 1 stays small (at
α = 0.05: b = 2.02, 4.3% spent by t = 1, power at the plan's n 81% with 20 looks and 84%
with continuous monitoring, against 80% for the fixed-horizon test).

`p_value(z, t, alpha)` is the smallest level whose boundary (same c) this look crosses:
A(z·√t − c·(t−1)⁺, c). It is a valid p at any stopping time: P(p ≤ x at some look) ≤ x for
every x, which is what Holm needs. It is this look's evidence only: no running minimum.

All functions broadcast over numpy arrays, so simulations can run them vectorised.
"""

from __future__ import annotations

import functools

import numpy as np
from numpy.typing import ArrayLike
from scipy import optimize, special

#: The power `abrouter plan` sizes the horizon for (`stats.power.sample_size`'s default).
PLANNED_POWER = 0.8


def slope(alpha: ArrayLike) -> np.ndarray:
    """c: the drift of the planned effect's score per unit of information, z_{1−α/2} + z_power."""
    # special.ndtri is scipy.stats.norm.ppf without the per-call overhead (simulations call this a lot).
    return np.asarray(-special.ndtri(np.asarray(alpha, dtype=float) / 2) + special.ndtri(PLANNED_POWER))


def crossing_probability(b: ArrayLike, c: ArrayLike) -> np.ndarray:
    """A(b, c): chance that a standard Brownian motion ever reaches the boundary g (module docstring).

    A boundary at or below 0 is reached at once (B(0) = 0), so A = 1 there. The two
    exponential terms are taken in log space: each alone overflows for large b·c.
    """
    b, c = np.asarray(b, dtype=float), np.asarray(c, dtype=float)
    with np.errstate(over="ignore", invalid="ignore"):
        later = np.exp(2 * c * (c - b) + special.log_ndtr(b - 2 * c)) - np.exp(
            2 * c * (c + b) + special.log_ndtr(-b - 2 * c)
        )
        total = 2 * special.ndtr(-b) + later
    return np.where(b <= 0, 1.0, np.clip(total, 0.0, 1.0))


@functools.lru_cache(maxsize=64)
def _level(alpha: float) -> float:
    c = float(slope(alpha))
    return float(optimize.brentq(lambda b: float(crossing_probability(b, c)) - alpha, 1e-6, 40.0, xtol=1e-12))


def level(alpha: ArrayLike) -> np.ndarray:
    """b: the boundary on B(t) up to the horizon, such that A(b, c) = alpha."""
    return np.vectorize(_level, otypes=[float])(np.asarray(alpha, dtype=float))


def p_value(z: ArrayLike, information: ArrayLike, alpha: ArrayLike) -> np.ndarray:
    """This look's one-sided p for z = Δ̂/√V (positive: the tested direction) at t = information.

    `alpha` is the design's (pinned) level: it sets the slope c. t = 0 (no data) gives 1.
    """
    z, t, c = np.asarray(z, dtype=float), np.asarray(information, dtype=float), slope(alpha)
    score = z * np.sqrt(np.maximum(t, 0.0))
    return crossing_probability(score - c * np.maximum(t - 1.0, 0.0), c)


def critical_z(information: ArrayLike, alpha: ArrayLike) -> np.ndarray:
    """The z this look must reach to cross at level alpha: g(t)/√t (for the report)."""
    t = np.asarray(information, dtype=float)
    with np.errstate(divide="ignore"):
        return (level(alpha) + slope(alpha) * np.maximum(t - 1.0, 0.0)) / np.sqrt(t)
