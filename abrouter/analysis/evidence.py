"""`Evidence`: what the statistics said about one look, which the decision and its explanation read.

Also where the guardrail evidence is computed (`guardrails`): every guardrail of the
settings for every candidate, stratified over all epochs, and again on the current
epoch's stratum alone. The pooled result dilutes a regression that starts at a ramp step
(a model server that slows down or fails under the new load) with the earlier, lighter
epochs; the current epoch's own result sees it at the step where it appears.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

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
    #: The same at the current ramp step's margins (`step_guardrails`); empty at the final
    #: step, without a ramp and in bandit mode. The ramp rule reads these.
    step_guardrails: tuple[NonInferiority, ...] = ()

    def primary(self, data: ExperimentData, variant: str) -> Comparison | None:
        metric = data.primary
        if metric is None:
            return None
        return next((c for c in self.comparisons if c.variant == variant and c.metric == metric.name), None)

    def guardrails_of(self, variant: str) -> tuple[NonInferiority, ...]:
        """Every guardrail result of `variant`: over all epochs, and the current epoch's."""
        return tuple(g for g in self.guardrails if g.variant == variant)

    def ramp_guardrails_of(self, variant: str) -> tuple[NonInferiority, ...]:
        """The guardrail results a ramp step is decided on: at the step's margins, while there are some."""
        rails = self.step_guardrails or self.guardrails
        return tuple(g for g in rails if g.variant == variant)


def step_scale(data: ExperimentData) -> float:
    """How much more harm per user the current ramp step tolerates: final share / current share (>= 1).

    A guardrail's margin is the harm tolerated at the final step. At a smaller share the
    same harm per user reaches fewer users; scaling the margin by the ratio of the shares
    keeps the harm to the whole traffic (share x harm) within what the final step
    tolerates, and lets the early steps pass on the traffic they get (issue 18, finding 3:
    at 0.2% errors in both arms the 5% step needed 10,116 candidate users at the full margin).
    1 at or past the final step, without a ramp and in bandit mode.
    """
    ramp = data.settings.ramp
    share = sum(a.weight for a in data.candidates)
    if data.settings.bandit.enabled or not ramp or share <= 0:
        return 1.0
    return max(1.0, ramp[-1] / share)


def step_guardrails(data: ExperimentData) -> tuple[NonInferiority, ...]:
    """`guardrails` at the current ramp step's margins (`step_scale`); () when the scale is 1."""
    scale = step_scale(data)
    return guardrails(data, scale=scale) if scale > 1.0 + 1e-9 else ()


def guardrails(data: ExperimentData, *, scale: float = 1.0) -> tuple[NonInferiority, ...]:
    """The settings' guardrails on the metrics the data carries, per candidate.

    First all epochs (stratified), then, for the candidates that have traffic now, the
    current epoch alone, when there is an earlier epoch to differ from and the control
    has traffic now (after a promotion it has none, and nothing is compared).
    """
    present = {m.name for m in data.metrics}
    rails = [
        replace(g, margin=g.margin * scale, min_margin=g.min_margin * scale)
        for g in data.settings.guardrails
        if g.metric in present
    ]
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
