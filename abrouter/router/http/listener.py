"""The router's listening socket: the HTTP/1.1 server with client deadlines, a connection cap and a drain.

`start` listens (on a host and port, or on a socket a supervisor bound for several
workers) with one `HttpProtocol` per connection. Beyond the cap a connection gets a 503
and is closed at once; the cap is lowered to what the process's file-descriptor limit
leaves room for (`connections.fd_bounded`), so the refusal is always an answer and never
a reset. One sweeper task closes connections past their deadline
(`abrouter.router.connections` says which deadline holds when). `Listener.close` stops
accepting, closes idle connections, lets in-flight responses finish (up to a timeout),
then cuts what is left.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import resource
import socket
from dataclasses import dataclass, field

from abrouter.router.connections import ConnectionGuard, fd_bounded
from abrouter.router.http.server import HttpProtocol
from abrouter.router.state import Router

log = logging.getLogger("abrouter.listener")

#: What a connection beyond the cap receives before it is closed.
_REFUSAL_BODY = b'{"error":"the router has too many open connections","code":"too_many_connections"}'
REFUSAL = (
    b"HTTP/1.1 503 Service Unavailable\r\nContent-Type: application/json\r\nConnection: close\r\n"
    b"Content-Length: %d\r\n\r\n%s" % (len(_REFUSAL_BODY), _REFUSAL_BODY)
)


class _Refused(asyncio.Protocol):
    """A connection beyond the cap: a 503 and the door."""

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        transport.write(REFUSAL)  # type: ignore[attr-defined]  # uvloop's are no asyncio.Transport
        transport.close()


@dataclass
class Listener:
    server: asyncio.Server
    port: int
    _sweeper: asyncio.Task[None]
    connections: set[HttpProtocol] = field(default_factory=set)

    async def close(self, timeout_s: float = 30.0) -> None:
        """Stop accepting, let in-flight responses finish (at most `timeout_s`), close the rest."""
        self.server.close()
        try:
            for conn in list(self.connections):
                conn.drain_and_close()
            loop = asyncio.get_running_loop()
            deadline = loop.time() + timeout_s
            while self.connections and loop.time() < deadline:
                await asyncio.sleep(0.01)  # the sweeper still runs: a stalled client cannot hold the drain
            for conn in list(self.connections):
                conn.abort()
            await asyncio.sleep(0)  # connection_lost runs: the cut responses are recorded
            with contextlib.suppress(Exception):
                await asyncio.wait_for(self.server.wait_closed(), 1.0)
        finally:
            self._sweeper.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._sweeper


def fd_limit() -> int:
    """This process's limit on open file descriptors, the soft limit raised to the hard one
    first (as HAProxy does): a router is a process that needs many."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard != resource.RLIM_INFINITY and soft < hard:
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
            soft = hard
        except (ValueError, OSError):
            pass
    return soft


async def start(
    router: Router,
    *,
    host: str = "127.0.0.1",
    port: int = 0,
    sock: socket.socket | None = None,
    backlog: int = 1024,
) -> Listener:
    """Serve `router` on host:port (0: any free port), or on `sock` when given (already bound)."""
    loop = asyncio.get_running_loop()
    guard = router.guard
    fds = fd_limit()
    bounded = fd_bounded(guard.limits, fds)
    if bounded is not guard.limits:
        lowered_much = bounded.max_connections < 0.9 * guard.limits.max_connections
        log.log(
            logging.WARNING if lowered_much else logging.INFO,
            "connection cap lowered from %d to %d: the file-descriptor limit (ulimit -n) is %d and every "
            "client may need an upstream socket too; raise the limit to allow more",
            guard.limits.max_connections,
            bounded.max_connections,
            fds,
        )
        guard.limits = bounded
    connections: set[HttpProtocol] = set()

    def protocol() -> asyncio.BaseProtocol:
        if not guard.admit():
            return _Refused()
        return HttpProtocol(router, loop, connections)

    if sock is not None:
        server = await loop.create_server(protocol, sock=sock, backlog=backlog)
    else:
        server = await loop.create_server(protocol, host, port, backlog=backlog)
    bound = server.sockets[0].getsockname()[1]
    sweeper = asyncio.create_task(_sweep(guard), name="abrouter-connection-sweeper")
    return Listener(server=server, port=bound, _sweeper=sweeper, connections=connections)


async def _sweep(guard: ConnectionGuard) -> None:
    loop = asyncio.get_running_loop()
    while True:
        await asyncio.sleep(guard.limits.sweep_interval_s)
        try:
            guard.sweep(loop.time())
        except Exception:  # a bug here must not leave every later connection unguarded
            log.exception("connection sweeper failed")
