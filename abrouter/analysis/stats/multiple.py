"""Multiple-comparison corrections."""

from __future__ import annotations

import math
from collections.abc import Sequence


def holm(p_values: Sequence[float]) -> list[float]:
    """Holm step-down adjusted p-values, in input order; matches statsmodels multipletests(method="holm").

    NaN entries stay NaN and do not count towards the number of tests.
    """
    values = [float(p) for p in p_values]
    order = sorted((i for i, p in enumerate(values) if not math.isnan(p)), key=lambda i: values[i])
    adjusted = [math.nan] * len(values)
    running = 0.0
    for rank, i in enumerate(order):
        # Step-down: multiply the rank-th smallest by (m − rank), keep it monotone, cap at 1.
        running = max(running, min(1.0, (len(order) - rank) * values[i]))
        adjusted[i] = running
    return adjusted
