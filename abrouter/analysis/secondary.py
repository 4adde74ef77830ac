"""The secondary metrics' p-values, adjusted for how many there are (`analysis.secondary_correction`).

Pure. An experiment with many secondary metrics finds some "significant" by chance: at
alpha 0.05, 20 unrelated metrics show one on average. The family is every candidate
(rolled-back ones included, as in `candidates.holm_primary`) times every user metric but
the primary; the built-ins (errors, latency, slow requests) are the guardrails' and stay
out. The p adjusted is each comparison's `sequential_p_value`, the two-sided always-valid
mSPRT p: valid at whatever look the report is read, so the adjustment is too (Holm for
any dependence, Benjamini–Hochberg for independent or positively dependent metrics). A
comparison without a usable p counts in the family as p = 1 and is reported as NaN.

Reported only: the decision rests on the primary metric and the guardrails.
"""

from __future__ import annotations

import math

from abrouter.analysis.data import BUILTIN_NAMES, ExperimentData
from abrouter.analysis.stats import reasons
from abrouter.analysis.stats.compare import Comparison
from abrouter.analysis.stats.multiple import adjust

#: (variant, metric) -> the adjusted sequential p.
Adjusted = dict[tuple[str, str], float]

#: How a report names each correction beside the p it adjusted.
SHORT_NAMES = {"none": "", "holm": "Holm", "bh": "BH"}
_CONTROLS = {
    "holm": "Holm, the chance of any false positive among them",
    "bh": "Benjamini-Hochberg, the expected share of false positives among those below alpha",
}


def family(data: ExperimentData) -> list[tuple[str, str]]:
    """The (variant, metric) pairs the correction is over, candidates first, in spec order."""
    primary = data.primary.name if data.primary is not None else None
    metrics = [m.name for m in data.metrics if m.name not in BUILTIN_NAMES and m.name != primary]
    return [(arm.name, metric) for arm in data.candidates for metric in metrics]


def adjusted(data: ExperimentData, comparisons: tuple[Comparison, ...]) -> Adjusted:
    """The adjusted `sequential_p_value` of every secondary comparison; empty with ``none`` or no secondaries."""
    method = data.settings.secondary_correction
    pairs = family(data)
    if method == "none" or not pairs:
        return {}
    by_key = {(c.variant, c.metric): c for c in comparisons}
    raw = [_usable_p(by_key.get(key)) for key in pairs]
    out = adjust([p if math.isfinite(p) else 1.0 for p in raw], method)
    return {key: (a if math.isfinite(p) else math.nan) for key, p, a in zip(pairs, raw, out)}


def _usable_p(c: Comparison | None) -> float:
    if c is None or c.status != reasons.OK:
        return math.nan
    return c.sequential_p_value


def describe(method: str, count: int) -> str:
    """One sentence for a report: what the adjusted p's are ("" with ``none``)."""
    if method not in _CONTROLS or count == 0:
        return ""
    return (
        f"{SHORT_NAMES[method]} seq p: the sequential p of each secondary metric adjusted over "
        f"{count} secondary comparisons ({_CONTROLS[method]}, kept below alpha)"
    )
