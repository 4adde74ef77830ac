"""[shadow] The shadow's arm from the stored sums, and the policy around it (pure: no Redis, no clock)."""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest

from abrouter.analysis import analyzer, html_report, reader, report
from abrouter.contract import experiment as spec
from abrouter.contract import keys
from abrouter.contract.keys import MetricSums, StratumSums

NOW = 1_000_000.0
RAILS = [{"metric": "errors", "direction": "decrease", "margin": 0.1}]


def experiment(*, live_candidate: bool = False) -> spec.Experiment:
    variants: list[dict[str, Any]] = [{"name": "control", "upstream": "http://a", "weight": 100}]
    if live_candidate:
        variants.append({"name": "live", "upstream": "http://c", "weight": 10})
    variants.append({"name": "next", "upstream": "http://b", "weight": 0, "shadow": True, "shadow_percent": 50})
    analysis = {"min_units_per_arm": 100, "expected_units_per_arm": 100, "ramp": [5, 50], "guardrails": RAILS}
    return spec.parse({"name": "e", "unit": {"header": "U"}, "variants": variants, "analysis": analysis})


def stratum(variant: str, *, units: int, errors: float = 0.0, latency: float = 10.0) -> StratumSums:
    """`units` units of one request each, `errors` of them failed."""
    s = StratumSums(epoch=1, variant=variant, units=units, exposures=units, exposures_sq=float(units))
    s.metrics["errors"] = MetricSums(sum=errors, sum_sq=errors, sum_xn=errors, events=units)
    s.metrics["latency_ms"] = MetricSums(sum=latency * units, sum_sq=latency**2 * units, sum_xn=latency * units)
    return s


def look(e: spec.Experiment, strata: list[StratumSums]) -> analyzer.AnalysisResult:
    epochs = {1: keys.EpochInfo(epoch=1, weights={v.name: v.weight for v in e.variants}, since=NOW - 60)}
    data = reader.build(e, {(s.epoch, s.variant): s for s in strata}, epochs)
    return analyzer.analyze(data, now=NOW, rng=np.random.default_rng(1))


def test_the_agreement_is_per_copy_over_the_units() -> None:
    # Two units: one with 1 copy that agreed, one with 2 copies of which 1 differed.
    compared = StratumSums(epoch=1, variant="next~agree", units=2, exposures=3, exposures_sq=1.0 + 4.0)
    compared.metrics["errors"] = MetricSums(sum=1.0, sum_sq=1.0, sum_xn=2.0)
    strata = {(1, "next~shadow"): stratum("next~shadow", units=2), (1, "next~agree"): compared}
    data = reader.build(experiment(), strata, {})
    (shadow,) = data.shadows
    sample = shadow.arm.strata[0].metrics["agreement"]
    assert (sample.sum, sample.den_sum, sample.sum_sq, sample.sum_products) == (2.0, 3.0, 2.0, 3.0)  # x_u = 1, 1
    assert [a.name for a in data.arms] == ["control"]


def test_a_healthy_shadow_goes_live_at_the_first_ramp_step() -> None:
    result = look(
        experiment(),
        [stratum("control", units=400), stratum("next~shadow", units=200), stratum("next~agree", units=200, errors=8)],
    )
    (s,) = result.shadows
    assert (s.units, s.copies, s.errors, s.agreement, s.healthy) == (200, 200, 0.0, pytest.approx(0.96), True)
    assert result.decision.action == "ramp", result.decision.reason
    assert result.decision.weights == {"control": 95.0, "next": 5.0}
    assert set(result.srm.observed) == {"control"}
    text = report.render(result)
    assert "shadow" in text and "96.0%" in text


def test_a_shadow_short_of_units_waits_and_is_never_stopped_for_lack_of_a_candidate() -> None:
    result = look(experiment(), [stratum("control", units=400), stratum("next~shadow", units=20)])
    assert result.decision.action == "continue"
    assert "shadow phase: next waits for 100 units (has 20" in result.decision.reason
    assert result.decision.weights == {"control": 100.0, "next": 0.0}


def test_a_failing_shadow_is_held() -> None:
    result = look(experiment(), [stratum("control", units=400), stratum("next~shadow", units=400, errors=200)])
    assert result.shadows[0].guardrails[0].status == "breach"
    assert result.decision.action == "continue"
    assert "next: guardrails not yet shown to pass (errors" in result.decision.reason


def test_with_a_live_candidate_the_live_policy_decides_and_the_shadow_stays_at_zero() -> None:
    e = experiment(live_candidate=True)
    strata = [stratum("control", units=400), stratum("live", units=40), stratum("next~shadow", units=400)]
    result = look(e, strata)
    assert result.shadows[0].healthy
    assert result.decision.weights["next"] == 0.0 and set(result.decision.weights) == {"control", "live", "next"}
    assert result.decision.action == "continue"


def test_a_spec_with_a_shadow_promoted_by_a_person_parses_as_a_live_candidate() -> None:
    data = spec.to_dict(experiment())
    data["variants"][1].update(shadow=False, weight=5)
    del data["variants"][1]["shadow_percent"]
    assert spec.parse(data).shadows == ()


def test_the_html_report_has_a_shadow_section() -> None:
    e = experiment()
    result = look(e, [stratum("control", units=400), stratum("next~shadow", units=200)])
    page = html_report.render(e, result, [])
    assert '<section id="shadows">' in page and "<td>next</td><td>50%</td><td>200</td>" in page


def test_the_html_report_says_which_requests_and_where_each_variant_is_served() -> None:
    data: dict[str, Any] = {
        "name": "e",
        "unit": {"header": "U"},
        "match": {"model": "recommender", "headers": {"x-tenant": "acme"}},
        "variants": [
            {"name": "control", "upstream": "http://a", "weight": 100, "model": "rec-v1", "grpc_upstream": "a:8001"},
            {"name": "next", "upstream": "http://b", "weight": 0, "shadow": True, "shadow_percent": 50},
        ],
    }
    e = spec.parse(data)
    page = html_report.render(e, look(e, [stratum("control", units=400)]), [])
    assert "Requests: those with model &#x27;recommender&#x27;, header x-tenant: &#x27;acme&#x27;." in page
    assert "<b>control</b> (control): http://a, gRPC a:8001, model &#x27;rec-v1&#x27;, weight 100" in page
    assert "<b>next</b> (shadow of 50% of units): http://b, weight 0" in page
    everything = spec.parse({**data, "match": {}})
    assert "every request the router receives" in html_report.render(everything, look(everything, []), [])
