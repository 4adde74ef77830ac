"""Where the event log's encoded batches go: Redis, the spill file, or quarantine; and whether Redis is up.

`Delivery` holds everything of the event log that outlives one batch: the flush script
over the experiment's shards (`shards.ShardedFlush`, through the process's Redis client,
`hub.EventLogHub`), whether Redis is up, the outbox (encoded, not yet acknowledged), the
acknowledged batches it retains, and the spill and quarantine files. `EventLog` (`abrouter.router.eventlog.log`) puts
batches in `outbox` and calls `deliver` once per flush round. Each batch carries
(producer, seq): a random id per process and a number that rises by one per batch. The
script applies a batch only when seq is above the producer's last one (per shard), so
every re-send below is safe.

Where a batch goes:
- Redis up: sent in seq order; once acknowledged it is *retained* in memory for
  `RETAIN_S`, because Redis (appendfsync everysec) may still lose it in a crash.
- Redis unreachable or a call times out (it may or may not have applied): the batch and
  every later one are appended to this producer's spill file (`abrouter.router.eventlog.spill`), fsync'd.
  A PING every interval notices Redis coming back; the spill file is then replayed in
  order, before any newer batch, and emptied.
- After a reconnect, when idle (at most every `IDLE_CHECK_S`), and whenever the script refuses a batch because earlier
  ones are missing, the producer reads back its last applied seq and re-sends the
  retained batches above it: that covers a Redis restart that lost its last fsync window.
- The spill files of dead producers of the same experiment are replayed at start.
- Refused by the script, which then wrote nothing (a unit state in Redis that the script
  did not write, a bug): appended to this producer's quarantine file (`abrouter.router.eventlog.spill`)
  and counted in `EventLogStats.quarantined`, so that one bad batch cannot hold back all
  later ones. Its events are kept there, not lost, for replay once the cause is fixed.
Only a failing disk while Redis is down loses events; they are counted in `dropped`.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import deque
from collections.abc import Callable, Mapping
from pathlib import Path

from abrouter import redisclient
from abrouter.contract import keys
from abrouter.redact import mask_url
from abrouter.router.errors import BatchRejected, EventLogUnavailable
from abrouter.router.eventlog import acks, events, spill
from abrouter.router.eventlog.hub import EventLogHub
from abrouter.router.eventlog.shards import ShardedFlush

log = logging.getLogger("abrouter.router.eventlog.log")

#: How long acknowledged batches are kept for re-sending; covers Redis losing the last
#: second of writes (appendfsync everysec) in a crash, with a wide margin.
RETAIN_S = 10.0
#: ...but never more than this many batch-sizes of events (memory bound).
RETAIN_MAX_BATCHES = 4
#: How often an idle producer (a round that sent nothing) reads back its last applied seq:
#: the check that notices a Redis that lost acknowledged batches while nothing new was sent.
#: Once a second rather than every flush round (0.25 s by default), which made each idle
#: experiment cost about 8 Redis commands a second. While idle (no batch acknowledged),
#: retained batches are pruned only after such a check, so none ages out unchecked; a loss
#: is reported at most this much later.
IDLE_CHECK_S = 1.0

APPLIED, DUPLICATE, GAP, QUARANTINED = 1, 0, -1, -2


class Delivery:
    """See the module docstring. One per `EventLog`."""

    def __init__(
        self,
        *,
        producer: str,
        redis_url: str,
        hub: EventLogHub,
        redis_keys: keys.Keys,
        spill: spill.SpillFile,
        quarantine: spill.SpillFile,
        spill_stem: str,
        interval_s: float,
        retain_s: float,
        retain_events: int,
        unit_ttl_s: float,
        experiment: str,
        on_reset: Callable[[], None],
        shards: int | None = None,
    ) -> None:
        self.producer = producer
        self._url = redis_url
        self._hub = hub
        self._keys = redis_keys
        self.spill = spill
        self.quarantine = quarantine
        self._spill_stem = spill_stem
        self._interval = interval_s
        self._retain_s = retain_s
        self._retain_limit = retain_events
        self._experiment = experiment
        self._on_reset = on_reset
        self.outbox: deque[events.Batch] = deque()  # encoded, not yet acknowledged
        self._retained: deque[tuple[float, events.Batch]] = deque()
        self._retained_events = 0
        self.script = ShardedFlush(None, self._keys, shards=shards, unit_ttl_s=unit_ttl_s)
        self.up = False
        self.next_probe = 0.0
        self.next_idle_check = 0.0  # `IDLE_CHECK_S`
        self._orphans_pending = True
        self.dropped = 0
        self.failures = 0
        self.flushed = 0
        self.repeated_outcomes = 0  # found by Redis
        self.spill_full = 0
        #: Times Redis lost acknowledged data: restarted empty (seen through the marker) or
        #: came back with older data (a hole, `acks`).
        self.resets = 0
        self._marker_resets = 0  # `FlushScript.resets` already counted in `resets`
        #: Seqs Redis acknowledged; events it lost after that and holes not yet in its marker.
        self.acks = acks.Acknowledged()
        self.lost_events = 0
        self.holes: deque[acks.Hole] = deque()
        self.hole_since: float | None = None

    # ------------------------------------------------------------------ lifecycle

    @property
    def client(self) -> redisclient.Client | None:
        """The Redis client (the process's, `hub.EventLogHub`), once a first connection told whether Redis is a
        cluster."""
        return self.script.client

    async def connect(self) -> None:
        """Connect (a Redis that is down is fine: events spill) and replay orphans."""
        try:
            await self._reconnect()
            await self._replay_orphans()
        except EventLogUnavailable as exc:
            self._went_down(exc)
            log.warning(
                "event log: Redis at %s is unreachable (%s); events will spill to %s",
                mask_url(self._url),
                exc,
                self.spill.path,
            )

    async def close(self) -> None:
        await asyncio.to_thread(self.spill.close)
        await asyncio.to_thread(self.quarantine.close)  # the client is the hub's: it closes it

    async def deliver(self) -> None:
        """Send the outbox (after any spilled batches); what cannot be sent is spilled."""
        try:
            await self._deliver()
        except EventLogUnavailable as exc:
            self._went_down(exc)
        except Exception:  # a bug must not stop the flusher: the batches still spill
            log.exception("event log: unexpected error while flushing")
        if self.outbox:
            self.failures += 1
            await self._spill_outbox()

    # ------------------------------------------------------------------ delivery

    async def _deliver(self) -> None:
        if not self.up:
            if time.monotonic() < self.next_probe:
                return
            await self._reconnect()
        if self.holes:
            await self._report_holes()
        if self._orphans_pending:
            await self._replay_orphans()
        sent = await self._replay_spill()
        while self.outbox:
            await self._send(self.outbox[0])
            self.outbox.popleft()
            sent = True
        if not sent and time.monotonic() >= self.next_idle_check:
            await self._resend_lost()

    async def _reconnect(self) -> None:
        self.next_probe = time.monotonic() + self._interval
        if self.script.client is None:
            self.script.client = await self._hub.client()
        await self.script.ping()
        await self.script.load()
        await self._resend_lost()
        if not self.up:
            log.info("event log: Redis at %s is reachable", mask_url(self._url))
        self.up = True

    def _went_down(self, exc: EventLogUnavailable) -> None:
        if self.up:
            log.warning("event log: %s; spilling to %s until Redis returns", exc, self.spill.path)
        self.up = False
        self.next_probe = time.monotonic() + self._interval

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
            await self._resend_lost()
            status, _ = await self._apply(batch, allow_gap=True)
        if status != QUARANTINED:
            self._acknowledged(batch)

    async def _apply(self, batch: events.Batch, *, allow_gap: bool) -> tuple[int, int]:
        """(status, last seq before); a batch the script refuses is quarantined instead."""
        try:
            status, last, repeated = await self.script.apply(batch, allow_gap=allow_gap)
        except BatchRejected as exc:
            await self._set_aside(batch, exc)
            return QUARANTINED, batch.seq - 1
        self.repeated_outcomes += repeated
        if self.script.resets != self._marker_resets:
            self._redis_lost_data()
        return status, last

    def _redis_lost_data(self) -> None:
        """Redis restarted empty (the experiment marker changed): say so and re-register epochs.

        What other replicas had flushed is gone for good; the marker's ``reset_at`` tells
        the analyzer that the aggregates hold only what came after.
        """
        self.resets += self.script.resets - self._marker_resets
        self._marker_resets = self.script.resets
        self._on_reset()
        log.warning(
            "event log: Redis at %s lost experiment %r's data (it restarted empty); the aggregates hold only "
            "events since %s; epochs re-registered",
            mask_url(self._url),
            self._experiment,
            _utc(self.script.reset_at or 0),
        )

    async def _set_aside(self, batch: events.Batch, reason: BatchRejected) -> None:
        # Under its own (producer, seq): Redis keeps the seqs a producer skipped, so a replay
        # applies once, and a replay of a batch that did apply is a duplicate.
        try:
            await asyncio.to_thread(self.quarantine.append, [batch])
        except OSError as exc:  # keep it in line (outbox or spill) and try again later
            raise EventLogUnavailable(f"cannot quarantine batch {batch.seq} in {self.quarantine.path}: {exc}") from exc
        log.error(
            "event log: %s; its %d events are set aside in %s (rename it to .spill to replay it once "
            "the cause is fixed)",
            reason,
            batch.n_events,
            self.quarantine.path,
        )

    # ------------------------------------------------------------------ retained batches

    def _acknowledged(self, batch: events.Batch) -> None:
        self.flushed += 1
        if batch.producer == self.producer:
            self.acks.add(batch.seq, batch.n_events, time.time())
        self._retained.append((time.monotonic(), batch))
        self._retained_events += batch.n_events
        self._prune_retained()

    def _prune_retained(self) -> None:
        horizon = time.monotonic() - self._retain_s
        while self._retained and (self._retained[0][0] < horizon or self._retained_events > self._retain_limit):
            _, batch = self._retained.popleft()
            self._retained_events -= batch.n_events

    async def _resend_lost(self) -> None:
        """Re-send retained batches Redis no longer has (it restarted and lost them).

        Compare first, prune after: retained batches age while Redis is down too, and a
        Redis that returns after a long outage may be exactly the one that lost them.
        """
        if not self._retained and not self.acks.highest:
            return
        self.next_idle_check = time.monotonic() + IDLE_CHECK_S
        producers = sorted({b.producer for _, b in self._retained} | {self.producer})
        last, created = await self.script.last_seqs(producers)
        await self._count_hole(last[self.producer], emptied=created != self.script.created)
        await self._resend(last)
        self._prune_retained()

    async def _count_hole(self, redis_last: int, *, emptied: bool) -> None:
        """Count (and tell Redis about) acknowledged batches Redis lost and no retained copy can restore.

        A Redis that came back with older data (an AOF cut short, an RDB snapshot) is
        reported like one that came back empty: `resets`, `incomplete_since`, the epochs
        re-registered; an empty one is already reported through the marker (`emptied`).
        """
        resent = {b.seq for _, b in self._retained if b.producer == self.producer and b.seq > redis_last}
        hole = self.acks.hole(redis_last, resent)
        if hole is None:
            return
        self.lost_events += hole.events
        self.holes.append(hole)
        if not emptied:
            self.resets += 1
            self.hole_since = hole.since if self.hole_since is None else min(self.hole_since, hole.since)
            self._on_reset()
        log.warning(
            "event log: Redis at %s no longer has %d batches (%d events) it acknowledged to producer %s between "
            "%s and %s, and they are no longer retained: counted as lost and reported to the analyzer",
            mask_url(self._url),
            hole.batches,
            hole.events,
            self.producer,
            _utc(hole.since),
            _utc(hole.until),
        )
        await self._report_holes()

    async def _report_holes(self) -> None:
        """Write the holes not yet in Redis' marker; a failure leaves them for the next round."""
        while self.holes:
            await self.script.record_hole(self.holes[0])
            self.holes.popleft()

    async def _resend(self, last: Mapping[str, int]) -> None:
        for _, batch in list(self._retained):
            if batch.seq > last.get(batch.producer, batch.seq):
                await self._apply(batch, allow_gap=True)

    # ------------------------------------------------------------------ spill files

    async def _replay_spill(self) -> bool:
        """Send our spilled batches, oldest first; True if there were any."""
        replayed = False
        for batch, offset in self.spill.unreplayed():
            await self._send(batch)
            self.spill.mark_replayed(batch, offset)
            replayed = True
        if replayed:
            await asyncio.to_thread(self.spill.clear)
            log.info("event log: spill file replayed into Redis")
        return replayed

    async def _replay_orphans(self) -> None:
        orphans = await asyncio.to_thread(
            spill.claim_orphans, self.spill.path.parent, stem=self._spill_stem, own=self.spill.path
        )
        try:
            for orphan in orphans:
                await self._replay_orphan(orphan)
        finally:
            for orphan in orphans:
                orphan.release()
        self._orphans_pending = False

    async def _replay_orphan(self, orphan: spill.Orphan) -> None:
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
        batches = list(self.outbox)
        self.outbox.clear()
        try:
            await asyncio.to_thread(self.spill.append, batches)
        except OSError as exc:
            lost = sum(b.n_events for b in batches)
            self.dropped += lost
            if isinstance(exc, spill.SpillFull):
                self.spill_full += lost
            log.error(
                "event log: Redis is down and the spill file %s failed (%s): %d events lost",
                self.spill.path,
                exc,
                lost,
            )


def _utc(t: float) -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(t))


def spill_files(
    spill_dir: Path, *, stem: str, producer: str, max_bytes: int
) -> tuple[spill.SpillFile, spill.SpillFile]:
    """A producer's spill file and its quarantine file."""
    own = spill.SpillFile(Path(spill_dir), stem=stem, producer=producer, max_bytes=max_bytes)
    quarantine = spill.SpillFile(
        Path(spill_dir), stem=stem, producer=producer + "q", suffix=spill.QUARANTINE_SUFFIX, max_bytes=max_bytes
    )
    return own, quarantine
