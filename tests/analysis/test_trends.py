"""The effect over time in words: declined (novelty), grew, stable or not checked, in JSON, table and report.

Two looks through the real analyzer, the second seeded with the first's running state (its
anchor), as `analyze` runs them; the split is at the first look.
"""

from __future__ import annotations

import math
from dataclasses import replace

import numpy as np
import pytest

from abrouter.analysis import analyzer, html_report, report, simulate
from abrouter.analysis import data as d
from abrouter.analysis.analyzer import AnalysisResult
from abrouter.analysis.stats.sample import Sample
from abrouter.contract import experiment as model
from abrouter.contract.model import Metric

ALPHA = 0.05
DAY = 86_400.0


def _data(control: tuple[int, int], candidate: tuple[int, int]) -> d.ExperimentData:
    settings = replace(simulate.settings_for(expected_units=10_000, ramp=False), burn_in_s=0.0)
    arms = tuple(
        d.Arm(name, 50.0, (d.Stratum(1, n, {"m": Sample(float(n), float(s))}),))
        for name, (n, s) in (("control", control), ("candidate", candidate))
    )
    epochs = (d.Epoch(1, {"control": 50.0, "candidate": 50.0}, 0.0),)
    return d.ExperimentData("x", (Metric(name="m", kind="binary"),), arms, epochs, settings, started_at=0.0)


def two_looks(first: tuple[int, int, int, int], second: tuple[int, int, int, int]) -> AnalysisResult:
    """(units, conversions) of control and candidate at day 1 and, cumulatively, at day 4."""
    one = analyzer.analyze(_data(first[:2], first[2:]), now=DAY)
    return analyzer.analyze(_data(second[:2], second[2:]), now=4 * DAY, previous=one.running())


def test_an_effect_that_fell_is_novelty_in_every_output() -> None:
    result = two_looks((5_000, 250, 5_000, 450), (20_000, 1_000, 20_000, 1_200))
    (t,) = result.trends
    assert (t.variant, t.metric, t.status) == ("candidate", "m", "declined")
    assert t.early_lift == pytest.approx(0.04) and t.late_lift == pytest.approx(0.0, abs=0.004)
    assert t.decline_p < 0.001 and t.split_at == DAY
    assert "the effect faded from +0.04 up to 1970-01-02 00:00 UTC to" in t.message
    assert "a novelty effect is suspected, and the promotion is held" in t.message
    assert result.decision.action == "continue"  # the policy held it, as the words say
    (out,) = result.to_dict()["trends"]
    assert out["status"] == "declined" and out["message"] == t.message and out["split_at"] == DAY
    assert f"effect over time: {t.message}" in report.render(result)
    page = html_report.render(spec(), result, [])
    assert '<section id="trends">' in page and "<b>Novelty suspected</b>" in page


def test_an_effect_that_grew_is_a_trend_the_policy_does_not_act_on() -> None:
    result = two_looks((5_000, 250, 5_000, 250), (20_000, 1_000, 20_000, 1_400))
    (t,) = result.trends
    assert t.status == "grew" and t.growth_p < 0.001 and t.decline_p > 0.999
    assert "the effect strengthened from +0 up to" in t.message and "recent effect is larger" in t.message
    assert "Time trend: the effect strengthened" in html_report.render(spec(), result, [])


def test_a_constant_effect_is_stable_and_a_first_look_is_not_checked() -> None:
    result = two_looks((5_000, 250, 5_000, 300), (20_000, 1_000, 20_000, 1_200))
    (t,) = result.trends
    assert t.status == "stable" and "no time trend detected" in t.message
    assert "effect over time" not in report.render(result)  # the table says only what needs attention
    first = analyzer.analyze(_data((5_000, 250), (5_000, 300)), now=DAY)
    (t,) = first.trends
    assert t.status == "not_checked" and math.isnan(t.decline_p)
    assert first.to_dict()["trends"][0]["decline_p"] is None


def test_under_a_constant_effect_each_side_flags_at_most_alpha() -> None:
    """400 seeded A/A pairs of looks (5,000 then 15,000 more users per arm at 5%): each side ≤ α + 3 MC SE."""
    rng = np.random.default_rng(18)
    runs, counts = 400, {"declined": 0, "grew": 0}
    for _ in range(runs):
        early = rng.binomial(5_000, 0.05, 2)
        late = early + rng.binomial(15_000, 0.05, 2)
        result = two_looks((5_000, int(early[0]), 5_000, int(early[1])), (20_000, int(late[0]), 20_000, int(late[1])))
        status = result.trends[0].status
        counts[status] = counts.get(status, 0) + 1
    bound = ALPHA + 3 * math.sqrt(ALPHA * (1 - ALPHA) / runs)
    assert counts["declined"] / runs <= bound and counts["grew"] / runs <= bound
    assert counts["declined"] + counts["grew"] > 0  # not vacuous: it does flag by chance


def spec() -> model.Experiment:
    return model.parse(
        {
            "name": "x",
            "unit": {"header": "X-User-Id"},
            "variants": [
                {"name": "control", "upstream": "http://control", "weight": 50},
                {"name": "candidate", "upstream": "http://candidate", "weight": 50},
            ],
            "metrics": [{"name": "m", "kind": "binary"}],
        }
    )
