"""The balanced ramp (`analysis.ramp_rest`): every step compares a control and candidates of one size.

GrowthBook's Safe Rollouts grow the coverage at an even split; here a rest variant serving
the control's model takes the traffic outside the comparison.
"""

from __future__ import annotations

import pytest

from abrouter.analysis import analyzer
from abrouter.analysis import data as d
from abrouter.analysis.stats.sample import Sample
from abrouter.contract import experiment as model
from abrouter.contract.model import AnalysisSettings, Metric

SPEC = {
    "name": "b",
    "unit": {"header": "X-User-Id"},
    "variants": [
        {"name": "control", "upstream": "http://a:1", "weight": 5},
        {"name": "candidate", "upstream": "http://b:1", "weight": 5},
        {"name": "rest", "upstream": "http://a:1", "weight": 90},
    ],
    "metrics": [{"name": "conversion", "kind": "binary"}],
    "analysis": {"ramp": [5, 25, 50], "ramp_rest": "rest"},
}


def spec(**analysis: object) -> dict[str, object]:
    return SPEC | {"analysis": SPEC["analysis"] | analysis}  # type: ignore[operator]


def test_a_balanced_spec_parses_and_round_trips() -> None:
    e = model.parse(SPEC)
    assert e.analysis.ramp_rest == "rest"
    assert model.parse(model.to_dict(e)) == e


@pytest.mark.parametrize(
    ("change", "message"),
    [
        (spec(ramp_rest="control"), r"analysis.ramp_rest: must name a variant other than the control, got 'control'"),
        (spec(ramp_rest="nope"), r"analysis.ramp_rest: must name a variant other than the control"),
        (
            SPEC | {"variants": [*SPEC["variants"][:2], {"name": "rest", "upstream": "http://c:1", "weight": 90}]},  # type: ignore[index]
            r"analysis.ramp_rest: rest must serve the control's model",
        ),
        (spec(ramp=[]), r"analysis.ramp_rest: balances a ramp: needs analysis.ramp"),
        (spec(bandit={"enabled": True}), r"analysis.ramp_rest: balances a ramp"),
        (spec(ramp=[5, 60]), r"analysis.ramp_rest: the final ramp step 60% leaves no room"),
    ],
)
def test_a_bad_rest_is_refused_naming_the_field(change: dict[str, object], message: str) -> None:
    with pytest.raises(model.ConfigError, match=message):
        model.parse(change)


SETTINGS = AnalysisSettings(
    ramp=(5.0, 25.0, 50.0), ramp_rest="rest", burn_in_s=0.0, guardrails=(), min_units_per_arm=500
)


def data(weights: dict[str, float], units: dict[str, int]) -> d.ExperimentData:
    arms = tuple(
        d.Arm(name, weights[name], (d.Stratum(1, units[name], {"m": Sample(units[name], units[name] // 20)}),))
        for name in ("control", "candidate", "rest")
    )
    return d.ExperimentData("b", (Metric("m", "binary"),), arms, (d.Epoch(1, dict(weights)),), SETTINGS, started_at=0.0)


def test_each_step_gives_the_control_the_candidates_share_and_the_rest_the_remainder() -> None:
    look = data({"control": 5.0, "candidate": 5.0, "rest": 90.0}, {"control": 600, "candidate": 600, "rest": 10_800})
    assert [a.name for a in look.candidates] == ["candidate"]  # the rest is never compared
    result = analyzer.analyze(look, now=60.0)
    assert [c.variant for c in result.comparisons] == ["candidate"]
    assert not result.srm.flagged and set(result.srm.observed) == {"control", "candidate", "rest"}
    assert result.decision.action == "ramp", result.decision.reason
    assert result.decision.weights == {"control": 25.0, "candidate": 25.0, "rest": 50.0}
    final = data({"control": 25.0, "candidate": 25.0, "rest": 50.0}, {"control": 3000, "candidate": 3000, "rest": 6000})
    assert analyzer.analyze(final, now=60.0).decision.weights == {"control": 50.0, "candidate": 50.0, "rest": 0.0}


def test_the_rest_is_in_the_srm_check() -> None:
    # The rest got 20% fewer units than its weight says: assignment or logging is off.
    look = data({"control": 5.0, "candidate": 5.0, "rest": 90.0}, {"control": 600, "candidate": 600, "rest": 8_600})
    result = analyzer.analyze(look, now=60.0)
    assert result.srm.flagged and result.decision.action == "continue"
