"""Multiple-comparison corrections."""

from __future__ import annotations

from typing import Sequence


def holm(p_values: Sequence[float]) -> list[float]:
    """Holm step-down adjusted p-values, in input order; matches statsmodels multipletests(method="holm").

    NaN entries stay NaN and do not count towards the number of tests.
    """
    raise NotImplementedError
