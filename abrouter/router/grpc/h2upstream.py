"""The upstream leg of our own HTTP/2 path: a small pool of h2c connections per variant endpoint.

Calls to one ``host:port`` share a connection, multiplexed, up to the server's
SETTINGS_MAX_CONCURRENT_STREAMS; beyond it another connection opens (at most
`MAX_CONNECTIONS` per endpoint; past that the least busy one takes the stream). A call the
server refused unprocessed comes back to be opened on another connection than the one that
refused it (`relay.Call._retry`), a new one if no other has room.
A connection is made on first use; calls that arrive while it connects wait for it; a
connection that cannot be made within the experiment's ``timeouts.connect`` fails those
calls as unreachable. A connection the server closes or sends GOAWAY on takes no new
calls, and the next call opens a new one.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging

from abrouter.router.grpc.relay import Call
from abrouter.router.h2 import frames
from abrouter.router.h2.connection import H2Connection

log = logging.getLogger("abrouter.grpc")

MAX_CONNECTIONS = 4


class UpstreamConnection(H2Connection):
    CLIENT = True

    def __init__(self, loop: asyncio.AbstractEventLoop, pool: Pool) -> None:
        super().__init__(loop)
        self.pool = pool

    @property
    def usable(self) -> bool:
        return not (self.closed or self.going_away or self.peer_went_away)

    @property
    def has_room(self) -> bool:
        return len(self.streams) < self.peer_max_streams

    def connection_lost(self, exc: Exception | None) -> None:
        self.pool.lost(self)
        super().connection_lost(exc)

    def data_received(self, data: bytes) -> None:
        try:
            super().data_received(data)
        except Exception:
            log.exception("bug in the gRPC upstream client; the connection to %s is closed", self.pool.address)
            self.fail(frames.INTERNAL_ERROR, "internal error")

    def peer_goaway(self, last: int, code: int) -> None:
        self.pool.lost(self)


class Pool:
    """The connections to one endpoint."""

    def __init__(self, address: str, loop: asyncio.AbstractEventLoop) -> None:
        self.address = address
        self.host, self.port = _split(address)
        self.loop = loop
        self.connections: list[UpstreamConnection] = []
        self.waiting: list[Call] = []
        self.connecting: asyncio.Task[None] | None = None

    def open(self, call: Call, *, connect_s: float, avoid: H2Connection | None = None) -> None:
        best: UpstreamConnection | None = None
        for conn in self.connections:
            if not conn.usable or conn is avoid:
                continue
            if conn.has_room:
                call.opened(conn, conn.open_stream(call))
                return
            if best is None or len(conn.streams) < len(best.streams):
                best = conn
        if best is not None and (len(self.connections) >= MAX_CONNECTIONS or self.connecting is not None):
            call.opened(best, best.open_stream(call))  # the server may refuse it: sent again, or UNAVAILABLE
            return
        if isinstance(avoid, UpstreamConnection) and avoid.usable and len(self.connections) >= MAX_CONNECTIONS:
            call.opened(avoid, avoid.open_stream(call))  # no other to be had: the one that refused it
            return
        self.waiting.append(call)
        if self.connecting is None:
            self.connecting = self.loop.create_task(self._connect(connect_s))

    async def _connect(self, connect_s: float) -> None:
        try:
            try:
                _, conn = await asyncio.wait_for(
                    self.loop.create_connection(lambda: UpstreamConnection(self.loop, self), self.host, self.port),
                    connect_s,
                )
            except (OSError, TimeoutError) as exc:
                reason = f"cannot connect to {self.address}: {exc or type(exc).__name__}"
                waiting, self.waiting = self.waiting, []
                for call in waiting:
                    call.unreachable(reason)
                return
            self.connections.append(conn)
            waiting, self.waiting = self.waiting, []
            for call in waiting:
                if not call.done:
                    call.opened(conn, conn.open_stream(call))
        finally:
            self.connecting = None

    def lost(self, conn: UpstreamConnection) -> None:
        if conn in self.connections:
            self.connections.remove(conn)

    def close(self) -> None:
        if self.connecting is not None:
            self.connecting.cancel()
        for conn in self.connections:
            conn.goaway()
            conn.close()
        self.connections.clear()


class Pools:
    """The pools by endpoint address; `relay.Upstreams` for the calls."""

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self.loop = loop
        self.pools: dict[str, Pool] = {}

    def open(self, address: str, call: Call, *, connect_s: float, avoid: H2Connection | None = None) -> None:
        pool = self.pools.get(address)
        if pool is None:
            pool = self.pools[address] = Pool(address, self.loop)
        pool.open(call, connect_s=connect_s, avoid=avoid)

    async def close(self) -> None:
        pools, self.pools = list(self.pools.values()), {}
        tasks = [pool.connecting for pool in pools if pool.connecting is not None]
        for pool in pools:
            pool.close()
        for task in tasks:
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task


def _split(address: str) -> tuple[str, int]:
    """``host:port`` (``[v6]:port``) -> (host, port)."""
    host, _, port = address.rpartition(":")
    return host.strip("[]"), int(port)
