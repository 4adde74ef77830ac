"""Did the effect change over time? The stability check's result in words, per active candidate.

Pure. `stats.stability` splits the decision design's data (the final ramp step's) at an
earlier look, about half-way in time, and compares the effect before and after. The policy
uses only one side of it: a significant **decline** in the good direction holds a promotion
(a novelty effect). This module reads both sides on the primary metric:

- ``declined``: the effect faded, i.e. moved against the metric's good direction (one-sided
  p < alpha): novelty suspected, promotion held;
- ``grew``: the effect strengthened, in the good direction (p < alpha): a time trend the policy does not act
  on (users learning the new model, a change in traffic); the tests average over time, so
  the recent effect is larger than they say;
- ``stable``: neither;
- ``not_checked``: no earlier look splits the data yet (the first looks of the final step).

The two one-sided tests at alpha each make a two-sided test at 2·alpha, under a constant
effect; with returning users the split's variance is only approximate (`stability.since`).
"""

from __future__ import annotations

import math
import time
from dataclasses import asdict, dataclass
from typing import Any, Literal

from abrouter.analysis.candidates import active_candidates
from abrouter.analysis.data import ExperimentData
from abrouter.analysis.stats import reasons
from abrouter.analysis.stats.compare import Comparison

Status = Literal["declined", "grew", "stable", "not_checked"]


@dataclass(frozen=True)
class Trend:
    variant: str
    metric: str
    status: Status
    #: The absolute difference (candidate − control) before the split and since.
    early_lift: float
    late_lift: float
    #: One-sided p that the effect declined (in the good direction) and that it grew.
    decline_p: float
    growth_p: float
    #: When the data was split (unix seconds; NaN when unknown).
    split_at: float
    #: The result in a sentence.
    message: str

    def to_dict(self) -> dict[str, Any]:
        """JSON-safe: NaN becomes None."""
        return {k: (None if isinstance(v, float) and not math.isfinite(v) else v) for k, v in asdict(self).items()}


def trends(data: ExperimentData, comparisons: tuple[Comparison, ...]) -> tuple[Trend, ...]:
    """The primary metric's trend per active candidate (none without a primary metric)."""
    primary = data.primary
    if primary is None:
        return ()
    by_variant = {c.variant: c for c in comparisons if c.metric == primary.name}
    return tuple(
        of(by_variant[arm.name], alpha=data.settings.alpha) for arm in active_candidates(data) if arm.name in by_variant
    )


def of(c: Comparison, *, alpha: float) -> Trend:
    """One comparison's trend: its status and the sentence that says it."""
    checked = c.status == reasons.OK and math.isfinite(c.decline_p)
    growth = 1.0 - c.decline_p if checked else math.nan
    status: Status
    if not checked:
        status = "not_checked"
    elif c.decline_p < alpha:
        status = "declined"
    elif growth < alpha:
        status = "grew"
    else:
        status = "stable"
    return Trend(
        variant=c.variant,
        metric=c.metric,
        status=status,
        early_lift=c.early_lift if checked else math.nan,
        late_lift=c.late_lift if checked else math.nan,
        decline_p=c.decline_p if checked else math.nan,
        growth_p=growth,
        split_at=c.split_at if checked else math.nan,
        message=_message(c, status, growth, alpha),
    )


def _message(c: Comparison, status: Status, growth: float, alpha: float) -> str:
    who = f"{c.variant} on {c.metric}"
    if status == "not_checked":
        return f"{who}: not checked yet; the check needs an earlier look in the final ramp step's data to split it at"
    split = f"from {_signed(c.early_lift)} up to {_when(c.split_at)} to {_signed(c.late_lift)} since"
    if status == "declined":
        return (
            f"{who}: the effect faded {split} (one-sided p={_p(c.decline_p)} < alpha {alpha:g}): a novelty "
            f"effect is suspected, and the promotion is held while it lasts"
        )
    if status == "grew":
        return (
            f"{who}: the effect strengthened {split} (one-sided p={_p(growth)} < alpha {alpha:g}): a time trend "
            f"(users learning the new model, or a change in traffic); the tests average over time, so the "
            f"recent effect is larger than they report"
        )
    return f"{who}: no time trend detected; the effect went {split} (p={_p(min(c.decline_p, growth))} either way)"


def _signed(x: float) -> str:
    return f"{x:+.4g}"


def _p(p: float) -> str:
    return "<0.0001" if p < 1e-4 else f"{p:.4g}"


def _when(at: float) -> str:
    """A UTC time, or "an earlier look" when the look's time is unknown."""
    if not math.isfinite(at):
        return "an earlier look"
    return time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime(at))
