"""`Evidence`: what the statistics said about one look, which the decision and its explanation read.

Also where the guardrail evidence is computed (`guardrails`): every guardrail of the
settings for every candidate, stratified over all epochs, and again on the current
epoch's stratum alone. The pooled result dilutes a regression that starts at a ramp step
(a model server that slows down or fails under the new load) with the earlier, lighter
epochs; the current epoch's own result sees it at the step where it appears.
"""

from __future__ import annotations

from dataclasses import dataclass

from abrouter.analysis.data import Arm, ExperimentData, stat_kind
from abrouter.analysis.stats.compare import Comparison
from abrouter.analysis.stats.noninferiority import NonInferiority, non_inferiority
from abrouter.analysis.stats.srm import SrmResult
from abrouter.contract.model import Guardrail


@dataclass(frozen=True)
class Evidence:
    """What the statistics said about this look."""

    comparisons: tuple[Comparison, ...]
    #: Pooled over the epochs (`epoch` None) and, see `guardrails`, the current epoch's.
    guardrails: tuple[NonInferiority, ...]
    srm: SrmResult

    def primary(self, data: ExperimentData, variant: str) -> Comparison | None:
        metric = data.primary
        if metric is None:
            return None
        return next((c for c in self.comparisons if c.variant == variant and c.metric == metric.name), None)

    def guardrails_of(self, variant: str) -> tuple[NonInferiority, ...]:
        """Every guardrail result of `variant`: over all epochs, and the current epoch's."""
        return tuple(g for g in self.guardrails if g.variant == variant)


def guardrails(data: ExperimentData) -> tuple[NonInferiority, ...]:
    """The settings' guardrails on the metrics the data carries, per candidate.

    First all epochs (stratified), then, for the candidates that have traffic now, the
    current epoch alone, when there is an earlier epoch to differ from and the control
    has traffic now (after a promotion it has none, and nothing is compared).
    """
    present = {m.name for m in data.metrics}
    rails = [g for g in data.settings.guardrails if g.metric in present]
    pooled = tuple(_guardrail(data, arm, g, epoch=None) for arm in data.candidates for g in rails)
    if len(data.epochs) < 2 or data.control.weight <= 0:
        return pooled
    now = data.current_epoch
    live = [arm for arm in data.candidates if arm.weight > 0]
    return pooled + tuple(_guardrail(data, arm, g, epoch=now) for arm in live for g in rails)


def _guardrail(data: ExperimentData, arm: Arm, g: Guardrail, *, epoch: int | None) -> NonInferiority:
    metric = data.metric(g.metric)
    ratio = data.is_ratio(g.metric)
    if epoch is None:
        control, candidate = data.samples(data.control.name, g.metric), data.samples(arm.name, g.metric)
    else:
        control = data.control.samples(g.metric, (epoch,), ratio=ratio)
        candidate = arm.samples(g.metric, (epoch,), ratio=ratio)
    return non_inferiority(
        control,
        candidate,
        kind=stat_kind(metric),
        direction=g.direction,
        margin=g.margin,
        relative=g.relative,
        min_margin=g.min_margin,
        alpha=data.settings.alpha,
        expected_units=data.settings.expected_units_per_arm,
        variant=arm.name,
        metric=g.metric,
        epoch=epoch,
    )
