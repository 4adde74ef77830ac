"""The decision design's information clock: the variance of the estimate, not the count of units.

Why (issue 18, finding 6): the design (`horizon`) needs B(t) = z·√t to be a Brownian
motion in t. The estimate is a mean over units, Δ̂ = X/n with X the sum of the units'
differences, and under H0 X is a martingale whose variance U = n²·V grows by each new
unit's variance. With z = X/√U, B = z·√t is X/√U* exactly when t = U/U* for a fixed U*.
Counting units, t = n/n*, is that only while the per-unit variance n·V stays put: with a
base rate rising from 2% to 8% (later units vary more) the units clock runs slow, the
boundary is too low late on, and A/A crossing over 2,000 looks rose to 5.6% ± 0.4%
against 4.8% ± 0.3% on this clock (bench/sim_clock.py).

How: a look of the design's data pins a **reference**, its per-unit variance n₁·V₁: each
look's own until the design holds `PIN_AT` of the planned units (a first look of a handful
of units, whose variance rests on the plus-one floor, would skew the clock for the whole
experiment), then the last of those for good. Looks run on

    t = (n/n*) · (n·V) / (n₁·V₁)  =  U / U*,   U* = n*·n₁·V₁,

the planned units at the reference's per-unit variance. U* is fixed once pinned, so the
boundary's crossing bound A(b, c) holds as before for any looks; while the per-unit
variance stays put, t is the units clock. The reference travels in `compare.Running` and
the history, and is pinned again when the design's data starts over (a new final ramp
step: another `start`). It is a variance, which carries (asymptotically) nothing of the
difference's sign, so pinning it on data does not bias the test.

Ratio metrics keep the units clock: their per-unit variance, in the ratio's units, falls as
returning users add exposures (each user's ratio gets more precise), so this clock would
stand still or step back while z grows, and the design would gain nothing from the extra
exposures; their delta-method variance is an approximation at any rate (docs/statistics.md).

Pure.
"""

from __future__ import annotations

import math
from dataclasses import replace

import numpy as np
from numpy.typing import ArrayLike

from abrouter.analysis.stats.stability import Anchor


def time(
    information: ArrayLike, variance: ArrayLike, ref_information: ArrayLike, ref_variance: ArrayLike
) -> np.ndarray:
    """t = t_units·(t_units·V)/(t₁·V₁): units time scaled by the per-unit variance over the reference's.

    Broadcasts over numpy arrays, so simulations run the same function vectorised.
    """
    t, v = np.asarray(information, dtype=float), np.asarray(variance, dtype=float)
    return t * (t * v) / (np.asarray(ref_information, dtype=float) * np.asarray(ref_variance, dtype=float))


#: The reference follows the looks until the design holds this share of the planned units
#: (units time): there the boundary needs z ≥ 9, so no look before it can cross anyway.
PIN_AT = 0.05


def reference(pinned: Anchor | None, design: Anchor) -> Anchor | None:
    """The reference this look runs on: the pinned one for the same data once it is `PIN_AT` in, else this look's."""
    if pinned is not None and pinned.start == design.start and _usable(pinned) and pinned.information >= PIN_AT:
        return pinned
    return design if _usable(design) else pinned if pinned is not None and pinned.start == design.start else None


def on_information(design: Anchor, ref: Anchor | None) -> Anchor:
    """`design` with its information time on the clock of `ref` (module docstring); as is without one."""
    if ref is None or ref.start != design.start or not (_usable(ref) and _usable(design)):
        return design
    return replace(design, information=float(time(design.information, design.variance, ref.information, ref.variance)))


def _usable(a: Anchor) -> bool:
    return a.information > 0 and a.variance > 0 and math.isfinite(a.information) and math.isfinite(a.variance)
