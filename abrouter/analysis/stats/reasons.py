"""Reason codes for results that could not be computed ("insufficient_data").

Degenerate data is a result, not an exception: the analyzer reports the code and keeps
running. The codes are stable strings; the decision policy and the JSON output use them.
"""

from __future__ import annotations

from typing import Final

OK: Final = "ok"
INSUFFICIENT: Final = "insufficient_data"

#: An arm has no units (or, for a ratio metric, no denominator).
EMPTY_ARM: Final = "empty_arm"
#: An arm has a single unit, or no epoch stratum has more than one unit in both arms.
N_TOO_SMALL: Final = "n_too_small"
#: The difference has zero variance (e.g. no conversions in either arm).
ZERO_VARIANCE: Final = "zero_variance"
#: The control mean is zero, so a relative lift is undefined.
ZERO_BASELINE: Final = "zero_baseline"
