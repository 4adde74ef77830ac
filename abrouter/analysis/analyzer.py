"""One look at an experiment: data -> statistics -> decision, as an `AnalysisResult`.

Pure, like the statistics and the policy it composes: the data arrives already read
(`reader.py`, `summary.py`), the previous look's sequential results (`Running`: minima of
the sequential p, intersections of the confidence sequences) arrive from the history
(`history.py`), and the clock and random generator are arguments.

- comparisons: every candidate (including rolled-back ones, for the record) x every
  metric, stratified by weight epoch; the primary metric is the first user metric;
- guardrails: `analysis.guardrails` of the settings, for every candidate, on the
  metrics the data carries (a summary without the router's built-ins skips those), over
  all epochs and on the current epoch alone (`evidence.guardrails`);
- latency: each active candidate's p95 against the control's in the current epoch, from
  the histograms (`latency`);
- trends: whether the primary metric's effect declined or grew over time (`trend`);
- SRM: first-exposure units per epoch against each epoch's weights (anytime-valid
  sequential multinomial test), so a ramp is not a mismatch and looking often is safe;
- the decision, from `decision.decide`;
- [shadow] the shadow variants' arms, and the decision with them (`shadows.decide`).
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from abrouter.analysis import candidates
from abrouter.analysis import decision as policy
from abrouter.analysis import evidence as evidence_of
from abrouter.analysis import latency as latency_of
from abrouter.analysis import secondary as secondary_of
from abrouter.analysis import shadows as shadows_of
from abrouter.analysis import trend as trend_of
from abrouter.analysis.data import Arm, ExperimentData, stat_kind
from abrouter.analysis.evidence import Evidence
from abrouter.analysis.stats import fixed_horizon
from abrouter.analysis.stats.compare import FRESH, Comparison, Running, compare
from abrouter.analysis.stats.noninferiority import NonInferiority
from abrouter.analysis.stats.quantile import QuantileDifference
from abrouter.analysis.stats.srm import SrmResult, srm_check
from abrouter.contract.experiment import Metric

#: (variant, metric) -> the sequential results up to the previous look.
Previous = Mapping[tuple[str, str], Running]


@dataclass(frozen=True)
class AnalysisResult:
    experiment: str
    #: Unix seconds of the look.
    at: float
    #: The weights version the look saw last; a sink refuses to overwrite a newer one.
    epoch: int
    data: ExperimentData = field(repr=False)
    srm: SrmResult
    comparisons: tuple[Comparison, ...]
    guardrails: tuple[NonInferiority, ...]
    #: The guardrails at the current ramp step's margins, which decide the next ramp step
    #: (`evidence.step_guardrails`); empty at the final step.
    step_guardrails: tuple[NonInferiority, ...]
    #: Holm-adjusted `sequential_p_better` of the primary metric per active candidate (the
    #: family: every candidate, rolled-back ones included).
    holm: dict[str, float]
    #: Guardrails configured on metrics the data does not carry.
    skipped_guardrails: tuple[str, ...]
    decision: policy.Decision
    #: A/B/n only: Pearson chi-square p of "all arms convert alike", per binary metric.
    omnibus: dict[str, float] = field(default_factory=dict)
    #: The sequential results the next look starts from (see `running`).
    next_running: dict[tuple[str, str], Running] = field(default_factory=dict, repr=False)
    #: Spec values of pinned settings (alpha, expected_units_per_arm) that this look did
    #: not use, because the experiment's first look pinned others (see `history.pin`).
    ignored_settings: dict[str, float] = field(default_factory=dict)
    #: [shadow] The shadow variants' arms: errors, latency, agreement and guardrails.
    shadows: tuple[shadows_of.ShadowResult, ...] = ()
    #: The secondary metrics' `sequential_p_value` per (variant, metric), adjusted by
    #: `analysis.secondary_correction` over all of them (`secondary`); empty with "none".
    secondary: dict[tuple[str, str], float] = field(default_factory=dict)
    #: Each active candidate's latency p95 against the control's in the current epoch,
    #: from the histograms (`latency`); empty when the data has none (a summary).
    latency_p95: tuple[QuantileDifference, ...] = ()
    #: [novelty] The primary metric's effect over time per active candidate: declined
    #: (novelty), grew, stable or not checked yet, with a sentence (`trend`).
    trends: tuple[trend_of.Trend, ...] = ()

    @property
    def primary(self) -> str | None:
        metric = self.data.primary
        return metric.name if metric is not None else None

    def primary_of(self, arm: str) -> tuple[Comparison | None, float | None]:
        """The primary metric's comparison for `arm` (None for the control) and the arm's mean."""
        c = next((c for c in self.comparisons if c.variant == arm and c.metric == self.primary), None)
        if c is not None:
            return c, c.mean
        # The control: every comparison of the primary metric holds its mean.
        return None, next((x.control_mean for x in self.comparisons if x.metric == self.primary), None)

    def running(self) -> dict[tuple[str, str], Running]:
        """The sequential results per (variant, metric) that seed the next look.

        A comparison whose control or candidate arm is below `min_units_per_arm` does not
        seed them: its p and interval are not yet evidence (e.g. 0 conversions in 50
        units), so the previous ones carry over unchanged (`FRESH` on a first look).
        """
        return dict(self.next_running)

    def to_dict(self) -> dict[str, Any]:
        """The JSON result (docs/analyzer.md documents every field)."""
        return {
            "experiment": self.experiment,
            "at": self.at,
            "epoch": self.epoch,
            "primary": self.primary,
            "variants": [_arm_dict(a) for a in self.data.arms],
            "shadows": [s.to_dict() for s in self.shadows],
            "srm": _srm_dict(self.srm),
            "comparisons": [self._comparison_dict(c) for c in self.comparisons],
            "guardrails": [g.to_dict() for g in self.guardrails],
            "step_guardrails": [g.to_dict() for g in self.step_guardrails],
            "skipped_guardrails": list(self.skipped_guardrails),
            "latency_p95": [d.to_dict() for d in self.latency_p95],
            "trends": [t.to_dict() for t in self.trends],
            "omnibus": {m: (p if math.isfinite(p) else None) for m, p in self.omnibus.items()},
            "secondary_correction": self.data.settings.secondary_correction,
            "decision": self.decision.to_dict(),
            "pinned": {
                "alpha": self.data.settings.alpha,
                "expected_units_per_arm": self.data.settings.expected_units_per_arm,
            },
            "ignored_settings": dict(self.ignored_settings),
            # None, or since when the data is all there is (Redis lost what came before).
            "data_incomplete_since": self.data.incomplete_since,
            # Impossible sums the reader found and clamped, one line each (empty: none).
            "data_inconsistent": list(self.data.inconsistent),
            # None, or the events Redis lost after acknowledging them, flushed between from and to.
            "data_lost": _lost_dict(self.data),
        }

    def _comparison_dict(self, c: Comparison) -> dict[str, Any]:
        out = c.to_dict()
        out["primary"] = c.metric == self.primary
        adjusted = self.holm.get(c.variant) if out["primary"] else None
        out["sequential_p_value_holm"] = adjusted if adjusted is not None and math.isfinite(adjusted) else None
        secondary = self.secondary.get((c.variant, c.metric), math.nan)
        out["sequential_p_value_adjusted"] = secondary if math.isfinite(secondary) else None
        return out


def analyze(
    data: ExperimentData,
    *,
    now: float,
    previous: Previous | None = None,
    rng: np.random.Generator | None = None,
    promoted: str | None = None,
) -> AnalysisResult:
    """Compare, check guardrails and SRM, and decide, for one look at `data`.

    `promoted`: the candidate an earlier look promoted (`history.Entry.promoted`), if any.
    """
    previous = previous or {}
    comparisons = tuple(
        _compare(data, arm, metric, previous.get((arm.name, metric.name), FRESH), now=now)
        for arm in data.candidates
        for metric in data.metrics
    )
    present = {m.name for m in data.metrics}
    rails = data.settings.guardrails
    guardrails = evidence_of.guardrails(data)
    evidence = Evidence(
        comparisons=comparisons, guardrails=guardrails, srm=srm(data), step_guardrails=evidence_of.step_guardrails(data)
    )
    shadows = shadows_of.evaluate(data)  # [shadow]
    decision = shadows_of.decide(
        data, evidence, shadows, policy.decide(data, evidence, now=now, rng=rng, promoted=promoted), now=now
    )
    return AnalysisResult(
        experiment=data.name,
        at=now,
        epoch=data.current_epoch,
        data=data,
        srm=evidence.srm,
        comparisons=comparisons,
        guardrails=guardrails,
        step_guardrails=evidence.step_guardrails,
        holm=candidates.holm_primary(data, evidence),
        skipped_guardrails=tuple(sorted({g.metric for g in rails if g.metric not in present})),
        decision=decision,
        omnibus=omnibus(data),
        next_running=_next_running(data, comparisons, previous),
        shadows=shadows,
        secondary=secondary_of.adjusted(data, comparisons),
        latency_p95=latency_of.p95(data),
        trends=trend_of.trends(data, comparisons),
    )


def _next_running(
    data: ExperimentData, comparisons: tuple[Comparison, ...], previous: Previous
) -> dict[tuple[str, str], Running]:
    """The sequential results to record; a look with too few units carries the previous ones."""
    need = data.settings.min_units_per_arm
    out: dict[tuple[str, str], Running] = {}
    for c in comparisons:
        key = (c.variant, c.metric)
        if data.control.units < need or data.arm(c.variant).units < need:
            out[key] = previous.get(key, FRESH)
        else:
            out[key] = c.running()
    return out


def omnibus(data: ExperimentData) -> dict[str, float]:
    """Chi-square over the compared arms for each binary (non-ratio) metric, when there are 3+ of them.

    Informational and fixed-horizon: pooled over epochs, not used by the decision, which
    compares each candidate with the control (Holm-adjusted) instead.
    """
    if len(data.compared) < 3:
        return {}
    binary = [m.name for m in data.metrics if m.kind == "binary" and not data.is_ratio(m.name)]
    return {name: fixed_horizon.chi_square_abn([a.pooled(name, ratio=False) for a in data.compared]) for name in binary}


def srm(data: ExperimentData) -> SrmResult:
    """SRM over all epochs, each epoch's units against that epoch's configured split."""
    names = {a.name for a in data.arms}
    units = {e.epoch: {a.name: float(a.units_in(e.epoch)) for a in data.arms} for e in data.epochs}
    # A variant since removed from the spec has no arm; its share is left out of the split.
    weights = {e.epoch: {k: w for k, w in e.weights.items() if k in names} for e in data.epochs if e.weights}
    return srm_check(units, weights, alpha=data.settings.srm_alpha)


def _compare(data: ExperimentData, arm: Arm, metric: Metric, previous: Running, *, now: float) -> Comparison:
    return compare(
        data.samples(data.control.name, metric.name),
        data.samples(arm.name, metric.name),
        kind=stat_kind(metric),
        direction=metric.direction,
        alpha=data.settings.alpha,
        expected_units=data.settings.expected_units_per_arm,
        variant=arm.name,
        metric=metric.name,
        previous=previous,
        confirm_from=candidates.confirmation_start(data),
        at=now,
    )


def _arm_dict(a: Arm) -> dict[str, Any]:
    return {
        "name": a.name,
        "weight": a.weight,
        "units": a.units,
        "exposures": a.exposures,
        "multiple_exposures": a.multiple_exposures,
    }


def _srm_dict(s: SrmResult) -> dict[str, Any]:
    p = s.p_value if math.isfinite(s.p_value) else None
    chi = s.chi_square_p if math.isfinite(s.chi_square_p) else None
    return {
        "p_value": p,
        "flagged": s.flagged,
        "observed": dict(s.observed),
        "expected": dict(s.expected),
        "chi_square_p": chi,
    }


def _lost_dict(data: ExperimentData) -> dict[str, float] | None:
    if data.lost_between is None:
        return None
    return {"events": data.lost_events, "from": data.lost_between[0], "to": data.lost_between[1]}
