import math

import numpy as np
import pytest
from scipy import integrate
from scipy import stats as sps
from scipy.special import betaln

from abrouter.analysis.stats import bayes
from abrouter.analysis.stats.sample import Sample


def _closed_form_b_beats_a(s_a: int, n_a: int, s_b: int, n_b: int) -> float:
    """Evan Miller's exact sum for P(p_B > p_A) with Beta(1 + s, 1 + n − s) posteriors."""
    a_a, b_a, a_b, b_b = 1 + s_a, 1 + n_a - s_a, 1 + s_b, 1 + n_b - s_b
    i = np.arange(a_b)
    terms = betaln(a_a + i, b_a + b_b) - np.log(b_b + i) - betaln(1 + i, b_b) - betaln(a_a, b_a)
    return float(np.exp(terms).sum())


@pytest.mark.parametrize(
    "counts",
    [
        (10, 100, 15, 100),
        (0, 20, 3, 20),
        (200, 1000, 220, 1000),
        (30, 500, 12, 80),
        (0, 5000, 1, 5000),
        (0, 100_000, 0, 100),
        (2000, 2000, 1999, 2000),
        (1, 3, 0, 3),
    ],
)
def test_beta_binomial_chance_to_beat_matches_the_closed_form(counts: tuple[int, int, int, int]) -> None:
    s_c, n_c, s_t, n_t = counts
    value = bayes.beta_binomial_chance_to_beat(Sample(n_c, s_c), Sample(n_t, s_t))
    assert value == pytest.approx(_closed_form_b_beats_a(s_c, n_c, s_t, n_t), abs=1e-9)


def test_beta_binomial_direction_decrease_is_the_complement() -> None:
    control, candidate = Sample(1000, 40), Sample(1200, 41)
    up = bayes.beta_binomial_chance_to_beat(control, candidate, direction="increase")
    down = bayes.beta_binomial_chance_to_beat(control, candidate, direction="decrease")
    assert up + down == pytest.approx(1.0, abs=1e-10)


@pytest.mark.parametrize(
    ("control", "candidate"),
    [((2_000_000, 100_000), (2_000_000, 100_700)), ((50_000, 2_500), (400, 30)), ((300, 3), (300, 9))],
)
@pytest.mark.parametrize("direction", ["increase", "decrease"])
def test_beta_binomial_loss_and_chance_match_monte_carlo(
    control: tuple[int, int], candidate: tuple[int, int], direction: str
) -> None:
    rng = np.random.default_rng(11)
    draws = 2_000_000
    p_c = rng.beta(1 + control[1], 1 + control[0] - control[1], draws)
    p_t = rng.beta(1 + candidate[1], 1 + candidate[0] - candidate[1], draws)
    harm = (p_c - p_t) if direction == "increase" else (p_t - p_c)
    losses = np.maximum(harm, 0)
    c, t = Sample(*control), Sample(*candidate)
    chance = bayes.beta_binomial_chance_to_beat(c, t, direction=direction)
    loss = bayes.beta_binomial_expected_loss(c, t, direction=direction)
    assert chance == pytest.approx(np.mean(harm < 0), abs=5 * math.sqrt(0.25 / draws))
    assert loss == pytest.approx(losses.mean(), abs=5 * losses.std() / math.sqrt(draws))


def test_gaussian_chance_and_loss_match_numerical_integration() -> None:
    difference, variance = 0.3, 0.04
    sd = math.sqrt(variance)

    def density(d):
        return sps.norm.pdf(d, difference, sd)

    chance, _ = integrate.quad(density, 0, np.inf)
    loss, _ = integrate.quad(lambda d: -d * density(d), -np.inf, 0)
    assert bayes.gaussian_chance_to_beat(difference, variance) == pytest.approx(chance, abs=1e-9)
    assert bayes.gaussian_expected_loss(difference, variance) == pytest.approx(loss, abs=1e-9)
    # Lower is better: the candidate that is 0.3 higher is the worse one.
    loss_down, _ = integrate.quad(lambda d: d * density(d), 0, np.inf)
    assert bayes.gaussian_chance_to_beat(difference, variance, direction="decrease") == pytest.approx(1 - chance)
    assert bayes.gaussian_expected_loss(difference, variance, direction="decrease") == pytest.approx(
        loss_down, abs=1e-9
    )


def test_exact_and_gaussian_agree_for_large_samples() -> None:
    c, t = Sample(200_000, 10_000), Sample(200_000, 10_250)
    difference = t.mean - c.mean
    variance = c.binomial_mean_variance + t.binomial_mean_variance
    assert bayes.beta_binomial_chance_to_beat(c, t) == pytest.approx(
        bayes.gaussian_chance_to_beat(difference, variance), abs=2e-3
    )
