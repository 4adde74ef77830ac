import math

import numpy as np
import pytest
from scipy import stats as sps

from abrouter.analysis.stats import bayes, estimate
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


def test_a_time_trend_across_weight_epochs_biases_pooled_posteriors_but_not_stratified_ones() -> None:
    """A/A under a trend: conversion rises from 4% to 12% while the split moves 90/10 -> 10/90.

    Pooled, the candidate (mostly served late, when everyone converts more) looks best
    almost surely; stratified by epoch, P(best) averages 0.5 over replications, as an A/A
    test must. MC error of the mean of P(best) over R runs <= 0.5/√R.
    """
    rng = np.random.default_rng(12)
    epochs = [(0.04, {"control": 9000, "candidate": 1000}), (0.12, {"control": 1000, "candidate": 9000})]
    pooled, stratified = [], []
    for _ in range(200):
        strata = {
            arm: [Sample(units[arm], float(rng.binomial(units[arm], rate))) for rate, units in epochs]
            for arm in ("control", "candidate")
        }
        kw = dict(kind="binary", direction="increase", floor=0.0, rng=rng, draws=2000)
        stratified.append(thompson_weights(strata, **kw)["candidate"])
        pooled.append(thompson_weights({a: sum(s[1:], s[0]) for a, s in strata.items()}, **kw)["candidate"])
    se = 0.5 / math.sqrt(len(stratified))
    assert np.mean(pooled) > 0.99  # the bias the pooled posteriors had
    assert np.mean(stratified) == pytest.approx(0.5, abs=3 * se)


def test_stratified_weights_match_the_normal_posterior_of_the_standardised_means() -> None:
    # Two epochs with a common weight w_e ∝ 1/Σ_a 1/n_a,e; P(best) = Φ(d/√V) of the combined means.
    control = [Sample(4000, 200), Sample(1000, 90)]
    candidate = [Sample(1000, 60), Sample(4000, 380)]
    w = np.array([1 / (1 / 4000 + 1 / 1000)] * 2)
    w = w / w.sum()
    var = [estimate.floored_variance("binary")(s) for s in control + candidate]
    mean_c = w[0] * control[0].mean + w[1] * control[1].mean
    mean_t = w[0] * candidate[0].mean + w[1] * candidate[1].mean
    v = w[0] ** 2 * (var[0] + var[2]) + w[1] ** 2 * (var[1] + var[3])
    exact = sps.norm.cdf((mean_t - mean_c) / math.sqrt(v))
    got = thompson_weights(
        {"control": control, "candidate": candidate},
        kind="binary",
        direction="increase",
        floor=0.0,
        rng=np.random.default_rng(6),
        draws=200_000,
    )
    assert got["candidate"] == pytest.approx(exact, abs=4 * math.sqrt(0.25 / 200_000))
