"""One Redis client and one flush loop for every event log of a router process.

A router serving 50 experiments has 50 `EventLog`s (one per `Lane`); each keeps its own
producer id and seqs, batches, spill and quarantine files, retained batches and loss
accounting (`Delivery`). What they share is here: the Redis client (`client`, connected
once, on first use: a single server or a Redis Cluster) and the task that flushes them
(`run`), so the process has one connection pool and one timer, not one of each per
experiment. The keys stay per experiment: every script call and read names only its
own experiment's keys (hash tags), so sharing the client shares no data. On a single
server the client holds at most `MAX_CONNECTIONS` connections.

The loop wakes when a log asks (`wake`: a full batch, Redis lost its epochs) or when the
earliest log is due (its own `interval_s` after its last round began), and starts a round
of every log that is due and has none in progress, without waiting for them: a log whose
round is slow (a Redis timeout, a long spill replay) holds back no other experiment, and
a Redis that is down makes each log wait for its own timeout at once, not one after
another. A log's rounds never overlap (the loop starts none while one runs, and
`EventLog` holds a lock around each), so a round of the loop and a log's own `flush` or
final flush on `close` take turns.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import time
from typing import Protocol

from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff

from abrouter import redisclient
from abrouter.router.eventlog.script import call_redis

log = logging.getLogger("abrouter.router.eventlog.log")

#: Connections to a single Redis server at most, however many experiments: Redis runs one
#: command at a time, so more buy nothing, and a fleet of routers times experiments would
#: otherwise approach its `maxclients`. A round waits for a free one (at most the Redis
#: timeout, then it spills as for a Redis that does not answer). A Redis Cluster client
#: keeps a pool per master of its own.
MAX_CONNECTIONS = 8


class Flushed(Protocol):
    """What the loop needs of an event log (`EventLog`)."""

    @property
    def interval_s(self) -> float: ...

    async def flush_round(self) -> None:
        """Cut, encode and deliver what is held; must not raise."""
        ...


class EventLogHub:
    """See the module docstring. One per router process (`abrouter.router.runtime`); an
    `EventLog` made without one makes its own (a hub of one)."""

    def __init__(self, redis_url: str, *, redis_timeout_s: float = 1.0) -> None:
        self.url = redis_url
        self._timeout = redis_timeout_s
        self._client: redisclient.Client | None = None
        self._connecting = asyncio.Lock()
        self._logs: dict[Flushed, float] = {}  # log -> monotonic time of its next round
        self._woken: set[Flushed] = set()
        self._rounds: dict[Flushed, asyncio.Task[None]] = {}  # rounds in progress
        self._next = 0.0  # when the loop looks next (monotonic)
        self._wake = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self._closed = False

    def __len__(self) -> int:
        return len(self._logs)

    async def client(self) -> redisclient.Client:
        """The process's Redis client, connected on first use (EventLogUnavailable while
        Redis cannot be reached: the next call tries again)."""
        async with self._connecting:
            if self._client is None:
                self._client = await call_redis(
                    redisclient.connect(
                        self.url,
                        socket_timeout=self._timeout,
                        socket_connect_timeout=self._timeout,
                        retry=Retry(NoBackoff(), 0),
                        max_connections=MAX_CONNECTIONS,
                    )
                )  # our own retry is the spill; redis-py's would stall the flush
            return self._client

    # ------------------------------------------------------------------ the loop

    def add(self, flushed: Flushed) -> None:
        """Flush `flushed` from now on, every `interval_s` and when woken."""
        if self._closed:
            raise RuntimeError("event log hub is closed")
        self._logs[flushed] = time.monotonic() + flushed.interval_s
        if self._task is None:
            self._task = asyncio.create_task(self._run(), name="abrouter-eventlog")
        self._wake.set()

    def remove(self, flushed: Flushed) -> None:
        """No more rounds of `flushed` from the loop (a round in progress finishes)."""
        self._logs.pop(flushed, None)
        self._woken.discard(flushed)

    def wake(self, flushed: Flushed) -> None:
        """Round `flushed` as soon as it has no round in progress."""
        if flushed in self._logs:
            self._woken.add(flushed)
            if flushed not in self._rounds:
                self._wake.set()

    async def _run(self) -> None:
        while not self._closed:
            now = time.monotonic()
            idle = [at for f, at in self._logs.items() if f not in self._rounds]
            self._next = min(idle, default=now + 1.0)
            with contextlib.suppress(asyncio.TimeoutError):
                await asyncio.wait_for(self._wake.wait(), max(0.0, self._next - now))
            self._wake.clear()
            now = time.monotonic()
            for f, at in list(self._logs.items()):
                if f not in self._rounds and (at <= now or f in self._woken):
                    self._woken.discard(f)
                    self._logs[f] = now + f.interval_s
                    self._rounds[f] = asyncio.create_task(self._round(f), name="abrouter-flush-round")

    async def _round(self, f: Flushed) -> None:
        try:
            await f.flush_round()
        except Exception:  # a bug must not stop the experiment's flushing
            log.exception("event log: a flush round of %r failed", f)
        finally:
            del self._rounds[f]
            # Woken meanwhile, or due before the loop's next look: look again now.
            if f in self._woken or self._logs.get(f, math.inf) < self._next:
                self._wake.set()

    async def aclose(self) -> None:
        """Stop the loop (after every log was closed: each flushes itself on `close`) and close the client."""
        self._closed = True
        self._wake.set()
        if self._task is not None:
            await self._task
        if self._rounds:
            await asyncio.gather(*self._rounds.values(), return_exceptions=True)
        if self._client is not None:
            await self._client.aclose()
            self._client = None
