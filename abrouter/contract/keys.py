"""The Redis key schema: the one place that names every key and encodes every field.

The router writes through this module (via ``flush.lua``, which builds the same field
names from `FIELD_SEP` and the stat names below) and the analyzer reads through it.
All keys of one experiment share the hash tag ``{<experiment>}``, so the whole layout
lives in one slot and works on Redis Cluster.

Keys of experiment ``E`` (prefix ``abrouter`` by default)::

    abrouter:{E}:agg         hash    running sufficient statistics per (epoch, variant)
    abrouter:{E}:units       hash    per-unit state, the basis of unit-level statistics
    abrouter:{E}:epochs      hash    epoch -> JSON {"weights": {variant: w}, "since": ts}
    abrouter:{E}:producers   hash    producer id -> last applied batch sequence number
    abrouter:{E}:events      stream  capped raw log: one entry per flushed batch (audit only)
    abrouter:{E}:decisions   stream  capped history of the analyzer's decisions (`abrouter.contract.history`)
    abrouter:{E}:metrics     string  JSON array: the column order of the ``units`` states
    abrouter:{E}:outcome-ids zset    event_id -> time: outcomes recorded with an event_id
    abrouter:{E}:meta        hash    the marker: created, and after a data loss reset_at, resets
    abrouter:{E}:unit-seen   zset    units field -> time it was last written (expiry)
    abrouter:{E}:latency     hash    request latency histogram per (epoch, variant): "e|v|b" -> count

``agg`` fields, for epoch ``e`` and variant ``v`` (``|`` separates the parts)::

    e|v|units          units first exposed in this stratum (counted when n_u becomes > 0)
    e|v|exposures      proxied requests (sum of n_u over units)
    e|v|exposures_sq   sum of n_u^2
    e|v|m|sum          sum over units of x_u (the unit's total of metric m)
    e|v|m|sum_sq       sum of x_u^2
    e|v|m|sum_xn       sum of x_u * n_u (the covariance term of the delta method)
    e|v|m|events       number of outcome events (or requests, for built-in metrics)
    e|v|m|sum_xy|d     sum of x_u * y_u, y_u the unit's total of metric d: kept for every
                       (numerator m, denominator d) of a ratio metric over two metrics
                       (`Experiment.ratio_pairs`); a ratio per exposure uses sum_xn

where a unit's ``x_u`` is the sum of its values, except for binary metrics, where it is
the maximum (1 once the unit converted). The sums hold only units with an exposure
(n_u > 0): an outcome that reaches Redis before its unit's exposure (another router
flushed first) waits in the unit's state and enters the sums, once, with the exposure;
its ``events`` count is added when it arrives. A request without a unit id (its request
id says so) is a unit with n_u = 1 whichever batch its outcomes and exposure come in.
Built-in metrics (`BUILTIN_METRICS`: errors, latency_ms, slow_requests) are recorded on
every proxied request; analyse them as ratios x_u / n_u. ``slow_requests`` counts the
requests slower than the spec's ``slow_request`` (0 for every request when the spec sets
none).
A ``ratio`` metric of the spec has no fields of its own: the analyzer reads its
numerator's and denominator's sums (and ``sum_xy``). Its cross products are counted from
the first batch of a router that knows the ratio; declare ratios when the experiment
starts, since units whose state does not move afterwards miss their earlier product.

[cuped] With a ``covariate: c`` in the spec, the unit state has two more columns: ``c``,
the unit's covariate c_u as reported earliest (by the report's time, whichever router
flushed it first: a value reported later is ignored; a unit that never reports one has
c_u = 0; the report time of the value kept is in ``units[h|e|v|c]``), and ``c~set`` (`COVARIATE_SET_SUFFIX`, binary),
1 once it was reported. So ``e|v|c|sum`` and ``e|v|c|sum_sq`` are Σc_u and Σc_u²,
``e|v|c~set|sum`` the units that reported one, and ``e|v|m|sum_xy|c`` Σx_u·c_u for every
metric m the covariate adjusts (`covariate_pairs`), kept as for a ratio pair: right
whether the covariate arrives before or after the unit's outcomes.

[cap] A continuous metric with ``cap: K`` has its per-unit total capped at ingestion:
the stored x_u is min(x_u, K) after every change, so ``sum``, ``sum_sq`` and the cross
products hold the capped totals. With negative values the cap applies to the running
total as it goes (+150 then −60 under cap 100 leaves 40).

``units`` fields, for the unit hash ``h`` (`unit_hash`, never the raw id)::

    h           "e|v" of the unit's latest exposure (credits unit-addressed outcomes)
    h|f         "e|v" of the unit's first exposure; "e|v|m" once it was also exposed to
                another variant (a multiple exposure)
    h|e|v       JSON array [n_u, x_u(m1), x_u(m2), ...], numbers written with 17
                significant digits so they round-trip exactly; x_u columns follow
                the ``metrics`` key.
    h|e|v|c     [cuped] report time (unix seconds) of the covariate value in h|e|v

Intent-to-treat: a unit is credited once, to the (epoch, variant) of its first exposure
(``h|f``). All its later requests and outcomes, in any epoch or variant, move the one
state ``h|e0|v0`` and the sums of stratum ``e0|v0``; a returning user is not a new unit in
each epoch (those copies were correlated, and the strata were combined as independent).
A unit exposed to a second variant (a ramp moved it) is counted in the shadow stratum
``e0|v0~mx`` (`MULTIPLE_SUFFIX`: ``units`` and every sum, no ``events``), which the
analyzer reports as multiple exposures and, by policy, subtracts (`subtract`). Units
stored before this (``h`` set, no ``h|f``) keep the old accounting, one state per
(unit, epoch, variant) cell, so data written before the change stays consistent.

The ``metrics`` key is the union of every producer's `metric_order(experiment)` in
first-seen order: ``flush.lua`` appends the names a batch brings that it lacks and never
reorders or removes one, so a state written by a router with more metrics stays valid
for a router with fewer (the script maps each batch metric to its column by name).
A shorter state array means zeros for the missing columns.

``events`` entries, one per applied batch, have the fields ``producer``, ``seq``, ``n``
(number of raw events) and ``events``: one JSON array of rows, one per raw event, as
written by `encode_events` and read back by `decode_events` (`abrouter.router.eventlog.events`)::

    ["exposure", request_id, unit_hash, variant, epoch, ts, status, latency_ms, error]
    ["outcome",  request_id, unit_hash, variant, epoch, ts, metric, value, event_id]

(rows written before event ids existed end at ``value``).

``latency`` fields, for epoch ``e``, variant ``v`` and bucket ``b`` (`latency_bucket`)::

    e|v|b              proxied requests that variant v served in epoch e with a latency in
                       bucket b: b = 0 is [0, LATENCY_EDGES_MS[0]), b = i is
                       [LATENCY_EDGES_MS[i-1], LATENCY_EDGES_MS[i]), and b = len(edges)
                       the overflow, [LATENCY_EDGES_MS[-1], inf)

Unlike ``agg`` this counts requests where they were served (the exposure's epoch and
variant), not intent-to-treat: a latency is the serving variant's. At most
(epochs x variants x `LATENCY_BUCKETS`) fields, whatever the traffic; the analyzer takes
latency quantiles from it (`abrouter.analysis.stats.histogram`). The edges are part of
the stored format: never change them (a new layout needs a new key).

The stream keeps about `EVENTS_MAXLEN` batches or `EVENTS_MAX_RAW` events, whichever is
fewer (MAXLEN is set per batch from its size).

Outcomes sent with an ``event_id`` (a client's idempotency key) are counted once:
``flush.lua`` adds each id to ``outcome-ids`` (score: Redis' own clock, TIME, when the
batch was applied) and skips an outcome whose id is already there. Ids older than
`OUTCOME_ID_WINDOW_S` by that clock are pruned, so a retry is recognised for that long,
whatever the producers' clocks say.

Exactly-once: a batch carries (producer, seq). ``flush.lua`` applies it only when seq is
greater than ``producers[producer]`` and then stores seq, all in one atomic script call,
so replaying a batch (after a timeout, from the spill file, after a Redis restart) never
counts it twice. A producer must therefore deliver its batches in seq order. Unless the
caller allows a gap, the script also refuses (and reports) a batch whose seq is not
``producers[producer] + 1``: that is how a producer learns that Redis lost its last
batches (a restart inside the AOF fsync window) and re-sends them first. The seqs a
gap skipped are kept in ``producers[<producer>|gaps]`` (JSON ranges ``[[from, to], ...]``,
all of them, removed as they are replayed): a batch quarantined under its own (producer, seq) and replayed later
applies once, and a second replay is a duplicate.

Bounded memory: a ``units`` field not written for the experiment's ``outcome_ttl``
(by Redis' clock, kept in ``unit-seen``) is deleted, at most 2,000 per flush; a unit seen
again after that starts over as a new unit. Requests without a unit id keep no ``units``
state unless an outcome arrives for them. ``meta`` holds ``created`` (when this Redis
got the experiment's first batch) and, once a router has seen a Redis lose the data
(restart without persistence), ``reset_at`` (the ``created`` of the new data: the
aggregates hold only what came after) and ``resets``; once a router has seen Redis come
back with older data (it lacked batches the router had acknowledged and no longer
retains), ``lost_events`` (their events, summed over routers) and ``lost_from``/``lost_to``
(unix times the earliest and latest of them were acknowledged).
"""

from __future__ import annotations

import bisect
import hashlib
import json
from collections import defaultdict
from collections.abc import Mapping
from dataclasses import dataclass, field

from abrouter.contract.experiment import BUILTIN_METRICS, Experiment

FIELD_SEP = "|"
DEFAULT_PREFIX = "abrouter"
#: The capped raw stream keeps about this many batches (not events)...
EVENTS_MAXLEN = 10_000
#: ...and, when batches are large, about this many raw events (~100 MB), whichever is less.
EVENTS_MAX_RAW = 1_000_000
DECISIONS_MAXLEN = 1_000
#: How long an outcome's event_id is remembered: a retry within this window counts once.
OUTCOME_ID_WINDOW_S = 86_400
#: The largest magnitude of an outcome value (the API answers 422 beyond it). Squares
#: (1e30) and sums over a batch of them stay finite and far from overflow in doubles.
MAX_ABS_VALUE = 1e15
#: Upper edges (ms) of the latency histogram's buckets: ten per decade (the R10 series
#: 1, 1.26, 1.58, 2, 2.51, ...) from 0.1 ms to 63 s, so a bucket is 26% wide and a
#: quantile read from the histogram is within that of the exact one. Below the first
#: edge is bucket 0, above the last the overflow bucket.
LATENCY_EDGES_MS: tuple[float, ...] = tuple(0.1 * 10 ** (k / 10) for k in range(59))
#: Buckets per (epoch, variant): the 58 between the edges, the one below and the overflow.
LATENCY_BUCKETS = len(LATENCY_EDGES_MS) + 1


@dataclass(frozen=True)
class Keys:
    experiment: str
    prefix: str = DEFAULT_PREFIX

    def _key(self, suffix: str) -> str:
        return f"{self.prefix}:{{{self.experiment}}}:{suffix}"

    @property
    def agg(self) -> str:
        return self._key("agg")

    @property
    def units(self) -> str:
        return self._key("units")

    @property
    def epochs(self) -> str:
        return self._key("epochs")

    @property
    def producers(self) -> str:
        return self._key("producers")

    @property
    def events(self) -> str:
        return self._key("events")

    @property
    def decisions(self) -> str:
        return self._key("decisions")

    @property
    def metrics(self) -> str:
        return self._key("metrics")

    @property
    def outcome_ids(self) -> str:
        return self._key("outcome-ids")

    @property
    def meta(self) -> str:
        return self._key("meta")

    @property
    def unit_seen(self) -> str:
        return self._key("unit-seen")

    @property
    def latency(self) -> str:
        return self._key("latency")

    def all(self) -> tuple[str, ...]:
        """In the order flush.lua expects them as KEYS."""
        return (
            self.agg,
            self.units,
            self.epochs,
            self.producers,
            self.events,
            self.metrics,
            self.outcome_ids,
            self.meta,
            self.unit_seen,
            self.latency,
        )


def unit_hash(unit: str) -> str:
    """The stored identity of a unit: 16 hex chars, so raw ids (often PII) stay out of Redis."""
    return hashlib.blake2b(unit.encode("utf-8", "surrogatepass"), digest_size=8, person=b"abrouter-unit").hexdigest()


def metric_order(experiment: Experiment) -> tuple[str, ...]:
    """Metric names in storage order: the built-ins first, then the experiment's metrics.

    Ratio metrics have no column: they are derived from their numerator and denominator.
    [cuped] An experiment with a covariate ends with its two columns (`covariate_columns`).
    """
    return BUILTIN_METRICS + tuple(m.name for m in experiment.outcome_metrics) + covariate_columns(experiment)


# [cuped]
#: The column flagging that a unit's covariate is set: ``<covariate>~set``, binary (a max).
COVARIATE_SET_SUFFIX = "~set"


def covariate_columns(experiment: Experiment) -> tuple[str, ...]:
    """(covariate, covariate~set) when the experiment declares a covariate, else ()."""
    c = experiment.covariate
    return () if c is None else (c, c + COVARIATE_SET_SUFFIX)


def covariate_pairs(experiment: Experiment) -> tuple[tuple[str, str], ...]:
    """(metric, covariate) for every metric the covariate adjusts: flush.lua keeps their Σx_u·c_u."""
    c = experiment.covariate
    return () if c is None else tuple((m, c) for m in experiment.cuped_metrics)


# [/cuped]


def latency_bucket(latency_ms: float) -> int:
    """The ``latency`` bucket of a request (see the module docstring); NaN counts as overflow."""
    if latency_ms != latency_ms:
        return LATENCY_BUCKETS - 1
    return bisect.bisect_right(LATENCY_EDGES_MS, latency_ms)


def parse_stratum(value: bytes | str) -> tuple[int, str]:
    """The (epoch, variant) of a ``units[h]`` value."""
    epoch, variant = _text(value).split(FIELD_SEP, 1)
    return int(epoch), variant


# ------------------------------------------------------------------ reading back


@dataclass
class MetricSums:
    """Unit-level sums of one metric in one (epoch, variant) stratum."""

    sum: float = 0.0
    sum_sq: float = 0.0
    sum_xn: float = 0.0
    events: float = 0.0
    #: Σ x_u·y_u per denominator metric d (``m|sum_xy|d``).
    sum_xy: dict[str, float] = field(default_factory=dict)


@dataclass
class StratumSums:
    """Everything `agg` holds for one (epoch, variant)."""

    epoch: int
    variant: str
    units: int = 0
    exposures: int = 0
    exposures_sq: float = 0.0
    metrics: dict[str, MetricSums] = field(default_factory=lambda: defaultdict(MetricSums))


def decode_agg(raw: Mapping[bytes | str, bytes | str]) -> dict[tuple[int, str], StratumSums]:
    """Parse an ``HGETALL agg`` reply into strata keyed by (epoch, variant)."""
    strata: dict[tuple[int, str], StratumSums] = {}
    for key, value in raw.items():
        parts = _text(key).split(FIELD_SEP)
        epoch, variant = int(parts[0]), parts[1]
        s = strata.get((epoch, variant))
        if s is None:
            s = strata[(epoch, variant)] = StratumSums(epoch=epoch, variant=variant)
        number = float(_text(value))
        if len(parts) == 3:
            if parts[2] == "units":
                s.units = int(number)
            elif parts[2] == "exposures":
                s.exposures = int(number)
            elif parts[2] == "exposures_sq":
                s.exposures_sq = number
        elif len(parts) == 4:
            setattr(s.metrics[parts[2]], parts[3], number)
        elif len(parts) == 5 and parts[3] == "sum_xy":
            s.metrics[parts[2]].sum_xy[parts[4]] = number
    return strata


def decode_latency(raw: Mapping[bytes | str, bytes | str]) -> dict[tuple[int, str], tuple[int, ...]]:
    """Parse an ``HGETALL latency`` reply: (epoch, variant) -> counts per bucket (dense)."""
    out: dict[tuple[int, str], list[int]] = {}
    for key, value in raw.items():
        epoch, variant, bucket = _text(key).rsplit(FIELD_SEP, 2)
        counts = out.setdefault((int(epoch), variant), [0] * LATENCY_BUCKETS)
        counts[min(int(bucket), LATENCY_BUCKETS - 1)] += int(_text(value))
    return {k: tuple(v) for k, v in sorted(out.items())}


@dataclass(frozen=True)
class EpochInfo:
    epoch: int
    weights: dict[str, float]
    since: float


def decode_epochs(raw: Mapping[bytes | str, bytes | str]) -> dict[int, EpochInfo]:
    out = {}
    for key, value in raw.items():
        doc = json.loads(_text(value))
        epoch = int(_text(key))
        out[epoch] = EpochInfo(
            epoch=epoch, weights={k: float(w) for k, w in doc["weights"].items()}, since=float(doc["since"])
        )
    return dict(sorted(out.items()))


def encode_epoch(weights: Mapping[str, float], since: float) -> str:
    return json.dumps({"weights": dict(weights), "since": since}, sort_keys=True)


def _text(value: bytes | str) -> str:
    return value.decode() if isinstance(value, bytes) else value


#: The shadow stratum of a variant's multiple-exposure units: ``e|v~mx|...`` in ``agg``.
MULTIPLE_SUFFIX = "~mx"


def subtract(s: StratumSums, part: StratumSums) -> StratumSums:
    """`s` without the units of `part` (a subset of them, e.g. its multiple exposures)."""
    out = StratumSums(
        epoch=s.epoch,
        variant=s.variant,
        units=s.units - part.units,
        exposures=s.exposures - part.exposures,
        exposures_sq=s.exposures_sq - part.exposures_sq,
    )
    for name, m in s.metrics.items():
        p = part.metrics.get(name) or MetricSums()
        out.metrics[name] = MetricSums(
            sum=m.sum - p.sum,
            sum_sq=m.sum_sq - p.sum_sq,
            sum_xn=m.sum_xn - p.sum_xn,
            events=m.events,  # the shadow stratum keeps no event counts
            sum_xy={d: v - p.sum_xy.get(d, 0.0) for d, v in m.sum_xy.items()},
        )
    return out
