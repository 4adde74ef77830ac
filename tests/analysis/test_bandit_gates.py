"""Defect 4 (issue 9): the bandit cannot bypass the sequential test and the gates."""

from __future__ import annotations

import math
from dataclasses import replace

import numpy as np
import pytest

from abrouter.analysis import analyzer
from abrouter.analysis.data import Arm, Epoch, ExperimentData, Stratum
from abrouter.analysis.stats.sample import Sample
from abrouter.contract import experiment as model
from abrouter.contract.model import AnalysisSettings, Bandit, Metric

BASE = {
    "name": "b",
    "unit": {"header": "X-User-Id"},
    "variants": [
        {"name": "control", "upstream": "http://a:1", "weight": 50},
        {"name": "candidate", "upstream": "http://b:1", "weight": 50},
    ],
    "metrics": [{"name": "conversion", "kind": "binary"}],
}


def test_a_zero_floor_is_refused_naming_the_field() -> None:
    with pytest.raises(model.ConfigError, match=r"analysis.bandit.floor: must be >= 0.005, got 0"):
        model.parse(BASE | {"analysis": {"bandit": {"enabled": True, "floor": 0}}})


def data(weights: dict[str, float], floor: float) -> ExperimentData:
    """600 units per arm, 5.0% vs 10.3% conversion: the issue's case (sequential p ~0.18)."""
    arms = tuple(
        Arm(
            name=name,
            weight=weights[name],
            strata=(Stratum(epoch=1, units=600, metrics={"conversion": Sample(600, s, s)}),),
        )
        for name, s in (("control", 30), ("candidate", 62))
    )
    return ExperimentData(
        name="b",
        metrics=(Metric(name="conversion", kind="binary"),),
        arms=arms,
        epochs=(Epoch(epoch=1, weights={"control": 50, "candidate": 50}),),
        settings=AnalysisSettings(
            min_units_per_arm=500, burn_in_s=0.0, bandit=Bandit(enabled=True, floor=floor, min_units=500)
        ),
        started_at=0.0,
    )


def test_the_bandit_never_reaches_a_promotion_without_the_sequential_test() -> None:
    rng = np.random.default_rng(4)
    weights = {"control": 50.0, "candidate": 50.0}
    for _ in range(20):  # look after look, applying the bandit's weights each time
        result = analyzer.analyze(data(weights, model.MIN_BANDIT_FLOOR), now=60.0, rng=rng)
        assert result.decision.action != "promote", result.decision.reason
        weights = result.decision.weights or weights
    assert weights["control"] >= 100 * model.MIN_BANDIT_FLOOR - 1e-9
    primary = next(c for c in result.comparisons if c.metric == "conversion")
    assert primary.sequential_p_value > 0.05  # the evidence that promotion would have bypassed


def sequential_p(result: analyzer.AnalysisResult) -> float:
    return next(c for c in result.comparisons if c.metric == "conversion").sequential_p_value


@pytest.mark.parametrize("bandit", [True, False])
def test_all_traffic_on_the_candidate_is_not_a_promotion_without_the_sequential_test(bandit: bool) -> None:
    """The issue's case: floor near 0, 600 units per arm, 5.0% vs 10.3%, sequential p 0.175.

    Thompson sampling had moved the split to 0.01/99.99 and, once P(best) rounded to 1,
    to 100%; the next look read 100% as "already promoted". A hand edit gets there too.
    """
    for weights in ({"control": 0.0, "candidate": 100.0}, {"control": 0.01, "candidate": 99.99}):
        look = data(weights, model.MIN_BANDIT_FLOOR)
        if not bandit:
            look = replace(look, settings=replace(look.settings, bandit=Bandit()))
        result = analyzer.analyze(look, now=60.0, rng=np.random.default_rng(2))
        assert sequential_p(result) == pytest.approx(0.175, abs=0.001)
        assert result.decision.action != "promote", result.decision.reason
        if weights["candidate"] == 100.0:  # a hand edit: stopped as it is, not promoted
            assert result.decision.action == "stop" and result.decision.weights == weights
            assert "has 100% of traffic but was not promoted" in result.decision.reason
        elif bandit:  # below the floor: restored at once, the control keeps gathering evidence
            assert result.decision.weights["control"] >= 100 * model.MIN_BANDIT_FLOOR - 1e-9


def test_a_real_win_at_100_percent_stays_promoted() -> None:
    """Idempotence is kept where it is earned: a significant winner at 100% is still "promote".

    After the promotion the control has no traffic: the new epoch holds the candidate's
    units alone, which no comparison can use, so the evidence is the one that promoted.
    """
    arms = tuple(
        Arm(
            name=name,
            weight=w,
            strata=(
                Stratum(epoch=1, units=6000, metrics={"conversion": Sample(6000, s, s)}),
                Stratum(epoch=2, units=later, metrics={"conversion": Sample(later, later // 20, later // 20)}),
            ),
        )
        for name, s, w, later in (("control", 300, 0.0, 0), ("candidate", 420, 100.0, 3000))
    )
    epochs = (Epoch(1, {"control": 50, "candidate": 50}), Epoch(2, {"control": 0, "candidate": 100}))
    look = replace(data({"control": 0.0, "candidate": 100.0}, model.MIN_BANDIT_FLOOR), arms=arms, epochs=epochs)
    result = analyzer.analyze(look, now=60.0, rng=np.random.default_rng(3))
    assert sequential_p(result) < 0.01
    assert result.decision.action == "promote" and "already has 100%" in result.decision.reason


def test_the_bandit_is_not_fooled_by_a_time_trend_across_its_own_weight_changes() -> None:
    """A/A: conversion rises from 4% to 12% while the bandit's split moved 90/10 -> 10/90.

    Pooled posteriors credit the candidate (served mostly late) with the trend and give it
    all but the floor; stratified ones give it ~50% on average over replications
    (MC error of the mean weight over R runs <= 50/√R points).
    """
    rng = np.random.default_rng(21)
    units = [{"control": 9000, "candidate": 1000}, {"control": 1000, "candidate": 9000}]
    drawn = []
    for _ in range(60):
        arms = tuple(
            Arm(
                name=name,
                weight=units[1][name] / 100,
                strata=tuple(
                    Stratum(epoch=e + 1, units=u[name], metrics={"conversion": Sample(u[name], s, s)})
                    for e, (u, rate) in enumerate(zip(units, (0.04, 0.12)))
                    for s in [float(rng.binomial(u[name], rate))]
                ),
            )
            for name in ("control", "candidate")
        )
        look = replace(
            data({"control": 10.0, "candidate": 90.0}, 0.05),
            arms=arms,
            epochs=(Epoch(1, {"control": 90, "candidate": 10}), Epoch(2, {"control": 10, "candidate": 90})),
        )
        result = analyzer.analyze(look, now=60.0, rng=rng)
        assert result.decision.action in ("ramp", "continue"), result.decision.reason
        drawn.append(result.decision.weights["candidate"])
    assert np.mean(drawn) == pytest.approx(50.0, abs=3 * 50 / math.sqrt(len(drawn)))
