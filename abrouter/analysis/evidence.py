"""`Evidence`: what the statistics said about one look, which the decision and its explanation read."""

from __future__ import annotations

from dataclasses import dataclass

from abrouter.analysis.data import ExperimentData
from abrouter.analysis.stats.compare import Comparison
from abrouter.analysis.stats.noninferiority import NonInferiority
from abrouter.analysis.stats.srm import SrmResult


@dataclass(frozen=True)
class Evidence:
    """What the statistics said about this look."""

    comparisons: tuple[Comparison, ...]
    guardrails: tuple[NonInferiority, ...]
    srm: SrmResult

    def primary(self, data: ExperimentData, variant: str) -> Comparison | None:
        metric = data.primary
        if metric is None:
            return None
        return next((c for c in self.comparisons if c.variant == variant and c.metric == metric.name), None)

    def guardrails_of(self, variant: str) -> tuple[NonInferiority, ...]:
        return tuple(g for g in self.guardrails if g.variant == variant)
