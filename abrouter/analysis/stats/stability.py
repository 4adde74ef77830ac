"""Is the effect stable over time? A check that keeps a fading novelty effect from promoting.

Why: the decision design (`horizon`) counts only the final ramp step's data, but a ramp
reaches that step in a few looks, while a novelty effect (users trying a new recommender)
lasts days. The early, inflated effect then enters the final step's own data and can
carry its cumulative estimate over the boundary after it has faded (issue 18, finding 1:
+30% for the first 6 of 20 looks, then none, promoted in 14% of runs).

How: the analyzer cannot see the data by time, only cumulative sums, so each look keeps a
few **anchors**: the design's estimate Δ̂_a and variance V_a at earlier looks (`advance`:
every look's, thinned to at most `KEEP` by dropping every other one of the older half, so
a long experiment keeps a few dozen). At a look with Δ̂, V, the data since the latest anchor with at
most half of this look's information is, by the independent increments of the estimate
(information 1/V adds up over disjoint data),

    1/V_late = 1/V − 1/V_a,   Δ̂_late = V_late · (Δ̂/V − Δ̂_a/V_a),

independent of the anchor's data. Under a constant effect Δ̂_a − Δ̂_late ~ N(0, V_a + V_late),
so `decline` gives the one-sided p that the effect **declined** (in the good direction)
from the first part of the data to the rest. The policy holds a promotion while that p is
below alpha ("novelty suspected"); it is a brake, so it can only lower the false-promotion
rate, and under a constant effect it holds a look with chance alpha, which the next look
usually clears. With returning users the increments are correlated (a user's total grows),
which makes the check more or less sensitive but never promotes anything by itself.

Pure; the anchors travel in `compare.Running` from one look to the next (and in the
history's ``sequential_p`` items).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from scipy import special

from abrouter.analysis.stats import estimate

#: The data is split at the latest anchor with at most this share of the look's information.
SPLIT = 0.5
#: At most this many anchors are kept: past it, every other one of the older half goes.
KEEP = 32


@dataclass(frozen=True)
class Anchor:
    """The decision design's estimate at one look."""

    #: Index of the first stratum the design counted (`compare`'s `confirm_from`): anchors
    #: of another start describe other data, and are dropped.
    start: int
    #: Information time t of the look.
    information: float
    #: Δ̂ (candidate − control, absolute) and its sequential variance.
    difference: float
    variance: float
    #: When the look was taken (unix seconds); NaN when the caller gave no clock.
    at: float = math.nan


@dataclass(frozen=True)
class Decline:
    """The effect before an anchor and after it, and the one-sided p that it declined."""

    early: float
    late: float
    #: The late part's variance.
    late_variance: float
    #: Information time of the anchor that splits the data.
    split: float
    p_value: float
    #: When the anchor that splits the data was taken (unix seconds; NaN when unknown).
    split_at: float = math.nan


NO_DECLINE = Decline(math.nan, math.nan, math.nan, math.nan, math.nan)


def anchor_of(est: estimate.Estimate | None, *, start: int, expected_units: int, at: float) -> Anchor:
    """A look's estimate as an `Anchor` (information 0 and NaN when there is none)."""
    if est is None or est.reason:
        return Anchor(start, 0.0, math.nan, math.nan, at)
    return Anchor(start, est.units_per_arm / expected_units, est.difference, est.sequential_variance, at)


def advance(anchors: tuple[Anchor, ...], now: Anchor) -> tuple[Anchor, ...]:
    """The anchors to keep after this look: reset on a new start, else add `now` (thinned to `KEEP`)."""
    kept = tuple(a for a in anchors if a.start == now.start)
    if not _usable(now) or (kept and now.information <= kept[-1].information):
        return kept
    out = (*kept, now)
    if len(out) <= KEEP:
        return out
    half = len(out) // 2
    return out[:half:2] + out[half:]


def decline(anchors: tuple[Anchor, ...], now: Anchor, *, increase: bool) -> Decline:
    """Early (up to the latest anchor with at most `SPLIT` of `now`'s information) against late.

    `increase`: whether a larger difference is better (the metric's direction). NaN fields
    when no anchor splits the data or the late part holds no information.
    """
    split = _split(anchors, now)
    rest = since(split, now) if split is not None else None
    if split is None or rest is None:
        return NO_DECLINE
    drop = split.difference - rest.difference if increase else rest.difference - split.difference
    z = drop / math.sqrt(split.variance + rest.variance)
    p = float(special.ndtr(-z))
    return Decline(
        early=split.difference,
        late=rest.difference,
        late_variance=rest.variance,
        split=split.information,
        p_value=p,
        split_at=split.at,
    )


def since(origin: Anchor, now: Anchor) -> Anchor | None:
    """The estimate on the data after `origin` alone (module docstring), or None when it holds no information.

    Its information time is now's minus origin's. Exact only when the data after the origin
    is new units: with returning users a unit's total keeps growing, the two estimates are
    correlated otherwise, and the increment's variance is wrong. So it serves only the
    brake (`decline`), never as evidence for a promotion (issue 18: a burn-in built on it
    promoted 13.7% of A/A runs with returning users).
    """
    gained = 1 / now.variance - 1 / origin.variance
    if not (_usable(origin) and _usable(now) and gained > 0 and now.information > origin.information):
        return None
    variance = 1 / gained
    difference = variance * (now.difference / now.variance - origin.difference / origin.variance)
    return Anchor(now.start, now.information - origin.information, difference, variance, now.at)


def _split(anchors: tuple[Anchor, ...], now: Anchor) -> Anchor | None:
    """The latest anchor at most half-way from the first anchor to `now`: in time when known, else in information."""
    mine = [a for a in anchors if a.start == now.start and a.information < now.information]
    if not _usable(now) or not mine:
        return None
    if math.isfinite(now.at) and math.isfinite(mine[0].at):
        middle = mine[0].at + SPLIT * (now.at - mine[0].at)
        earlier = [a for a in mine if a.at <= middle]
    else:
        earlier = [a for a in mine if a.information <= SPLIT * now.information]
    return earlier[-1] if earlier else None


def _usable(a: Anchor) -> bool:
    return a.information > 0 and a.variance > 0 and math.isfinite(a.difference) and math.isfinite(a.variance)
