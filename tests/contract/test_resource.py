"""The Experiment custom resource read into the model (pure: no server)."""

from __future__ import annotations

from typing import Any

import pytest

from abrouter.contract import experiment as model
from abrouter.contract import resource
from abrouter.contract.fields import ConfigError


def obj(**spec: Any) -> dict[str, Any]:
    base = {
        "unit": {"header": "X-User-Id"},
        "variants": [
            {"name": "control", "upstream": "http://a:80", "weight": 90, "deployment": "model-a"},
            {"name": "candidate", "upstream": "http://b:80", "weight": 10},
        ],
    }
    meta = {"name": "recsys", "namespace": "ml", "generation": 7, "resourceVersion": "4242", "uid": "u-1"}
    return {"metadata": meta, "spec": {**base, **spec}, "status": {"phase": "Running"}}


def test_the_epoch_is_the_generation_and_the_name_comes_from_metadata() -> None:
    r = resource.parse(obj())
    assert (r.ref, r.generation, r.resource_version, r.uid, r.paused) == ("ml/recsys", 7, "4242", "u-1", False)
    assert r.experiment.epoch == 7 and r.experiment.name == "recsys" and r.experiment.salt == "recsys"
    assert r.experiment.variants[0].deployment == "model-a" and r.experiment.variants[1].deployment is None
    assert r.status == {"phase": "Running"}
    assert resource.parse(obj(name="other", paused=True)).experiment.name == "other"
    assert resource.parse(obj(paused=True)).paused is True


@pytest.mark.parametrize(
    ("spec", "message"),
    [
        ({"epoch": 3}, "spec.epoch: is derived from metadata.generation"),
        ({"paused": "yes"}, "spec.paused: must be true or false"),
        ({"variants": [{"name": "a", "upstream": "http://a", "weight": 1}]}, "spec.variants: needs two or more"),
        ({"unit": {"body": "x"}}, "spec.unit: must be one of header, cookie, query"),
        ({"bogus": 1}, "spec.bogus: unknown key"),
    ],
)
def test_a_bad_spec_names_the_field_under_spec(spec: dict[str, Any], message: str) -> None:
    with pytest.raises(ConfigError, match=message.replace("(", r"\(")):
        resource.parse(obj(**spec))


def test_a_resource_without_a_spec_or_name_is_rejected() -> None:
    with pytest.raises(ConfigError, match="spec: must be a mapping, got null"):
        resource.parse({"metadata": {"name": "x"}})
    with pytest.raises(ConfigError, match=r"metadata\.name: is required"):
        resource.parse({"spec": {}})


def test_the_weights_patch_carries_every_variant_as_stored() -> None:
    o = obj()
    patch = resource.weights_patch(o["spec"], {"control": 0, "candidate": 100})
    assert patch == {
        "variants": [
            {"name": "control", "upstream": "http://a:80", "weight": 0, "deployment": "model-a"},
            {"name": "candidate", "upstream": "http://b:80", "weight": 100},
        ]
    }
    assert o["spec"]["variants"][0]["weight"] == 90  # the stored spec is not changed
    with pytest.raises(ConfigError, match="unknown variant"):
        resource.weights_patch(o["spec"], {"third": 5})


def test_deployment_and_scale_down_losers_round_trip_through_the_model() -> None:
    e = resource.parse(obj(analysis={"scale_down_losers": True})).experiment
    assert e.analysis.scale_down_losers is True
    assert model.parse(model.to_dict(e)) == e
    with pytest.raises(ConfigError, match=r"variants\[0\].deployment: must be a Deployment name"):
        doc = model.to_dict(e)
        doc["variants"][0]["deployment"] = "Bad_Name"
        model.parse(doc)
