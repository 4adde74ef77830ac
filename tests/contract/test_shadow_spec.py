"""[shadow] A variant's `shadow` and `shadow_percent`: parsed, validated with the field named, round-tripped."""

from __future__ import annotations

import json
from typing import Any

import pytest

from abrouter.contract import experiment as model
from abrouter.contract import resource


def spec(*shadow: dict[str, Any]) -> dict[str, Any]:
    return {
        "name": "recsys",
        "unit": {"header": "X-User-Id"},
        "variants": [{"name": "control", "upstream": "http://a", "weight": 100}, *shadow],
    }


SHADOW = {"name": "next", "upstream": "http://b", "weight": 0, "shadow": True}


def test_a_control_and_a_shadow_are_an_experiment() -> None:
    e = model.parse(spec({**SHADOW, "shadow_percent": 10}))
    (shadow,) = e.shadows
    assert (shadow.name, shadow.shadow, shadow.shadow_percent) == ("next", True, 10.0)
    assert e.weights == (1.0, 0.0)  # never assigned
    assert model.parse(json.loads(model.to_json(e))) == e


def test_the_percent_defaults_to_all_and_live_variants_write_no_shadow_keys() -> None:
    e = model.parse(spec(SHADOW, {"name": "live", "upstream": "http://c", "weight": 10}))
    assert e.shadows[0].shadow_percent == 100.0
    assert [v.name for v in e.variants if not v.shadow] == ["control", "live"]
    assert "shadow" not in model.to_dict(e)["variants"][2]


@pytest.mark.parametrize(
    ("variants", "message"),
    [
        (
            [{**SHADOW, "name": "control"}, {"name": "b", "upstream": "http://b", "weight": 1}],
            r"^variants\[0\]\.shadow: the first variant is the control, which answers clients: it cannot be a shadow$",
        ),
        (
            [{"name": "control", "upstream": "http://a", "weight": 1}, {**SHADOW, "weight": 5}],
            r"^variants\[1\]\.weight: a shadow is never assigned: its weight must be 0, got 5 ",
        ),
        (
            [{"name": "control", "upstream": "http://a", "weight": 1}, {**SHADOW, "shadow_percent": 101}],
            r"^variants\[1\]\.shadow_percent: must be <= 100, got 101$",
        ),
        (
            [
                {"name": "control", "upstream": "http://a", "weight": 1},
                {**SHADOW, "shadow": False, "weight": 1, "shadow_percent": 5},
            ],
            r"^variants\[1\]\.shadow_percent: only a shadow \(shadow: true\) takes shadow_percent$",
        ),
        (
            [{"name": "control", "upstream": "http://a", "weight": 1}, {**SHADOW, "shadow": "yes"}],
            r"^variants\[1\]\.shadow: must be true or false, got str$",
        ),
        (
            [{"name": "control", "upstream": "http://a", "weight": 1}, SHADOW, SHADOW],
            r"^variants\[2\]\.name: duplicate name 'next'$",
        ),
    ],
)
def test_bad_shadows_name_the_field(variants: list[dict[str, Any]], message: str) -> None:
    with pytest.raises(model.ConfigError, match=message):
        model.parse({**spec(), "variants": variants})


def test_giving_a_shadow_a_weight_makes_it_a_live_variant() -> None:
    e = model.parse(spec({**SHADOW, "shadow_percent": 10}))
    promoted = model.with_weights(e, {"control": 95, "next": 5})
    assert promoted.shadows == ()
    assert (promoted.variants[1].weight, promoted.epoch) == (5, 2)
    assert model.with_weights(e, {"control": 90}).shadows == e.shadows  # weight 0 stays a shadow


def test_the_kubernetes_weight_patch_makes_a_shadow_given_weight_live() -> None:
    stored = spec(
        {**SHADOW, "shadow_percent": 10}, {"name": "other", "upstream": "http://c", "weight": 0, "shadow": True}
    )
    patch = resource.weights_patch(stored, {"control": 95, "next": 5, "other": 0})
    assert patch["variants"][1] == {"name": "next", "upstream": "http://b", "weight": 5}
    assert patch["variants"][2]["shadow"] is True  # still a shadow
    assert model.parse({**stored, **patch}).shadows[0].name == "other"
