"""The events the router logs, and their pre-aggregation inside the process.

Pure: no Redis, no aiohttp, no clock. `Aggregator` folds a batch of events into one
cell per (unit, epoch, variant): the unit's exposures ``n`` and, per metric, the change
``dx`` of its ``x_u`` (a sum; the maximum for binary metrics) and the number of events.
``flush.lua`` then does per-cell work, not per-event work, and a flush stays one small
Redis command however busy the router is. The raw events ride along, as one JSON array
of rows, for the capped audit stream. Where it all ends up is documented in `abrouter.contract.keys`.
"""

from __future__ import annotations

import itertools
import json
import math
import zlib
from bisect import bisect_right
from collections.abc import Collection, Generator, Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import TypedDict

from abrouter.contract import keys
from abrouter.contract.experiment import BUILTIN_METRICS, Experiment
from abrouter.contract.keys import LATENCY_BUCKETS, LATENCY_EDGES_MS, MAX_ABS_VALUE
from abrouter.router.eventlog import audit, slices
from abrouter.router.eventlog import cells as cells_


@dataclass(slots=True)
class Exposure:
    """One proxied request: the unit saw `variant`, assigned under weights `epoch`.

    Treated as immutable; not frozen, as one is built on every request and a frozen
    dataclass of nine fields costs about half a microsecond more to build. Its ``__init__``
    is written out (the dataclass keeps one it is given): mypyc compiles it, where the one
    `dataclass` generates stays interpreted (~0.7 µs a call, issue 17).
    """

    request_id: str
    unit_hash: str
    variant: str
    epoch: int
    ts: float
    status: int
    latency_ms: float
    error: bool
    #: No unit id: the request is its own unit, and Redis keeps no unit state for it.
    anonymous: bool = False

    def __init__(
        self,
        request_id: str,
        unit_hash: str,
        variant: str,
        epoch: int,
        ts: float,
        status: int,
        latency_ms: float,
        error: bool,
        anonymous: bool = False,
    ) -> None:
        self.request_id = request_id
        self.unit_hash = unit_hash
        self.variant = variant
        self.epoch = epoch
        self.ts = ts
        self.status = status
        self.latency_ms = latency_ms
        self.error = error
        self.anonymous = anonymous


@dataclass(frozen=True, slots=True)
class Outcome:
    """A value of `metric` that a client reported, credited to the unit's (epoch, variant)."""

    unit_hash: str
    variant: str
    epoch: int
    metric: str
    value: float
    ts: float
    request_id: str | None = None
    #: The client's idempotency key: an outcome with an id already recorded counts once.
    event_id: str | None = None
    #: For a request without a unit id (its request id says so): the unit's n_u is 1
    #: even when its exposure reached Redis in an earlier batch (see flush.lua, [anonymous]).
    anonymous: bool = False


Event = Exposure | Outcome


@dataclass(frozen=True, slots=True)
class Batch:
    """One flush, ready for ``flush.lua`` (and, while Redis is away, for the spill file).

    `payload` is the JSON document the script decodes; `cells` (from version 6) its cells,
    packed (`abrouter.router.eventlog.cells`); `events` the raw events (`encode_events`),
    passed through untouched to the audit stream (Lua's cjson would round floats such as
    timestamps to 14 digits).
    """

    producer: str
    seq: int
    payload: str
    events: str
    n_events: int
    #: The payload split per shard, when the `Aggregator` knew the experiment's shards (more
    #: than one): built from the same encoded rows, so sending it costs no decode and
    #: re-encode (`shards.split` does that for a batch without them, e.g. from the spill
    #: file, which keeps `payload` only). Shard 0's raw events are `events`; the others' none.
    parts: tuple[str, ...] = ()
    cells: bytes = b""
    #: The packed cells of each of `parts`.
    part_cells: tuple[bytes, ...] = ()


#: The batch format's version (``v`` in the payload; absent means 1). flush.lua refuses a
#: version it does not know, so a batch from a newer router is quarantined, not misread.
#: 2: cells of anonymous outcomes (latest 3), the covariate's report time, keyed rows' flag.
#: 3: the same document, for a flush.lua that keeps each unit as one record (``units[h|u]``,
#: docs/storage.md): a script from before refuses it rather than write the old fields.
#: 4: cells without the built-ins' counts (always the cell's n): ``[h, e, v, latest, n,
#: dx_errors, dx_latency_ms, dx_slow_requests, dx_m, count_m, ...]``; less to decode in Redis.
#: 5: the same cells as one flat array, ``width`` values each: flush.lua builds no Lua table
#: per cell. 6: the cells apart from the document, packed with `struct` (`Batch.cells`,
#: `abrouter.router.eventlog.cells`), the document saying how many (``ncells``) and how wide.
#: 7: each cell's h sent as the unit's record field ``h|u`` (`cells.UNIT_FIELD`), and each
#: unit's cells one run (adjacent): flush.lua reads and writes a unit's record once per run,
#: with no field name to build and no map from unit to state.
BATCH_VERSION = 7


#: Field order of the rows in a batch's raw ``events`` (see `encode_events`).
EXPOSURE_FIELDS = ("type", "request_id", "unit_hash", "variant", "epoch", "ts", "status", "latency_ms", "error")
OUTCOME_FIELDS = ("type", "request_id", "unit_hash", "variant", "epoch", "ts", "metric", "value", "event_id")


def binary_metrics(experiment: Experiment) -> frozenset[str]:
    """Columns whose x_u is a max: binary metrics, and [cuped] the covariates' set flags."""
    flag = keys.covariate_columns(experiment)[1::2]
    return frozenset(m.name for m in experiment.metrics if m.kind == "binary") | frozenset(flag)


def ratio_pairs(experiment: Experiment) -> tuple[tuple[str, str], ...]:
    """Column pairs whose per-unit cross products flush.lua sums: ratios and [cuped] (metric, covariate)."""
    return experiment.ratio_pairs + keys.covariate_pairs(experiment)


class ColumnRules(TypedDict):
    """The Aggregator's keyword arguments beyond the columns: [cuped], [cap] and [latency]."""

    covariates: tuple[str, ...]
    caps: dict[str, float]
    slow_ms: float | None


def column_rules(experiment: Experiment) -> ColumnRules:
    """[cuped] the covariate columns (each set once per unit), [cap] caps by metric, [latency] the slow threshold."""
    caps = {m.name: m.cap for m in experiment.metrics if m.cap is not None}
    return ColumnRules(covariates=experiment.covariates, caps=caps, slow_ms=slow_ms(experiment))


def slow_ms(experiment: Experiment) -> float | None:
    """The ``slow_requests`` threshold in milliseconds, or None when the spec sets none."""
    return None if experiment.slow_request_s is None else experiment.slow_request_s * 1000.0


def encode_events(batch: Sequence[Event]) -> str:
    """Raw events as one JSON array of rows, in `EXPOSURE_FIELDS`/`OUTCOME_FIELDS` order.

    Rows, not objects, and one encoder call per slice: the audit copy then costs about
    a third of the CPU of one JSON object per event, and less Redis memory.
    """
    return slices.drain(slices.encode_rows(_event_rows(batch)))


def _event_rows(batch: Iterable[Event]) -> Iterable[tuple[object, ...]]:
    return (
        ("exposure", e.request_id, e.unit_hash, e.variant, e.epoch, e.ts, e.status, e.latency_ms, e.error)
        if isinstance(e, Exposure)
        else _outcome_row(e)
        for e in batch
    )


def _outcome_row(o: Outcome) -> tuple[object, ...]:
    return ("outcome", o.request_id, o.unit_hash, o.variant, o.epoch, o.ts, o.metric, o.value, o.event_id)


def decode_events(text: str | bytes) -> list[Event]:
    """The inverse of `encode_events`, for audits of the raw stream."""
    out: list[Event] = []
    for row in json.loads(text):
        if row[0] == "exposure":
            out.append(Exposure(**dict(zip(EXPOSURE_FIELDS[1:], row[1:]))))
        else:
            out.append(Outcome(**dict(zip(OUTCOME_FIELDS[1:], row[1:]))))
    return out


class Aggregator:
    """The events of one batch, pre-aggregated per (unit_hash, epoch, variant).

    `metrics` is `keys.metric_order(experiment)`: the built-ins first. A cell is one
    flat list ``[n, dx_errors, dx_latency_ms, dx_slow_requests, dx_m, count_m, ...]`` in
    metric order: a built-in's count is always n, so it has none (one allocation per new
    cell). ``len()`` is the number of raw events held, which is what bounds a batch.

    An exposure is only held when it is recorded (this runs on every proxied request); it
    is folded when the batch is encoded. Most units have one event in a batch (a busy
    router's units are many): such an exposure's cell is packed straight from it
    (`cells.SinglePacker`), with no cell built. A unit with more (several exposures, or
    outcomes too) is *shared*: its exposures are folded into cells first, as they came.

    Outcomes with an ``event_id`` are not folded into cells: whether they count depends on
    the ids Redis has seen, so they travel one by one and ``flush.lua`` folds the new ones.
    """

    def __init__(
        self,
        metrics: Sequence[str],
        binary: Collection[str],
        products: Sequence[tuple[str, str]] = (),
        *,
        covariates: Sequence[str] = (),
        caps: Mapping[str, float] | None = None,
        slow_ms: float | None = None,
        shards: int = 1,
    ) -> None:
        if tuple(metrics[: len(BUILTIN_METRICS)]) != BUILTIN_METRICS:
            raise ValueError(f"metrics must start with the built-ins {BUILTIN_METRICS}, got {list(metrics)}")
        self._metrics: list[str] = []
        self._offset: dict[str, int] = {}  # metric -> index of its dx in a cell
        self._binary: set[str] = set()
        self._zero: list[float] = [0]
        self._cells: dict[tuple[str, int, str], list[float]] = {}
        self._latest: dict[str, tuple[str, int, str]] = {}  # unit -> key of its latest exposure's cell
        self._exposed: dict[tuple[str, int, str], int] = {}  # cell key -> index of its first exposure
        self._anonymous: set[tuple[str, int, str]] = set()  # cells of requests without a unit id
        self._anonymous_outcomes: set[tuple[str, int, str]] = set()  # their outcome cells
        self._epochs: dict[int, str] = {}
        self._events: list[Event] = []
        self._units: dict[str, Exposure] = {}  # unit -> its first exposure in the batch
        self._shared: set[str] = set()  # units with cells of their own (more than one exposure, or outcomes)
        self._to_fold: list[Exposure] = []  # the exposures of shared units, in order per unit
        self._keyed: dict[str, Outcome] = {}  # event_id -> outcome
        self._products: list[tuple[str, str]] = []
        self._covariates: tuple[str, ...] = ()  # [cuped]
        #: [cuped] covariate -> cell -> report time of the value the cell carries
        self._covariate_ts: dict[str, dict[tuple[str, int, str], float]] = {}
        self._caps: dict[str, float] = {}  # [cap]
        self._slow_ms = math.inf
        #: The experiment's shards (`keys.shard_of`): with more than one, `encode` also
        #: builds the payload of each shard (`Batch.parts`).
        self._shards = shards
        self.extend_metrics(metrics, binary, products, covariates=covariates, caps=caps, slow_ms=slow_ms)

    def __len__(self) -> int:
        return len(self._events)

    @property
    def empty(self) -> bool:
        """True when a flush would carry nothing (no events and no epoch to register)."""
        return not self._events and not self._epochs

    def extend_metrics(
        self,
        metrics: Sequence[str],
        binary: Collection[str],
        products: Sequence[tuple[str, str]] = (),
        *,
        covariates: Sequence[str] = (),
        caps: Mapping[str, float] | None = None,
        slow_ms: float | None = None,
    ) -> None:
        """Adopt a longer metric list (a config reload); existing metrics keep their place.

        `products` are the column pairs (numerator, denominator; metric, covariate):
        flush.lua keeps their Σ x_u·y_u. Both must be among `metrics`. [cuped] `covariates`
        name the columns that are set once per unit (each one's flag column
        `keys.COVARIATE_SET_SUFFIX` must be among `metrics` and `binary`); [cap] `caps` the per-unit caps by metric.
        [latency] A request slower than `slow_ms` counts in ``slow_requests`` (None: none does).
        """
        slow = math.inf if slow_ms is None else slow_ms
        if slow != self._slow_ms:
            self._fold_all()  # the exposures held so far count by the threshold they came under
        self._slow_ms = slow
        # [cuped] [cap] the latest spec's rules: a reload may add or change them.
        for covariate in covariates:
            if not {covariate, covariate + keys.COVARIATE_SET_SUFFIX} <= set(metrics) | set(self._offset):
                raise ValueError(f"covariate {covariate!r} and its flag column must be among the metrics")
        if covariates:
            self._covariates = tuple(covariates)
            for covariate in covariates:
                self._covariate_ts.setdefault(covariate, {})
        self._caps = dict(caps or {})
        for pair in products:
            if not set(pair) <= set(metrics) | set(self._offset):
                raise ValueError(f"ratio pair {pair} names a metric outside {list(metrics)}")
            if tuple(pair) not in self._products:
                self._products.append((pair[0], pair[1]))
        nb = len(BUILTIN_METRICS)
        for name in metrics:
            if name not in self._offset:
                k = len(self._metrics)  # the built-ins a value each, then a value and a count each
                self._offset[name] = 1 + k if k < nb else 1 + nb + 2 * (k - nb)
                self._metrics.append(name)
        self._binary |= set(binary) & set(self._offset)
        self._zero = [0] + [0.0] * nb + [0.0, 0] * (len(self._metrics) - nb)
        for cell in self._cells.values():
            cell.extend(self._zero[len(cell) :])

    def add_exposure(self, e: Exposure) -> int:
        """Hold an exposure (folded when encoded); returns ``len(self)``."""
        events = self._events
        events.append(e)
        h, units = e.unit_hash, self._units
        held = len(units)
        units.setdefault(h, e)
        if len(units) == held or h in self._shared:  # not the unit's first event (identity would miss a repeat)
            self._share(h)
            self._to_fold.append(e)
        return len(events)

    def _share(self, h: str) -> None:
        """Unit `h` gets cells of its own: its exposure held so far is to be folded too."""
        if h not in self._shared:
            self._shared.add(h)
            first = self._units.get(h)
            if first is not None:
                self._to_fold.append(first)

    def _fold_all(self) -> None:
        """Fold every exposure held (each unit shared from now on): a reload changes a rule they were recorded under."""
        for e in self._to_fold:
            self._fold(e)
        self._to_fold = []
        for h, first in self._units.items():
            if h not in self._shared:
                self._fold(first)
        self._shared.update(self._units)

    def _fold(self, e: Exposure) -> None:
        """A shared unit's exposure into its cell (before the batch is encoded)."""
        key = (e.unit_hash, e.epoch, e.variant)
        cell = self._cells.get(key)
        if cell is None:
            cell = self._cells[key] = self._zero.copy()
        # Offsets 1..3 are errors, latency_ms and slow_requests: the built-ins come first,
        # their counts are n (cell[0]).
        cell[0] += 1
        if e.error:
            cell[1] += 1
        cell[2] += e.latency_ms
        if e.latency_ms > self._slow_ms:
            cell[3] += 1
        if e.anonymous:
            self._anonymous.add(key)
        else:
            self._latest[e.unit_hash] = key
        self._exposed.setdefault(key, 0)

    def add_outcome(self, o: Outcome) -> bool:
        """Fold in an outcome; False if its event_id is already in this batch (not added)."""
        at = self._offset.get(o.metric)
        if at is None or o.metric in BUILTIN_METRICS or o.metric.endswith(keys.COVARIATE_SET_SUFFIX):
            known = self._metrics[len(BUILTIN_METRICS) :]
            raise ValueError(f"outcome for unknown metric {o.metric!r}; known: {known}")
        if not math.isfinite(o.value) or abs(o.value) > MAX_ABS_VALUE:
            raise ValueError(f"outcome value must be finite and at most {MAX_ABS_VALUE:g} in magnitude, got {o.value}")
        if o.metric in self._covariate_ts:  # [cuped]
            return self._add_covariate(o, at)
        if o.event_id is not None:
            self._events.append(o)  # the audit keeps every accepted row, repeats included
            if o.event_id in self._keyed:
                return False
            self._keyed[o.event_id] = o
            return True
        key = (o.unit_hash, o.epoch, o.variant)
        self._share(o.unit_hash)
        cell = self._cells.get(key)
        if cell is None:
            cell = self._cells[key] = self._zero.copy()
        if o.anonymous:
            self._anonymous_outcomes.add(key)
        if o.metric in self._binary:
            cell[at] = max(cell[at], o.value)  # x_u is "converted at least once"
        else:
            total = cell[at] + o.value
            if not math.isfinite(total):  # checked before any change: batch() must never fail
                raise ValueError(f"the sum of {o.metric!r} for this unit would overflow")
            cell[at] = total
        cell[at + 1] += 1
        self._events.append(o)
        return True

    # [cuped]
    def _add_covariate(self, o: Outcome, at: int) -> bool:
        """A unit's covariate: the earliest reported value in the batch (flush.lua keeps the earliest ever).

        The cell's count says "a covariate came"; its value is the covariate, not a sum;
        the flag column is set to 1 so that flush.lua knows, from then on, the unit has one.
        """
        if o.event_id is not None:
            raise ValueError("a covariate takes no event_id: it is set once per unit anyway")
        key = (o.unit_hash, o.epoch, o.variant)
        self._share(o.unit_hash)
        cell = self._cells.get(key)
        if cell is None:
            cell = self._cells[key] = self._zero.copy()
        times = self._covariate_ts[o.metric]
        reported = times.get(key)
        if reported is None or o.ts < reported:
            cell[at] = o.value
            times[key] = o.ts
        cell[at + 1] += 1
        cell[self._offset[o.metric + keys.COVARIATE_SET_SUFFIX]] = 1
        self._events.append(o)
        return True

    # [/cuped]

    def add_epoch(self, epoch: int, info: str) -> None:
        """Register an epoch (`keys.encode_epoch` JSON); the script keeps the first one seen."""
        self._epochs.setdefault(epoch, info)

    def batch(self, *, producer: str, seq: int) -> Batch:
        """All of `encode` at once."""
        return slices.drain(self.encode(producer=producer, seq=seq))

    def encode(self, *, producer: str, seq: int, slice_size: int = slices.SLICE) -> Generator[None, None, Batch]:
        """Encode for flush.lua: cells are ``[h, e, v, latest, n, dx_errors, dx_latency_ms,
        dx_slow_requests, dx_m, count_m, ...]``, ``width`` values each, packed one after
        another into `Batch.cells` (`BATCH_VERSION` 7: h as ``h|u``, each unit's cells one run;
        `cells.Packer`).

        [cuped] With covariates, each cell row ends with the report time of the value it
        carries of each covariate, in the order of ``covariates`` (0 when it carries none).
        ``latest`` is 1 on the cell of the unit's last exposure in this batch, whose
        stratum the script stores in ``units[h]``; 2 on the cell of a request without a
        unit id (`Exposure.anonymous`), for which the script keeps no unit state; 3 on a
        cell with only outcomes of such a request (`Outcome.anonymous`). Outcomes with an
        event_id are ``keyed`` rows ``[event_id, h, e, v, metric, value, ts, anonymous]``.
        ``products`` (only when the experiment has ratio metrics over two metrics) lists
        their (numerator, denominator) pairs; ``latency`` (when there were exposures) the
        requests per latency bucket of each serving (epoch, variant).
        """
        for i, e in enumerate(self._to_fold, 1):  # the shared units' exposures into their cells
            self._fold(e)
            if i % slice_size == 0:
                yield
        self._to_fold = []  # folded: encoding again (`batch`) gives the same batch
        latest, anonymous, anonymous_outcomes = self._latest, self._anonymous, self._anonymous_outcomes

        def flag(key: tuple[str, int, str]) -> int:
            if latest.get(key[0]) == key:
                return 1
            if key in anonymous:
                return 2
            return 3 if key in anonymous_outcomes else 0

        # Cells in the order of their first exposure (outcome-only cells last): flush.lua
        # takes a unit's first cell with exposures as its first exposure (intent-to-treat).
        # Each unit's cells are one run (format 7), placed at its first exposure: a shared
        # unit's run is its exposed cells in the order of their first exposure, then its
        # outcome-only cells; units with outcomes only come last, in the order of their first.
        exposed, cells = self._exposed, self._cells
        if self._covariates:  # [cuped] each row ends with its covariates' report times
            times = [self._covariate_ts[c] for c in self._covariates]
            cells = {key: [*cell, *(t.get(key, 0.0) for t in times)] for key, cell in cells.items()}
        runs = yield from _in_runs(itertools.chain(exposed, (k for k in cells if k not in exposed)), slice_size)
        n = max(1, self._shards)
        width = 4 + len(self._zero) + len(self._covariates)  # [cuped] a report time each
        packer, single = cells_.Packer(width, BATCH_VERSION), cells_.SinglePacker(width)
        blobs: list[list[bytes]] = [[] for _ in range(n)]
        counts = [0] * n
        raw: list[str] = []  # the audit's rows (`encode_events`), a slice's at a time
        rows: list[tuple[object, ...]] = []
        plain = True  # every float of `rows` written alike by orjson and json (`audit.plain`)
        latency: dict[tuple[int, str], list[int]] = {}  # [latency] (epoch, variant) -> requests per bucket
        hists: dict[str, tuple[int, list[int]]] = {}  # variant -> (epoch, its histogram): no tuple per exposure
        shared, slow = self._shared, self._slow_ms
        for i, ev in enumerate(self._events, 1):
            if isinstance(ev, Exposure):
                h, epoch, variant, ms, ts = ev.unit_hash, ev.epoch, ev.variant, ev.latency_ms, ev.ts
                rows.append(("exposure", ev.request_id, h, variant, epoch, ts, ev.status, ms, ev.error))
                plain = plain and audit.plain(ts) and audit.plain(ms)
                at = hists.get(variant)
                if at is None or at[0] != epoch:
                    hist = latency.get((epoch, variant))
                    if hist is None:
                        hist = latency[(epoch, variant)] = [0] * LATENCY_BUCKETS
                    at = hists[variant] = (epoch, hist)
                at[1][bisect_right(LATENCY_EDGES_MS, ms)] += 1  # keys.latency_bucket, inlined
                shard = zlib.crc32(h.encode()) % n if n > 1 else 0  # keys.shard_of, inlined
                if h not in shared:  # the unit's only event: its cell from the exposure
                    blobs[shard].append(
                        single.pack(h, epoch, variant, 2.0 if ev.anonymous else 1.0, ev.error, ms, ms > slow)
                    )
                    counts[shard] += 1
                else:
                    run = runs.pop(h, None)  # at the unit's first exposure
                    if run is not None:
                        blobs[shard] += [packer.pack([*key, flag(key), *cells[key]]) for key in run]
                        counts[shard] += len(run)
            else:
                rows.append(_outcome_row(ev))
                plain = plain and audit.plain(ev.ts) and audit.plain(ev.value)
            if i % slice_size == 0:
                raw.append(audit.inner(rows, plain))
                rows, plain = [], True
                yield
        if rows:
            raw.append(audit.inner(rows, plain))
        for h, run in runs.items():  # units with outcomes only
            shard = zlib.crc32(h.encode()) % n if n > 1 else 0
            blobs[shard] += [packer.pack([*key, flag(key), *cells[key]]) for key in run]
            counts[shard] += len(run)
        packed = [(b"".join(parts), count) for parts, count in zip(blobs, counts)]
        raw_events = "[" + ",".join(part for part in raw if part) + "]"
        keyed: Iterable[list[object] | None] = (
            [i, o.unit_hash, o.epoch, o.variant, o.metric, o.value, o.ts, int(o.anonymous)]
            for i, o in self._keyed.items()
        )
        # One array of keyed outcomes per shard: a unit's rows keep their order within its shard.
        keyed_by_shard = (yield from _by_shard(keyed, 1, n, slice_size)) if n > 1 else [keyed]
        keyed_texts: list[str] = []
        for part in keyed_by_shard:
            keyed_texts.append((yield from slices.encode_rows(part, slice_size)))
        yield  # joining the raw events copied megabytes
        payload: dict[str, object] = {
            "v": BATCH_VERSION,
            "metrics": self._metrics,
            "binary": sorted(self._binary),
            "ncells": sum(count for _, count in packed),
            "epochs": [[str(e), info] for e, info in self._epochs.items()],
            "keyed": slices.slot("keyed"),
            "n": len(self._events),
            "builtins": len(BUILTIN_METRICS),
            "width": width,
        }
        if self._products:
            payload["products"] = [list(p) for p in self._products]
        if len(self._covariates) == 1:  # [cuped] as before several covariates
            payload["covariate"] = self._covariates[0]
        elif self._covariates:
            payload["covariates"] = list(self._covariates)
        if self._caps:  # [cap]
            payload["caps"] = [[m, cap] for m, cap in sorted(self._caps.items()) if m in self._offset]
        if latency:  # [latency] {{e, v, {{bucket, count}, ...}}, ...}
            payload["latency"] = [[e, v, [[b, c] for b, c in enumerate(h) if c]] for (e, v), h in latency.items()]
        parts: tuple[str, ...] = ()
        if n > 1:
            # Shard 0 takes the epochs, the latency histogram and the raw events (with n).
            rest = {**payload, "epochs": [], "latency": [], "n": 0}
            parts = tuple(
                slices.splice(
                    slices.JSON.encode({**(payload if i == 0 else rest), "ncells": packed[i][1]}),
                    {"keyed": keyed_texts[i]},
                )
                for i in range(n)
            )
        return Batch(
            producer=producer,
            seq=seq,
            payload=slices.splice(slices.JSON.encode(payload), {"keyed": slices.join_arrays(keyed_texts)}),
            events=raw_events,
            n_events=len(self._events),
            parts=parts,
            cells=b"".join(blob for blob, _ in packed),
            part_cells=tuple(blob for blob, _ in packed) if n > 1 else (),
        )


def _in_runs(
    keys: Iterable[tuple[str, int, str]], size: int
) -> Generator[None, None, dict[str, list[tuple[str, int, str]]]]:
    """Pure: `keys` (unit, epoch, variant) as each unit's keys together (its run), in their order,
    the units in the order of their first key; yielding after each `size` keys like the encoders."""
    by_unit: dict[str, list[tuple[str, int, str]]] = {}
    for i, key in enumerate(keys, 1):
        run = by_unit.get(key[0])
        if run is None:
            by_unit[key[0]] = [key]
        else:
            run.append(key)
        if i % size == 0:
            yield
    return by_unit


def _by_shard(
    rows: Iterable[list[object] | None], unit_at: int, shards: int, size: int
) -> Generator[None, None, list[list[list[object]]]]:
    """Pure: `rows` (None: skipped) into one list per shard of their unit (``row[unit_at]``),
    in order, yielding after each `size` rows like the encoders."""
    out: list[list[list[object]]] = [[] for _ in range(shards)]
    crc32 = zlib.crc32
    for i, row in enumerate(rows, 1):
        if row is not None:
            out[crc32(str(row[unit_at]).encode()) % shards].append(row)  # keys.shard_of, inlined
        if i % size == 0:
            yield
    return out
