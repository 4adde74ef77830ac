"""Defect 4 (issue 9): the bandit cannot bypass the sequential test and the gates."""

from __future__ import annotations

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
        settings=AnalysisSettings(min_units_per_arm=500, bandit=Bandit(enabled=True, floor=floor, min_units=500)),
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
