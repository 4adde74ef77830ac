"""[shadow] The shadow variants at one look: their arm's evidence, and when the policy makes one live.

Pure, like `decision.py`, which it wraps and leaves alone. A shadow (`Experiment.shadows`)
answers copies of the control's requests (`abrouter.router.shadow`); its arm
(`data.Shadow`) carries the router's measurements of those replies (errors, latency_ms,
slow_requests) and their agreement with the control's answers.

- `evaluate`: per shadow, its units and copies, error rate, mean and p99 latency,
  agreement, and the settings' guardrails on the router's measurements against the
  control, the same one-sided always-valid non-inferiority tests as a live candidate's
  (`evidence.guardrails`). Guardrails on outcome metrics are left out: a shadow's
  answers never reach a user, so it has none. Its units are the control's own (paired,
  analysed as independent samples: for positively correlated arms that overstates the
  variance of the difference, so the tests are conservative).
- `decide`: the live policy's decision stands, with each shadow at weight 0, while a live
  candidate has traffic. Without one (the shadow phase), a shadow whose guardrails all
  pass with `min_units_per_arm` units in it and the control, and no SRM flagged, is
  promoted to a live candidate at the first ramp step ("ramp"; several share the step
  evenly; no ramp: half the traffic); `with_weights` turns a shadow given weight into a
  live variant. Otherwise "continue" with what the shadows wait for, or "stop" once
  `max_duration` has passed.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, replace
from typing import Any

from abrouter.analysis import evidence as evidence_of
from abrouter.analysis import explain
from abrouter.analysis.candidates import active_candidates
from abrouter.analysis.data import AGREEMENT, BUILTIN_NAMES, ExperimentData, Shadow
from abrouter.analysis.decision import Action, Decision
from abrouter.analysis.evidence import Evidence
from abrouter.analysis.stats import histogram
from abrouter.analysis.stats.compare import json_safe
from abrouter.analysis.stats.noninferiority import NonInferiority
from abrouter.analysis.weights import rounded

_FULL = 100.0


@dataclass(frozen=True)
class ShadowResult:
    """One shadow at one look."""

    name: str
    percent: float
    units: int
    #: Copies it answered or failed.
    copies: int
    #: Rates per copy (NaN without copies).
    errors: float
    agreement: float
    latency_ms: float
    latency_p99_ms: float | None
    guardrails: tuple[NonInferiority, ...]

    @property
    def healthy(self) -> bool:
        """Every guardrail was evaluated and passes."""
        return bool(self.guardrails) and all(g.status == "pass" for g in self.guardrails)

    def to_dict(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "shadow_percent": self.percent,
            "units": self.units,
            "copies": self.copies,
            "errors": json_safe(self.errors),
            "agreement": json_safe(self.agreement),
            "latency_ms": json_safe(self.latency_ms),
            "latency_p99_ms": self.latency_p99_ms,
            "guardrails": [g.to_dict() for g in self.guardrails],
            "healthy": self.healthy,
        }


def evaluate(data: ExperimentData) -> tuple[ShadowResult, ...]:
    return tuple(_result(data, s) for s in data.shadows)


def _result(data: ExperimentData, shadow: Shadow) -> ShadowResult:
    arm = shadow.arm
    # The control and the shadow alone, on the router's measurements: the guardrails of a candidate.
    view = replace(data, arms=(data.control, arm), metrics=tuple(m for m in data.metrics if m.name in BUILTIN_NAMES))
    return ShadowResult(
        name=shadow.name,
        percent=shadow.percent,
        units=arm.units,
        copies=arm.exposures,
        errors=_rate(data, shadow, "errors"),
        agreement=_rate(data, shadow, AGREEMENT.name),
        latency_ms=_rate(data, shadow, "latency_ms"),
        latency_p99_ms=histogram.quantile(histogram.merge(arm.latency.values()), 0.99) if arm.latency else None,
        guardrails=evidence_of.guardrails(view),
    )


def _rate(data: ExperimentData, shadow: Shadow, metric: str) -> float:
    pooled = shadow.arm.pooled(metric, ratio=True)
    return pooled.mean if pooled.den_sum else math.nan


def decide(
    data: ExperimentData, evidence: Evidence, results: tuple[ShadowResult, ...], live: Decision, *, now: float
) -> Decision:
    """`live` with the shadows at 0, or, in the shadow phase, a shadow's promotion (module docstring)."""
    if not results:
        return live
    shadows = {r.name: 0.0 for r in results}
    if active_candidates(data):
        return replace(live, weights=live.weights | shadows)
    names = ", ".join(r.name for r in results)
    started, limit = data.started_at, data.settings.max_duration_s
    if started is not None and now - started >= limit:
        why = f"max_duration {explain.duration(limit)} reached without a shadow ready to go live ({names})"
        return _say(data, evidence, "stop", why, data.weights | shadows)
    need = data.settings.min_units_per_arm
    ready = [r.name for r in results if r.healthy and r.units >= need and data.control.units >= need]
    if not ready or evidence.srm.flagged:
        return _say(data, evidence, "continue", _waiting(data, results), data.weights | shadows)
    ramp = data.settings.ramp
    step = ramp[0] if ramp else _FULL / 2
    weights = {a.name: 0.0 for a in data.arms} | shadows | {n: step / len(ready) for n in ready}
    weights[data.control.name] = _FULL - step
    why = f"shadow {', '.join(ready)}: guardrails pass on its copies; live at {explain.number(step)}% in total"
    return _say(data, evidence, "ramp", why, weights)


def _waiting(data: ExperimentData, results: tuple[ShadowResult, ...]) -> str:
    need = data.settings.min_units_per_arm
    parts = []
    for r in results:
        if r.units < need or data.control.units < need:
            parts.append(f"{r.name} waits for {need} units (has {r.units}, the control {data.control.units})")
        else:
            states = ", ".join(f"{g.metric} {g.reason or g.status}" for g in r.guardrails if g.status != "pass")
            parts.append(f"{r.name}: guardrails not yet shown to pass ({states or 'none evaluated'})")
    return "shadow phase: " + "; ".join(parts)


def _say(data: ExperimentData, evidence: Evidence, action: Action, why: str, weights: Mapping[str, float]) -> Decision:
    line = explain.line(action, why, data=data, evidence=evidence, names=())
    return Decision(action=action, reason=line, weights=rounded(weights))
