import json
import math

import pytest

from abrouter.contract import experiment as model
from abrouter.router import examples

BASE = {
    "name": "recsys-v2",
    "unit": {"header": "X-User-Id"},
    "variants": [
        {"name": "control", "upstream": "http://model-a:8080", "weight": 50},
        {"name": "candidate", "upstream": "http://model-b:8080", "weight": 50},
    ],
    "metrics": [
        {"name": "conversion", "kind": "binary", "direction": "increase"},
        {"name": "revenue", "kind": "continuous"},
    ],
}


def spec(**changes):
    data = json.loads(json.dumps(BASE))
    data.update(changes)
    return data


def test_issue_example_parses_with_defaults():
    e = model.parse(BASE)
    assert e.salt == "recsys-v2"
    assert e.control.name == "control"
    assert e.weights == (0.5, 0.5)
    assert e.metric("revenue").direction == "increase"
    assert e.epoch == 1 and e.allow_force_variant is False


def test_round_trips_through_json():
    e = model.parse(
        spec(
            salt="s1",
            epoch=3,
            allow_force_variant=True,
            analysis={"alpha": 0.01, "ramp": [10, 50], "bandit": {"enabled": True}},
        )
    )
    again = model.parse(json.loads(model.to_json(e)))
    assert again == e


def test_loads_yaml_and_bundled_example():

    e = model.load(examples.EXPERIMENT_PATH)
    assert e.name == "recsys-v2" and len(e.variants) == 2


@pytest.mark.parametrize("weight", [-5, float("nan"), float("inf"), "50", True, None])
def test_bad_weights_name_the_field(weight):
    data = spec()
    data["variants"][1]["weight"] = weight
    with pytest.raises(model.ConfigError) as err:
        model.parse(data)
    assert err.value.path == "variants[1].weight"


def test_negative_weight_message_is_exact():
    data = spec()
    data["variants"][1]["weight"] = -5
    with pytest.raises(model.ConfigError, match=r"^variants\[1\]\.weight: must be >= 0, got -5$"):
        model.parse(data)


@pytest.mark.parametrize(
    "change, path",
    [
        (
            {
                "variants": [
                    {"name": "a", "upstream": "http://a", "weight": 0},
                    {"name": "b", "upstream": "http://b", "weight": 0},
                ]
            },
            "variants",
        ),
        (
            {
                "variants": [
                    {"name": "a", "upstream": "http://a", "weight": 1},
                    {"name": "a", "upstream": "http://b", "weight": 1},
                ]
            },
            "variants[1].name",
        ),
        ({"variants": [{"name": "a", "upstream": "http://a", "weight": 1}]}, "variants"),
        (
            {
                "variants": [
                    {"name": "a", "upstream": "ftp://a", "weight": 1},
                    {"name": "b", "upstream": "http://b", "weight": 1},
                ]
            },
            "variants[0].upstream",
        ),
        (
            {
                "variants": [
                    {"name": "a", "upstream": "http://", "weight": 1},
                    {"name": "b", "upstream": "http://b", "weight": 1},
                ]
            },
            "variants[0].upstream",
        ),
        (
            {
                "variants": [
                    {"name": "a", "upstream": "model-a:8080", "weight": 1},
                    {"name": "b", "upstream": "http://b", "weight": 1},
                ]
            },
            "variants[0].upstream",
        ),
        (
            {
                "variants": [
                    {"name": "a", "upstream": "http://a", "weight": 1, "colour": "red"},
                    {"name": "b", "upstream": "http://b", "weight": 1},
                ]
            },
            "variants[0].colour",
        ),
        ({"metrics": [{"name": "m", "kind": "binary"}, {"name": "m", "kind": "continuous"}]}, "metrics[1].name"),
        ({"metrics": [{"name": "m", "kind": "count"}]}, "metrics[0].kind"),
        ({"metrics": [{"name": "errors", "kind": "binary"}]}, "metrics[0].name"),
        ({"unit": {"header": "X", "cookie": "y"}}, "unit"),
        ({"unit": {"body": "user"}}, "unit"),
        ({"name": "Not_A_Label"}, "name"),
        ({"surprise": 1}, "surprise"),
        ({"epoch": 0}, "epoch"),
        ({"epoch": 2**32}, "epoch"),  # request ids carry it in 32 bits
        (
            {
                "variants": [
                    {"name": "a", "upstream": "http://a", "weight": 10**400},
                    {"name": "b", "upstream": "http://b", "weight": 1},
                ]
            },
            "variants[0].weight",
        ),
        ({"analysis": {"alpha": 0.7}}, "analysis.alpha"),
        ({"analysis": {"ramp": [50, 25]}}, "analysis.ramp"),
        (
            {"analysis": {"guardrails": [{"metric": "nope", "direction": "decrease", "margin": 1}]}},
            "analysis.guardrails[0].metric",
        ),
        ({"analysis": {"max_duration": "two weeks"}}, "analysis.max_duration"),
        ({"slow_request": "slowish"}, "slow_request"),
        ({"slow_request": 0}, "slow_request"),
        ({"slow_request": "0ms"}, "slow_request"),
        ({"metrics": [{"name": "slow_requests", "kind": "binary"}]}, "metrics[0].name"),
        (
            {"analysis": {"guardrails": [{"metric": "slow_requests", "direction": "decrease", "margin": 0.5}]}},
            "analysis.guardrails[0].metric",
        ),
        (
            {"analysis": {"guardrails": [{"metric": "errors", "direction": "decrease", "margin": 1, "min_margin": 1}]}},
            "analysis.guardrails[0].min_margin",
        ),
        (
            {
                "analysis": {
                    "guardrails": [
                        {"metric": "errors", "direction": "decrease", "margin": 1, "relative": True, "min_margin": -1}
                    ]
                }
            },
            "analysis.guardrails[0].min_margin",
        ),
    ],
)
def test_rejections_name_the_path(change, path):
    with pytest.raises(model.ConfigError) as err:
        model.parse(spec(**change))
    assert err.value.path == path, str(err.value)


def test_unknown_key_suggests_the_close_one():
    with pytest.raises(model.ConfigError, match="did you mean 'variants'"):
        model.parse({**BASE, "variantz": []})


def test_weights_normalise_with_ten_thousandth_resolution():
    data = spec()
    data["variants"][0]["weight"] = 1
    data["variants"][1]["weight"] = 9999
    assert model.parse(data).weights == (0.0001, 0.9999)
    data["variants"][0]["weight"] = 0.2
    data["variants"][1]["weight"] = 0.6
    assert model.parse(data).weights == (0.25, 0.75)
    assert math.isclose(sum(model.parse(data).weights), 1.0)


def test_with_weights_bumps_epoch_and_validates():
    e = model.parse(BASE)
    ramped = model.with_weights(e, {"candidate": 150})
    assert ramped.weights == (0.25, 0.75) and ramped.epoch == 2
    with pytest.raises(model.ConfigError):
        model.with_weights(e, {"candidate": -1})
    with pytest.raises(model.ConfigError, match="unknown variant"):
        model.with_weights(e, {"ghost": 1})


def test_durations():
    assert model.parse_duration("90s", "x") == 90
    assert model.parse_duration("14d", "x") == 14 * 86400
    assert model.parse_duration(2.5, "x") == 2.5
    with pytest.raises(model.ConfigError):
        model.parse_duration(0, "x")


def test_load_reports_missing_file_and_bad_yaml(tmp_path):
    with pytest.raises(model.ConfigError, match="cannot read"):
        model.load(tmp_path / "missing.yaml")
    bad = tmp_path / "bad.yaml"
    bad.write_text("name: [unclosed\n")
    with pytest.raises(model.ConfigError, match="not valid YAML"):
        model.load(bad)


# ---------------------------------------------------------------- issue 7 #11: limits


def test_more_than_256_variants_is_refused():
    variants = [{"name": f"v{i}", "upstream": f"http://m{i}:8080", "weight": 1} for i in range(257)]
    with pytest.raises(model.ConfigError, match=r"^variants: at most 256 variants, got 257$"):
        model.parse(spec(variants=variants))
    assert len(model.parse(spec(variants=variants[:256])).variants) == 256


@pytest.mark.parametrize("value", ["0s", "0ms", "0"])
def test_a_zero_duration_is_refused(value):
    with pytest.raises(model.ConfigError, match=r"^timeouts\.read: must be"):
        model.parse(spec(timeouts={"read": value}))


def test_deeply_nested_yaml_is_one_config_error():
    text = "name: x\nunit: " + "[" * 5000 + "]" * 5000 + "\n"
    with pytest.raises(model.ConfigError, match="nested too deeply") as info:
        model.loads(text, "exp.yaml")
    assert "\n" not in str(info.value)


def test_a_duplicate_yaml_key_is_refused():
    text = "name: a\nname: b\nunit: {header: X-User-Id}\nvariants: []\n"
    with pytest.raises(model.ConfigError, match=r"^exp.yaml: duplicate key 'name' at line 2, column 1$"):
        model.loads(text, "exp.yaml")


def test_slow_requests_are_guarded_by_default_once_the_threshold_is_set():
    # Without a threshold nothing is counted as slow: no default guardrail on it.
    assert [g.metric for g in model.parse(BASE).analysis.guardrails] == ["errors", "latency_ms"]
    e = model.parse(spec(slow_request="250ms"))
    assert e.slow_request_s == 0.25
    rail = e.analysis.guardrails[-1]
    assert (rail.metric, rail.direction, rail.margin, rail.relative, rail.min_margin) == (
        "slow_requests",
        "decrease",
        0.5,
        True,
        0.001,
    )
    assert model.parse(json.loads(model.to_json(e))) == e
    assert "slow_request" not in model.to_dict(model.parse(BASE))


def test_a_guardrail_on_slow_requests_without_a_threshold_says_what_is_missing():
    rails = [{"metric": "slow_requests", "direction": "decrease", "margin": 0.01}]
    with pytest.raises(model.ConfigError, match="sets slow_request"):
        model.parse(spec(analysis={"guardrails": rails}))
    assert model.parse(spec(slow_request=1, analysis={"guardrails": rails})).analysis.guardrails[0].margin == 0.01


def test_a_relative_guardrail_floor_parses_and_round_trips():
    rail = {"metric": "errors", "direction": "decrease", "margin": 0.5, "relative": True, "min_margin": 0.001}
    e = model.parse(spec(analysis={"guardrails": [rail]}))
    assert e.analysis.guardrails[0].min_margin == 0.001
    assert model.parse(json.loads(model.to_json(e))) == e
    # The default errors guardrail is relative with a floor (issue 9, defect 3).
    (errors,) = [g for g in model.parse(BASE).analysis.guardrails if g.metric == "errors"]
    assert (errors.margin, errors.relative, errors.min_margin) == (0.5, True, 0.001)


# --- match: and a variant's model: (issue 16) ---


def _with(**extra: object) -> dict[str, object]:
    return {
        "name": "m",
        "unit": {"header": "X-User-Id"},
        "variants": [
            {"name": "a", "upstream": "http://a", "weight": 1},
            {"name": "b", "upstream": "http://b", "weight": 1},
        ],
        **extra,
    }


def test_match_and_model_round_trip_and_normalise_header_names() -> None:
    data = _with(match={"model": "recsys", "host": "ml.example.com", "headers": {"X-Tenant": "a"}})
    data["variants"][0]["model"] = "recsys-v1"  # type: ignore[index]
    e = model.parse(data)
    assert e.match == model.Match(model="recsys", host="ml.example.com", headers=(("x-tenant", "a"),))
    assert e.variants[0].model == "recsys-v1" and e.variants[1].model is None
    assert model.parse(model.to_dict(e)) == e
    assert model.parse(_with()).match.is_everything


@pytest.mark.parametrize(
    ("match", "path", "words"),
    [
        ({"path": "v2/*"}, "match.path", "must start with '/'"),
        ({"host": "ML.example.com:80"}, "match.host", "host name"),
        ({"model": "has space"}, "match.model", "model name"),
        ({"headers": {"X Bad": "1"}}, "match.headers.X Bad", "header name"),
        ({"modle": "x"}, "match.modle", ""),
    ],
)
def test_a_bad_match_names_its_field(match: dict[str, object], path: str, words: str) -> None:
    with pytest.raises(model.ConfigError) as caught:
        model.parse(_with(match=match))
    assert caught.value.path == path
    assert words in str(caught.value)


def test_a_grpc_upstream_parses_round_trips_and_is_optional():
    data = spec()
    data["variants"][0]["grpc_upstream"] = "recsys-v1.models.svc:8001"
    data["variants"][1]["grpc_upstream"] = "[::1]:9000"
    e = model.parse(data)
    assert [v.grpc_upstream for v in e.variants] == ["recsys-v1.models.svc:8001", "[::1]:9000"]
    assert model.parse(model.to_dict(e)) == e
    assert model.parse(BASE).variants[0].grpc_upstream is None
    assert "grpc_upstream" not in model.to_dict(model.parse(BASE))["variants"][0]


@pytest.mark.parametrize(
    ("value", "says"),
    [
        ("grpc://host:8001", "HOST:PORT (no scheme)"),
        ("host", "HOST:PORT"),
        (":8001", "HOST:PORT"),
        ("host:0", "port must be 1-65535"),
        ("host:99999", "port must be 1-65535"),
        ("host:grpc", "port must be 1-65535"),
        ("bad host:80", "HOST:PORT"),
        (8001, "must be a non-empty string"),
    ],
)
def test_a_bad_grpc_upstream_names_the_variant_field(value, says):
    data = spec()
    data["variants"][1]["grpc_upstream"] = value
    with pytest.raises(model.ConfigError) as err:
        model.parse(data)
    assert str(err.value).startswith("variants[1].grpc_upstream: ")
    assert says in str(err.value)
