"""Ratio metrics in the spec: per exposure or per another metric; errors name the field."""

from __future__ import annotations

from typing import Any

import pytest

from abrouter.contract import experiment as model
from abrouter.contract import keys


def spec(*metrics: dict[str, Any]) -> dict[str, Any]:
    return {
        "name": "recsys",
        "unit": {"header": "X-User-Id"},
        "variants": [
            {"name": "control", "upstream": "http://a:1", "weight": 50},
            {"name": "candidate", "upstream": "http://b:1", "weight": 50},
        ],
        "metrics": [
            {"name": "clicks", "kind": "continuous"},
            {"name": "impressions", "kind": "continuous"},
            *metrics,
        ],
    }


def test_a_ratio_per_metric_and_one_per_exposure_parse_and_round_trip() -> None:
    e = model.parse(
        spec(
            {"name": "ctr", "kind": "ratio", "numerator": "clicks", "denominator": "impressions"},
            {"name": "clicks_per_request", "kind": "ratio", "numerator": "clicks"},
        )
    )
    assert e.metric("ctr").denominator == "impressions"
    assert e.metric("clicks_per_request").denominator == model.EXPOSURES
    assert model.parse(model.to_dict(e)) == e
    # Ratios get no storage column; only pairs over two metrics need cross products.
    assert keys.metric_order(e) == ("errors", "latency_ms", "slow_requests", "clicks", "impressions")
    assert e.ratio_pairs == (("clicks", "impressions"),)


def test_a_guardrail_may_watch_a_ratio() -> None:
    data = spec({"name": "ctr", "kind": "ratio", "numerator": "clicks", "denominator": "impressions"})
    data["analysis"] = {"guardrails": [{"metric": "ctr", "direction": "increase", "margin": 0.1, "relative": True}]}
    assert model.parse(data).analysis.guardrails[0].metric == "ctr"


@pytest.mark.parametrize(
    ("ratio", "message"),
    [
        ({"numerator": "clicks", "denominator": "views"}, "metrics[2].denominator: must name a binary or continuous"),
        ({"numerator": "nope"}, "metrics[2].numerator: must name a binary or continuous metric, got 'nope'"),
        ({"denominator": "clicks"}, "metrics[2].numerator: is required"),
        ({"numerator": "clicks", "denominator": "clicks"}, "metrics[2].denominator: must differ from the numerator"),
        ({"numerator": 3}, "metrics[2].numerator: must be a non-empty string"),
    ],
)
def test_bad_ratios_name_the_field(ratio: dict[str, Any], message: str) -> None:
    with pytest.raises(model.ConfigError) as err:
        model.parse(spec({"name": "ctr", "kind": "ratio", **ratio}))
    assert str(err.value).startswith(message), str(err.value)


def test_a_ratio_of_ratios_is_refused() -> None:
    with pytest.raises(model.ConfigError, match=r"metrics\[3\].numerator: must name a binary or continuous"):
        model.parse(
            spec(
                {"name": "ctr", "kind": "ratio", "numerator": "clicks", "denominator": "impressions"},
                {"name": "meta", "kind": "ratio", "numerator": "ctr"},
            )
        )


def test_numerator_is_only_for_ratios() -> None:
    with pytest.raises(model.ConfigError, match=r"metrics\[2\].numerator: unknown key"):
        model.parse(spec({"name": "x", "kind": "continuous", "numerator": "clicks"}))


def test_exposures_is_not_a_metric_name() -> None:
    with pytest.raises(model.ConfigError, match=r"metrics\[2\].name: 'exposures' is measured by the router"):
        model.parse(spec({"name": "exposures", "kind": "continuous"}))
