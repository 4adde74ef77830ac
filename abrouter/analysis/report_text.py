"""The words of the HTML report: what was decided and why, and what each guardrail found.

Pure. The headline is the last decision that was *applied* (a ramp, a promotion or a
rollback), from the decision history: the current look only repeats "already promoted"
or "stop" after one, which says nothing of why. With none applied, it is the current
look's decision. Guardrails are stated beside their margins, with their result in words.
"""

from __future__ import annotations

import math
import time
from collections.abc import Sequence

from abrouter.analysis.stats.noninferiority import NonInferiority
from abrouter.contract.history import DecisionEntry

#: The actions that change the weights.
APPLIED = ("ramp", "promote", "rollback")

RESULT_WORDS = {
    "pass": "pass: the always-valid upper bound of the harm is within the margin",
    "breach": "breach: even the lower bound of the harm is beyond the margin",
    "inconclusive": "not yet shown: the bounds still straddle the margin",
    "insufficient_data": "not yet measured: too few units",
}


def last_applied(history: Sequence[DecisionEntry]) -> DecisionEntry | None:
    return next((e for e in reversed(history) if e.applied and e.action in APPLIED), None)


def headline(
    history: Sequence[DecisionEntry], *, action: str, reason: str, control: str, rest: str | None = None
) -> str:
    """One sentence on the state the weights are in, then why, in the analyzer's words.

    `rest`: a balanced ramp's variant serving the control's model outside the comparison.
    """
    entry = last_applied(history)
    if entry is None:
        return f"No decision applied yet: the analyzer says {action}. Why: {_why(reason)}"
    others = sorted(name for name, w in entry.weights.items() if name not in (control, rest) and w > 0)
    if entry.action == "promote":
        winner = max(entry.weights, key=lambda name: entry.weights[name])
        state = f"Promoted: {winner} won and serves all traffic."
    elif entry.action == "rollback":
        stopped = sorted(name for name in entry.weights if name not in (control, rest) and entry.weights[name] == 0)
        still = f"; {', '.join(others)} still run" if others else ""
        state = f"Rolled back: the control serves all traffic again ({', '.join(stopped)} stopped{still})."
    else:
        shares = ", ".join(f"{name} {entry.weights[name]:g}%" for name in others)
        state = f"Ramping, no winner yet: {shares}."
    return f"{state} Why: {_why(entry.reason)}"


def _why(reason: str) -> str:
    """The reason without its leading "action: " (the headline says the action in words)."""
    head, sep, rest = reason.partition(": ")
    return rest if sep and head in (*APPLIED, "continue", "stop") else reason


def steps(history: Sequence[DecisionEntry], *, control: str, rest: str | None = None) -> str:
    """The applied decisions in order: "ramp to 50% (11:28:03 UTC), rollback (11:29:40 UTC)"."""
    applied = [e for e in history if e.applied and e.action in APPLIED]
    return ", ".join(
        f"{_step(e, (control, rest))} ({time.strftime('%H:%M:%S', time.gmtime(e.at))} UTC)" for e in applied
    )


def _step(e: DecisionEntry, outside: tuple[str, str | None]) -> str:
    """``ramp to 25%``: the candidates' share (neither the control nor a balanced ramp's rest)."""
    if e.action != "ramp":
        return e.action
    return f"ramp to {sum(w for name, w in e.weights.items() if name not in outside):g}%"


def margin(g: NonInferiority) -> str:
    """The tolerated harm in words, on the scale the test used."""
    if g.relative:
        return f"{g.margin:.0%} of the control"
    if g.min_margin:
        return f"{_num(g.margin)} (the larger of the relative margin and its floor {g.min_margin:g})"
    return _num(g.margin)


def harm(g: NonInferiority) -> str:
    """The estimated harm and its always-valid upper bound, on the margin's scale."""
    if not math.isfinite(g.harm):
        return "–"
    bound = f", upper bound {_signed(g.bound, g.relative)}" if math.isfinite(g.bound) else ""
    return f"{_signed(g.harm, g.relative)}{bound}"


def _signed(x: float, relative: bool) -> str:
    return f"{x:+.1%}" if relative else f"{x:+.4g}"


def result(g: NonInferiority) -> str:
    words = RESULT_WORDS.get(g.status, g.status)
    return words if g.reason is None or g.status == "breach" else f"{words} ({g.reason})"


def _num(x: float) -> str:
    return f"{x:.4g}" if math.isfinite(x) else "–"
