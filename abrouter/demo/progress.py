"""The demo's live view: five lines redrawn in place on a terminal (`rich`), printed every 3 s otherwise.

It starts at the analyzer's first look, so every line has numbers. When the users get
much less than the rate asked for, it says that the machine is busy: then every request
and every decision is slower, and the cause is not the models.
"""

from __future__ import annotations

import asyncio
import math
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

from abrouter.demo.population import Traffic

if TYPE_CHECKING:
    from abrouter.demo.run import State

PLAIN_EVERY_S = 3.0
#: Below this share of the asked rate, after the first seconds, the view says the machine is busy.
BUSY_SHARE = 0.7


def say(line: str) -> None:
    print(f"abrouter demo: {line}", flush=True)


def _primary(look: dict[str, Any] | None) -> dict[str, Any] | None:
    if not look:
        return None
    return next((c for c in look.get("comparisons", []) if c.get("primary")), None)


def _pct(x: Any) -> str:
    return "-" if x is None or not math.isfinite(x) else f"{x:+.1%}"


def _rate(traffic: Traffic, rps: float) -> str:
    rate = traffic.rate()
    text = f"{rate:5.0f} req/s"
    if rps and traffic.requests > 3 * rps and rate < BUSY_SHARE * rps:
        text += f" (of {rps:g} asked: this machine is busy, so the test takes longer)"
    return text


def lines(state: State, traffic: Traffic, elapsed: float, *, rps: float = 0.0) -> list[str]:
    look = state.last or {}
    arms = ", ".join(
        f"{v['name']} {v['units']} units / {v.get('exposures', 0)} exposures" for v in look.get("variants", [])
    )
    weights = look.get("decision", {}).get("weights", {})
    c = _primary(look)
    lift = "-"
    if c:
        lo, hi = c.get("sequential_ci") or (None, None)
        p = c.get("sequential_p_value")
        p_text = "-" if p is None else f"{p:.3g}"
        lift = f"{_pct(c.get('relative_lift'))} (always-valid CI {_pct(lo)}..{_pct(hi)}, seq p {p_text})"
    srm = look.get("srm", {})
    srm_text = "-" if not srm else ("MISMATCH" if srm.get("flagged") else f"ok (p {srm.get('p_value', 1):.2g})")
    return [
        f"{elapsed:5.1f}s  {_rate(traffic, rps)}  requests {traffic.requests} (failed {traffic.failed})",
        f"        arms: {arms or '-'}",
        f"        weights: {', '.join(f'{k} {v:g}%' for k, v in weights.items()) or '-'}",
        f"        CTR lift: {lift}; SRM {srm_text}",
        f"        decision: {look.get('decision', {}).get('reason', '-')}",
    ]


async def show(
    state: State, traffic: Traffic, *, duration_s: float, until: Callable[[], bool], rps: float = 0.0
) -> None:
    """Show progress until `duration_s` passed or `until()` holds."""
    started = time.monotonic()
    if sys.stdout.isatty():
        from rich.live import Live
        from rich.text import Text

        with Live(refresh_per_second=4) as live:
            while time.monotonic() - started < duration_s and not until():
                live.update(Text("\n".join(lines(state, traffic, time.monotonic() - started, rps=rps))))
                await asyncio.sleep(0.25)
        return
    next_line = 0.0
    while time.monotonic() - started < duration_s and not until():
        elapsed = time.monotonic() - started
        if elapsed >= next_line:
            print("\n".join(lines(state, traffic, elapsed, rps=rps)), flush=True)
            next_line = elapsed + PLAIN_EVERY_S
        await asyncio.sleep(0.1)


def summary(state: State, *, report: Path) -> int:
    look = state.last or {}
    decision = look.get("decision", {})
    for reason in state.decisions:
        say(f"decided: {reason}")
    # The look that moved the weights says why; later looks only say "already promoted".
    acted = state.decisions[-1] if state.decisions and decision.get("action") in ("promote", "rollback") else None
    say(f"final decision: {acted or decision.get('reason', 'none: no look completed')}")
    say(f"report: {report}")
    return 0
