"""``status.summary``: what ``kubectl get experiments`` prints, as text written for it. Pure.

The printer columns show strings, because kubectl prints a ``number`` column raw
(``0.0412345678``, ``1.3456878445914877e-08``). So:

- ``pValue``: the primary metric's smallest sequential p, as the analyzer's reports write
  it (``0.041``, ``0.0074``, ``<0.0001``; empty before there is one);
- ``reason``: one clause, not the decision's whole line. In a final phase (Promoted,
  RolledBack, Inconclusive) it is the reason of the decision that made it so (kept in
  ``status.lastApplied``), not the later looks' "already has 100% of traffic". While the
  look waits and a guardrail is not yet shown to pass, it says how far that guardrail
  is from passing: its upper bound against its margin and, when the estimated harm is
  below the margin, about how many more units per arm the bound needs at this harm
  (the bound's width shrinks about as 1/sqrt(n); a confidence sequence's a little
  slower, so take it as a lower estimate).
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any

from abrouter.analysis import explain
from abrouter.analysis.data import ExperimentData
from abrouter.analysis.stats.noninferiority import NonInferiority

FINAL_PHASES = ("Promoted", "RolledBack", "Inconclusive")
#: Guardrails described in the reason, the farthest from passing first.
MAX_HELD = 3
_PHASE_ACTIONS = {"Promoted": "promote", "RolledBack": "rollback", "Inconclusive": "stop"}


def summary(
    *,
    phase: str,
    action: str,
    reason: str,
    p_value: float | None,
    last_applied: Mapping[str, Any] | None,
    guardrails: Sequence[NonInferiority],
    data: ExperimentData,
) -> dict[str, str]:
    """``{"pValue": ..., "reason": ...}`` for the printer columns."""
    return {
        "pValue": "" if p_value is None else explain.p(p_value),
        "reason": _reason(phase, action, reason, last_applied, guardrails, data),
    }


def _reason(
    phase: str,
    action: str,
    reason: str,
    last_applied: Mapping[str, Any] | None,
    guardrails: Sequence[NonInferiority],
    data: ExperimentData,
) -> str:
    if phase in FINAL_PHASES and last_applied and last_applied.get("action") == _PHASE_ACTIONS[phase]:
        return first_clause(str(last_applied.get("reason", "")))
    text = first_clause(reason)
    if action != "continue":
        return text
    held = sorted(
        (g for g in guardrails if g.status == "inconclusive"),
        key=lambda g: -(g.bound - g.margin) / (abs(g.margin) or 1.0),  # the farthest from passing first
    )
    if not held:
        return text
    return f"{text}; to pass: " + "; ".join(distance(g, data) for g in held[:MAX_HELD])


def first_clause(reason: str) -> str:
    """``promote: candidate wins on ... and its guardrails pass``: the line up to its first ``;``."""
    return reason.split(";", 1)[0].strip()


def distance(g: NonInferiority, data: ExperimentData) -> str:
    """How far guardrail `g` is from passing.

    ``candidate latency_ms bound +24.1% vs margin 20.0% (harm +15.0%, about 2,345 more
    units per arm at this harm)``: the upper bound must fall below the margin.
    """
    where = f" in epoch {g.epoch}" if g.epoch is not None else ""
    head = f"{g.variant} {g.metric}{where} bound {_value(g.bound, g)} vs margin {_value(g.margin, g, sign='')}"
    if not (math.isfinite(g.harm) and math.isfinite(g.bound)):
        return head
    if g.harm >= g.margin:
        return f"{head} (harm {_value(g.harm, g)}: it passes only if the harm falls)"
    more = more_units(harm=g.harm, bound=g.bound, margin=g.margin, units=_units(g, data))
    tail = f", about {more:,} more units per arm at this harm" if more is not None else ""
    return f"{head} (harm {_value(g.harm, g)}{tail})"


def more_units(*, harm: float, bound: float, margin: float, units: int) -> int | None:
    """Units per arm to add before the bound reaches the margin, if the harm stays: n((w/w')^2 - 1)."""
    width, room = bound - harm, margin - harm
    if units <= 0 or width <= 0 or room <= 0:
        return None
    return max(0, math.ceil(units * ((width / room) ** 2 - 1)))


def _units(g: NonInferiority, data: ExperimentData) -> int:
    arms = (data.control, data.arm(g.variant))
    if g.epoch is not None:
        return min(a.units_in(g.epoch) for a in arms)
    return min(a.units for a in arms)


def _value(x: float, g: NonInferiority, *, sign: str = "+") -> str:
    if not math.isfinite(x):
        return "n/a"
    return f"{100 * x:{sign}.1f}%" if g.relative else f"{x:{sign}.2g}"
