"""The experiment model: frozen dataclasses that the router, the analyzer and the CRD share.

Built only by `abrouter.contract.experiment.parse`, which validates every field; nothing
here does I/O or imports a side.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass, field
from typing import Literal

MetricKind = Literal["binary", "continuous", "ratio"]
Direction = Literal["increase", "decrease"]
UnitSourceKind = Literal["header", "cookie", "query"]
MultipleExposures = Literal["keep", "exclude"]
#: The correction over the secondary metrics' p's (`AnalysisSettings.secondary_correction`).
SecondaryCorrection = Literal["none", "holm", "bh"]

#: Metrics the router measures itself on every proxied request. They are per-request
#: (ratio) metrics: their unit-level sums are divided by the unit's exposures.
#: ``slow_requests`` counts the requests slower than `Experiment.slow_request_s` (a
#: tail-latency guardrail the router counts exactly); it is analysed only when that
#: threshold is set (`SLOW_REQUESTS`).
BUILTIN_METRICS = ("errors", "latency_ms", "slow_requests")
SLOW_REQUESTS = "slow_requests"
WEIGHT_RESOLUTION = 10_000
#: The denominator of a ratio metric per proxied request (the unit's exposures).
EXPOSURES = "exposures"
#: Request ids carry the epoch in 32 bits.
MAX_EPOCH = 2**32 - 1


@dataclass(frozen=True)
class UnitSource:
    """Where the randomisation unit's id comes from on each request."""

    kind: UnitSourceKind
    name: str


@dataclass(frozen=True)
class Variant:
    name: str
    upstream: str
    weight: float  # as configured (relative); see Experiment.weights for the normalised split
    #: The Kubernetes Deployment serving this variant, if any: the analyzer may scale a
    #: losing variant's Deployment to 0 after a promotion (`AnalysisSettings.scale_down_losers`).
    deployment: str | None = None
    #: The model name this variant's upstream serves the experiment's model under: the
    #: router rewrites the request's model name (in the Open Inference Protocol or KServe
    #: path, and in a JSON body's top-level ``"model"``) to it. None: sent as it came.
    model: str | None = None
    #: [shadow] Never answers a client and is never assigned (its weight is 0): it receives
    #: a copy of `shadow_percent` percent of the control's units' requests after each is
    #: answered (docs/shadow.md). Giving it a weight makes it a live variant (`with_weights`).
    shadow: bool = False
    #: [shadow] The share of the control's units (0-100) whose requests a shadow receives.
    shadow_percent: float = 100.0
    #: The variant's gRPC endpoint, ``host:port`` (cleartext HTTP/2), for calls to the
    #: router's gRPC listener (``abrouter serve --grpc-port``); None: this variant serves HTTP only.
    grpc_upstream: str | None = None


@dataclass(frozen=True)
class Match:
    """Which requests belong to an experiment: every field given must match; none given
    matches every request (`abrouter.router.matching` says which experiment wins).

    `model` is the model name in the request: the Open Inference Protocol v2 path
    (``/v2/models/NAME[/versions/V]/...``), the KServe v1 path (``/v1/models/NAME:predict``)
    or a JSON body's top-level ``"model"`` (OpenAI-compatible servers). `path` is an
    fnmatch glob over the path (``*`` crosses ``/``), `host` the Host header without its
    port (case-insensitive), `headers` exact values (names case-insensitive).
    """

    model: str | None = None
    path: str | None = None
    host: str | None = None
    headers: tuple[tuple[str, str], ...] = ()

    @property
    def is_everything(self) -> bool:
        return self.model is None and self.path is None and self.host is None and not self.headers


@dataclass(frozen=True)
class Metric:
    """A metric the analysis compares.

    ``binary`` and ``continuous`` metrics receive outcomes (``/abrouter/outcomes``) and are
    means per unit. A ``ratio`` receives none: it is Σx_u / Σy_u over units of two other
    sums, its `numerator` (a binary or continuous metric, or a built-in) and its
    `denominator` (another such metric, or `EXPOSURES`: the unit's proxied requests),
    analysed by the delta method over units (clicks per impression, revenue per request).
    """

    name: str
    kind: MetricKind
    direction: Direction = "increase"
    numerator: str | None = None
    denominator: str | None = None
    #: [cuped] Adjust this metric by the experiment's `Experiment.covariate` (CUPED), when
    #: it has one. Binary and continuous metrics by default (built-ins never); a ratio only
    #: when its spec says ``cuped: true`` and each part is adjusted, a built-in or the
    #: exposures (`cuped_ratios`).
    cuped: bool = True
    #: [cap] The largest total a unit may contribute (continuous metrics): the router caps
    #: each unit's running total at ingestion, so one heavy user cannot swamp the mean.
    cap: float | None = None

    @property
    def is_ratio(self) -> bool:
        return self.kind == "ratio"


@dataclass(frozen=True)
class Guardrail:
    """Non-inferiority check of `metric` against the control, one-sided.

    `margin` is the largest tolerated harm: absolute in the metric's units, or a fraction
    of the control mean when `relative` is true (0.1 = 10% worse is still fine).
    `min_margin` (relative margins only) floors it in the metric's units: the tolerated
    harm is max(margin × control mean, min_margin), so a control without errors does not
    leave a margin of 0 that nothing could pass.
    """

    metric: str
    direction: Direction
    margin: float
    relative: bool = False
    min_margin: float = 0.0


@dataclass(frozen=True)
class Bandit:
    """Thompson-sampling weights: weight = P(best), floored, after `min_units` per arm."""

    enabled: bool = False
    floor: float = 0.05
    min_units: int = 500


@dataclass(frozen=True)
class AnalysisSettings:
    """The decision policy. Times are in seconds, weights in percent of traffic."""

    alpha: float = 0.05
    min_units_per_arm: int = 500
    max_duration_s: float = 14 * 86400.0
    #: Seconds from the start before the step into the final ramp step (without a ramp, or
    #: in bandit mode: before a promotion). The burn-in's users stay in the canary epochs,
    #: which a promotion does not count, so a novelty effect this short cannot carry one
    #: (docs/statistics.md, "Novelty"). A week by default: no test on the data tells a faded
    #: novelty from a constant effect in time (issue 18), and a week also spans the weekly
    #: cycle. 0 turns it off; the demo sets seconds.
    burn_in_s: float = 7 * 86400.0
    srm_alpha: float = 0.001
    #: The planned units per arm (`abrouter plan`'s n): the promotion test's horizon (it
    #: spends most of alpha by then) and where the mSPRT's intervals are narrowest.
    expected_units_per_arm: int = 10_000
    guardrails: tuple[Guardrail, ...] = (
        # Up to 50% more errors, and at least 0.1 point of requests (docs/analyzer.md says why).
        Guardrail(metric="errors", direction="decrease", margin=0.5, relative=True, min_margin=0.001),
        Guardrail(metric="latency_ms", direction="decrease", margin=0.2, relative=True),
        # The share of requests slower than `Experiment.slow_request_s` may grow by half of
        # the control's, and at least 0.1 point (a threshold no request reaches still passes):
        # a p99 regression the mean hides. Only when the spec sets the threshold.
        Guardrail(metric="slow_requests", direction="decrease", margin=0.5, relative=True, min_margin=0.001),
    )
    #: Candidate weights (percent) the ramp steps through before promotion is allowed.
    ramp: tuple[float, ...] = (5.0, 25.0, 50.0)
    #: [balanced ramp] A variant serving the control's model that takes the traffic
    #: outside the comparison: each ramp step then gives the control the same share as
    #: each candidate, and this variant the rest (GrowthBook's Safe Rollouts grow the
    #: coverage at an even split; Eppo advises 5% and 5% with the rest excluded). It is
    #: never compared, and as the shares grow the router's rendezvous hashing moves units
    #: only out of it, never between the control and a candidate. None: the control takes
    #: all the traffic the candidates do not (docs/statistics.md, "Balanced ramp").
    ramp_rest: str | None = None
    bandit: Bandit = field(default_factory=Bandit)
    #: Units exposed to more than one variant (a ramp moves some users): "keep" analyses
    #: them intent-to-treat, in the variant of their first exposure (unbiased); "exclude"
    #: leaves them out, as GrowthBook does, at the risk of a selection bias (whether a
    #: user returns after a ramp step depends on the user).
    multiple_exposures: MultipleExposures = "keep"
    #: The multiple-comparison correction reported over the secondary metrics (every user
    #: metric but the primary, for every candidate): "bh" (Benjamini–Hochberg, false
    #: discovery rate), "holm" (family-wise error) or "none". Reported only: the decision
    #: rests on the primary metric (Holm over the candidates) and the guardrails.
    secondary_correction: SecondaryCorrection = "none"
    #: After a promotion through Kubernetes, scale the losers' `Variant.deployment` to 0.
    scale_down_losers: bool = False


@dataclass(frozen=True)
class ExposureRule:
    """Requests that count as exposures: an HTTP method ("*" for any) and a path glob."""

    method: str
    #: fnmatch-style: "*" matches any characters, "/" included; the query is ignored.
    path: str


@dataclass(frozen=True)
class Timeouts:
    """Upstream timeouts in seconds; a connect failure answers 502, a timeout 504."""

    connect_s: float = 2.0
    read_s: float = 30.0


@dataclass(frozen=True)
class Experiment:
    name: str
    salt: str
    unit: UnitSource
    variants: tuple[Variant, ...]
    metrics: tuple[Metric, ...]
    #: The weights version. Every logged event records the epoch its unit was assigned
    #: under, so the analyzer can stratify by it. Changing the weights requires raising it
    #: (`with_weights` does); replicas reading the same spec then agree on the number.
    epoch: int = 1
    allow_force_variant: bool = False
    #: How long after a response its request id may still be credited with an outcome.
    outcome_ttl_s: float = 7 * 86400.0
    timeouts: Timeouts = field(default_factory=Timeouts)
    analysis: AnalysisSettings = field(default_factory=AnalysisSettings)
    #: Which proxied requests are exposures (logged and analysed); the others are still
    #: forwarded. Empty: every request except the Open Inference Protocol's health and
    #: metadata endpoints (`abrouter.router.exposures.OIP_NOT_EXPOSURES`).
    exposures: tuple[ExposureRule, ...] = ()
    #: A request slower than this (seconds, measured by the router from the request's
    #: arrival to the end of the response) counts in the built-in ``slow_requests``. None:
    #: not measured, and the default ``slow_requests`` guardrail is left out.
    slow_request_s: float | None = None
    #: [cuped] The names of the pre-exposure covariates clients report per unit
    #: (``{"unit": ..., "covariate": 3.0}`` for one, ``{"unit": ..., "covariates": {"a": 3.0,
    #: "b": 1.0}}`` for any), e.g. the unit's clicks in the 28 days before the experiment;
    #: empty: no CUPED. They adjust every metric in `cuped_metrics` (one by CUPED, several by
    #: regression adjustment); the ratios in `cuped_ratios` by the first (`covariate`).
    covariates: tuple[str, ...] = ()
    #: Which requests belong to this experiment when one router serves several.
    match: Match = field(default_factory=Match)

    @property
    def covariate(self) -> str | None:
        """[cuped] The first covariate (the one that adjusts ratios), None without any."""
        return self.covariates[0] if self.covariates else None

    @property
    def control(self) -> Variant:
        return self.variants[0]

    @functools.cached_property  # read on every request the control serves: computed once
    def shadows(self) -> tuple[Variant, ...]:
        """[shadow] The variants that receive copies of the control's requests and answer no client."""
        return tuple(v for v in self.variants if v.shadow)

    @property
    def weights(self) -> tuple[float, ...]:
        """Normalised weights, summing to 1, rounded to 1/WEIGHT_RESOLUTION steps."""
        return normalise([v.weight for v in self.variants])

    @property
    def outcome_metrics(self) -> tuple[Metric, ...]:
        """The metrics clients report outcomes for (stored per unit); ratios are derived."""
        return tuple(m for m in self.metrics if not m.is_ratio)

    @property
    def ratio_pairs(self) -> tuple[tuple[str, str], ...]:
        """(numerator, denominator) of every ratio over two metrics: their Σx_u·y_u is kept."""
        pairs = [(m.numerator, m.denominator) for m in self.metrics if m.is_ratio and m.denominator != EXPOSURES]
        return tuple(dict.fromkeys((n, d) for n, d in pairs if n is not None and d is not None))

    @property
    def cuped_metrics(self) -> tuple[str, ...]:
        """[cuped] The metrics the covariate adjusts: binary and continuous ones not opted out."""
        if self.covariate is None:
            return ()
        return tuple(m.name for m in self.metrics if not m.is_ratio and m.cuped)

    @property
    def cuped_ratios(self) -> tuple[Metric, ...]:
        """[cuped] The ratios the covariate adjusts: ``cuped: true``, each part in `cuped_metrics`,
        a built-in or the exposures.

        Their Σx·c and Σy·c are their parts' (`keys.covariate_pairs`; the exposures' Σn·c is the
        covariate column's ``sum_xn``): no column of their own.
        """
        if self.covariate is None:
            return ()
        adjusted = {*self.cuped_metrics, *BUILTIN_METRICS, EXPOSURES}
        return tuple(m for m in self.metrics if m.is_ratio and m.cuped and {m.numerator, m.denominator} <= adjusted)

    @property
    def cuped_builtins(self) -> tuple[str, ...]:
        """[cuped] The built-ins an adjusted ratio takes as a part: their Σx_u·c_u is kept for these only,
        so an experiment without such a ratio pays no product for them (`keys.covariate_pairs`)."""
        parts = {p for m in self.cuped_ratios for p in (m.numerator, m.denominator)}
        return tuple(b for b in BUILTIN_METRICS if b in parts)

    def metric(self, name: str) -> Metric:
        for m in self.metrics:
            if m.name == name:
                return m
        raise KeyError(name)


def normalise(weights: list[float] | tuple[float, ...]) -> tuple[float, ...]:
    total = sum(weights)
    return tuple(round(w / total * WEIGHT_RESOLUTION) / WEIGHT_RESOLUTION for w in weights)
