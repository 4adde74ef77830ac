"""The Experiment CRD (abrouter/contract/crd.py) agrees with the model, the parser and the analyzer."""

from __future__ import annotations

import copy
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import kubernetes_validate
import pytest
import yaml

from abrouter.analysis.sinks import kube_status
from abrouter.contract import crd, resource
from abrouter.contract import experiment as model
from abrouter.contract.fields import ConfigError
from tests.contract import crdschema

ROOT = Path(__file__).resolve().parents[2]
COMMITTED = ROOT / "k8s" / "base" / "crd.yaml"
EXAMPLE = ROOT / "k8s" / "examples" / "recsys" / "experiment.yaml"


def _spec_schema() -> dict[str, Any]:
    return crd.crd()["spec"]["versions"][0]["schema"]["openAPIV3Schema"]["properties"]["spec"]


def _obj(spec: dict[str, Any]) -> dict[str, Any]:
    return {
        "apiVersion": f"{crd.GROUP}/{crd.VERSION}",
        "kind": crd.KIND,
        "metadata": {"name": "recsys", "namespace": "default", "generation": 3},
        "spec": spec,
    }


def _spec_of(e: model.Experiment) -> dict[str, Any]:
    """A canonical spec as a resource carries it: `to_dict` as it is, without the epoch.

    No touching up: `to_dict` must write what the schema accepts (it once wrote ``0.25``
    for an int-or-string duration, and a real API server refused it with a 422).
    """
    spec = model.to_dict(e)
    del spec["epoch"]
    return spec


BUNDLED = yaml.safe_load((ROOT / "abrouter" / "router" / "examples" / "experiment.yaml").read_text())
BUNDLED.pop("epoch")
BASE = {
    "unit": {"header": "X-User-Id"},
    "variants": [
        {"name": "a", "upstream": "http://a:8080", "weight": 50},
        {"name": "b", "upstream": "http://b", "weight": 50},
    ],
}
RICH = {
    **BASE,
    "variants": [
        {
            "name": "a",
            "upstream": "http://a:8080",
            "weight": 90,
            "deployment": "model-a",
            "model": "recsys-v1",
            "grpc_upstream": "a:8001",
        },
        {"name": "b", "upstream": "https://b.ns.svc:443/v1", "weight": 10, "deployment": "model-b"},
        {"name": "c", "upstream": "http://c", "weight": 0},
        {"name": "d", "upstream": "http://d", "weight": 0, "shadow": True, "shadow_percent": 25},
    ],
    "metrics": [
        {"name": "clicks", "kind": "continuous"},
        {"name": "ctr", "kind": "ratio", "numerator": "clicks", "direction": "increase"},
        {"name": "revenue", "kind": "continuous", "cuped": False, "cap": 100},
    ],
    "covariate": "prior_clicks",
    "match": {"model": "recsys", "path": "/v2/*", "host": "ml.example.com", "headers": {"x-tenant": "a"}},
    "timeouts": {"connect": 1, "read": "1.5s"},
    "outcome_ttl": "7d",
    "slow_request": "250ms",
    "analysis": {
        "bandit": {"enabled": True, "floor": 0.05, "min_units": 100},
        "multiple_exposures": "exclude",
        "scale_down_losers": True,
        "secondary_correction": "bh",
        "max_duration": 86400,
    },
    "exposures": [{"method": "POST", "path": "/v2/models/*/infer"}, {"path": "/predict"}],
    "paused": True,
    "salt": "s1",
    "name": "other-name",
}
VALID = {
    "bundled example": BUNDLED,
    "k8s example": yaml.safe_load(EXAMPLE.read_text())["spec"],
    "minimal": BASE,
    "rich": RICH,
    "canonical": _spec_of(model.parse({k: v for k, v in RICH.items() if k != "paused"})),
}


def test_the_committed_crd_is_the_generators_output() -> None:
    assert COMMITTED.read_text(encoding="utf-8") == crd.render(), (
        "k8s/base/crd.yaml is stale: python -m abrouter.contract.crd > k8s/base/crd.yaml"
    )


def test_the_module_entry_point_prints_the_crd() -> None:
    out = subprocess.run(
        [sys.executable, "-m", "abrouter.contract.crd"], capture_output=True, text=True, check=True, cwd=ROOT
    )
    assert out.stdout == crd.render()


def _keys(schema: dict[str, Any]) -> Any:
    """The property tree of a schema: {key: subtree} for objects, [subtree] for arrays of objects."""
    if schema.get("type") == "array" and schema["items"].get("type") == "object":
        return [_keys(schema["items"])]
    if schema.get("type") == "object" and "properties" in schema:
        return {k: _keys(v) for k, v in schema["properties"].items()}
    return None


def _data_keys(data: Any) -> Any:
    if isinstance(data, list) and data and all(isinstance(x, dict) for x in data):
        merged: dict[str, Any] = {}
        for x in data:
            merged.update(x)
        return [_data_keys(merged)]
    if isinstance(data, dict):
        return {k: _data_keys(v) for k, v in data.items()}
    return None


def test_the_spec_schema_has_exactly_the_models_fields() -> None:
    # to_dict writes every field of the model; RICH sets the optional ones it leaves out
    # (a variant's deployment and grpc_upstream, a ratio's numerator and denominator).
    e = model.parse({k: v for k, v in RICH.items() if k != "paused"})
    written = _data_keys(model.to_dict(e))
    del written["epoch"]  # a resource's epoch is metadata.generation
    written["paused"] = None
    schema = _keys(_spec_schema())
    schema["unit"] = {"header": None}  # one of three, as to_dict writes it
    written["match"]["headers"] = None  # free-form: any header name
    # A balanced ramp's rest variant refuses shadows, which RICH has (test_balanced_ramp.py).
    written["analysis"]["ramp_rest"] = None
    written["covariates"] = None  # several covariates; RICH has one, written as `covariate`
    assert schema == written


def test_the_status_schema_names_what_the_analyzer_writes() -> None:
    status = crd.crd()["spec"]["versions"][0]["schema"]["openAPIV3Schema"]["properties"]["status"]
    assert set(status["properties"]["phase"]["enum"]) == {*kube_status.PHASES.values(), "Running", "Paused"}
    assert tuple(status["properties"]["conditions"]["items"]["properties"]["type"]["enum"]) == kube_status.CONDITIONS


def test_printer_columns_point_at_schema_fields() -> None:
    root = crd.crd()["spec"]["versions"][0]["schema"]["openAPIV3Schema"]
    names = [c["name"] for c in crd.printer_columns()]
    assert {"Phase", "Weights", "Winner", "P-Value", "Age"} <= set(names)
    for column in crd.printer_columns():
        node = root
        for part in column["jsonPath"].lstrip(".").split("."):
            if part == "metadata":
                break
            node = node["properties"][part]


def test_the_crd_validates_as_a_kubernetes_object_and_has_a_status_subresource() -> None:
    doc = crd.crd()
    kubernetes_validate.validate(doc, "1.30.0", strict=True)
    version = doc["spec"]["versions"][0]
    assert version["subresources"] == {"status": {}}
    assert doc["spec"]["scope"] == "Namespaced" and doc["metadata"]["name"] == "experiments.abrouter.io"


def _structural(node: dict[str, Any], path: str) -> None:
    """Every node has a type (or is int-or-string); properties and additionalProperties never meet."""
    assert "type" in node or node.get("x-kubernetes-int-or-string"), f"{path}: no type"
    assert not ("properties" in node and "additionalProperties" in node), f"{path}: both kinds of properties"
    for key, child in node.get("properties", {}).items():
        _structural(child, f"{path}.{key}")
    if "items" in node:
        _structural(node["items"], f"{path}[]")


def test_the_schema_is_structural() -> None:
    _structural(crd.crd()["spec"]["versions"][0]["schema"]["openAPIV3Schema"], "")


@pytest.mark.parametrize("name", sorted(VALID))
def test_the_schema_and_the_parser_accept_every_valid_spec(name: str) -> None:
    spec = VALID[name]
    assert crdschema.errors(_obj(spec)) == []
    resource.parse(_obj(spec))


def _set(path: str, value: Any) -> Callable[[dict[str, Any]], None]:
    def mutate(spec: dict[str, Any]) -> None:
        *parents, last = path.split(".")
        node: Any = spec
        for p in parents:
            node = node[int(p)] if p.isdigit() else node.setdefault(p, {})
        if value is _DELETE:
            del node[int(last) if last.isdigit() else last]
        else:
            node[int(last) if last.isdigit() else last] = value

    return mutate


_DELETE = object()
# Rules both the schema and the parser enforce: each mutation of RICH is rejected by both.
INVALID = {
    "negative weight": _set("variants.1.weight", -5),
    "weight as a string": _set("variants.1.weight", "50"),
    "one variant": _set("variants", [{"name": "a", "upstream": "http://a", "weight": 1}]),
    "no variants": _set("variants", _DELETE),
    "no unit": _set("unit", _DELETE),
    "two unit sources": _set("unit", {"header": "X-User", "cookie": "uid"}),
    "no unit source": _set("unit", {}),
    "unknown unit source": _set("unit", {"path": "x"}),
    "variant without upstream": _set("variants.0.upstream", _DELETE),
    "variant without weight": _set("variants.0.weight", _DELETE),
    "ftp upstream": _set("variants.0.upstream", "ftp://a"),
    "bad variant name": _set("variants.0.name", "-a"),
    "bad deployment name": _set("variants.0.deployment", "Model_A"),
    "grpc_upstream with a scheme": _set("variants.0.grpc_upstream", "grpc://a:8001"),
    "grpc_upstream without a port": _set("variants.0.grpc_upstream", "a"),
    "unknown metric kind": _set("metrics.0.kind", "count"),
    "unknown direction": _set("metrics.0.direction", "up"),
    "metric without kind": _set("metrics.0.kind", _DELETE),
    "alpha zero": _set("analysis.alpha", 0),
    "alpha above 0.5": _set("analysis.alpha", 0.6),
    "min units 1": _set("analysis.min_units_per_arm", 1),
    "ramp at 0": _set("analysis.ramp", [0, 50]),
    "ramp above 100": _set("analysis.ramp", [5, 101]),
    "bandit floor 0": _set("analysis.bandit.floor", 0),
    "unknown multiple_exposures": _set("analysis.multiple_exposures", "drop"),
    "unknown secondary_correction": _set("analysis.secondary_correction", "bonferroni"),
    "bad duration": _set("analysis.max_duration", "two weeks"),
    "slow_request not a duration": _set("slow_request", "slowish"),
    "guardrail without margin": _set("analysis.guardrails", [{"metric": "errors", "direction": "decrease"}]),
    "paused as a string": _set("paused", "yes"),
    "allow_force_variant as a string": _set("allow_force_variant", "true"),
    "uppercase name": _set("name", "Recsys"),
    "exposure path without a slash": _set("exposures", [{"path": "predict"}]),
    "exposure method in lowercase": _set("exposures", [{"method": "post", "path": "/predict"}]),
    "cap of zero": _set("metrics.2.cap", 0),
    "cap as a string": _set("metrics.2.cap", "100"),
    "cuped as a string": _set("metrics.2.cuped", "no"),
    "bad covariate name": _set("covariate", "-prior"),
    "empty covariates": lambda spec: _several(spec, []),
    "bad name in covariates": lambda spec: _several(spec, ["prior", "-x"]),
    "covariates not a list": lambda spec: _several(spec, "prior"),
    "nine covariates": lambda spec: _several(spec, [f"c{i}" for i in range(9)]),
}


def _several(spec: dict[str, Any], covariates: Any) -> None:
    """[regression] `covariates` in place of RICH's one `covariate`."""
    del spec["covariate"]
    spec["covariates"] = covariates


@pytest.mark.parametrize("name", sorted(INVALID))
def test_the_schema_and_the_parser_reject_the_same_invalid_specs(name: str) -> None:
    spec = copy.deepcopy(RICH)
    INVALID[name](spec)
    assert crdschema.errors(_obj(spec)), f"the CRD schema accepts {name}"
    with pytest.raises(ConfigError):
        resource.parse(_obj(spec))


def test_what_only_the_parser_catches_is_still_caught() -> None:
    # Rules a structural schema cannot express: the schema lets them through, parse() does not.
    for mutate in (
        _set("variants.1.name", "a"),  # a duplicate name
        _set("analysis.ramp", [50, 25]),  # not increasing
        _set("analysis.guardrails", [{"metric": "nope", "direction": "decrease", "margin": 1}]),
        _set("epoch", 4),  # epoch is metadata.generation
        _set("slow_request", "0s"),  # a duration of zero
    ):
        spec = copy.deepcopy(RICH)
        mutate(spec)
        assert crdschema.errors(_obj(spec)) == []
        with pytest.raises(ConfigError):
            resource.parse(_obj(spec))


def test_the_kubernetes_client_addresses_the_resource_this_crd_defines() -> None:
    from abrouter.kube import client

    names = crd.crd()["spec"]["names"]
    assert (client.GROUP, client.VERSION, client.PLURAL, client.KIND) == (
        crd.GROUP,
        crd.VERSION,
        names["plural"],
        names["kind"],
    )
