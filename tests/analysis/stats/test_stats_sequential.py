import math

import numpy as np
import pytest
from scipy import integrate, optimize

from abrouter.analysis.stats import sequential


def _mixture_inverse(z: float, r: float, variance: float = 0.3) -> float:
    """1/Λ by integrating the likelihood ratio against the N(0, τ²) prior numerically."""
    estimate, tau_sq = z * math.sqrt(variance), r * variance

    def integrand(theta: float) -> float:
        log_lr = theta * estimate / variance - theta**2 / (2 * variance)
        return math.exp(log_lr - theta**2 / (2 * tau_sq)) / math.sqrt(2 * math.pi * tau_sq)

    value, _ = integrate.quad(integrand, -40 * math.sqrt(tau_sq), 40 * math.sqrt(tau_sq), points=[estimate])
    return min(1.0, 1 / value)


@pytest.mark.parametrize(("z", "r"), [(0.0, 1.0), (1.5, 0.2), (2.5, 8.4), (3.3, 30.0), (-2.8, 3.0)])
def test_p_value_is_the_inverse_of_the_normal_mixture_likelihood_ratio(z: float, r: float) -> None:
    assert float(sequential.p_value(z, r)) == pytest.approx(_mixture_inverse(z, r), rel=1e-7)


@pytest.mark.parametrize("alpha", [0.01, 0.05, 0.1])
@pytest.mark.parametrize("r", [0.05, 1.0, 8.4, 200.0])
def test_confidence_sequence_boundary_is_where_the_p_value_equals_alpha(alpha: float, r: float) -> None:
    k = float(sequential.half_width_multiplier(r, alpha))
    assert float(sequential.p_value(k, r)) == pytest.approx(alpha, rel=1e-10)
    assert float(sequential.p_value(0.99 * k, r)) > alpha


@pytest.mark.parametrize("alpha", [0.01, 0.05, 0.1])
def test_tuned_ratio_nearly_minimises_the_width_at_the_expected_units(alpha: float) -> None:
    def width(log_r):
        return float(sequential.half_width_multiplier(math.exp(log_r), alpha))

    best = optimize.minimize_scalar(width, bounds=(-5, 8), method="bounded")
    tuned = float(sequential.optimal_ratio(alpha))
    assert width(math.log(tuned)) <= best.fun * 1.005
    assert float(sequential.mixing_ratio(5000, 5000, alpha)) == pytest.approx(tuned)


def test_sequence_is_wider_than_the_fixed_horizon_interval_at_every_look() -> None:
    multipliers = sequential.half_width_multiplier(sequential.mixing_ratio(np.arange(1, 100) * 100, 5000, 0.05), 0.05)
    assert np.all(multipliers > 1.959964)


def test_no_data_gives_an_infinite_interval_and_p_one() -> None:
    assert math.isinf(float(sequential.half_width_multiplier(0.0, 0.05)))
    assert float(sequential.p_value(5.0, 0.0)) == 1.0
