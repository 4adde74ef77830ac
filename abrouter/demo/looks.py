"""What the analyzer said about each experiment: its JSON lines (``abrouter analyze --json``), kept per name.

One analyzer looks at both of the demo's experiments, so each line names its experiment
(``"experiment"``); the progress view and the summary read them from here.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any

#: The actions that move the weights.
ACTING = ("ramp", "promote", "rollback")


@dataclass
class Track:
    """One experiment: its last look, and every decision that moved its weights."""

    last: dict[str, Any] | None = None
    acted: list[dict[str, Any]] = field(default_factory=list)

    def add(self, look: dict[str, Any]) -> None:
        before = self.decision().get("weights")
        self.last = look
        decision = self.decision()
        # A decision that moved the weights (later looks repeat "already promoted").
        if decision.get("action") in ACTING and decision.get("weights") != before:
            self.acted.append(decision)

    def decision(self) -> dict[str, Any]:
        decision: dict[str, Any] = (self.last or {}).get("decision", {})
        return decision

    @property
    def decisions(self) -> list[str]:
        return [str(d.get("reason", "")) for d in self.acted]

    def finished(self) -> bool:
        """Promoted (the winner holds 100%) or rolled back to the control alone."""
        decision = self.decision()
        weights = decision.get("weights", {})
        return decision.get("action") in ("promote", "rollback") and max(weights.values(), default=0) >= 100

    def final(self) -> str:
        """The decision that ended it (later looks only say "already promoted"), else the last look's."""
        decision = self.decision()
        last_act = self.acted[-1] if self.acted else {}
        ended = last_act.get("action") in ("promote", "rollback") and last_act.get("weights") == decision.get("weights")
        if ended:
            return str(last_act.get("reason", ""))
        return str(decision.get("reason", "none: no look completed"))


@dataclass
class State:
    """Every experiment the analyzer reported on, by name."""

    tracks: dict[str, Track] = field(default_factory=dict)

    def track(self, name: str) -> Track:
        return self.tracks.setdefault(name, Track())

    def read(self, line: bytes | str) -> None:
        """One line of the analyzer's stdout; anything but a look is ignored."""
        try:
            look = json.loads(line)
        except ValueError:
            return
        if isinstance(look, dict) and isinstance(look.get("experiment"), str):
            self.track(look["experiment"]).add(look)
