"""An experiment as plain JSON types: the canonical spec, as the CRD, the history and the sinks store it.

`parse(to_dict(e)) == e` (`abrouter.contract.experiment.parse`). Pure.

Durations are written as the CRD's schema types them (``x-kubernetes-int-or-string``):
whole seconds as an integer (``30``), anything else as a string of seconds (``"0.25s"``).
A float such as ``0.25`` would be refused by the API server (422: must be of type
integer,string), and ``30.0`` is not what a person writes.
"""

from __future__ import annotations

import json
from decimal import Decimal
from typing import Any

from abrouter.contract.model import Experiment, Match, Metric, Variant


def to_dict(e: Experiment) -> dict[str, Any]:
    """The canonical spec as plain JSON types; `parse(to_dict(e)) == e`."""
    a = e.analysis
    out: dict[str, Any] = {
        "name": e.name,
        "salt": e.salt,
        "unit": {e.unit.kind: e.unit.name},
        "variants": [_variant_dict(v) for v in e.variants],
        "metrics": [_metric_dict(m) for m in e.metrics],
        "epoch": e.epoch,
        "allow_force_variant": e.allow_force_variant,
        "outcome_ttl": duration(e.outcome_ttl_s),
        "timeouts": {"connect": duration(e.timeouts.connect_s), "read": duration(e.timeouts.read_s)},
        "exposures": [{"method": x.method, "path": x.path} for x in e.exposures],
        **({"slow_request": duration(e.slow_request_s)} if e.slow_request_s is not None else {}),
        "analysis": {
            "alpha": a.alpha,
            "min_units_per_arm": a.min_units_per_arm,
            "max_duration": duration(a.max_duration_s),
            "burn_in": duration(a.burn_in_s),
            "srm_alpha": a.srm_alpha,
            "expected_units_per_arm": a.expected_units_per_arm,
            "guardrails": [
                {"metric": g.metric, "direction": g.direction, "margin": g.margin, "relative": g.relative}
                | ({"min_margin": g.min_margin} if g.min_margin else {})
                for g in a.guardrails
            ],
            "ramp": list(a.ramp),
            **({"ramp_rest": a.ramp_rest} if a.ramp_rest is not None else {}),
            "bandit": {"enabled": a.bandit.enabled, "floor": a.bandit.floor, "min_units": a.bandit.min_units},
            "multiple_exposures": a.multiple_exposures,
            "scale_down_losers": a.scale_down_losers,
            "secondary_correction": a.secondary_correction,
        },
    }
    if len(e.covariates) == 1:  # [cuped] the one-covariate spelling, as most specs write it
        out["covariate"] = e.covariates[0]
    elif e.covariates:
        out["covariates"] = list(e.covariates)
    if not e.match.is_everything:
        out["match"] = _match_dict(e.match)
    return out


def _match_dict(m: Match) -> dict[str, Any]:
    out: dict[str, Any] = {k: v for k, v in (("model", m.model), ("path", m.path), ("host", m.host)) if v is not None}
    if m.headers:
        out["headers"] = dict(m.headers)
    return out


def duration(seconds: float) -> int | str:
    """``30`` for whole seconds, else ``"0.25s"`` (shortest round-tripping digits, never an exponent)."""
    if float(seconds).is_integer():
        return int(seconds)
    return f"{Decimal(repr(float(seconds))):f}s"


def _metric_dict(m: Metric) -> dict[str, Any]:
    out: dict[str, Any] = {"name": m.name, "kind": m.kind, "direction": m.direction}
    if m.is_ratio:
        out.update(numerator=m.numerator, denominator=m.denominator)
        if m.cuped:  # [cuped] a ratio is adjusted only when it says so
            out["cuped"] = True
    elif not m.cuped:  # [cuped]
        out["cuped"] = False
    if m.cap is not None:  # [cap]
        out["cap"] = m.cap
    return out


def _variant_dict(v: Variant) -> dict[str, Any]:
    out: dict[str, Any] = {"name": v.name, "upstream": v.upstream, "weight": v.weight}
    if v.deployment is not None:
        out["deployment"] = v.deployment
    if v.model is not None:
        out["model"] = v.model
    if v.shadow:  # [shadow]
        out["shadow"] = True
        out["shadow_percent"] = v.shadow_percent
    if v.grpc_upstream is not None:
        out["grpc_upstream"] = v.grpc_upstream
    return out


def to_json(e: Experiment) -> str:
    return json.dumps(to_dict(e), sort_keys=True)
