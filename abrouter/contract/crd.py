"""The ``experiments.abrouter.io`` CustomResourceDefinition, built from the experiment model. Pure.

One schema in one place: the enums come from the model's ``Literal`` types, the bounds
from the parser's constants, and `tests/contract/test_crd.py` checks that the spec's
properties are exactly the keys `experiment.to_dict` writes (minus ``epoch``, which a
resource derives from ``metadata.generation``, plus ``paused``), so a field added to the
model without its schema fails a test. ``k8s/base/crd.yaml`` is this module's output,
committed; regenerate it with ``python -m abrouter.contract.crd > k8s/base/crd.yaml``.

What the schema cannot say stays with `experiment.parse` (which the router and the
analyzer run on every object they read): unique names, a ratio's parts, guardrails
naming known metrics, a strictly increasing ramp, unknown keys (a structural schema
prunes them; ``kubectl apply`` rejects them with its default strict field validation).
Durations are ``int-or-string`` (``30``, ``"1.5s"``, ``"14d"``): a structural schema has
no number-or-string type, so a fractional duration is written as a string.
"""

from __future__ import annotations

import sys
from typing import Any, get_args

import yaml

from abrouter.contract import experiment, model

GROUP = "abrouter.io"
VERSION = "v1alpha1"
KIND = "Experiment"
PLURAL = "experiments"
SHORT_NAMES = ["abx"]
PHASES = ("Running", "Ramping", "Promoted", "RolledBack", "Inconclusive", "Paused")
CONDITIONS = ("Ready", "SampleRatioMismatch", "GuardrailBreached")
# The parser's patterns, as JSON-schema (ECMA) regexes.
NAME_PATTERN = "^[A-Za-z0-9][A-Za-z0-9_.-]{0,62}$"
DNS_LABEL_PATTERN = "^[a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?$"
DNS_SUBDOMAIN_PATTERN = "^[a-z0-9]([-a-z0-9.]{0,251}[a-z0-9])?$"
GRPC_UPSTREAM_PATTERN = r"^([A-Za-z0-9]([-A-Za-z0-9.]{0,251}[A-Za-z0-9])?|\[[0-9A-Fa-f:.]+\]):[0-9]{1,5}$"
DURATION_PATTERN = r"^\s*\d+(\.\d+)?\s*(ms|s|m|h|d|w)?\s*$"


def _enum(literal: Any) -> dict[str, Any]:
    return {"type": "string", "enum": list(get_args(literal))}


def _obj(properties: dict[str, Any], *, required: tuple[str, ...] = (), description: str = "") -> dict[str, Any]:
    out: dict[str, Any] = {"type": "object", "properties": properties}
    if required:
        out["required"] = list(required)
    if description:
        out["description"] = description
    return out


def _num(*, minimum: float | None = None, maximum: float | None = None, exclusive_min: bool = False) -> dict[str, Any]:
    out: dict[str, Any] = {"type": "number"}
    if minimum is not None:
        out["minimum"] = minimum
        if exclusive_min:
            out["exclusiveMinimum"] = True
    if maximum is not None:
        out["maximum"] = maximum
    return out


def _int(minimum: int, maximum: int | None = None) -> dict[str, Any]:
    out: dict[str, Any] = {"type": "integer", "minimum": minimum}
    if maximum is not None:
        out["maximum"] = maximum
    return out


def _duration(description: str) -> dict[str, Any]:
    # int-or-string may carry no `type`; the pattern applies to the string form only.
    return {"x-kubernetes-int-or-string": True, "pattern": DURATION_PATTERN, "description": description}


def _string(pattern: str = "", description: str = "") -> dict[str, Any]:
    out: dict[str, Any] = {"type": "string", "minLength": 1}
    if pattern:
        out["pattern"] = pattern
    if description:
        out["description"] = description
    return out


def unit_schema() -> dict[str, Any]:
    kinds = get_args(model.UnitSourceKind)
    return {
        **_obj(
            {k: _string() for k in kinds}, description="where the unit id comes from: exactly one of " + "/".join(kinds)
        ),
        # Exactly one: one of the names present, and nothing else (a structural schema
        # cannot forbid unknown keys, the API server prunes them, leaving an empty object).
        "maxProperties": 1,
        "oneOf": [{"required": [k]} for k in kinds],
    }


def variant_schema() -> dict[str, Any]:
    return _obj(
        {
            "name": _string(NAME_PATTERN),
            "upstream": _string("^https?://", "the model Service, http(s)://HOST[:PORT][/PATH]"),
            "weight": _num(minimum=0),
            "deployment": _string(DNS_SUBDOMAIN_PATTERN, "the Deployment serving it, scaled to 0 when it loses"),
            "model": _string(
                experiment.MODEL_PATTERN, "the model name its upstream serves; the request's is rewritten"
            ),
            "shadow": {"type": "boolean", "description": "answers no client: gets copies of the control's requests"},
            "shadow_percent": {
                **_num(minimum=0, maximum=100),
                "description": "a shadow: the share of the control's units it gets copies for (default 100)",
            },
            "grpc_upstream": _string(
                GRPC_UPSTREAM_PATTERN, "its gRPC endpoint, HOST:PORT (abrouter serve --grpc-port)"
            ),
        },
        required=("name", "upstream", "weight"),
    )


def match_schema() -> dict[str, Any]:
    return _obj(
        {
            "model": _string(experiment.MODEL_PATTERN, "the model name in the OIP/KServe path or a JSON body"),
            "path": _string("^/", "a glob over the request path"),
            "host": _string(DNS_SUBDOMAIN_PATTERN, "the Host header, without its port"),
            "headers": {
                "type": "object",
                "additionalProperties": {"type": "string"},
                "description": "exact header values",
            },
        },
        description="which requests belong to this experiment (default: all)",
    )


def metric_schema() -> dict[str, Any]:
    return _obj(
        {
            "name": _string(NAME_PATTERN),
            "kind": _enum(model.MetricKind),
            "direction": _enum(model.Direction),
            "numerator": _string(description="kind ratio: a binary or continuous metric, or a built-in"),
            "denominator": _string(description=f"kind ratio: another metric or {model.EXPOSURES!r} (the default)"),
            "cuped": {
                "type": "boolean",
                "description": "adjust by the experiment's covariate "
                "(default true; ratios: false, and true needs each part adjusted, a built-in or the exposures)",
            },
            "cap": {
                **_num(minimum=0, maximum=experiment.MAX_CAP, exclusive_min=True),
                "description": "continuous metrics: the largest total one unit contributes",
            },
        },
        required=("name", "kind"),
    )


def analysis_schema() -> dict[str, Any]:
    guardrail = _obj(
        {
            "metric": _string(),
            "direction": _enum(model.Direction),
            "margin": _num(minimum=0),
            "relative": {"type": "boolean"},
            "min_margin": _num(minimum=0),
        },
        required=("metric", "direction", "margin"),
    )
    bandit = _obj(
        {
            "enabled": {"type": "boolean"},
            "floor": _num(minimum=experiment.MIN_BANDIT_FLOOR, maximum=0.5),
            "min_units": _int(1),
        }
    )
    return _obj(
        {
            "alpha": _num(minimum=0, maximum=0.5, exclusive_min=True),
            "min_units_per_arm": _int(2),
            "max_duration": _duration("stop as inconclusive after this long"),
            "burn_in": _duration("the final ramp step (no ramp: a promotion) waits this long from the start"),
            "srm_alpha": _num(minimum=0, maximum=0.5, exclusive_min=True),
            "expected_units_per_arm": _int(10),
            "guardrails": {"type": "array", "items": guardrail},
            "ramp": {"type": "array", "items": _num(minimum=0, maximum=100, exclusive_min=True)},
            "ramp_rest": _string(
                description="balanced ramp: the variant serving the control's model outside the comparison"
            ),
            "bandit": bandit,
            "multiple_exposures": _enum(model.MultipleExposures),
            "scale_down_losers": {"type": "boolean"},
            "secondary_correction": _enum(model.SecondaryCorrection),
        },
        description="the decision policy (docs/analyzer.md)",
    )


def spec_schema() -> dict[str, Any]:
    """``spec``: the experiment model (`experiment.parse`) without ``epoch``, plus ``paused``."""
    return _obj(
        {
            "name": _string(DNS_LABEL_PATTERN, "the experiment's name (default: metadata.name)"),
            "salt": _string(description="the hashing salt (default: the name)"),
            "unit": unit_schema(),
            "variants": {
                "type": "array",
                "minItems": 2,
                "maxItems": experiment.MAX_VARIANTS,
                "description": "the first is the control",
                "items": variant_schema(),
            },
            "metrics": {"type": "array", "description": "the first is primary", "items": metric_schema()},
            "allow_force_variant": {"type": "boolean"},
            "outcome_ttl": _duration("how long a request id may be credited with an outcome"),
            "timeouts": _obj({"connect": _duration("upstream connect"), "read": _duration("upstream read")}),
            "slow_request": _duration("a request slower than this counts in slow_requests (tail-latency guardrail)"),
            "exposures": {
                "type": "array",
                "description": "which requests are exposures (default: all but the OIP health and metadata calls)",
                "items": _obj(
                    {"method": _string(r"^(\*|[A-Z]+)$", "an HTTP method or * (the default)"), "path": _string("^/")},
                    required=("path",),
                ),
            },
            "covariate": _string(NAME_PATTERN, "CUPED: the pre-exposure covariate clients report per unit"),
            "covariates": {
                "type": "array",
                "description": "CUPED by regression: several pre-exposure covariates clients report per unit "
                "(instead of covariate)",
                "items": _string(NAME_PATTERN),
                "minItems": 1,
                "maxItems": experiment.MAX_COVARIATES,
            },
            "match": match_schema(),
            "analysis": analysis_schema(),
            "paused": {"type": "boolean", "description": "true stops all automation: the analyzer writes only status"},
        },
        required=("unit", "variants"),
    )


def status_schema() -> dict[str, Any]:
    percent = {"type": "object", "additionalProperties": {"type": "number"}}
    arm = _obj(
        {
            "name": {"type": "string"},
            "weight": {"type": "number"},
            "units": {"type": "integer"},
            "exposures": {"type": "integer"},
            "metric": {"type": "string"},
            "mean": {"type": "number", "nullable": True},
            "lift": {"type": "number", "nullable": True},
            "sequentialP": {"type": "number", "nullable": True},
        }
    )
    condition = _obj(
        {
            "type": {"type": "string", "enum": list(CONDITIONS)},
            "status": {"type": "string", "enum": ["True", "False", "Unknown"]},
            "reason": {"type": "string"},
            "message": {"type": "string"},
            "observedGeneration": {"type": "integer"},
            "lastTransitionTime": {"type": "string", "format": "date-time"},
        },
        required=("type", "status"),
    )
    decision = _obj(
        {
            "action": {"type": "string"},
            "reason": {"type": "string"},
            "weights": percent,
            "applied": {"type": "boolean"},
            "paused": {"type": "boolean"},
            "time": {"type": "string", "format": "date-time"},
        }
    )
    applied = _obj(
        {
            "action": {"type": "string"},
            "reason": {"type": "string"},
            "weights": percent,
            "time": {"type": "string", "format": "date-time"},
            "generation": {"type": "integer", "description": "the generation the weight patch made"},
        },
        description="the last decision that changed the weights (kept while later looks change nothing)",
    )
    summary = _obj(
        {
            "pValue": {"type": "string", "description": "pValue as the reports write it (0.041, <0.0001)"},
            "reason": {"type": "string", "description": "one clause: why the phase is what it is"},
        },
        description="text for `kubectl get` (its printer columns)",
    )
    witness = _obj(
        {
            "units": {"type": "integer"},
            "exposures": {"type": "integer"},
            "time": {"type": "string", "format": "date-time"},
            "incompleteSince": {"type": "string", "format": "date-time", "nullable": True},
        },
        description="the units and exposures Redis held at the analyzer's last look: fewer later means "
        "Redis lost data (then incompleteSince)",
    )
    return _obj(
        {
            "phase": {"type": "string", "enum": list(PHASES)},
            "epoch": {"type": "integer"},
            "weights": {**percent, "description": "the effective weights in percent, per variant"},
            "observedGeneration": {"type": "integer"},
            "winner": {"type": "string", "nullable": True},
            "pValue": {"type": "number", "nullable": True},
            "lastDecision": decision,
            "lastApplied": {**applied, "nullable": True},
            "summary": summary,
            "arms": {"type": "array", "items": arm},
            "conditions": {
                "type": "array",
                "items": condition,
                "x-kubernetes-list-type": "map",
                "x-kubernetes-list-map-keys": ["type"],
            },
            "witness": witness,
        },
        description="written by the analyzer through the status subresource",
    )


def printer_columns() -> list[dict[str, Any]]:
    return [
        {"name": "Phase", "type": "string", "jsonPath": ".status.phase"},
        {"name": "Weights", "type": "string", "jsonPath": ".status.weights"},
        {"name": "Winner", "type": "string", "jsonPath": ".status.winner"},
        # Strings written for the column: kubectl prints a number column raw (0.0412345678, then 0).
        {"name": "P-Value", "type": "string", "jsonPath": ".status.summary.pValue"},
        {"name": "Epoch", "type": "integer", "jsonPath": ".status.epoch", "priority": 1},
        {"name": "Reason", "type": "string", "jsonPath": ".status.summary.reason", "priority": 1},
        {"name": "Age", "type": "date", "jsonPath": ".metadata.creationTimestamp"},
    ]


def crd() -> dict[str, Any]:
    """The whole CustomResourceDefinition document."""
    schema = _obj(
        {
            "apiVersion": {"type": "string"},
            "kind": {"type": "string"},
            "metadata": {"type": "object"},
            "spec": spec_schema(),
            "status": status_schema(),
        },
        required=("spec",),
    )
    return {
        "apiVersion": "apiextensions.k8s.io/v1",
        "kind": "CustomResourceDefinition",
        "metadata": {"name": f"{PLURAL}.{GROUP}", "labels": {"app.kubernetes.io/name": "abrouter"}},
        "spec": {
            "group": GROUP,
            "scope": "Namespaced",
            "names": {
                "kind": KIND,
                "listKind": f"{KIND}List",
                "plural": PLURAL,
                "singular": KIND.lower(),
                "shortNames": SHORT_NAMES,
                "categories": ["abrouter"],
            },
            "versions": [
                {
                    "name": VERSION,
                    "served": True,
                    "storage": True,
                    "subresources": {"status": {}},
                    "additionalPrinterColumns": printer_columns(),
                    "schema": {"openAPIV3Schema": schema},
                }
            ],
        },
    }


HEADER = "# Generated by `python -m abrouter.contract.crd` from abrouter/contract/model.py: do not edit.\n"


def render() -> str:
    return HEADER + yaml.safe_dump(crd(), sort_keys=False, width=120)


if __name__ == "__main__":
    sys.stdout.write(render())
