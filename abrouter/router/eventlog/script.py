"""flush.lua on one Redis: assembling it from its parts, loading it, calling it, and translating Redis errors.

Every Redis failure that means "not (certainly) done" becomes `EventLogUnavailable`, so
the event log has one exception to handle: the batch waits in the spill file.

Exceptions::

    EventLogError             misuse, e.g. an experiment update that drops a metric
     ├── EventLogUnavailable  Redis cannot be reached
     └── BatchRejected        Redis is fine but the script cannot apply this batch
"""

from __future__ import annotations

import asyncio
import hashlib
import re
from collections.abc import Awaitable
from pathlib import Path
from typing import Any, TypeVar

import redis.exceptions

from abrouter import redisclient
from abrouter.contract import keys
from abrouter.router.errors import BatchRejected, EventLogUnavailable
from abrouter.router.eventlog import acks, events

#: The Lua sources: one script per command in ``lua/commands``, the small parts they share
#: in ``lua/includes``, joined at load time (as BullMQ does) so that each part is short
#: enough to read on its own.
LUA_DIR = Path(__file__).parent / "lua"
_INCLUDE = re.compile(r'^--- @include "([a-z_]+)"$', re.MULTILINE)


def assemble(command: str, lua_dir: Path = LUA_DIR) -> str:
    """The script of `command`: ``commands/<command>.lua`` with each ``--- @include "part"``
    line replaced by ``includes/<part>.lua`` (one level: includes include nothing)."""
    text = (lua_dir / "commands" / f"{command}.lua").read_text(encoding="utf-8")
    return _INCLUDE.sub(lambda m: (lua_dir / "includes" / f"{m[1]}.lua").read_text(encoding="utf-8"), text)


FLUSH_SCRIPT = assemble("flush")

# Everything that means "Redis did not (certainly) do it": connection refused or reset,
# timeouts, LOADING after a restart, MISCONF/READONLY refusals. All are retried later.
_REDIS_ERRORS = (redis.exceptions.RedisError, OSError, asyncio.TimeoutError)
T = TypeVar("T")


REJECTED = -2

# Rare (a Redis that came back without acknowledged batches): EVAL, not a loaded script.
_RECORD_HOLE = """
redis.call('HINCRBY', KEYS[1], 'lost_events', ARGV[1])
local from_ = tonumber(redis.call('HGET', KEYS[1], 'lost_from') or ARGV[2])
if tonumber(ARGV[2]) <= from_ then redis.call('HSET', KEYS[1], 'lost_from', ARGV[2]) end
local to = tonumber(redis.call('HGET', KEYS[1], 'lost_to') or ARGV[3])
if tonumber(ARGV[3]) >= to then redis.call('HSET', KEYS[1], 'lost_to', ARGV[3]) end
"""
# Redis answers that mean "not now" even when they come from inside the script.
_TRANSIENT = re.compile(r"\b(OOM|MISCONF|READONLY|BUSY|LOADING|NOREPLICAS|MASTERDOWN|TRYAGAIN|CLUSTERDOWN)\b")


def _script_failed(exc: BaseException) -> bool:
    """A runtime error of the script itself (e.g. WRONGTYPE on a key someone overwrote)."""
    if not isinstance(exc, redis.exceptions.ResponseError) or isinstance(exc, redis.exceptions.NoScriptError):
        return False
    message = str(exc)
    return "user_script" in message and not _TRANSIENT.search(message)


class FlushScript:
    """flush.lua on one Redis: loading it, calling it, translating errors.

    `client` is None until the first connection (`abrouter.redisclient.connect` needs the
    server to tell whether it is a cluster); until then every call is `EventLogUnavailable`.
    """

    def __init__(
        self,
        client: redisclient.Client | None,
        k: keys.Keys,
        outcome_id_window_s: float = keys.OUTCOME_ID_WINDOW_S,
        *,
        unit_ttl_s: float = 0.0,
        stream_events: int = keys.EVENTS_MAX_RAW,
    ) -> None:
        self.client = client
        self._keys = k.all()
        self._producers = k.producers
        self._meta = k.meta
        self._sha = hashlib.sha1(FLUSH_SCRIPT.encode()).hexdigest()
        self._caps = (str(keys.EVENTS_MAXLEN), str(stream_events), repr(float(outcome_id_window_s)))
        self._unit_ttl = repr(float(unit_ttl_s))
        #: The experiment marker (`keys.Keys.meta` ``created``) seen in the last reply; a
        #: different one later means Redis lost the experiment's data.
        self.created = ""
        #: How many times this producer found the marker changed, and the last `created`.
        self.resets = 0
        self.reset_at: float | None = None

    @property
    def _client(self) -> redisclient.Client:
        if self.client is None:
            raise EventLogUnavailable("Redis: not connected yet")
        return self.client

    async def ping(self) -> None:
        await call_redis(self._client.ping())

    async def load(self) -> None:
        await call_redis(self._client.script_load(FLUSH_SCRIPT))

    async def apply(self, batch: events.Batch, *, allow_gap: bool) -> tuple[int, int, int]:
        """(status, last seq before, repeated keyed outcomes) — see the header of flush.lua.

        BatchRejected when the script refuses the batch or fails on it (nothing written).
        """
        args = (
            batch.producer,
            str(batch.seq),
            "1" if allow_gap else "0",
            batch.payload,
            batch.events,
            *self._caps,
            self.created,
            self._unit_ttl,
            batch.cells,
        )
        try:
            reply = await self._evalsha(args)
        except EventLogUnavailable as exc:
            if exc.__cause__ is not None and _script_failed(exc.__cause__):
                raise BatchRejected(f"flush.lua failed on batch {batch.seq}: {exc.__cause__}") from exc.__cause__
            raise
        if int(reply[0]) == REJECTED:
            reason = _text(reply[3])
            raise BatchRejected(f"flush.lua refused batch {batch.seq}: {reason}")
        if len(reply) >= 5:
            self._saw_marker(_text(reply[3]), int(reply[4]) == 1)
        return int(reply[0]), int(reply[1]), int(reply[2])

    def _saw_marker(self, created: str, reset: bool) -> None:
        if reset:
            self.resets += 1
            self.reset_at = float(created)
        self.created = created

    async def _evalsha(self, args: tuple[str | bytes, ...]) -> list[Any]:
        try:
            return await call_redis(self._client.evalsha(self._sha, len(self._keys), *self._keys, *args))
        except EventLogUnavailable as exc:
            if not isinstance(exc.__cause__, redis.exceptions.NoScriptError):
                raise
            await self.load()  # a restarted (or flushed) Redis forgot the script
            return await call_redis(self._client.evalsha(self._sha, len(self._keys), *self._keys, *args))

    async def last_seqs(self, producers: list[str]) -> tuple[dict[str, int], str]:
        """The last applied seq of each producer (0 when Redis has none), and the marker's ``created``.

        One round trip (a pipeline: both keys share the experiment's hash tag): an idle log
        asks this every round, for every experiment the process serves."""
        pipe = self._client.pipeline(transaction=False)
        pipe.hmget(self._producers, producers)
        pipe.hget(self._meta, "created")
        values, created = await call_redis(pipe.execute())
        return {p: int(v or 0) for p, v in zip(producers, values)}, "" if created is None else _text(created)

    async def record_hole(self, hole: acks.Hole) -> None:
        """Add a hole to the marker (``lost_events``, ``lost_from``, ``lost_to``) for the analyzer."""
        args = (str(hole.events), repr(hole.since), repr(hole.until))
        await call_redis(self._client.eval(_RECORD_HOLE, 1, self._meta, *args))


def _text(value: bytes | str) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


async def call_redis(awaitable: Awaitable[T]) -> T:
    try:
        return await awaitable
    except _REDIS_ERRORS as exc:
        raise EventLogUnavailable(f"Redis: {exc or type(exc).__name__}") from exc
