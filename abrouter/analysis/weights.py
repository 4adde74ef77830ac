"""Weight arithmetic of the decision policy: percent per variant, at the router's resolution.

Pure. The policy's next weights are rounded so that they still sum to exactly 100, and a
sink compares weights at the same precision before it writes (every write opens an epoch).
"""

from __future__ import annotations

import math
from collections.abc import Mapping

#: Weights are percent, rounded to the router's resolution (1/10,000 of traffic).
WEIGHT_DECIMALS = 2
#: Weights closer than this are equal (float noise).
EPS = 1e-6


def max_change(new: Mapping[str, float], old: Mapping[str, float]) -> float:
    """The largest move of any variant's weight between `old` and `new`, in points."""
    return max(abs(new.get(k, 0.0) - old.get(k, 0.0)) for k in set(new) | set(old))


def rounded(weights: Mapping[str, float]) -> dict[str, float]:
    """Round to WEIGHT_DECIMALS by the largest-remainder method, preserving the total.

    Weights summing to 100 stay summing to exactly 100 (in units of 10^-WEIGHT_DECIMALS):
    each is floored, and the units left over go to the largest remainders.
    """
    scale = 10**WEIGHT_DECIMALS
    keys = list(weights)
    scaled = [float(weights[k]) * scale for k in keys]
    floors = [math.floor(x + 1e-9) for x in scaled]
    left = round(sum(scaled)) - sum(floors)
    by_remainder = sorted(range(len(keys)), key=lambda i: (-(scaled[i] - floors[i]), i))
    for i in by_remainder[: max(0, left)]:
        floors[i] += 1
    return {k: units / scale for k, units in zip(keys, floors)}


def same_weights(a: Mapping[str, float], b: Mapping[str, float]) -> bool:
    """Equal to the reported precision; a sink writes (and opens an epoch) only when not."""
    return set(a) == set(b) and all(abs(a[k] - b[k]) < 10**-WEIGHT_DECIMALS for k in a)
