"""The event log: exposures and outcomes into Redis, in batches, exactly once, loss-free.

The hot path (`record_exposure`, `record_outcome`) only folds the event into an
in-memory `events.Aggregator`; it never awaits Redis. A background task cuts a batch
every `flush_interval_s`, or as soon as `max_events` events are held, and sends it as
one EVALSHA of ``flush.lua``. Each batch carries (producer, seq): a random id per
process and a number that rises by one per batch. The script applies a batch only when
seq is above the producer's last one, so every re-send below is safe.

Where a batch goes:
- Redis up: sent in seq order; once acknowledged it is *retained* in memory for
  `RETAIN_S`, because Redis (appendfsync everysec) may still lose it in a crash.
- Redis unreachable or a call times out (it may or may not have applied): the batch and
  every later one are appended to this producer's spill file (`abrouter.router.eventlog.spill`), fsync'd.
  A PING every interval notices Redis coming back; the spill file is then replayed in
  order, before any newer batch, and emptied.
- After a reconnect, when idle, and whenever the script refuses a batch because earlier
  ones are missing, the producer reads back its last applied seq and re-sends the
  retained batches above it: that covers a Redis restart that lost its last fsync window.
- The spill files of dead producers of the same experiment are replayed at start.
- Refused by the script, which then wrote nothing (a unit state in Redis that the script
  did not write, a bug): appended to this producer's quarantine file (`abrouter.router.eventlog.spill`)
  and counted in `EventLogStats.quarantined`, so that one bad batch cannot hold back all
  later ones. Its events are kept there, not lost, for replay once the cause is fixed.
Only a failing disk while Redis is down loses events; they are counted in `dropped`.

Exceptions (`abrouter.router.errors`): `EventLogError` for misuse, and its subclass
`EventLogUnavailable` when Redis cannot be reached (raised by `lookup_units`).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import secrets
import time
from collections import deque
from collections.abc import Mapping, Sequence
from pathlib import Path

import redis.asyncio
import redis.exceptions
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff

from abrouter.contract import keys
from abrouter.contract.experiment import Experiment
from abrouter.redact import mask_url
from abrouter.router.errors import BatchRejected, EventLogError, EventLogUnavailable
from abrouter.router.eventlog import events, spill
from abrouter.router.eventlog.script import FlushScript, call_redis
from abrouter.router.eventlog.stats import EventLogStats

log = logging.getLogger(__name__)

#: How long acknowledged batches are kept for re-sending; covers Redis losing the last
#: second of writes (appendfsync everysec) in a crash, with a wide margin.
RETAIN_S = 10.0
#: ...but never more than this many batch-sizes of events (memory bound).
RETAIN_MAX_BATCHES = 4
#: Local memory of recent exposures, so `lookup_units` rarely needs Redis.
LRU_SIZE = 100_000

APPLIED, DUPLICATE, GAP, QUARANTINED = 1, 0, -1, -2


class EventLog:
    """See the module docstring. One per process and experiment."""

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
    ) -> None:
        self.producer = secrets.token_hex(8)
        self._retain_s = retain_s
        self._url = redis_url
        self._experiment = experiment
        self._metrics = keys.metric_order(experiment)
        self._keys = keys.Keys(experiment.name, prefix)
        self._interval = flush_interval_s
        self._max_events = max_events
        self._timeout = redis_timeout_s
        self._spill_stem = spill.stem(prefix, experiment.name)
        self._spill = spill.SpillFile(
            Path(spill_dir), stem=self._spill_stem, producer=self.producer, max_bytes=spill_max_bytes
        )
        self._quarantine = spill.SpillFile(
            Path(spill_dir),
            stem=self._spill_stem,
            producer=self.producer + "q",
            suffix=spill.QUARANTINE_SUFFIX,
            max_bytes=spill_max_bytes,
        )
        self._agg = self._new_aggregator()
        self._seq = 0
        self._cut: deque[tuple[int, events.Aggregator]] = deque()  # cut, not yet encoded
        self._outbox: deque[events.Batch] = deque()  # encoded, not yet acknowledged
        self._retained: deque[tuple[float, events.Batch]] = deque()
        self._retained_events = 0
        self._waiters: list[asyncio.Future[None]] = []
        self._recent: dict[str, tuple[int, str]] = {}  # LRU by insertion order
        self._wake = asyncio.Event()
        self._client: redis.asyncio.Redis | None = None
        self._script: FlushScript | None = None
        self._task: asyncio.Task[None] | None = None
        self._closing = False
        self._up = False
        self._next_probe = 0.0
        self._orphans_pending = True
        self._dropped = 0
        self._failures = 0
        self._flushed = 0
        self._repeated_outcomes = 0
        self._spill_full = 0
        self._epochs: dict[int, str] = {}  # every epoch registered: re-sent to a Redis that lost them
        self._resets = 0

    def __repr__(self) -> str:
        return (
            f"<EventLog {self._experiment.name!r} producer={self.producer} redis={mask_url(self._url)} up={self._up}>"
        )

    # ------------------------------------------------------------------ hot path

    def record_exposure(self, e: events.Exposure) -> None:
        """Log a proxied request. Sync and O(1); never waits for Redis."""
        self._remember(e.unit_hash, (e.epoch, e.variant))
        self._agg.add_exposure(e)
        self._check_full()

    def record_outcome(self, o: events.Outcome) -> bool:
        """Log an outcome; False if its event_id is already in the current batch (not logged).

        ValueError for a metric the experiment lacks or a non-finite value. Repeats of an
        event_id in earlier batches are found by Redis at flush (`EventLogStats`).
        """
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

        One HMGET, merged with this process's own recent exposures (not yet flushed, or
        newer): the later epoch wins, so a unit ramped into another variant through another
        replica is credited to where it is now. A unit exposed through another replica is
        known once that replica flushed (within its flush interval). While Redis is down,
        only units this process has seen can be answered.
        """
        local = {h: self._recent.get(h) for h in unit_hashes}
        try:
            if self._client is None or not self._up:
                raise EventLogUnavailable("Redis is unreachable")
            raw = await call_redis(self._client.hmget(self._keys.units, list(local)))
        except EventLogUnavailable:
            if all(hit is not None for hit in local.values()):
                return local
            raise
        stored = {h: None if r is None else keys.parse_stratum(r) for h, r in zip(local, raw)}
        return {h: _later(local[h], stored[h]) for h in local}

    @property
    def stats(self) -> EventLogStats:
        buffered = len(self._agg) + sum(len(a) for _, a in self._cut) + sum(b.n_events for b in self._outbox)
        return EventLogStats(
            buffered=buffered,
            spilled=self._spill.pending_events,
            dropped=self._dropped,
            flush_failures=self._failures,
            flushed_batches=self._flushed,
            repeated_outcomes=self._repeated_outcomes,
            quarantined=self._quarantine.pending_events,
            redis_up=self._up,
            redis_resets=self._resets,
            data_incomplete_since=self._script.reset_at if self._script is not None else None,
            spill_full_dropped=self._spill_full,
            spill_bytes=self._spill.size,
        )

    def _remember(self, unit_hash: str, stratum: tuple[int, str]) -> None:
        recent = self._recent
        recent.pop(unit_hash, None)
        recent[unit_hash] = stratum
        if len(recent) > LRU_SIZE:
            del recent[next(iter(recent))]

    def _check_full(self) -> None:
        if len(self._agg) >= self._max_events:
            self._cut_batch()
            self._wake.set()

    def _cut_batch(self) -> None:
        """Close the current batch: from here on its seq and its place in line are fixed."""
        if self._agg.empty:
            return
        self._seq += 1
        self._cut.append((self._seq, self._agg))
        self._agg = self._new_aggregator()

    def _new_aggregator(self) -> events.Aggregator:
        return events.Aggregator(
            self._metrics,
            events.binary_metrics(self._experiment),
            events.ratio_pairs(self._experiment),
            **events.column_rules(self._experiment),
        )

    # ------------------------------------------------------------------ lifecycle

    async def start(self) -> None:
        """Connect (a Redis that is down is fine: events spill), replay orphans, start flushing."""
        self._client = redis.asyncio.Redis.from_url(
            self._url, socket_timeout=self._timeout, socket_connect_timeout=self._timeout, retry=Retry(NoBackoff(), 0)
        )  # our own retry is the spill; redis-py's would stall the flush
        self._script = FlushScript(self._client, self._keys, unit_ttl_s=self._experiment.outcome_ttl_s)
        try:
            await self._reconnect()
            await self._replay_orphans()
        except EventLogUnavailable as exc:
            self._went_down(exc)
            log.warning(
                "event log: Redis at %s is unreachable (%s); events will spill to %s",
                mask_url(self._url),
                exc,
                self._spill.path,
            )
        self._task = asyncio.create_task(self._run(), name=f"abrouter-eventlog-{self._experiment.name}")

    async def close(self) -> None:
        """Flush everything: to Redis, or to the spill file if Redis is down."""
        if self._closing:
            return
        self._closing = True
        if self._task is not None:
            self._wake.set()
            await self._task
        elif self._script is not None:
            await self._flush_once()
        await asyncio.to_thread(self._spill.close)
        await asyncio.to_thread(self._quarantine.close)
        if self._client is not None:
            await self._client.aclose()

    async def flush(self) -> None:
        """Flush now and wait until what was recorded so far is in Redis or the spill file.

        Unlike a wake-up by a full buffer, this also probes a Redis that was down.
        """
        if self._task is None or self._task.done():
            return
        waiter = asyncio.get_running_loop().create_future()
        self._waiters.append(waiter)
        self._next_probe = 0.0
        self._wake.set()
        await waiter

    async def _run(self) -> None:
        while not self._closing:
            with contextlib.suppress(asyncio.TimeoutError):
                await asyncio.wait_for(self._wake.wait(), self._interval)
            self._wake.clear()
            await self._round()
        await self._round()  # the final flush of close()

    async def _round(self) -> None:
        waiters, self._waiters = self._waiters, []
        try:
            await self._flush_once()
        finally:
            for waiter in waiters:
                if not waiter.done():
                    waiter.set_result(None)

    async def _flush_once(self) -> None:
        self._cut_batch()
        self._encode_cut()
        try:
            await self._deliver()
        except EventLogUnavailable as exc:
            self._went_down(exc)
        except Exception:  # a bug must not stop the flusher: the batches still spill
            log.exception("event log: unexpected error while flushing")
        if self._outbox:
            self._failures += 1
            await self._spill_outbox()

    def _encode_cut(self) -> None:
        while self._cut:
            seq, agg = self._cut.popleft()
            try:
                self._outbox.append(agg.batch(producer=self.producer, seq=seq))
            except ValueError:  # a bug (e.g. a NaN that got past validation): lose one batch, not the flusher
                self._dropped += len(agg)
                log.exception("event log: cannot encode batch %d; its %d events are lost", seq, len(agg))

    # ------------------------------------------------------------------ delivery

    async def _deliver(self) -> None:
        if not self._up:
            if time.monotonic() < self._next_probe:
                return
            await self._reconnect()
        if self._orphans_pending:
            await self._replay_orphans()
        sent = await self._replay_spill()
        while self._outbox:
            await self._send(self._outbox[0])
            self._outbox.popleft()
            sent = True
        if not sent:
            await self._resend_lost()

    async def _reconnect(self) -> None:
        assert self._script is not None
        self._next_probe = time.monotonic() + self._interval
        await self._script.ping()
        await self._script.load()
        await self._resend_lost()
        if not self._up:
            log.info("event log: Redis at %s is reachable", mask_url(self._url))
        self._up = True

    def _went_down(self, exc: EventLogUnavailable) -> None:
        if self._up:
            log.warning("event log: %s; spilling to %s until Redis returns", exc, self._spill.path)
        self._up = False
        self._next_probe = time.monotonic() + self._interval

    async def _send(self, batch: events.Batch) -> None:
        """Deliver one batch of ours, first re-sending retained ones Redis has lost."""
        status, last = await self._apply(batch, allow_gap=False)
        if status == GAP:
            log.warning(
                "event log: Redis has seq %d of producer %s, batch %d follows a gap (lost by Redis, "
                "or quarantined); re-sending retained batches",
                last,
                batch.producer,
                batch.seq,
            )
            await self._resend({batch.producer: last})
            status, _ = await self._apply(batch, allow_gap=True)
        if status != QUARANTINED:
            self._acknowledged(batch)

    async def _apply(self, batch: events.Batch, *, allow_gap: bool) -> tuple[int, int]:
        """(status, last seq before); a batch the script refuses is quarantined instead."""
        assert self._script is not None
        try:
            status, last, repeated = await self._script.apply(batch, allow_gap=allow_gap)
        except BatchRejected as exc:
            await self._set_aside(batch, exc)
            return QUARANTINED, batch.seq - 1
        self._repeated_outcomes += repeated
        if self._script.resets != self._resets:
            self._redis_lost_data()
        return status, last

    def _redis_lost_data(self) -> None:
        """Redis restarted empty (the experiment marker changed): say so and re-register epochs.

        What other replicas had flushed is gone for good; the marker's ``reset_at`` tells
        the analyzer that the aggregates hold only what came after.
        """
        assert self._script is not None
        self._resets = self._script.resets
        for epoch, info in self._epochs.items():
            self._agg.add_epoch(epoch, info)
        self._wake.set()
        log.warning(
            "event log: Redis at %s lost experiment %r's data (it restarted empty); the aggregates hold only "
            "events since %s; epochs re-registered",
            mask_url(self._url),
            self._experiment.name,
            time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(self._script.reset_at or 0)),
        )

    async def _set_aside(self, batch: events.Batch, reason: BatchRejected) -> None:
        # Under its own (producer, seq): Redis keeps the seqs a producer skipped, so a replay
        # applies once, and a replay of a batch that did apply is a duplicate.
        try:
            await asyncio.to_thread(self._quarantine.append, [batch])
        except OSError as exc:  # keep it in line (outbox or spill) and try again later
            raise EventLogUnavailable(f"cannot quarantine batch {batch.seq} in {self._quarantine.path}: {exc}") from exc
        log.error(
            "event log: %s; its %d events are set aside in %s (rename it to .spill to replay it once "
            "the cause is fixed)",
            reason,
            batch.n_events,
            self._quarantine.path,
        )

    def _acknowledged(self, batch: events.Batch) -> None:
        self._flushed += 1
        self._retained.append((time.monotonic(), batch))
        self._retained_events += batch.n_events
        self._prune_retained()

    def _prune_retained(self) -> None:
        horizon = time.monotonic() - self._retain_s
        limit = RETAIN_MAX_BATCHES * self._max_events
        while self._retained and (self._retained[0][0] < horizon or self._retained_events > limit):
            _, batch = self._retained.popleft()
            self._retained_events -= batch.n_events

    async def _resend_lost(self) -> None:
        """Re-send retained batches Redis no longer has (it restarted and lost them).

        Compare first, prune after: retained batches age while Redis is down too, and a
        Redis that returns after a long outage may be exactly the one that lost them.
        """
        if not self._retained:
            return
        assert self._script is not None
        producers = sorted({b.producer for _, b in self._retained})
        last = await self._script.last_seqs(producers)
        await self._resend(last)
        self._prune_retained()

    async def _resend(self, last: Mapping[str, int]) -> None:
        assert self._script is not None
        for _, batch in list(self._retained):
            if batch.seq > last.get(batch.producer, batch.seq):
                await self._apply(batch, allow_gap=True)

    async def _replay_spill(self) -> bool:
        """Send our spilled batches, oldest first; True if there were any."""
        replayed = False
        for batch, offset in self._spill.unreplayed():
            await self._send(batch)
            self._spill.mark_replayed(batch, offset)
            replayed = True
        if replayed:
            await asyncio.to_thread(self._spill.clear)
            log.info("event log: spill file replayed into Redis")
        return replayed

    async def _replay_orphans(self) -> None:
        assert self._script is not None
        orphans = await asyncio.to_thread(
            spill.claim_orphans, self._spill.path.parent, stem=self._spill_stem, own=self._spill.path
        )
        try:
            for orphan in orphans:
                await self._replay_orphan(orphan)
        finally:
            for orphan in orphans:
                orphan.release()
        self._orphans_pending = False

    async def _replay_orphan(self, orphan: spill.Orphan) -> None:
        assert self._script is not None
        count = 0
        for batch, _ in orphan.batches():
            # A dead producer's earlier batches may be gone for good: gaps are allowed.
            status, _ = await self._apply(batch, allow_gap=True)
            if status != QUARANTINED:
                self._acknowledged(batch)
            count += batch.n_events
        orphan.remove()
        log.info("event log: replayed %d events from orphaned spill file %s", count, orphan.path)

    async def _spill_outbox(self) -> None:
        batches = list(self._outbox)
        self._outbox.clear()
        try:
            await asyncio.to_thread(self._spill.append, batches)
        except OSError as exc:
            lost = sum(b.n_events for b in batches)
            self._dropped += lost
            if isinstance(exc, spill.SpillFull):
                self._spill_full += lost
            log.error(
                "event log: Redis is down and the spill file %s failed (%s): %d events lost",
                self._spill.path,
                exc,
                lost,
            )


def _later(mine: tuple[int, str] | None, stored: tuple[int, str] | None) -> tuple[int, str] | None:
    """Of two (epoch, variant) exposures of a unit, the later epoch; ours on a tie (newer)."""
    if mine is None or (stored is not None and stored[0] > mine[0]):
        return stored
    return mine
