"""Defect 2 (issue 9): SRM must keep its false-flag rate at srm_alpha over any number of looks.

The sequential multinomial test (Lindon & Malek 2022) is checked against the reference
formula (scipy's Dirichlet-multinomial and multinomial pmfs) and by an A/A simulation
with fixed seeds; the fixed-horizon chi-square re-run at every look is shown to fail it.
Monte-Carlo error of a rate r over R runs: √(r(1 − r)/R).
"""

from __future__ import annotations

import math

import numpy as np
import pytest
from scipy import stats as sps

from abrouter.analysis.stats.srm import PRIOR_CONCENTRATION, log_bayes_factor, log_bayes_factor_counts, srm_check


@pytest.mark.parametrize(
    ("counts", "weights"),
    [((520, 480), (50, 50)), ((95, 5), (95, 5)), ((300, 410, 290), (1, 1, 1)), ((7, 0, 3), (2, 1, 1))],
)
def test_the_bayes_factor_is_the_dirichlet_multinomial_over_the_multinomial(
    counts: tuple[int, ...], weights: tuple[float, ...]
) -> None:
    theta = np.array(weights, dtype=float) / sum(weights)
    n = sum(counts)
    reference = sps.dirichlet_multinomial.logpmf(counts, PRIOR_CONCENTRATION * theta, n) - sps.multinomial.logpmf(
        counts, n, theta
    )
    names = [f"v{i}" for i in range(len(counts))]
    got = log_bayes_factor(dict(zip(names, counts)), dict(zip(names, weights)))
    assert got == pytest.approx(reference, rel=1e-9, abs=1e-9)


def test_epochs_multiply_and_a_gross_mismatch_is_flagged() -> None:
    units = {1: {"control": 9_500, "candidate": 500}, 2: {"control": 10_400, "candidate": 9_600}}
    weights = {1: {"control": 95, "candidate": 5}, 2: {"control": 50, "candidate": 50}}
    result = srm_check(units, weights)
    both = log_bayes_factor(units[1], weights[1]) + log_bayes_factor(units[2], weights[2])
    assert result.p_value == pytest.approx(min(1.0, math.exp(-both)))
    assert result.flagged  # 52/48 over 20,000 units in epoch 2
    assert not srm_check({1: units[1]}, {1: weights[1]}).flagged


def looks_a_a(seed: int, runs: int, looks: int, step: int, share: float) -> np.ndarray:
    """Cumulative candidate counts at each look of `runs` A/A experiments: shape (runs, looks)."""
    rng = np.random.default_rng(seed)
    return np.cumsum(rng.binomial(step, share, (runs, looks)), axis=1)


@pytest.mark.parametrize(("looks", "step"), [(20, 1_000), (2_000, 10)])
def test_a_a_false_flags_stay_below_alpha_over_many_looks(looks: int, step: int) -> None:
    alpha, share, runs = 0.05, 0.25, 2_000
    candidate = looks_a_a(seed=5, runs=runs, looks=looks, step=step, share=share)
    n = step * np.arange(1, looks + 1)[None, :]
    x = np.stack([n - candidate, candidate], axis=-1).astype(float)
    log_bf = log_bayes_factor_counts(x, np.array([1 - share, share]))
    rate = float(np.mean((log_bf >= math.log(1 / alpha)).any(axis=1)))
    mc = math.sqrt(max(rate * (1 - rate), 1e-4) / runs)
    assert rate <= alpha + 2 * mc, f"false-flag rate {rate:.4f} ± {mc:.4f} over {looks} looks"


def test_the_chi_square_re_run_at_every_look_is_not_valid() -> None:
    """The defect the fix removes: the fixed-horizon test flags A/A far above alpha."""
    alpha, share, runs, looks, step = 0.05, 0.25, 2_000, 2_000, 10
    candidate = looks_a_a(seed=5, runs=runs, looks=looks, step=step, share=share)
    n = step * np.arange(1, looks + 1)[None, :]
    z2 = (candidate - n * share) ** 2 / (n * share * (1 - share))
    rate = float(np.mean((z2 > sps.chi2.isf(alpha, 1)).any(axis=1)))
    mc = math.sqrt(rate * (1 - rate) / runs)
    assert rate > alpha + 5 * mc, f"chi-square false-flag rate {rate:.4f} ± {mc:.4f}"
