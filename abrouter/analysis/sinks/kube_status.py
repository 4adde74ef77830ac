"""The ``status`` of an Experiment resource after a look: what ``kubectl get`` shows. Pure.

``phase`` from the decision: ramp -> Ramping, promote -> Promoted, rollback -> RolledBack,
stop -> Inconclusive (the time ran out without a winner; but RolledBack still when the
look only finds the control at 100% after a rollback), continue -> Running (or Ramping
again while a ramp is under way); ``spec.paused`` -> Paused whatever the decision.
``lastApplied`` keeps the last decision that changed the weights, across the looks that
change nothing. Conditions carry ``observedGeneration`` (the spec version the look analysed)
and keep their ``lastTransitionTime`` until their status flips, as the API conventions
ask; a flip to True of SampleRatioMismatch or GuardrailBreached is what the sink turns
into an Event, so a persisting problem is reported once, not at every look.
"""

from __future__ import annotations

import math
import time
from collections.abc import Mapping, Sequence
from typing import Any

from abrouter.analysis.analyzer import AnalysisResult
from abrouter.analysis.data import Arm
from abrouter.analysis.sinks import kube_summary
from abrouter.analysis.sinks.kube_pending import Pending

PHASES = {"ramp": "Ramping", "promote": "Promoted", "rollback": "RolledBack", "stop": "Inconclusive"}
CONDITIONS = ("Ready", "SampleRatioMismatch", "GuardrailBreached")


def phase(action: str, *, paused: bool, previous: str | None, after: str | None = None) -> str:
    """The phase of a look's decision; `after`: the last applied decision's action, when this look
    applied nothing. After a rollback the looks find the control at 100% and say stop ("no
    candidate has traffic"): that is still RolledBack, not Inconclusive."""
    if paused:
        return "Paused"
    if action == "stop" and after == "rollback":
        return "RolledBack"
    if action == "continue":
        return "Ramping" if previous == "Ramping" else "Running"
    return PHASES.get(action, "Running")


def build(
    result: AnalysisResult,
    *,
    weights: Mapping[str, float],
    epoch: int,
    observed_generation: int,
    paused: bool,
    applied: bool,
    previous: Mapping[str, Any],
    now: float | None = None,
) -> dict[str, Any]:
    """The whole ``status`` (a merge-patch of it replaces every field the analyzer owns)."""
    now = time.time() if now is None else now
    d = result.decision
    winner = _winner(weights) if d.action == "promote" else None
    before = previous.get("lastApplied")
    last_applied = (
        _applied_record(d.action, d.reason, d.weights, at=result.at, generation=epoch)
        if applied
        else (dict(before) if isinstance(before, Mapping) else None)
    )
    after = None if applied or last_applied is None else str(last_applied.get("action"))
    current = phase(d.action, paused=paused, previous=previous.get("phase"), after=after)
    p_value = _best_p(result)
    return {
        "phase": current,
        "epoch": epoch,
        "weights": dict(weights),
        "observedGeneration": observed_generation,
        "winner": winner,
        "pValue": p_value,
        "lastDecision": {
            "action": d.action,
            "reason": d.reason,
            "weights": dict(d.weights),
            "applied": applied,
            "paused": paused,
            "time": rfc3339(result.at),
        },
        "lastApplied": last_applied,
        "summary": kube_summary.summary(
            phase=current,
            action=d.action,
            reason=d.reason,
            p_value=p_value,
            last_applied=last_applied,
            # While a ramp step is held, the step's margins hold it (`evidence.step_guardrails`).
            guardrails=result.step_guardrails or result.guardrails,
            data=result.data,
        ),
        "arms": [_arm(result, a) for a in result.data.arms],
        "conditions": conditions(result, observed_generation=observed_generation, previous=previous, now=now),
    }


def applied(
    pending: Pending, *, weights: Mapping[str, float], epoch: int, paused: bool, previous: Mapping[str, Any]
) -> dict[str, Any]:
    """The part of ``status`` a finished unfinished decision writes (`kube_pending`): its phase,
    winner and ``lastDecision``; the look that follows writes the rest."""
    written = pending.epoch + 1  # the generation the weight patch made (a person's edit since may have raised it)
    applied_at = _applied_record(pending.action, pending.reason, pending.weights, at=pending.at, generation=written)
    return {
        "phase": phase(pending.action, paused=paused, previous=previous.get("phase")),
        "epoch": epoch,
        "weights": dict(weights),
        "winner": _winner(weights) if pending.action == "promote" else None,
        "lastApplied": applied_at,
        "summary": {"reason": kube_summary.first_clause(pending.reason)},
        "lastDecision": {
            "action": pending.action,
            "reason": pending.reason,
            "weights": dict(pending.weights),
            "applied": True,
            "paused": paused,
            "time": rfc3339(pending.at),
        },
    }


def _applied_record(
    action: str, reason: str, weights: Mapping[str, float], *, at: float, generation: int
) -> dict[str, Any]:
    """``status.lastApplied``: the last decision that changed the weights, kept until the next one."""
    return {"action": action, "reason": reason, "weights": dict(weights), "time": rfc3339(at), "generation": generation}


def conditions(
    result: AnalysisResult, *, observed_generation: int, previous: Mapping[str, Any], now: float
) -> list[dict[str, Any]]:
    breaches = [g for g in result.guardrails if g.status == "breach"]
    srm = result.srm
    srm_p = f"{srm.p_value:.2g}" if math.isfinite(srm.p_value) else "n/a"
    wanted = {
        "Ready": (True, "Analyzed", result.decision.reason),
        "SampleRatioMismatch": (
            srm.flagged,
            "Mismatch" if srm.flagged else "NoMismatch",
            f"units per arm {dict(srm.observed)} do not match the weights (p={srm_p})"
            if srm.flagged
            else f"units per arm match the weights (p={srm_p})",
        ),
        "GuardrailBreached": (
            bool(breaches),
            "Breached" if breaches else "WithinMargins",
            "; ".join(f"{g.variant}: {g.metric} {g.reason or 'worse than the margin'}" for g in breaches)
            or "no guardrail breached",
        ),
    }
    old = {c.get("type"): c for c in previous.get("conditions") or [] if isinstance(c, Mapping)}
    out = []
    for kind in CONDITIONS:
        flag, reason, message = wanted[kind]
        status = "True" if flag else "False"
        before = old.get(kind, {})
        since = before.get("lastTransitionTime") if before.get("status") == status else None
        out.append(
            {
                "type": kind,
                "status": status,
                "reason": reason,
                "message": message,
                "observedGeneration": observed_generation,
                "lastTransitionTime": since or rfc3339(now),
            }
        )
    return out


def turned_true(new: Sequence[Mapping[str, Any]], previous: Mapping[str, Any]) -> list[Mapping[str, Any]]:
    """The conditions of `new` that are True now and were not before."""
    old = {c.get("type"): c.get("status") for c in previous.get("conditions") or [] if isinstance(c, Mapping)}
    return [c for c in new if c["status"] == "True" and c["type"] != "Ready" and old.get(c["type"]) != "True"]


def _arm(result: AnalysisResult, arm: Arm) -> dict[str, Any]:
    primary = result.primary
    comparison = next((c for c in result.comparisons if c.variant == arm.name and c.metric == primary), None)
    control = next((c for c in result.comparisons if c.metric == primary), None)
    is_control = arm.name == result.data.control.name
    mean = (control.control_mean if control else None) if is_control else (comparison.mean if comparison else None)
    return {
        "name": arm.name,
        "weight": arm.weight,
        "units": arm.units,
        "exposures": arm.exposures,
        "metric": primary,
        "mean": _finite(mean),
        "lift": None if is_control or comparison is None else _finite(comparison.relative_lift),
        "sequentialP": None if is_control or comparison is None else _finite(comparison.sequential_p_value),
    }


def _best_p(result: AnalysisResult) -> float | None:
    ps = [c.sequential_p_value for c in result.comparisons if c.metric == result.primary]
    finite = [p for p in ps if math.isfinite(p)]
    return min(finite) if finite else None


def _winner(weights: Mapping[str, float]) -> str | None:
    return next((name for name, w in weights.items() if w >= 99.99), None)


def _finite(value: float | None) -> float | None:
    return value if value is not None and math.isfinite(value) else None


def rfc3339(t: float) -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(t))
