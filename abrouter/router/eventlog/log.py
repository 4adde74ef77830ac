"""The event log: exposures and outcomes into Redis, in batches, exactly once, loss-free.

The hot path (`record_exposure`, `record_outcome`) only folds the event into an
in-memory `events.Aggregator`; it never awaits Redis. The process's flush loop
(`hub.EventLogHub`: one task and one Redis client for every experiment served) cuts a
batch every `flush_interval_s`, or as soon as `BATCH_EVENTS` events are held (so that one
script call stays short), encodes it in slices that let the event loop run in between
(`slices.SLICE`), and hands it to its `Delivery` (`abrouter.router.eventlog.delivery`), which sends it as one EVALSHA of
``flush.lua``, or spills, replays, re-sends or quarantines it: the module docstring of
`delivery` says where a batch goes and why nothing is lost or counted twice. While
`max_events` events wait for a Redis that is up but cannot keep up, new events are shed
and counted (`EventLogStats.shed`, in ``dropped`` too) instead of growing the router.

Exceptions (`abrouter.router.errors`): `EventLogError` for misuse, and its subclass
`EventLogUnavailable` when Redis cannot be reached (raised by `lookup_units`).
"""

from __future__ import annotations

import asyncio
import logging
import secrets
from collections import deque
from collections.abc import Mapping, Sequence
from pathlib import Path

from abrouter.contract import keys
from abrouter.contract.experiment import Experiment
from abrouter.redact import mask_url
from abrouter.router.errors import EventLogError, EventLogUnavailable
from abrouter.router.eventlog import events, recent, spill
from abrouter.router.eventlog.delivery import (
    APPLIED,
    DUPLICATE,
    GAP,
    RETAIN_MAX_BATCHES,
    RETAIN_S,
    Delivery,
    spill_files,
)
from abrouter.router.eventlog.hub import EventLogHub
from abrouter.router.eventlog.script import FlushScript, call_redis
from abrouter.router.eventlog.stats import EventLogStats

__all__ = ["APPLIED", "DUPLICATE", "GAP", "EventLog", "FlushScript"]

log = logging.getLogger(__name__)

#: Local memory of recent exposures, so `lookup_units` rarely needs Redis: at most this
#: many units, at least the last half of them (`recent.RecentUnits`).
LRU_SIZE = 100_000
#: A batch is cut at this many events, so that one flush.lua call stays short: Redis runs
#: one script at a time, and everyone else waits. bench/flush_cost.py measured 5-6 µs
#: of Redis CPU per event (2 shared vCPUs, Redis 7.0 and 6.2): 2,000 events hold Redis for
#: ~10-12 ms, where a 50,000-event batch (a full buffer, before this bound) held it 160+ ms.
BATCH_EVENTS = 2_000


class EventLog:
    """See the module docstring. One per process and experiment.

    `shards`: over how many hash tags a new experiment's data is spread (None: 1 on a
    single server, 16 on a Redis Cluster); an experiment already in Redis keeps its own
    (`abrouter.router.eventlog.shards`). `hub`: the process's Redis client and flush loop,
    shared with its other experiments' logs (None: a hub of its own, closed with it).
    """

    def __init__(
        self,
        *,
        redis_url: str,
        experiment: Experiment,
        spill_dir: Path,
        flush_interval_s: float = 0.25,
        max_events: int = 50_000,
        prefix: str = keys.DEFAULT_PREFIX,
        redis_timeout_s: float = 1.0,
        retain_s: float = RETAIN_S,
        spill_max_bytes: int = spill.MAX_BYTES,
        batch_events: int = BATCH_EVENTS,
        shards: int | None = None,
        hub: EventLogHub | None = None,
    ) -> None:
        if hub is not None and hub.url != redis_url:
            raise EventLogError(f"the event log hub is for {mask_url(hub.url)}, not {mask_url(redis_url)}")
        self._own_hub = hub is None
        self._hub = hub if hub is not None else EventLogHub(redis_url, redis_timeout_s=redis_timeout_s)
        self.producer = secrets.token_hex(8)
        self._url = redis_url
        self._experiment = experiment
        self._metrics = keys.metric_order(experiment)
        self._keys = keys.Keys(experiment.name, prefix)
        #: Events waiting for Redis (cut batches and the outbox) at most; beyond, new
        #: events are shed and counted (a Redis that cannot keep up must not grow the router).
        self._max_events = max_events
        self._batch_events = min(batch_events, max_events)
        self._shedding = False
        self._shed = 0
        stem = spill.stem(prefix, experiment.name)
        own, quarantine = spill_files(Path(spill_dir), stem=stem, producer=self.producer, max_bytes=spill_max_bytes)
        self._delivery = Delivery(
            producer=self.producer,
            redis_url=redis_url,
            hub=self._hub,
            redis_keys=self._keys,
            spill=own,
            quarantine=quarantine,
            spill_stem=stem,
            interval_s=flush_interval_s,
            retain_s=retain_s,
            retain_events=RETAIN_MAX_BATCHES * max_events,
            unit_ttl_s=experiment.outcome_ttl_s,
            experiment=experiment.name,
            on_reset=self._reregister_epochs,
            shards=shards,
        )
        self._interval = flush_interval_s
        self._agg = self._new_aggregator()
        self._seq = 0
        self._cut: deque[tuple[int, events.Aggregator]] = deque()  # cut, not yet encoded
        self._recent = recent.RecentUnits(LRU_SIZE)
        self._rounds = asyncio.Lock()  # one round at a time: the hub's, `flush`'s or `close`'s
        self._started = False
        self._closing = False
        self._dropped = 0  # could not be encoded (a bug)
        self._repeated_outcomes = 0  # repeats within the pending batch
        self._epochs: dict[int, str] = {}  # every epoch registered: re-sent to a Redis that lost them

    def __repr__(self) -> str:
        return (
            f"<EventLog {self._experiment.name!r} producer={self.producer} redis={mask_url(self._url)} "
            f"up={self._delivery.up}>"
        )

    # ------------------------------------------------------------------ hot path

    def record_exposure(self, e: events.Exposure) -> None:
        """Log a proxied request. Sync and O(1); never waits for Redis."""
        if self._shedding:
            self._shed += 1
            return
        self._recent.remember(e.unit_hash, e.epoch, e.variant)
        if self._agg.add_exposure(e) >= self._batch_events:
            self._cut_batch()
            self._hub.wake(self)

    def record_outcome(self, o: events.Outcome) -> bool:
        """Log an outcome; False if its event_id is already in the current batch (not logged).

        ValueError for a metric the experiment lacks or a non-finite value. Repeats of an
        event_id in earlier batches are found by Redis at flush (`EventLogStats`). While
        Redis cannot keep up (`max_events` waiting), the outcome is shed: counted, not logged.
        """
        if self._shedding:
            self._shed += 1
            return True
        added = self._agg.add_outcome(o)
        if not added:
            self._repeated_outcomes += 1
        self._check_full()
        return added

    def register_epoch(self, epoch: int, weights: Mapping[str, float], since: float) -> None:
        """Record an epoch's weights (HSETNX into `keys.epochs`) with the next flush."""
        info = keys.encode_epoch(weights, since)
        self._epochs.setdefault(epoch, info)
        self._agg.add_epoch(epoch, info)

    def update_experiment(self, experiment: Experiment) -> None:
        """Adopt a reloaded spec. Metrics may be added, never removed, renamed or re-kinded."""
        metrics = keys.metric_order(experiment)
        if experiment.name != self._experiment.name:
            raise EventLogError(f"experiment name changed from {self._experiment.name!r} to {experiment.name!r}")
        # [cuped] Names, not positions: the covariate's columns come last (`keys.metric_order`),
        # so a metric added later lands before them. Batches name their columns; flush.lua
        # and the Aggregator map each by name.
        if not set(self._metrics) <= set(metrics):
            raise EventLogError(f"metrics may only grow: {list(self._metrics)} -> {list(metrics)}")
        if events.binary_metrics(experiment) & set(self._metrics) != events.binary_metrics(self._experiment):
            raise EventLogError("a metric's kind (binary or continuous) cannot change during an experiment")
        self._experiment, self._metrics = experiment, metrics
        self._agg.extend_metrics(
            metrics,
            events.binary_metrics(experiment),
            events.ratio_pairs(experiment),
            **events.column_rules(experiment),
        )

    async def lookup_units(self, unit_hashes: Sequence[str]) -> dict[str, tuple[int, str] | None]:
        """(epoch, variant) of each unit's latest exposure, or None if it has none.

        One HMGET (per shard of the experiment), merged with this process's own recent exposures (not yet flushed, or
        newer): the later epoch wins, so a unit ramped into another variant through another
        replica is credited to where it is now. A unit exposed through another replica is
        known once that replica flushed (within its flush interval). While Redis is down,
        only units this process has seen can be answered.
        """
        local = {h: self._recent.get(h) for h in unit_hashes}
        client = self._delivery.client
        try:
            if client is None or not self._delivery.up:
                raise EventLogUnavailable("Redis is unreachable")
            by_shard: dict[keys.Keys, list[str]] = {}
            for h in local:
                by_shard.setdefault(self._delivery.script.keys_of(h), []).append(h)
            raw: dict[str, bytes | str | None] = {}
            for k, hashes in by_shard.items():
                raw.update(zip(hashes, await call_redis(client.hmget(k.units, hashes))))
        except EventLogUnavailable:
            if all(hit is not None for hit in local.values()):
                return local
            raise
        stored = {h: None if r is None else keys.parse_stratum(r) for h, r in raw.items()}
        return {h: _later(local[h], stored[h]) for h in local}

    @property
    def stats(self) -> EventLogStats:
        d = self._delivery
        buffered = len(self._agg) + sum(len(a) for _, a in self._cut) + sum(b.n_events for b in d.outbox)
        return EventLogStats(
            buffered=buffered,
            spilled=d.spill.pending_events,
            dropped=self._dropped + self._shed + d.dropped,
            flush_failures=d.failures,
            flushed_batches=d.flushed,
            repeated_outcomes=self._repeated_outcomes + d.repeated_outcomes,
            quarantined=d.quarantine.pending_events,
            redis_up=d.up,
            redis_resets=d.resets,
            data_incomplete_since=d.script.reset_at if d.script.reset_at is not None else d.hole_since,
            spill_full_dropped=d.spill_full,
            spill_bytes=d.spill.size,
            lost_events=d.lost_events,
            shed=self._shed,
        )

    def _check_full(self) -> None:
        if len(self._agg) >= self._batch_events:
            self._cut_batch()
            self._hub.wake(self)

    def _check_backlog(self) -> None:
        """Shed new events while `max_events` wait for Redis in cut batches and the outbox."""
        waiting = sum(len(a) for _, a in self._cut) + sum(b.n_events for b in self._delivery.outbox)
        if waiting >= self._max_events and not self._shedding:
            log.warning(
                "event log: %d events wait for Redis, which is not keeping up: new events are shed (counted in "
                "abrouter_eventlog_dropped_events_total) until it catches up",
                waiting,
            )
        self._shedding = waiting >= self._max_events

    def _cut_batch(self) -> None:
        """Close the current batch: from here on its seq and its place in line are fixed."""
        if self._agg.empty:
            return
        self._seq += 1
        self._cut.append((self._seq, self._agg))
        self._agg = self._new_aggregator()
        self._check_backlog()

    def _new_aggregator(self) -> events.Aggregator:
        # The shards once the layout is known (0 before the first connection: the batch is
        # split when it is sent, `shards.ShardedFlush.apply`).
        return events.Aggregator(
            self._metrics,
            events.binary_metrics(self._experiment),
            events.ratio_pairs(self._experiment),
            **events.column_rules(self._experiment),
            shards=max(1, self._delivery.script.shards),
        )

    # ------------------------------------------------------------------ lifecycle

    async def start(self) -> None:
        """Connect (a Redis that is down is fine: events spill), replay orphans, start flushing."""
        await self._delivery.connect()
        self._started = True
        self._hub.add(self)

    async def close(self) -> None:
        """Flush everything: to Redis, or to the spill file if Redis is down."""
        if self._closing:
            return
        self._closing = True
        self._hub.remove(self)
        if self._started:
            await self.flush_round()  # the final flush (after a round of the hub's in progress)
        await self._delivery.close()
        if self._own_hub:
            await self._hub.aclose()

    async def flush(self) -> None:
        """Flush now and wait until what was recorded so far is in Redis or the spill file.

        Unlike a wake-up by a full buffer, this also probes a Redis that was down, and
        checks an idle one for lost batches.
        """
        if not self._started or self._closing:
            return
        self._delivery.next_probe = self._delivery.next_idle_check = 0.0
        await self.flush_round()

    @property
    def interval_s(self) -> float:
        """How often the hub flushes this log (and sooner when woken)."""
        return self._interval

    async def flush_round(self) -> None:
        """One round: cut the current batch, encode what was cut, deliver (`EventLogHub` calls it)."""
        async with self._rounds:
            await self._flush_once()

    async def _flush_once(self) -> None:
        self._cut_batch()
        await self._encode_cut()
        await self._delivery.deliver()
        self._check_backlog()

    async def _encode_cut(self) -> None:
        """Encode the cut batches into the outbox, letting the event loop run between slices."""
        while self._cut:
            seq, agg = self._cut[0]  # still counted as buffered while it is encoded
            try:
                batch = await encode_batch(agg, producer=self.producer, seq=seq)
            except ValueError:  # a bug (e.g. a NaN that got past validation): lose one batch, not the flusher
                self._dropped += len(agg)
                log.exception("event log: cannot encode batch %d; its %d events are lost", seq, len(agg))
            else:
                self._delivery.outbox.append(batch)
            finally:
                self._cut.popleft()

    def _reregister_epochs(self) -> None:
        """Redis lost the experiment's data: send every epoch again with the next batch."""
        for epoch, info in self._epochs.items():
            self._agg.add_epoch(epoch, info)
        self._hub.wake(self)


async def encode_batch(agg: events.Aggregator, *, producer: str, seq: int) -> events.Batch:
    """`Aggregator.batch`, yielding to the event loop after each slice of `slices.SLICE` rows."""
    steps = agg.encode(producer=producer, seq=seq)
    while True:
        try:
            next(steps)
        except StopIteration as done:
            batch: events.Batch = done.value
            return batch
        await asyncio.sleep(0)


def _later(mine: tuple[int, str] | None, stored: tuple[int, str] | None) -> tuple[int, str] | None:
    """Of two (epoch, variant) exposures of a unit, the later epoch; ours on a tie (newer)."""
    if mine is None or (stored is not None and stored[0] > mine[0]):
        return stored
    return mine
