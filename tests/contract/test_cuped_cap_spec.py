"""The spec's `covariate`, per-metric `cuped` and `cap`: parsed, round-tripped, rejected with the field's path."""

from __future__ import annotations

from typing import Any

import pytest

from abrouter.contract import experiment as model
from abrouter.contract import keys
from abrouter.contract.fields import ConfigError


def _spec(**changes: Any) -> dict[str, Any]:
    return {
        "name": "exp",
        "unit": {"header": "X-User-Id"},
        "variants": [
            {"name": "a", "upstream": "http://a", "weight": 1},
            {"name": "b", "upstream": "http://b", "weight": 1},
        ],
        "metrics": [
            {"name": "conversion", "kind": "binary"},
            {"name": "revenue", "kind": "continuous", "cap": 100},
            {"name": "clicks", "kind": "continuous", "cuped": False},
            {"name": "ctr", "kind": "ratio", "numerator": "clicks"},
        ],
        "covariate": "prior_clicks",
        **changes,
    }


def test_the_covariate_adjusts_every_binary_and_continuous_metric_unless_one_opts_out() -> None:
    e = model.parse(_spec())
    assert e.covariate == "prior_clicks" and e.cuped_metrics == ("conversion", "revenue")
    assert e.metric("revenue").cap == 100.0 and e.metric("conversion").cap is None
    assert model.parse(model.to_dict(e)) == e
    assert keys.metric_order(e)[-2:] == ("prior_clicks", "prior_clicks~set")
    assert keys.covariate_pairs(e) == (("conversion", "prior_clicks"), ("revenue", "prior_clicks"))
    plain = model.parse(_spec(covariate=None))
    assert plain.cuped_metrics == () and "covariate" not in model.to_dict(plain)
    assert keys.metric_order(plain) == ("errors", "latency_ms", "slow_requests", "conversion", "revenue", "clicks")


@pytest.mark.parametrize(
    ("change", "path", "message"),
    [
        ({"covariate": "revenue"}, "covariate", "already a metric"),
        ({"covariate": "errors"}, "covariate", "already a metric"),
        ({"covariate": "exposures"}, "covariate", "already a metric"),
        ({"covariate": "prior clicks"}, "covariate", "a name of letters"),
        ({"covariate": 3}, "covariate", "non-empty string"),
        ({"metrics": [{"name": "c", "kind": "binary", "cap": 1}]}, "metrics[0].cap", "only continuous"),
        ({"metrics": [{"name": "c", "kind": "continuous", "cap": 0}]}, "metrics[0].cap", "must be > 0"),
        ({"metrics": [{"name": "c", "kind": "continuous", "cap": 1e16}]}, "metrics[0].cap", "<= 1e+15"),
        ({"metrics": [{"name": "c", "kind": "continuous", "cap": float("nan")}]}, "metrics[0].cap", "finite"),
        ({"metrics": [{"name": "c", "kind": "continuous", "cuped": "no"}]}, "metrics[0].cuped", "true or false"),
        # [cuped] a ratio is adjusted through its parts' products with the covariate: over the
        # exposures or of a built-in it may be, of a part that opted out it may not
        (
            {
                "metrics": [
                    {"name": "c", "kind": "continuous", "cuped": False},
                    {"name": "r", "kind": "ratio", "numerator": "c", "cuped": True},
                ]
            },
            "metrics[1].cuped",
            "the numerator 'c' has cuped: false",
        ),
        (
            {
                "metrics": [
                    {"name": "c", "kind": "continuous", "cuped": False},
                    {"name": "r", "kind": "ratio", "numerator": "errors", "denominator": "c", "cuped": True},
                ]
            },
            "metrics[1].cuped",
            "the denominator 'c' has cuped: false",
        ),
        (
            {
                "metrics": [
                    {"name": "ctr", "kind": "ratio", "numerator": "c", "denominator": "i", "cuped": True},
                    {"name": "c", "kind": "continuous"},
                    {"name": "i", "kind": "continuous", "cuped": False},
                ]
            },
            "metrics[0].cuped",
            "the denominator 'i' has cuped: false",
        ),
        (
            {
                "covariate": None,
                "metrics": [
                    {"name": "c", "kind": "continuous"},
                    {"name": "i", "kind": "continuous"},
                    {"name": "r", "kind": "ratio", "numerator": "c", "denominator": "i", "cuped": True},
                ],
            },
            "metrics[2].cuped",
            "needs the experiment's covariate",
        ),
        (
            {
                "metrics": [
                    {"name": "c", "kind": "continuous"},
                    {"name": "r", "kind": "ratio", "numerator": "c", "cuped": 1},
                ]
            },
            "metrics[1].cuped",
            "true or false",
        ),
    ],
)
def test_bad_values_are_rejected_naming_the_field(change: dict[str, Any], path: str, message: str) -> None:
    with pytest.raises(ConfigError) as info:
        model.parse(_spec(**change))
    assert info.value.path == path and message in info.value.message


def test_the_largest_cap_is_the_bound_of_every_outcome_value() -> None:
    assert model.MAX_CAP == keys.MAX_ABS_VALUE


def test_a_ratio_of_two_adjusted_metrics_is_adjusted_when_it_says_cuped_true() -> None:
    # [cuped] Refused before issue 18's CUPED for ratios; a ratio stays unadjusted by default.
    metrics = [
        {"name": "clicks", "kind": "continuous"},
        {"name": "impressions", "kind": "continuous"},
        {"name": "ctr", "kind": "ratio", "numerator": "clicks", "denominator": "impressions", "cuped": True},
        {"name": "ctr_plain", "kind": "ratio", "numerator": "clicks", "denominator": "impressions"},
        {"name": "per_request", "kind": "ratio", "numerator": "clicks"},
    ]
    e = model.parse(_spec(metrics=metrics))
    assert [m.name for m in e.cuped_ratios] == ["ctr"]
    assert e.metric("ctr").cuped and not e.metric("ctr_plain").cuped and not e.metric("per_request").cuped
    # Σx·c and Σy·c are the parts' products with the covariate: no new column or pair.
    assert keys.covariate_pairs(e) == (("clicks", "prior_clicks"), ("impressions", "prior_clicks"))
    assert model.to_dict(e)["metrics"][2]["cuped"] is True and "cuped" not in model.to_dict(e)["metrics"][3]
    assert model.parse(model.to_dict(e)) == e


def test_a_ratio_over_the_exposures_or_of_a_built_in_is_adjusted_when_it_says_cuped_true() -> None:
    # [cuped] Refused before (issue 18): the exposures' Σn·c is the covariate column's sum_xn,
    # and a built-in an adjusted ratio names gets a (built-in, covariate) pair, only then.
    metrics = [
        {"name": "clicks", "kind": "continuous"},
        {"name": "per_request", "kind": "ratio", "numerator": "clicks", "cuped": True},
        {"name": "error_rate", "kind": "ratio", "numerator": "errors", "cuped": True},
        {"name": "latency_per_click", "kind": "ratio", "numerator": "latency_ms", "denominator": "clicks",
         "cuped": True},
        {"name": "plain_errors", "kind": "ratio", "numerator": "slow_requests"},
    ]  # fmt: skip
    e = model.parse(_spec(metrics=metrics))
    assert [m.name for m in e.cuped_ratios] == ["per_request", "error_rate", "latency_per_click"]
    assert e.cuped_builtins == ("errors", "latency_ms")  # not slow_requests: its ratio is unadjusted
    assert keys.covariate_pairs(e) == (
        ("clicks", "prior_clicks"),
        ("errors", "prior_clicks"),
        ("latency_ms", "prior_clicks"),
    )
    assert model.parse(model.to_dict(e)) == e
    # Without an adjusted ratio of a built-in, no built-in pair: nothing more per cell.
    only_exposures = model.parse(_spec(metrics=metrics[:2]))
    assert only_exposures.cuped_builtins == () and keys.covariate_pairs(only_exposures) == (("clicks", "prior_clicks"),)


# [regression] several covariates
def test_covariates_list_several_and_covariate_is_the_one_element_case() -> None:
    e = model.parse(_spec(covariate=None, covariates=["prior_clicks", "tenure"]))
    assert e.covariates == ("prior_clicks", "tenure") and e.covariate == "prior_clicks"
    assert e.cuped_metrics == ("conversion", "revenue")
    assert model.to_dict(e)["covariates"] == ["prior_clicks", "tenure"] and "covariate" not in model.to_dict(e)
    assert model.parse(model.to_dict(e)) == e
    assert keys.metric_order(e)[-4:] == ("prior_clicks", "prior_clicks~set", "tenure", "tenure~set")
    one = model.parse(_spec(covariate=None, covariates=["prior_clicks"]))
    assert one == model.parse(_spec()) and model.to_dict(one)["covariate"] == "prior_clicks"


@pytest.mark.parametrize(
    ("covariates", "path", "message"),
    [
        ([], "covariates", "1 to 8 names"),
        ([f"c{i}" for i in range(9)], "covariates", "1 to 8 names"),
        ("prior", "covariates", "list"),
        (["prior", "revenue"], "covariates[1]", "already a metric"),
        (["prior", "bad name"], "covariates[1]", "a name of letters"),
        (["prior", "prior"], "covariates[1]", "listed twice"),
    ],
)
def test_bad_covariates_are_rejected_naming_the_field(covariates: Any, path: str, message: str) -> None:
    with pytest.raises(ConfigError) as info:
        model.parse(_spec(covariate=None, covariates=covariates))
    assert info.value.path == path and message in info.value.message
    with pytest.raises(ConfigError) as both:
        model.parse(_spec(covariates=["tenure"]))
    assert both.value.path == "covariates" and "not both" in both.value.message
