"""One Redis client and one flush loop for every event log of a router process.

A router serving 50 experiments has 50 `EventLog`s (one per `Lane`); each keeps its own
producer id and seqs, batches, spill and quarantine files, retained batches and loss
accounting (`Delivery`). What they share is here: the Redis client (`client`, connected
once, on first use: a single server or a Redis Cluster) and the task that flushes them
(`run`), so the process has one connection pool and one timer, not one of each per
experiment. The keys stay per experiment: every script call and read names only its
own experiment's keys (hash tags), so sharing the client shares no data.

The loop wakes when a log asks (`wake`: a full batch, a flush, Redis lost its epochs) or
when the earliest log is due (its own `interval_s` after its last round), and flushes
every log that is due, concurrently: a Redis that is down makes each log wait for its own
timeout, as before, not for the others' one after another. A log's rounds never overlap
(`EventLog` holds a lock around each), so a round of the loop and a log's own `flush` or
final flush on `close` take turns.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from typing import Protocol

from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff

from abrouter import redisclient
from abrouter.router.eventlog.script import call_redis

log = logging.getLogger("abrouter.router.eventlog.log")


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
        """Round `flushed` as soon as the loop gets to it."""
        if flushed in self._logs:
            self._woken.add(flushed)
            self._wake.set()

    async def _run(self) -> None:
        while not self._closed:
            now = time.monotonic()
            timeout = max(0.0, min(self._logs.values(), default=now + 1.0) - now)
            with contextlib.suppress(asyncio.TimeoutError):
                await asyncio.wait_for(self._wake.wait(), timeout)
            self._wake.clear()
            now = time.monotonic()
            due = [f for f, at in self._logs.items() if at <= now or f in self._woken]
            self._woken.clear()
            for f in due:
                self._logs[f] = now + f.interval_s
            if due:
                done = await asyncio.gather(*(f.flush_round() for f in due), return_exceptions=True)
                for f, outcome in zip(due, done, strict=True):
                    if isinstance(outcome, Exception):  # a bug must not stop every experiment's flushing
                        log.error("event log: a flush round of %r failed", f, exc_info=outcome)

    async def aclose(self) -> None:
        """Stop the loop (every log was closed, or is flushed by its own `close`) and close the client."""
        self._closed = True
        self._wake.set()
        if self._task is not None:
            await self._task  # ends after the round in progress, if any
        if self._client is not None:
            await self._client.aclose()
            self._client = None
