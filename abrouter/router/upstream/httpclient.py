"""`HttptoolsTransport`: the upstream leg as a small HTTP/1.1 client on raw asyncio.

aiohttp's `ClientSession` caps the proxy at ~5k req/s per core; most of that is its
generality (cookies, redirects, tracing, a task-based connector). This client does only
what the proxy needs: one request at a time per connection, the response parsed by
httptools (llhttp), and keep-alive pools.

    HttptoolsTransport   one per app; maps a base URL to its pool and path prefix
    _Pool                one per (scheme, host, port): a LIFO list of idle connections,
                         at most `max_idle`, each reused only within `idle_timeout_s`;
                         at most `max_active` open connections, like aiohttp's
                         `limit_per_host`: a request waits for one to come free, up to
                         the connect timeout (then 504), so a burst cannot open
                         thousands of sockets to a model server
    Connection, Response one socket and one exchange on it: `abrouter.router.upstream.httpconn`
    _Attempt             a request `start` sent on an idle connection by callbacks (the
                         stream driver's common request): the connection's `Sink`, and
                         the stale-connection retry below

Stale connections: a server may close an idle keep-alive connection just as a request
goes out on it. When a reused connection closes before any byte of the response, the
request is sent once more on a fresh connection, but only when its body is bytes or
None (it can be sent again); a streamed body was consumed, so that is a 502. A server
that closes a reused connection *while processing* a bytes request, without a byte of
response, would see it twice; no HTTP server does that for an idle close, which is the
case this exists for. The default `idle_timeout_s` (4 s) stays under uvicorn's 5 s
keep-alive (KServe, MLServer), so that race is rare to begin with.

https upstreams use `ssl_context` (default: the system's verified context) with SNI.
Errors map like `AiohttpTransport`'s: refused, reset, EOF mid-response or an invalid
response is `UpstreamUnavailable`; no connection within `connect_s` or no data within
`read_s` is `UpstreamTimeout`.
"""

from __future__ import annotations

import asyncio
import ssl
import time
from collections import deque
from collections.abc import AsyncIterable
from dataclasses import replace
from urllib.parse import urlsplit

from abrouter.router.errors import UpstreamError, UpstreamTimeout, UpstreamUnavailable
from abrouter.router.headers import Headers
from abrouter.router.upstream.httpconn import Connection, Limits, Response, StaleConnection
from abrouter.router.upstream.transport import Pending, Sink, TimeoutConfig, UpstreamResponse, feed


class HttptoolsTransport:
    """Keep-alive HTTP/1.1 pools per upstream; implements `abrouter.router.upstream.transport.Transport`."""

    def __init__(
        self,
        timeouts: TimeoutConfig,
        *,
        max_idle: int = 512,
        max_active: int = 512,
        idle_timeout_s: float = 4.0,
        high_water: int = 256 * 1024,
        ssl_context: ssl.SSLContext | None = None,
    ) -> None:
        self._limits = Limits(
            connect_s=timeouts.connect_s,
            read_s=timeouts.read_s,
            max_idle=max_idle,
            max_active=max_active,
            idle_timeout_s=idle_timeout_s,
            high_water=high_water,
        )
        self._ssl_context = ssl_context
        self._routes: dict[str, tuple[_Pool, str]] = {}  # base URL -> (pool, path prefix)
        self._pools: dict[tuple[str, str, int], _Pool] = {}

    async def request(
        self, *, base_url: str, method: str, path_qs: str, headers: Headers, body: bytes | AsyncIterable[bytes] | None
    ) -> Response:
        pool, prefix = self._routes.get(base_url) or self._route(base_url)
        target = prefix + path_qs if prefix else path_qs or "/"
        conn = await pool.acquire()
        if conn.reused:
            try:
                return await conn.exchange(method, target, headers, body)
            except StaleConnection:
                if not (body is None or isinstance(body, (bytes, bytearray, memoryview))):
                    raise  # a streamed body was consumed: it cannot be sent again
                # The newest idle connection was dead, so the older ones are too (e.g. the
                # upstream restarted): the retry gets a fresh connection.
                pool.drop_idle()
            conn = await pool.acquire()
        return await conn.exchange(method, target, headers, body)

    def start(
        self, *, base_url: str, method: str, path_qs: str, headers: Headers, body: bytes | None, sink: Sink
    ) -> Pending | None:
        """The callback path (`abrouter.router.upstream.transport.Sink`): the request goes out now on an idle
        connection; None when there is none (a connection must be opened or waited for: `request`)."""
        pool, prefix = self._routes.get(base_url) or self._route(base_url)
        conn = pool.take()
        if conn is None:
            return None
        target = prefix + path_qs if prefix else path_qs or "/"
        attempt = _Attempt(pool, conn, sink, method, target, headers, body)
        try:
            conn.start(method, target, headers, body, attempt)
        except BaseException:
            conn.abandon()  # a request that could not be written (CR or LF in a header): not reused
            raise
        return attempt

    def set_timeouts(self, timeouts: TimeoutConfig) -> None:
        """New connect and read timeouts, for requests that start from now on."""
        self._limits = replace(self._limits, connect_s=timeouts.connect_s, read_s=timeouts.read_s)
        for pool in self._pools.values():
            pool.limits = self._limits

    async def close(self) -> None:
        for pool in self._pools.values():
            pool.close()
        self._pools.clear()
        self._routes.clear()
        await asyncio.sleep(0)  # connection_lost runs: no socket outlives the transport

    def _route(self, base_url: str) -> tuple[_Pool, str]:
        url = urlsplit(base_url)
        if url.scheme not in ("http", "https") or not url.hostname:
            raise ValueError(f"upstream must be an http(s) URL with a host, got {base_url!r}")
        key = (url.scheme, url.hostname, url.port or (443 if url.scheme == "https" else 80))
        pool = self._pools.get(key)
        if pool is None:
            tls = None
            if url.scheme == "https":
                tls = self._ssl_context = self._ssl_context or ssl.create_default_context()
            pool = self._pools[key] = _Pool(
                name=f"{url.scheme}://{url.netloc}",
                host=key[1],
                port=key[2],
                host_header=url.netloc,
                tls=tls,
                limits=self._limits,
            )
        route = self._routes[base_url] = (pool, url.path.rstrip("/"))
        return route


class _Pool:
    """The connections to one (scheme, host, port); idle ones are reused newest first."""

    def __init__(
        self, *, name: str, host: str, port: int, host_header: str, tls: ssl.SSLContext | None, limits: Limits
    ) -> None:
        self.name = name
        self.host_header = host_header
        self.limits = limits
        self._host = host
        self._port = port
        self._tls = tls
        self.idle: list[Connection] = []
        self.live: set[Connection] = set()
        self._opening = 0  # connects under way: not live yet, but they count against max_active
        self._waiters: deque[asyncio.Future[None]] = deque()

    def take(self) -> Connection | None:
        idle = self.idle
        while idle:
            conn = idle.pop()
            conn.pooled = False
            if time.monotonic() - conn.idle_since < self.limits.idle_timeout_s and not conn.transport.is_closing():
                conn.reused = True
                return conn
            conn.transport.close()
        return None

    def put(self, conn: Connection) -> None:
        idle = self.idle
        now = time.monotonic()
        while idle and now - idle[0].idle_since >= self.limits.idle_timeout_s:  # the oldest expire first
            expired = idle.pop(0)
            expired.pooled = False
            expired.transport.close()
        if len(idle) >= self.limits.max_idle:
            conn.transport.close()
            return
        conn.idle_since = now
        conn.pooled = True
        idle.append(conn)
        self._wake_one()

    async def acquire(self) -> Connection:
        """An idle connection, else a new one; while `max_active` are open, wait for one.

        The wait and the connect together take at most `connect_s`.
        """
        conn = self.take()
        if conn is not None:
            return conn
        loop = asyncio.get_running_loop()
        try:
            async with asyncio.timeout(self.limits.connect_s):
                while len(self.live) + self._opening >= self.limits.max_active:
                    await self._wait(loop)
                    conn = self.take()
                    if conn is not None:
                        return conn
                return await self._open(loop)
        except TimeoutError as exc:  # before OSError: TimeoutError is one
            raise UpstreamTimeout(
                f"{self.name}: no connection within {self.limits.connect_s}s "
                f"({len(self.live)} of at most {self.limits.max_active} open)"
            ) from exc

    async def _wait(self, loop: asyncio.AbstractEventLoop) -> None:
        """Until a connection is released or closed (`_wake_one`)."""
        waiter = loop.create_future()
        self._waiters.append(waiter)
        try:
            await waiter
        except BaseException:
            if waiter.done() and not waiter.cancelled():
                self._wake_one()  # woken, but leaving (timed out): pass the turn on
            else:
                self._discard(waiter)
            raise

    async def _open(self, loop: asyncio.AbstractEventLoop) -> Connection:
        self._opening += 1
        try:
            _, conn = await loop.create_connection(
                lambda: Connection(self, loop),
                self._host,
                self._port,
                ssl=self._tls,
                server_hostname=self._host if self._tls else None,
            )
        except BaseException as exc:
            self._opening -= 1
            self._wake_one()  # the slot it held is free again
            if isinstance(exc, OSError) and not isinstance(exc, TimeoutError):
                raise UpstreamUnavailable(f"{self.name}: cannot connect: {exc}") from exc
            raise
        self._opening -= 1  # connection_made has put it in `live`
        return conn

    def drop_idle(self) -> None:
        while self.idle:
            conn = self.idle.pop()
            conn.pooled = False
            conn.transport.close()

    def forget(self, conn: Connection) -> None:
        self.live.discard(conn)
        if conn.pooled:
            conn.pooled = False
            self.idle.remove(conn)
        self._wake_one()

    def _wake_one(self) -> None:
        while self._waiters:
            waiter = self._waiters.popleft()
            if not waiter.done():
                waiter.set_result(None)
                return

    def _discard(self, waiter: asyncio.Future[None]) -> None:
        try:
            self._waiters.remove(waiter)
        except ValueError:
            pass

    def close(self) -> None:
        for conn in self.idle:
            conn.pooled = False
        self.idle.clear()
        for conn in list(self.live):
            conn.transport.abort()


class _Attempt:
    """A request on the callback path (`HttptoolsTransport.start`): its connection's sink, the caller's
    `Pending`. A reused connection that turns out stale sends it once more, on a fresh connection (as
    `HttptoolsTransport.request` does, the body being bytes)."""

    __slots__ = ("_body", "_conn", "_headers", "_method", "_pool", "_sink", "_target", "_task")

    def __init__(
        self, pool: _Pool, conn: Connection, sink: Sink, method: str, target: str, headers: Headers, body: bytes | None
    ) -> None:
        self._pool, self._conn, self._sink = pool, conn, sink
        self._method, self._target, self._headers, self._body = method, target, headers, body
        self._task: asyncio.Task[None] | None = None

    def head(self, response: UpstreamResponse) -> bool:
        return self._sink.head(response)

    def body(self, data: bytes) -> None:
        self._sink.body(data)

    def failed(self, exc: UpstreamError) -> None:
        if isinstance(exc, StaleConnection) and self._task is None:
            # The newest idle connection was dead, so the older ones are too (e.g. the upstream restarted).
            self._pool.drop_idle()
            self._task = asyncio.get_running_loop().create_task(feed(self._sink, self._fresh()))
            return
        self._sink.failed(exc)

    async def _fresh(self) -> UpstreamResponse:
        conn = await self._pool.acquire()
        return await conn.exchange(self._method, self._target, self._headers, self._body)

    def cancel(self) -> None:
        if self._task is not None:
            self._task.cancel()
        else:
            self._conn.abandon()
