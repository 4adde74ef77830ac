"""Each active candidate's latency p95 against the control's, from the router's histograms.

Pure. The current epoch alone: both arms were served side by side under the same weights,
so the load each saw and the hour of the day are alike, which a pool over epochs with
changing weights would not be (a ramp gives the candidate more load at every step). The
statistics are `stats.quantile.difference` (an interval that owns up to the buckets'
26% resolution). Informational: the decision's latency guardrail is on the unit-level
mean (`latency_ms`); this is the tail beside it.
"""

from __future__ import annotations

from abrouter.analysis.candidates import active_candidates
from abrouter.analysis.data import ExperimentData
from abrouter.analysis.stats import quantile
from abrouter.contract.keys import LATENCY_BUCKETS

#: The quantile compared.
Q = 0.95
_EMPTY = (0,) * LATENCY_BUCKETS


def p95(data: ExperimentData) -> tuple[quantile.QuantileDifference, ...]:
    """One comparison per active candidate in the current epoch; none when the data has no histograms."""
    if not any(arm.latency for arm in data.arms):
        return ()
    epoch = data.current_epoch
    control = data.control.latency.get(epoch, _EMPTY)
    return tuple(
        quantile.difference(
            control, arm.latency.get(epoch, _EMPTY), q=Q, alpha=data.settings.alpha, variant=arm.name, epoch=epoch
        )
        for arm in active_candidates(data)
    )
