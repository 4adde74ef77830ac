"""The decision design's boundary (`stats.horizon`) against Brownian motion and its own pieces."""

from __future__ import annotations

import math

import numpy as np
import pytest
from scipy import stats as sps

from abrouter.analysis.stats import horizon


def test_a_vertical_continuation_is_the_lan_demets_obrien_fleming_spending_at_the_horizon() -> None:
    # c -> ∞: nothing is left after t = 1, and the crossing chance is the reflection
    # principle's 2Φ̄(b), i.e. α(1) = α of Lan-DeMets' O'Brien-Fleming spending at b = z_{α/2}.
    b = sps.norm.isf(0.025)
    assert horizon.crossing_probability(b, 1e5) == pytest.approx(0.05, rel=1e-5)
    # c -> 0: a flat boundary is reached almost surely.
    assert horizon.crossing_probability(2.0, 1e-9) == pytest.approx(1.0, abs=1e-6)
    assert horizon.crossing_probability(-0.1, 2.0) == 1.0


@pytest.mark.parametrize("alpha", [0.01, 0.05, 0.1])
def test_level_spends_exactly_alpha(alpha: float) -> None:
    b = float(horizon.level(alpha))
    assert horizon.crossing_probability(b, horizon.slope(alpha)) == pytest.approx(alpha, rel=1e-9)
    assert horizon.slope(alpha) == pytest.approx(sps.norm.isf(alpha / 2) + sps.norm.isf(0.2))


@pytest.mark.parametrize("alpha", [0.05, 0.2])
def test_crossing_probability_matches_a_simulated_brownian_motion(alpha: float) -> None:
    # Fine steps on [0, 8] (the boundary at t = 8 is 7c above b: the rest is negligible),
    # with Siegmund's continuity correction: a walk sampled every dt misses crossings of
    # a continuous path, which is the same as a boundary 0.5826·√dt higher.
    rng = np.random.default_rng(17)
    paths, steps, horizon_t = 10_000, 2_000, 8.0
    dt = horizon_t / steps
    t = dt * np.arange(1, steps + 1)
    c, b = float(horizon.slope(0.05)), float(horizon.level(alpha))
    boundary = b + c * np.maximum(t - 1, 0) - 0.5826 * math.sqrt(dt)
    crossed = np.zeros(paths, dtype=bool)
    position = np.zeros(paths)
    for k in range(steps):
        position += rng.normal(0.0, math.sqrt(dt), paths)
        crossed |= position >= boundary[k]
    expected = float(horizon.crossing_probability(b, c))
    assert abs(crossed.mean() - expected) < 3 * math.sqrt(expected * (1 - expected) / paths) + 0.003


def test_p_value_crosses_alpha_exactly_at_the_critical_z() -> None:
    rng = np.random.default_rng(3)
    t = rng.uniform(0.02, 3.0, 2_000)
    z = rng.normal(2.5, 1.5, 2_000)
    p = horizon.p_value(z, t, 0.05)
    assert np.array_equal(p <= 0.05, z >= horizon.critical_z(t, 0.05) - 1e-12)
    assert horizon.p_value(-1.0, 0.5, 0.05) == 1.0  # the wrong direction is no evidence
    assert horizon.p_value(3.0, 0.0, 0.05) == 1.0  # no information yet
    # Up to the horizon the p is the reflection principle's 2Φ̄(z·√t) (O'Brien-Fleming).
    assert horizon.p_value(2.5, 0.64, 0.05) == pytest.approx(
        horizon.crossing_probability(2.0, horizon.slope(0.05)), rel=1e-12
    )
    # At the horizon the critical z is b ≈ 2.02: close to the fixed-horizon 1.96.
    assert horizon.critical_z(1.0, 0.05) == pytest.approx(2.0221, abs=1e-4)
