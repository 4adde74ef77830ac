"""One experiment over several Redis slots: a batch split per shard, one flush.lua call per shard.

With one shard (the layout of a single server, and of every experiment written before
shards existed) this is `FlushScript` on the experiment's keys, unchanged. With N, the
per-unit state and the per-stratum sums live under N hash tags of the experiment
(`abrouter.contract.keys.shard_keys`): a unit's cells and keyed outcomes go to its shard
(`keys.shard_of`), the epochs, the latency histogram and the audit stream to shard 0,
and each shard keeps its own exactly-once bookkeeping for the same (producer, seq).

Every batch is sent to every shard, empty for a shard it does not touch, so a shard's
seqs stay contiguous and its gap check still means "Redis lost a batch". A batch counts
as applied when every shard applied it or already had it; a call that fails part-way
leaves some shards applied, and the re-send is a duplicate there and applies elsewhere.
Status of a batch over the shards: GAP if a shard reports a gap (with the lowest last
seq, so the re-send starts early enough for every shard), else APPLIED if any shard
applied it, else DUPLICATE. A shard that refuses the batch (`BatchRejected`) refuses it
whole after the others were tried: it is quarantined and, replayed, applies once where
it had not.

The layout (how many shards) is stored once per experiment (`keys.Keys.layout`, written
with SET NX by the first router), so every router and the analyzer agree on it whatever
each was told: `shards=None` means 1 on a single server and `keys.CLUSTER_SHARDS` on a
Redis Cluster, and an experiment that already has unsharded data keeps one shard.
"""

from __future__ import annotations

import asyncio
import dataclasses
import json
import logging
from collections.abc import Iterator
from typing import Any

import redis.asyncio.cluster

from abrouter import redisclient
from abrouter.contract import keys
from abrouter.router.errors import BatchRejected, EventLogUnavailable
from abrouter.router.eventlog import acks, events
from abrouter.router.eventlog import cells as cells_
from abrouter.router.eventlog.script import FlushScript, call_redis

log = logging.getLogger("abrouter.router.eventlog.log")

GAP, DUPLICATE, APPLIED = -1, 0, 1


def split(payload: str, raw_events: str, shards: int, packed: bytes = b"") -> Iterator[tuple[str, str, bytes]]:
    """Pure: a batch's (payload, raw events, packed cells) as one of each per shard, in shard order.

    Cells and keyed outcomes go to their unit's shard; epochs, the latency histogram and
    the raw events (the audit stream, with ``n``) to shard 0; the columns to every shard.
    Each part is encoded when it is asked for, so a caller that sends one before asking
    for the next spreads the encoding over its awaits (a 2,000-event batch: ~5 ms of
    event loop in one piece, not ~11). Only for batches without `events.Batch.parts`
    (the spill file's, or cut before the layout was known): the `Aggregator` of a router
    that knows the shards encodes the same parts as it encodes the batch, for no more
    than the batch alone costs (bench/shard_split.py).
    """
    doc = json.loads(payload)
    keyed: list[list[Any]] = [[] for _ in range(shards)]
    for row in doc.get("keyed", ()):
        keyed[keys.shard_of(row[1], shards)].append(row)
    cells: list[Any] = [[] for _ in range(shards)]
    if doc.get("v", 1) >= 6:  # packed: each cell's bytes as they are
        for h, start, end in cells_.spans(packed, int(doc["width"]), doc["v"]):
            cells[keys.shard_of(h, shards)].append(packed[start:end])
    else:
        for cell in cells_.cells_of(doc):
            cells[keys.shard_of(cell[0], shards)].append(cell)
    for i in range(shards):
        part, part_packed = {**doc, "keyed": keyed[i]}, b""
        if doc.get("v", 1) >= 6:
            part["ncells"], part_packed = len(cells[i]), b"".join(cells[i])
        elif doc.get("v", 1) == 5:
            part["cells"] = [x for cell in cells[i] for x in cell]
        else:
            part["cells"] = cells[i]
        if i > 0:
            part.update(epochs=[], latency=[], n=0)
        yield json.dumps(part, separators=(",", ":")), raw_events if i == 0 else "[]", part_packed


def combine(replies: list[tuple[int, int, int]]) -> tuple[int, int, int]:
    """Pure: the (status, last, repeated) of a batch from its shards' replies (module docstring)."""
    repeated = sum(r for _, _, r in replies)
    gaps = [last for status, last, _ in replies if status == GAP]
    if gaps:
        return GAP, min(gaps), repeated
    status = APPLIED if any(s == APPLIED for s, _, _ in replies) else DUPLICATE
    return status, min(last for _, last, _ in replies), repeated


class ShardedFlush:
    """`FlushScript`'s interface over the shards of one experiment; see the module docstring."""

    def __init__(
        self,
        client: redisclient.Client | None,
        k: keys.Keys,
        *,
        shards: int | None = None,
        unit_ttl_s: float = 0.0,
    ) -> None:
        if shards is not None:
            keys.shard_keys(k, shards)  # refuses a bad count now, not at the first connection
        self._keys = k
        self._wanted = shards
        self._unit_ttl_s = unit_ttl_s
        self._client = client
        #: One script per shard, once the layout is known (`load`).
        self.parts: list[FlushScript] = []
        self._shard_keys: tuple[keys.Keys, ...] = (k,)

    @property
    def client(self) -> redisclient.Client | None:
        return self._client

    @client.setter
    def client(self, value: redisclient.Client | None) -> None:
        self._client = value
        for part in self.parts:
            part.client = value

    @property
    def shards(self) -> int:
        """The experiment's shards; 0 until the first connection read the layout."""
        return len(self.parts)

    @property
    def created(self) -> str:
        """Every shard's marker, joined: any shard that lost its data changes it."""
        return "|".join(p.created for p in self.parts)

    @property
    def resets(self) -> int:
        return sum(p.resets for p in self.parts)

    @property
    def reset_at(self) -> float | None:
        return max((p.reset_at for p in self.parts if p.reset_at is not None), default=None)

    def keys_of(self, unit: str) -> keys.Keys:
        """The keys of a unit's shard (the experiment's own before the layout is known)."""
        if len(self.parts) <= 1:
            return self._keys
        return self._shard_keys[keys.shard_of(unit, len(self.parts))]

    async def ping(self) -> None:
        await call_redis(self._connected().ping())

    async def load(self) -> None:
        """Load the script; the first time, settle the layout (`keys.Keys.layout`)."""
        if not self.parts:
            shards = await self._layout()
            self._shard_keys = keys.shard_keys(self._keys, shards)
            self.parts = [FlushScript(self._client, k, unit_ttl_s=self._unit_ttl_s) for k in self._shard_keys]
            if shards > 1:
                log.info("event log: experiment %r is sharded over %d hash tags", self._keys.experiment, shards)
        await self.parts[0].load()

    async def _layout(self) -> int:
        client, k = self._connected(), self._keys
        stored = await call_redis(client.get(k.layout))
        if stored is None:
            wanted = self._wanted
            if wanted is None:
                # Unsharded data already here (written before layouts existed) stays unsharded.
                existing = int(await call_redis(client.exists(k.agg))) + int(await call_redis(client.exists(k.epochs)))
                cluster = isinstance(client, redis.asyncio.cluster.RedisCluster)
                wanted = keys.CLUSTER_SHARDS if cluster and not existing else 1
            await call_redis(client.set(k.layout, str(wanted), nx=True))
            stored = await call_redis(client.get(k.layout))
        shards = keys.parse_layout(stored)
        if self._wanted is not None and shards != self._wanted:
            log.warning(
                "event log: experiment %r has %d shards in Redis (%s), not the %d asked for: using %d",
                self._keys.experiment,
                shards,
                k.layout,
                self._wanted,
                shards,
            )
        return shards

    def _connected(self) -> redisclient.Client:
        if self._client is None:
            raise EventLogUnavailable("Redis: not connected yet")
        return self._client

    async def apply(self, batch: events.Batch, *, allow_gap: bool) -> tuple[int, int, int]:
        """As `FlushScript.apply`, over the shards (module docstring)."""
        if len(self.parts) <= 1:
            return await self._part(0).apply(batch, allow_gap=allow_gap)
        replies, refused = [], None
        n = len(self.parts)
        # Parts the Aggregator encoded (no decode here); a batch without them (the spill
        # file's, or cut before the layout was known) is split.
        whole = (
            zip(batch.parts, (batch.events, *["[]"] * (n - 1)), batch.part_cells or [b""] * n)
            if len(batch.parts) == n
            else split(batch.payload, batch.events, n, batch.cells)
        )
        for part, (payload, raw, packed) in zip(self.parts, whole):
            try:
                shard_batch = dataclasses.replace(
                    batch, payload=payload, events=raw, parts=(), cells=packed, part_cells=()
                )
                replies.append(await part.apply(shard_batch, allow_gap=allow_gap))
            except BatchRejected as exc:
                refused = refused or exc
        if refused is not None:
            raise refused
        return combine(replies)

    async def last_seqs(self, producers: list[str]) -> tuple[dict[str, int], str]:
        """The lowest last seq of each producer over the shards, and every shard's marker joined."""
        if len(self.parts) <= 1:
            return await self._part(0).last_seqs(producers)
        replies = await asyncio.gather(*(part.last_seqs(producers) for part in self.parts), return_exceptions=True)
        for reply in replies:  # asked at once, not in turn; every answer awaited before one failure is raised
            if isinstance(reply, BaseException):
                raise reply
        lasts = [reply[0] for reply in replies if not isinstance(reply, BaseException)]
        created = [reply[1] for reply in replies if not isinstance(reply, BaseException)]
        return {p: min(last[p] for last in lasts) for p in producers}, "|".join(created)

    async def record_hole(self, hole: acks.Hole) -> None:
        """In shard 0's marker (the analyzer sums the shards')."""
        await self._part(0).record_hole(hole)

    def _part(self, i: int) -> FlushScript:
        if not self.parts:  # not connected yet: FlushScript says Redis is unavailable
            return FlushScript(self._client, self._keys)
        return self.parts[i]
