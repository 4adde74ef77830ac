"""Always-valid inference: the normal-mixture mSPRT and its confidence sequence.

Model: after each look the estimated difference Δ̂ is ~ N(Δ, V), with V estimated from the
data (asymptotic, as in Johari, Pekelis & Walsh 2017 and Waudby-Smith et al. 2021). Mixing
the likelihood ratio over a prior Δ ~ N(0, τ²) gives

    Λ = (1 + r)^(-1/2) · exp(r·z² / (2(1 + r))),   z² = Δ̂²/V,   r = τ²/V.

Λ is a (test) martingale under H0, so by Ville's inequality p = min over looks of 1/Λ is
valid at any stopping time. Inverting Λ ≥ 1/α gives the confidence sequence
Δ̂ ± √(V · (1 + r)/r · (2·log(1/α) + log(1 + r))).

Tuning: τ² is set so that the sequence is (nearly) narrowest when each arm has
`expected_units` units (Waudby-Smith et al. 2021, eq. for ρ²): at that point
r* = 2·log(1/α) + log(1 + 2·log(1/α)). V = σ²(1/n_c + 1/n_t) = 2σ²/n with the harmonic
(effective) units per arm n = 2·n_c·n_t/(n_c + n_t) (`estimate.effective_units`, summed
over epoch strata), so τ² = V·r is the same at every look, whatever the split, when
r = r*·n/n*; this is what `mixing_ratio` returns. The arithmetic mean (n_c + n_t)/2 is only
right for 50/50: at 95/5 it overstates n, and so τ², about 5-fold. With the default
alpha = 0.05, r* ≈ 8.4.

All functions broadcast over numpy arrays, so simulations can run them vectorised.
"""

from __future__ import annotations

import numpy as np
from numpy.typing import ArrayLike


def optimal_ratio(alpha: ArrayLike) -> np.ndarray:
    """r* = τ²/V at the horizon that makes the confidence sequence nearly narrowest there."""
    a = -2 * np.log(alpha)
    return a + np.log1p(a)


def mixing_ratio(units: ArrayLike, expected_units: ArrayLike, alpha: ArrayLike) -> np.ndarray:
    """r = τ²/V now: r* scaled by the effective units per arm so far over the expected units per arm."""
    return optimal_ratio(alpha) * np.asarray(units, dtype=float) / np.asarray(expected_units, dtype=float)


def p_value(z: ArrayLike, r: ArrayLike) -> np.ndarray:
    """1/Λ capped at 1: the mSPRT p at this look for a z-score z = Δ̂/√V and r = τ²/V."""
    z, r = np.asarray(z, dtype=float), np.asarray(r, dtype=float)
    log_p = 0.5 * np.log1p(r) - r * z**2 / (2 * (1 + r))
    return np.exp(np.minimum(log_p, 0.0))


def half_width_multiplier(r: ArrayLike, alpha: ArrayLike) -> np.ndarray:
    """k such that Δ̂ ± k·√V is the 1 − alpha confidence sequence at this look."""
    r = np.asarray(r, dtype=float)
    with np.errstate(divide="ignore"):
        # r = 0 (no data) gives an infinitely wide interval, as it should.
        return np.sqrt((1 + r) / r * (-2 * np.log(alpha) + np.log1p(r)))
