"""What the analyzer knows about one experiment, whatever it was read from.

`summary.py` (a JSON export) and `reader.py` (the router's Redis aggregates) both
produce an `ExperimentData`; everything downstream (statistics, decision, report) reads
only this. Pure data: no I/O.

Weights here are percent of traffic (summing to 100), the unit the decision speaks.
Strata are the weight epochs: an arm's per-metric samples are kept per epoch, aligned
with `ExperimentData.epochs`, so the statistics can stratify and never pool across a
weight change (Simpson's paradox).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Literal

from abrouter.analysis.stats.sample import Sample
from abrouter.contract import model
from abrouter.contract.model import AnalysisSettings, Metric

#: The router's own per-request metrics, as the analyzer sees them: ratios over exposures.
#: `errors` is binary per request, which lets the guardrail floor its variance when no
#: arm has errored yet (otherwise "no errors anywhere" could never pass); so is
#: `slow_requests` (a request slower than the spec's ``slow_request``, or not).
BUILTIN_METRIC_SPECS: tuple[Metric, ...] = (
    Metric(name="errors", kind="binary", direction="decrease"),
    Metric(name="latency_ms", kind="continuous", direction="decrease"),
    Metric(name=model.SLOW_REQUESTS, kind="binary", direction="decrease"),
)
BUILTIN_NAMES = frozenset(m.name for m in BUILTIN_METRIC_SPECS)
assert BUILTIN_NAMES == set(model.BUILTIN_METRICS), "the router's built-in metrics and their specs must agree"


@dataclass(frozen=True)
class Epoch:
    """One weights version: the split it configured and when it began (unix seconds)."""

    epoch: int
    weights: Mapping[str, float]
    since: float | None = None


@dataclass(frozen=True)
class Stratum:
    """One arm's data within one epoch."""

    epoch: int
    units: int
    metrics: Mapping[str, Sample] = field(default_factory=dict)
    #: Proxied requests (0 when the source does not say, e.g. a summary without them).
    exposures: int = 0
    #: Units first exposed here that were later exposed to another variant too. Counted
    #: in `units` unless the policy excludes them (``analysis.multiple_exposures``).
    multiple_exposures: int = 0


@dataclass(frozen=True)
class Arm:
    name: str
    #: The current weight (percent): what the router serves now.
    weight: float
    strata: tuple[Stratum, ...] = ()
    #: Requests this arm served per latency bucket (`abrouter.contract.keys.latency_bucket`),
    #: per epoch; empty when the source has no histograms (a summary, older data).
    latency: Mapping[int, tuple[int, ...]] = field(default_factory=dict)

    @property
    def units(self) -> int:
        return sum(s.units for s in self.strata)

    @property
    def exposures(self) -> int:
        return sum(s.exposures for s in self.strata)

    @property
    def multiple_exposures(self) -> int:
        return sum(s.multiple_exposures for s in self.strata)

    def stratum(self, epoch: int) -> Stratum | None:
        for s in self.strata:
            if s.epoch == epoch:
                return s
        return None

    def units_in(self, epoch: int) -> int:
        s = self.stratum(epoch)
        return s.units if s is not None else 0

    def samples(self, metric: str, epochs: tuple[int, ...], *, ratio: bool) -> tuple[Sample, ...]:
        """Per-epoch samples of `metric`, aligned with `epochs`; empty where no data."""
        empty = Sample.empty(ratio=ratio)
        out = []
        for epoch in epochs:
            s = self.stratum(epoch)
            out.append(s.metrics.get(metric, empty) if s is not None else empty)
        return tuple(out)

    def pooled(self, metric: str, *, ratio: bool) -> Sample:
        """All epochs merged; for the bandit and reporting, never for the tests."""
        return sum((s.metrics[metric] for s in self.strata if metric in s.metrics), Sample.empty(ratio=ratio))


# [shadow]
#: A shadow's per-request agreement with the control (status and body equal): a ratio
#: over its copies, like the built-ins. Measured on shadows only.
AGREEMENT = Metric(name="agreement", kind="binary", direction="increase")


@dataclass(frozen=True)
class Shadow:
    """[shadow] A shadow variant: its replies to copies of the control's requests, as an arm.

    `arm`'s strata carry the built-ins the router measured on the replies (errors,
    latency_ms, slow_requests) and `AGREEMENT`; its units are the control's units whose
    requests were copied. Never assigned, so never in `ExperimentData.arms` (nor in SRM).
    """

    name: str
    percent: float
    arm: Arm


@dataclass(frozen=True)
class ExperimentData:
    name: str
    #: User metrics in spec order (the first is primary), then the built-ins present.
    metrics: tuple[Metric, ...]
    #: The control first.
    arms: tuple[Arm, ...]
    #: Oldest first. Every stratum's epoch appears here.
    epochs: tuple[Epoch, ...]
    settings: AnalysisSettings = field(default_factory=AnalysisSettings)
    #: When the experiment started (unix seconds), if known; drives `max_duration`.
    started_at: float | None = None
    #: False when the source held nothing at all under the experiment's name (a typo?).
    found: bool = True
    #: Set when the store lost data (Redis restarted empty): the data holds only what was
    #: recorded since this time (unix seconds), not the whole experiment.
    incomplete_since: float | None = None
    #: Sums the store holds that cannot all be true (a binary metric's sum above its
    #: units), one line each; the reader clamps them so that the look can go on.
    inconsistent: tuple[str, ...] = ()
    #: Events Redis acknowledged to the routers and later lost (it came back with older
    #: data), and the unix times between which they were flushed.
    lost_events: int = 0
    lost_between: tuple[float, float] | None = None
    #: [shadow] The spec's shadow variants, which `arms` leaves out.
    shadows: tuple[Shadow, ...] = ()

    @property
    def control(self) -> Arm:
        return self.arms[0]

    @property
    def candidates(self) -> tuple[Arm, ...]:
        """Every arm compared with the control: all but the control and (balanced ramp) the rest."""
        return tuple(a for a in self.arms[1:] if a.name != self.settings.ramp_rest)

    @property
    def rest(self) -> Arm | None:
        """[balanced ramp] The arm serving the control's model outside the comparison (`ramp_rest`)."""
        return next((a for a in self.arms[1:] if a.name == self.settings.ramp_rest), None)

    @property
    def compared(self) -> tuple[Arm, ...]:
        """The control and the candidates: the arms in a comparison (all but the rest)."""
        return (self.control, *self.candidates)

    @property
    def primary(self) -> Metric | None:
        users = [m for m in self.metrics if m.name not in BUILTIN_NAMES]
        return users[0] if users else None

    @property
    def epoch_ids(self) -> tuple[int, ...]:
        return tuple(e.epoch for e in self.epochs)

    @property
    def current_epoch(self) -> int:
        return self.epochs[-1].epoch

    @property
    def weights(self) -> dict[str, float]:
        return {a.name: a.weight for a in self.arms}

    def arm(self, name: str) -> Arm:
        for a in self.arms:
            if a.name == name:
                return a
        raise KeyError(name)

    def metric(self, name: str) -> Metric:
        for m in self.metrics:
            if m.name == name:
                return m
        raise KeyError(name)

    def is_ratio(self, metric: str) -> bool:
        """Whether `metric` is a per-request ratio (its samples carry a denominator)."""
        if metric in BUILTIN_NAMES:
            return True
        return any(s.metrics[metric].is_ratio for a in self.arms for s in a.strata if metric in s.metrics)

    def samples(self, arm: str, metric: str) -> tuple[Sample, ...]:
        """`arm`'s per-epoch samples of `metric`, aligned with `epochs`."""
        return self.arm(arm).samples(metric, self.epoch_ids, ratio=self.is_ratio(metric))


def stat_kind(metric: Metric) -> Literal["binary", "continuous"]:
    """How the statistics treat a metric: a spec ratio is continuous (delta method)."""
    return "binary" if metric.kind == "binary" else "continuous"


def percent(weights: Mapping[str, float]) -> dict[str, float]:
    """Relative weights as percent of traffic, summing to 100 (all-zero stays zero)."""
    total = sum(weights.values())
    if total <= 0:
        return {k: 0.0 for k in weights}
    return {k: 100.0 * w / total for k, w in weights.items()}
