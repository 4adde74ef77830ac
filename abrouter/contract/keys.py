"""The Redis key schema: the one place that names every key and decodes every field.

The stored format (every key, every field, the unit states, the marker, the batch format
the router sends and the flush script's parts) is documented once, in docs/storage.md;
change it together with this module and ``abrouter/router/eventlog/lua/``. The router
writes through this module (via flush.lua, which builds the same field names from
`FIELD_SEP` and the stat names below) and the analyzer reads through it. All keys of one
experiment share the hash tag ``{<experiment>}``, so the whole layout lives in one slot
and works on Redis Cluster; or, sharded (`shard_keys`), the per-unit state and the sums
are spread over several tags of the experiment, one slot each, so that one experiment
uses several Redis Cluster masters.
"""

from __future__ import annotations

import bisect
import hashlib
import json
import struct
import zlib
from collections import defaultdict
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, replace

from abrouter.contract.experiment import BUILTIN_METRICS, Experiment

FIELD_SEP = "|"
DEFAULT_PREFIX = "abrouter"
#: The capped raw stream keeps at most this many batches...
EVENTS_MAXLEN = 10_000
#: ...and at most this many raw events (~100 MB): trimmed by events (`Keys.events_n`).
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
    #: The hash tag of these keys: the experiment's name (unsharded, and the keys that are
    #: never sharded: `decisions`, `layout`), or one shard's tag (`shard_tag`).
    tag: str = ""

    def _key(self, suffix: str) -> str:
        return f"{self.prefix}:{{{self.tag or self.experiment}}}:{suffix}"

    @property
    def layout(self) -> str:
        """How many shards the experiment's data has (a string; absent: 1, unsharded). Never sharded."""
        return self._key("layout")

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

    @property
    def events_n(self) -> str:
        """Per audit-stream entry, its id and raw event count: the stream is trimmed by events."""
        return self._key("events-n")

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
            self.events_n,
        )


# ------------------------------------------------------------------ shards

#: Shards of one experiment on a Redis Cluster when none are configured: with the tags of
#: `shard_tag`, 16 cover every sixteenth of the slots, so every master of a cluster whose
#: masters own at least 1/16 of the slots in one range (3 masters as `--cluster create`
#: splits them own ~1/3 each) holds some.
CLUSTER_SHARDS = 16
#: The most shards an experiment may have.
MAX_SHARDS = 256
_SLOTS = 16384


def shard_keys(keys: Keys, shards: int) -> tuple[Keys, ...]:
    """The key sets of an experiment with `shards` shards: `keys` itself when 1 (unsharded)."""
    if not 1 <= shards <= MAX_SHARDS:
        raise ValueError(f"shards must be between 1 and {MAX_SHARDS}, got {shards}")
    if shards == 1:
        return (keys,)
    return tuple(Keys(keys.experiment, keys.prefix, tag=shard_tag(keys.experiment, i, shards)) for i in range(shards))


def shard_tag(experiment: str, shard: int, shards: int) -> str:
    """The hash tag of `shard` of `shards`: ``<experiment>:<shard>`` when its slot lies in the
    shard's own `shards`-th of the 16,384 slots, else ``<experiment>:<shard>.<j>`` with the
    smallest j that puts it there, so the shards of one experiment spread evenly over the
    slots (and so over a cluster's masters) whatever the experiment's name."""
    low, high = shard * _SLOTS // shards, (shard + 1) * _SLOTS // shards
    tag = f"{experiment}:{shard}"
    j = 0
    while not low <= key_slot(tag) < high:
        tag = f"{experiment}:{shard}.{j}"
        j += 1
    return tag


def shard_of(unit: str, shards: int) -> int:
    """The shard of a unit (its stored hash, `unit_hash`): the same for every router and batch."""
    return zlib.crc32(unit.encode()) % shards if shards > 1 else 0


def key_slot(tag: str) -> int:
    """Redis Cluster's slot of a key whose hash tag is `tag`: CRC16 (XMODEM) mod 16384."""
    crc = 0
    for byte in tag.encode():
        crc ^= byte << 8
        for _ in range(8):
            crc = ((crc << 1) ^ 0x1021) if crc & 0x8000 else crc << 1
            crc &= 0xFFFF
    return crc % _SLOTS


#: `unit_hash`'s parameters set once: each hash copies this state (~40% less than a new one per request).
_UNIT_HASH = hashlib.blake2b(digest_size=8, person=b"abrouter-unit")


def unit_hash(unit: str) -> str:
    """The stored identity of a unit: 16 hex chars, so raw ids (often PII) stay out of Redis."""
    h = _UNIT_HASH.copy()
    h.update(unit.encode("utf-8", "surrogatepass"))
    return h.hexdigest()


def metric_order(experiment: Experiment) -> tuple[str, ...]:
    """Metric names in storage order: the built-ins first, then the experiment's metrics.

    Ratio metrics have no column: they are derived from their numerator and denominator.
    [cuped] An experiment with a covariate ends with its two columns (`covariate_columns`).
    """
    return BUILTIN_METRICS + tuple(m.name for m in experiment.outcome_metrics) + covariate_columns(experiment)


# [cuped]
#: The column flagging that a unit's covariate is set: ``<covariate>~set``. The first
#: covariate's is 1 (binary, a max; its value's report time is the unit record's); a further
#: covariate's holds the report time of its value (0: none), as flush.lua keeps it.
COVARIATE_SET_SUFFIX = "~set"


def covariate_columns(experiment: Experiment) -> tuple[str, ...]:
    """(covariate, covariate~set) per covariate the experiment declares, in its order; () without."""
    return tuple(name for c in experiment.covariates for name in (c, c + COVARIATE_SET_SUFFIX))


def covariate_pairs(experiment: Experiment) -> tuple[tuple[str, str], ...]:
    """(metric, covariate) for every metric the first covariate adjusts, then for every built-in an
    adjusted ratio names (`Experiment.cuped_builtins`): flush.lua keeps their Σx_u·c_u.

    A built-in is a column like any other, so its pair is an ordinary product to flush.lua.
    The exposures need none: their Σn_u·c_u is the covariate column's ``sum_xn``.
    [regression] With several covariates, then (metric, c_i) for each further covariate and
    each adjusted metric, and (c_i, c_j), i < j, for the Gram matrix (Σc_i² is c_i's
    ``sum_sq``). Ratios are adjusted by the first covariate only, so they need no more.
    """
    if not experiment.covariates:
        return ()
    first, *rest = experiment.covariates
    pairs = [(m, first) for m in (*experiment.cuped_metrics, *experiment.cuped_builtins)]
    pairs += [(m, c) for c in rest for m in experiment.cuped_metrics]
    cs = experiment.covariates
    pairs += [(cs[i], cs[j]) for i in range(len(cs)) for j in range(i + 1, len(cs))]
    return tuple(pairs)


# [/cuped]


def latency_bucket(latency_ms: float) -> int:
    """The ``latency`` bucket of a request (see the module docstring); NaN counts as overflow."""
    if latency_ms != latency_ms:
        return LATENCY_BUCKETS - 1
    return bisect.bisect_right(LATENCY_EDGES_MS, latency_ms)


@dataclass(frozen=True)
class UnitRecord:
    """A unit's record, ``units[h|u]`` (docs/storage.md): everything flush.lua keeps of it."""

    #: The (epoch, variant) of its first exposure, None before it has one (its outcomes wait).
    first: tuple[int, str] | None
    #: Also exposed to another variant since (a multiple exposure).
    multiple: bool
    #: The (epoch, variant) of its latest exposure (as ``units[h]``), None if none.
    latest: tuple[int, str] | None
    #: The end of the expiry granule it was last scored in (unix seconds).
    granule: float
    #: [cuped] The report time of its covariate value, None if it has none.
    covariate_time: float | None
    #: n_u, then x_u per column of the ``metrics`` key.
    state: tuple[float, ...]


#: [ramped] The ramped form's first four bytes: -(RAMPED_EPOCH_OFFSET + e), below the brief
#: form's -e (e < RAMPED_EPOCH_OFFSET), so flush.lua tells them apart by their fourth byte.
RAMPED_EPOCH_OFFSET = 2**30


def decode_unit_record(raw: bytes) -> UnitRecord:
    """Parse a ``units[h|u]`` value, as flush.lua packs it with Lua's ``struct`` (format
    ``<i4sBsddH`` then that many doubles; the brief form ``<i4sd`` then the doubles, its
    epoch negated; or the ramped form ``<i4si4d`` then the doubles, its epoch negated and
    offset, its latest exposure's epoch after v: docs/storage.md); ValueError when it is not one."""
    try:
        (e,) = struct.unpack_from("<i", raw, 0)
        v, at = _text_at(raw, 4)
        if e < 0:
            if (len(raw) - at) % 8 == 4:  # 4 bytes more than a brief record: the ramped form
                return _ramped_record(raw, -e - RAMPED_EPOCH_OFFSET, v, at)
            return _brief_record(raw, -e, v, at)
        (multiple,) = struct.unpack_from("<B", raw, at)
        latest, at = _text_at(raw, at + 1)
        granule, ctime, k = struct.unpack_from("<ddH", raw, at)
        at += struct.calcsize("<ddH")
        if at + 8 * k != len(raw):
            raise ValueError(f"{len(raw) - at} bytes for a state of {k} numbers")
        state = struct.unpack_from(f"<{k}d", raw, at)
    except (struct.error, ValueError, UnicodeDecodeError) as exc:
        raise ValueError(f"not a unit record ({exc}): {raw!r}") from None
    return UnitRecord(
        first=(e, v) if e else None,
        multiple=multiple == 1,
        latest=parse_stratum(latest) if latest else None,
        granule=granule,
        covariate_time=ctime or None,
        state=state,
    )


def _brief_record(raw: bytes, e: int, v: str, at: int) -> UnitRecord:
    """The brief form's rest (from `at`, after e and v): the granule and the state; its latest
    exposure is its first, it is not a multiple exposure and has no covariate time."""
    (granule,) = struct.unpack_from("<d", raw, at)
    at += 8
    k, extra = divmod(len(raw) - at, 8)
    if extra or k == 0:
        raise ValueError(f"{len(raw) - at} bytes are not a state of doubles")
    state = struct.unpack_from(f"<{k}d", raw, at)
    return UnitRecord(first=(e, v), multiple=False, latest=(e, v), granule=granule, covariate_time=None, state=state)


def _ramped_record(raw: bytes, e: int, v: str, at: int) -> UnitRecord:
    """[ramped] The ramped form's rest (from `at`, after its first four bytes and v): the epoch
    of its latest exposure (of its first exposure's variant, in another epoch), the granule and
    the state; it is not a multiple exposure and has no covariate time."""
    if e < 1:
        raise ValueError(f"first epoch {e} in the ramped form")
    (latest,) = struct.unpack_from("<i", raw, at)
    if latest < 1:
        raise ValueError(f"latest epoch {latest} in the ramped form")
    return replace(_brief_record(raw, e, v, at + 4), latest=(latest, v))


def _text_at(raw: bytes, at: int) -> tuple[str, int]:
    """The zero-terminated string at `at`, and where the next field starts."""
    end = raw.index(b"\0", at)
    return raw[at:end].decode(), end + 1


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


def merge_sums(replies: Sequence[Mapping[bytes | str, bytes | str]]) -> dict[bytes | str, bytes | str]:
    """Pure: the ``HGETALL`` replies of one hash of every shard (``agg``, ``latency``), summed per field.

    Every field of those hashes is a sum, so the experiment's is the sum of its shards'."""
    if len(replies) == 1:
        return dict(replies[0])
    total: dict[str, float] = defaultdict(float)
    for reply in replies:
        for k, v in reply.items():
            total[_text(k)] += float(_text(v))
    return {k: str(int(v)) if v.is_integer() else repr(v) for k, v in total.items()}


def parse_layout(value: bytes | str | None) -> int:
    """The shard count stored in `Keys.layout` (None: 1, unsharded); ValueError when it is not one."""
    if value is None:
        return 1
    shards = int(_text(value))
    if not 1 <= shards <= MAX_SHARDS:
        raise ValueError(f"shards must be between 1 and {MAX_SHARDS}, got {shards}")
    return shards


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

# [shadow]
#: The stratum of a shadow variant's replies (``e|v~shadow|...`` in ``agg`` and ``latency``):
#: one exposure per copy it answered (or failed), under a unit derived from the live unit
#: (`shadow_unit`), with its status, latency and error. Live names cannot hold ``~``.
SHADOW_SUFFIX = "~shadow"
#: The stratum of its comparisons with the live answers (``e|v~agree|...``): one exposure
#: per copy, an *error* when the shadow's status or body differed from the control's, so
#: ``errors`` there counts disagreements (no new column, no new Lua path).
AGREEMENT_SUFFIX = "~agree"


def shadow_unit(unit_hash: str, stratum: str) -> str:
    """The unit a shadow's record of the live unit `unit_hash` is kept under, in `stratum`.

    Not the live unit itself: its first exposure (the control) would make every record of
    another stratum a multiple exposure of the control's (intent-to-treat, above). One
    derived unit per (live unit, stratum), so the shadow's per-unit sums are the live unit's.
    """
    key = f"{unit_hash}{FIELD_SEP}{stratum}".encode()
    return hashlib.blake2b(key, digest_size=8, person=b"abrouter-shadow").hexdigest()


# [/shadow]


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
