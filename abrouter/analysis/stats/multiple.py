"""Multiple-comparison corrections: Holm (family-wise error) and Benjamini–Hochberg (false discovery rate)."""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Literal

#: What `adjust` can do; "none" returns the p's as they are.
Correction = Literal["none", "holm", "bh"]


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


def benjamini_hochberg(p_values: Sequence[float]) -> list[float]:
    """Benjamini–Hochberg step-up adjusted p-values (q-values), in input order.

    Matches statsmodels ``multipletests(method="fdr_bh")``: the k-th smallest of m p's
    becomes min over j >= k of m·p_(j)/j, capped at 1. Rejecting where the adjusted p is
    below q controls the false discovery rate at q for independent or positively
    dependent (PRDS) tests (Benjamini & Hochberg 1995; Benjamini & Yekutieli 2001). NaN
    entries stay NaN and do not count towards m.
    """
    values = [float(p) for p in p_values]
    order = sorted((i for i, p in enumerate(values) if not math.isnan(p)), key=lambda i: values[i])
    adjusted = [math.nan] * len(values)
    running = 1.0
    for rank in range(len(order) - 1, -1, -1):
        # Step-up: from the largest down, keep the smallest m·p/(rank + 1) seen so far.
        i = order[rank]
        running = min(running, len(order) * values[i] / (rank + 1))
        adjusted[i] = running
    return adjusted


def adjust(p_values: Sequence[float], method: Correction) -> list[float]:
    """The p's adjusted by `method` ("none": unchanged, as floats)."""
    if method == "holm":
        return holm(p_values)
    if method == "bh":
        return benjamini_hochberg(p_values)
    return [float(p) for p in p_values]
