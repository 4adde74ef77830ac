"""One look as the decision policy sees it: the data, the evidence, the time, and the questions every rule asks.

Pure: no I/O, no clock (`now` is an argument). `decision.py` holds the rules, `ramping.py`
the ramp's; both ask these.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Literal

from abrouter.analysis import explain
from abrouter.analysis.candidates import active_candidates
from abrouter.analysis.data import ExperimentData
from abrouter.analysis.evidence import Evidence
from abrouter.analysis.stats.compare import Comparison
from abrouter.analysis.weights import WEIGHT_DECIMALS, rounded

Action = Literal["continue", "ramp", "promote", "rollback", "stop"]
FULL = 100.0


@dataclass(frozen=True)
class Decision:
    action: Action
    #: One line: the action, why, the primary statistic with its p or CI and n, and SRM.
    reason: str
    #: The weights to serve next, percent per variant (the current ones for continue).
    weights: dict[str, float] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return {"action": self.action, "reason": self.reason, "weights": dict(self.weights)}


@dataclass(frozen=True)
class Look:
    data: ExperimentData
    evidence: Evidence
    now: float
    #: The candidate an earlier look promoted (the history's latest decision), if any.
    promoted: str | None = None

    @property
    def alpha(self) -> float:
        return self.data.settings.alpha

    @property
    def candidates(self) -> tuple[str, ...]:
        return tuple(a.name for a in active_candidates(self.data))

    @property
    def active(self) -> tuple[str, ...]:
        return (self.data.control.name, *self.candidates)

    @property
    def share(self) -> float:
        """The active candidates' share of the traffic (percent)."""
        return sum(self.data.arm(n).weight for n in self.candidates)

    def say(self, action: Action, why: str, weights: Mapping[str, float] | None = None) -> Decision:
        weights = rounded(weights if weights is not None else self.data.weights)
        line = explain.line(action, why, data=self.data, evidence=self.evidence, names=self.candidates)
        return Decision(action=action, reason=line, weights=weights)

    def enough_units(self, *, epoch: int | None = None) -> bool:
        """Every active arm has `min_units_per_arm`, over all epochs or in `epoch` alone."""
        need = self.data.settings.min_units_per_arm
        for name in self.active:
            arm = self.data.arm(name)
            if (arm.units if epoch is None else arm.units_in(epoch)) < need:
                return False
        return True

    def guardrails_pass(self, name: str) -> bool:
        """Every guardrail passes, over all epochs and (when evaluated) in the current epoch alone."""
        return all(g.status == "pass" for g in self.evidence.guardrails_of(name))

    @property
    def ramped(self) -> bool:
        """Whether a ramp schedule applies (bandit mode has none)."""
        return bool(self.data.settings.ramp) and not self.data.settings.bandit.enabled

    def ramp_done(self) -> bool:
        """Promotion waits for the last ramp step (bandit mode has no schedule)."""
        return not self.ramped or self.share >= self.data.settings.ramp[-1] - self.tolerance

    @property
    def tolerance(self) -> float:
        """How far the candidates' share may sit below a ramp step and still count as on it.

        Each weight is rounded to 10^-WEIGHT_DECIMALS, so k candidates' share can be off by up
        to k of those units (plus float noise).
        """
        return (len(self.candidates) + 1) * 10**-WEIGHT_DECIMALS

    def burning_in(self, *, final: bool = False) -> bool:
        """Whether `burn_in` since the experiment's start has not passed yet.

        With a ramp it holds the step into the final one (`final` False), so the burn-in's
        data stays in the canary epochs, which the decision design does not count; a novelty
        effect of the first day(s) cannot carry a promotion. Without a ramp, and in bandit
        mode, it holds the promotion itself (`final` True): the data of the burn-in still
        counts, but the stability check (`stats.stability`) has time to see a fading effect.
        """
        started = self.data.started_at
        if started is None or self.now - started >= self.data.settings.burn_in_s:
            return False
        return not (final and self.ramped)

    @property
    def increase(self) -> bool:
        """Whether the primary metric's good direction is up (canary mode: as if)."""
        return self.data.primary is None or self.data.primary.direction == "increase"

    def good(self, c: Comparison) -> bool:
        return c.absolute_lift > 0 if self.increase else c.absolute_lift < 0
