import math

import numpy as np
import pytest
from scipy import stats as sps

from abrouter.analysis.stats import bayes
from abrouter.analysis.stats.bandit import thompson_weights
from abrouter.analysis.stats.sample import Sample


def test_binary_two_arms_weights_follow_the_exact_chance_to_beat() -> None:
    samples = {"control": Sample(2000, 100), "candidate": Sample(2000, 118)}
    weights = thompson_weights(
        samples, kind="binary", direction="increase", floor=0.1, rng=np.random.default_rng(1), draws=200_000
    )
    p_best = (weights["candidate"] - 0.1) / 0.8
    exact = bayes.beta_binomial_chance_to_beat(samples["control"], samples["candidate"])
    assert p_best == pytest.approx(exact, abs=4 * math.sqrt(0.25 / 200_000))
    assert sum(weights.values()) == pytest.approx(1.0)


def test_continuous_arms_follow_the_normal_posterior_and_direction() -> None:
    rng = np.random.default_rng(2)
    a, b = Sample.from_values(rng.normal(100, 20, 400)), Sample.from_values(rng.normal(103, 20, 400))
    exact = sps.norm.cdf((b.mean - a.mean) / math.sqrt(a.mean_variance + b.mean_variance))
    up = thompson_weights(
        {"a": a, "b": b},
        kind="continuous",
        direction="increase",
        floor=0.0,
        rng=np.random.default_rng(3),
        draws=200_000,
    )
    down = thompson_weights(
        {"a": a, "b": b},
        kind="continuous",
        direction="decrease",
        floor=0.0,
        rng=np.random.default_rng(3),
        draws=200_000,
    )
    assert up["b"] == pytest.approx(exact, abs=0.005)
    assert down["a"] == pytest.approx(exact, abs=0.005)


def test_floor_keeps_every_arm_explored() -> None:
    samples = {"a": Sample(10_000, 500), "b": Sample(10_000, 900), "c": Sample(10_000, 480)}
    weights = thompson_weights(samples, kind="binary", direction="increase", floor=0.05, rng=np.random.default_rng(4))
    assert weights["a"] == pytest.approx(0.05) and weights["c"] == pytest.approx(0.05)
    assert weights["b"] == pytest.approx(0.9)


def test_arms_without_a_posterior_get_the_floor_or_an_even_split() -> None:
    some = {"a": Sample(0, 0, 0), "b": Sample.from_values(np.arange(10.0))}
    weights = thompson_weights(some, kind="continuous", direction="increase", floor=0.1, rng=np.random.default_rng(5))
    assert weights == pytest.approx({"a": 0.1, "b": 0.9})
    none = {"a": Sample(0, 0, 0), "b": Sample(1, 2, 4)}
    assert thompson_weights(
        none, kind="continuous", direction="increase", floor=0.1, rng=np.random.default_rng(5)
    ) == pytest.approx({"a": 0.5, "b": 0.5})


def test_impossible_floor_is_a_bug() -> None:
    with pytest.raises(ValueError):
        thompson_weights(
            {k: Sample(10, 1) for k in "abc"},
            kind="binary",
            direction="increase",
            floor=0.4,
            rng=np.random.default_rng(0),
        )
