"""The demo's live view: nine lines redrawn in place on a terminal (`rich`), printed every 3 s otherwise.

Five lines for the main experiment (demo-recsys), four for the second (demo-ranker), none
wider than a terminal's 100 columns but for a long decision reason. It
starts at the analyzer's first look, so every line has numbers. When the users get much
less than the rate asked for, it says that the machine is busy: then every request and
every decision is slower, and the cause is not the models.
"""

from __future__ import annotations

import asyncio
import math
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from abrouter.demo import experiments
from abrouter.demo.looks import State, Track
from abrouter.demo.population import Traffic

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


def lines(
    state: State, traffic: Traffic, elapsed: float, *, rps: float = 0.0, ranker: Traffic | None = None
) -> list[str]:
    """The main experiment's five lines, then (with `ranker`, its users' traffic) the second's four."""
    look = state.track(experiments.MAIN).last or {}
    arms = ", ".join(
        f"{v['name']} {v['units']} units / {v.get('exposures', 0)} exposures" for v in look.get("variants", [])
    )
    out = [
        f"{elapsed:5.1f}s  {experiments.MAIN}: {_rate(traffic, rps)}  requests {traffic.requests} "
        f"(failed {traffic.failed})",
        f"        arms: {arms or '-'}",
        f"        weights: {_weights(look)}",
        f"        CTR lift: {_lift(look)}; SRM {_srm(look)}",
        f"        decision: {look.get('decision', {}).get('reason', '-')}",
    ]
    if ranker is not None:
        out += _second(state.track(experiments.RANKER), ranker)
    return out


def _second(track: Track, traffic: Traffic) -> list[str]:
    look = track.last or {}
    arms = ", ".join(f"{v['name']} {v['units']} units" for v in look.get("variants", []))
    return [
        f"        {experiments.RANKER}: {traffic.rate():5.0f} req/s  requests {traffic.requests} "
        f"(failed {traffic.failed})",
        f"        arms: {arms or '-'}; weights: {_weights(look)}",
        f"        CTR lift: {_lift(look, ci=False)}",
        f"        decision: {look.get('decision', {}).get('reason', '-')}",
    ]


def _weights(look: dict[str, Any]) -> str:
    weights = look.get("decision", {}).get("weights", {})
    return ", ".join(f"{k} {v:g}%" for k, v in weights.items()) or "-"


def _lift(look: dict[str, Any], *, ci: bool = True) -> str:
    c = _primary(look)
    if not c:
        return "-"
    lo, hi = c.get("sequential_ci") or (None, None)
    p = c.get("sequential_p_value")
    p_text = "-" if p is None else f"{p:.3g}"
    interval = f"always-valid CI {_pct(lo)}..{_pct(hi)}, " if ci else ""
    return f"{_pct(c.get('relative_lift'))} ({interval}seq p {p_text})"


def _srm(look: dict[str, Any]) -> str:
    srm = look.get("srm", {})
    return "-" if not srm else ("MISMATCH" if srm.get("flagged") else f"ok (p {srm.get('p_value', 1):.2g})")


async def show(
    state: State,
    traffic: Traffic,
    *,
    duration_s: float,
    until: Callable[[], bool],
    rps: float = 0.0,
    ranker: Traffic | None = None,
) -> None:
    """Show progress until `duration_s` passed or `until()` holds."""
    started = time.monotonic()
    if sys.stdout.isatty():
        from rich.live import Live
        from rich.text import Text

        with Live(refresh_per_second=4) as live:
            while time.monotonic() - started < duration_s and not until():
                live.update(Text("\n".join(lines(state, traffic, time.monotonic() - started, rps=rps, ranker=ranker))))
                await asyncio.sleep(0.25)
        return
    next_line = 0.0
    while time.monotonic() - started < duration_s and not until():
        elapsed = time.monotonic() - started
        if elapsed >= next_line:
            print("\n".join(lines(state, traffic, elapsed, rps=rps, ranker=ranker)), flush=True)
            next_line = elapsed + PLAIN_EVERY_S
        await asyncio.sleep(0.1)


def summary(state: State, *, report: Path, reports: Path) -> int:
    """Each experiment's decisions and where it ended, the main one first; then the reports."""
    for name in (experiments.MAIN, experiments.RANKER):
        track = state.track(name)
        for reason in track.decisions:
            say(f"{name}: decided: {reason}")
        say(f"{name}: final decision: {track.final()}")
    say(f"report: {report} ({experiments.MAIN}); both experiments' reports: {reports / 'index.html'}")
    return 0
