"""The gRPC listener on our own HTTP/2 (h2c): `asyncio.Protocol` connections, one `relay.Call` per stream.

The default of ``abrouter serve --grpc-port`` (``--grpc-server own``); the grpc.aio one
(`abrouter.router.grpc.listener`) stays selectable. Bytes become frames and stream events
in `abrouter.router.h2.connection`; each stream the client opens becomes a `relay.Call`,
which decides everything else. This module decides only connection matters:

- the router's `ConnectionGuard` admits connections up to the cap (the HTTP listener's
  and this one's together): beyond it a connection is closed at once (gRPC clients see
  UNAVAILABLE); the connection's clock gives the preface ``--header-timeout`` and an idle
  connection (no call open) ``--idle-timeout``, then GOAWAY and close; a call in progress
  is never cut by them (its deadline bounds it). The HTTP listener's sweeper enforces
  them for both listeners;
- at most `H2Connection.MAX_STREAMS` calls at once per connection (more are refused
  with REFUSED_STREAM, which clients retry);
- the request data a connection's calls hold (received, not yet taken by their upstreams,
  and the copies kept to send a refused call again) is bounded by
  `GrpcConnection.HOLD_LIMIT`: at it, the connection's HTTP/2 window stops being
  replenished, so one caller connection makes the router hold less than `HOLD_LIMIT` +
  `CONNECTION_WINDOW` (80 MiB), not a stream window per call (1 GiB);
- the response data held for a connection's calls (received from their upstreams, not yet
  taken by the caller) is bounded by the connection's `budget`: each upstream stream's window
  starts at `CLIENT_STREAM_WINDOW` (64 KiB) and grows to a stream window only as far as
  `BUDGET` (16 MiB) allows, and is opened again only once the caller took the bytes, so a
  caller that reads none of its answers makes the router hold at most `BUDGET` +
  `MAX_STREAMS` x 64 KiB (80 MiB), not a stream window per call (1 GiB). Both ways, one
  caller connection makes the router hold at most about 160 MiB;
- `OwnGrpcListener.close` stops accepting, sends GOAWAY (calls in flight go on, new ones
  are refused), waits for the calls in flight (up to a timeout), then cuts the rest.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import socket
from dataclasses import dataclass, field
from typing import Any

from abrouter.router.connections import ConnectionClock
from abrouter.router.grpc import relay
from abrouter.router.grpc.h2upstream import Pools
from abrouter.router.h2 import frames, native
from abrouter.router.h2.connection import CONNECTION_HOLD_LIMIT, Fields, H2Connection, Stream
from abrouter.router.state import Router

log = logging.getLogger("abrouter.listener")


class GrpcConnection(H2Connection):
    """One client connection of the gRPC listener."""

    #: An inference call keeps up to 5 + `relay.NAME_PREFIX` bytes of its first message while the rest of
    #: its prefix comes (its model name), and a call up to `relay.REPLAY_LIMIT` bytes it sent to send again
    #: until its upstream answers (counted as held too), not both: the limit is above what all of a
    #: connection's calls keep that way, else calls waiting for more of their request could hold it, the
    #: window shut for that rest.
    HOLD_LIMIT = max(CONNECTION_HOLD_LIMIT, H2Connection.MAX_STREAMS * (5 + max(relay.NAME_PREFIX, relay.REPLAY_LIMIT)))

    def __init__(
        self, router: Router, upstreams: Pools, loop: asyncio.AbstractEventLoop, registry: set[GrpcConnection]
    ) -> None:
        super().__init__(loop)
        self.router, self.upstreams, self.registry = router, upstreams, registry
        self.guard = router.guard
        self.clock = ConnectionClock(self.guard.limits, since=loop.time())
        self.peer = ""
        self.timers = relay.deadlines(loop)

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        super().connection_made(transport)
        peer = transport.get_extra_info("peername")
        self.peer = peer[0] if isinstance(peer, tuple) else ""
        self.clock.since = self.loop.time()
        self.guard.opened(self.clock, self.expire)
        self.registry.add(self)

    def connection_lost(self, exc: Exception | None) -> None:
        try:
            super().connection_lost(exc)
        finally:
            self.guard.closed(self.clock)
            self.registry.discard(self)

    def data_received(self, data: bytes) -> None:
        try:
            super().data_received(data)
        except Exception:
            log.exception("bug in the gRPC listener; the connection is closed")
            self.fail(frames.INTERNAL_ERROR, "internal error")

    def preface_received(self) -> None:
        self.clock.settled(self.loop.time())

    def stream_received(self, stream: Stream, fields: Fields, end_stream: bool) -> None:
        self.clock.stream_opened(self.loop.time())
        call = relay.Call(self.router, self.upstreams, self, stream, self.peer, self.timers)
        stream.handler = call
        try:
            call.begin(fields, end_stream)
        except Exception:
            log.exception("bug while starting the gRPC call %s", call.method[:200])
            call.crashed()

    def stream_closed(self, stream: Stream) -> None:
        self.clock.response_done(self.loop.time())

    def expire(self) -> None:
        """Past the clock's deadline (the guard's sweep): GOAWAY, and close."""
        self.goaway()
        self.close()


class _Refused(asyncio.Protocol):
    """A connection beyond the cap: closed at once."""

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        transport.close()


@dataclass
class OwnGrpcListener:
    server: asyncio.Server
    port: int
    upstreams: Pools
    connections: set[GrpcConnection] = field(default_factory=set)

    async def close(self, timeout_s: float = 30.0) -> None:
        """Stop accepting, let in-flight calls finish (at most `timeout_s`), cut the rest."""
        self.server.close()
        try:
            for conn in list(self.connections):
                conn.goaway()
            loop = asyncio.get_running_loop()
            deadline = loop.time() + timeout_s
            while self.connections and loop.time() < deadline:
                await asyncio.sleep(0.01)
            for conn in list(self.connections):
                conn.abort()
            await asyncio.sleep(0)  # connection_lost runs: the cut calls are recorded
            with contextlib.suppress(Exception):
                await asyncio.wait_for(self.server.wait_closed(), 1.0)
        finally:
            await self.upstreams.close()


def _address(host: str, port: int) -> str:
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


async def start(router: Router, *, host: str = "127.0.0.1", port: int = 0, backlog: int = 1024) -> OwnGrpcListener:
    """Serve `router` over gRPC on host:port (0: any free port). Raises OSError if the port cannot be bound.

    Every worker of ``--workers N`` binds the same port (SO_REUSEPORT): the kernel spreads the connections.
    """
    loop = asyncio.get_running_loop()
    guard = router.guard
    upstreams = Pools(loop)
    connections: set[GrpcConnection] = set()

    def protocol() -> asyncio.BaseProtocol:
        if not guard.admit():
            return _Refused()
        return GrpcConnection(router, upstreams, loop, connections)

    try:
        server = await loop.create_server(protocol, host, port, backlog=backlog, reuse_port=True)
    except OSError as exc:
        raise OSError(
            f"cannot listen for gRPC on {_address(host, port)}: the address is in use (another abrouter serve?) "
            f"or not this machine's ({exc.strerror or exc}); move it with --grpc-port"
        ) from exc
    untyped: Any = server  # uvloop's `sockets` is a list, not the tuple of asyncio's stub (the compiled build checks)
    bound = next(s.getsockname()[1] for s in untyped.sockets if s.family in (socket.AF_INET, socket.AF_INET6))
    log.info("gRPC listener on %s (own HTTP/2, %s)", _address(host, bound), native.mode())
    return OwnGrpcListener(server=server, port=bound, upstreams=upstreams, connections=connections)
