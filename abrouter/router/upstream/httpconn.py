"""One keep-alive HTTP/1.1 connection to an upstream, for `abrouter.router.upstream.httpclient`.

    Connection   an asyncio.Protocol: one socket, one httptools (llhttp) parser, one
                 exchange at a time; holds that exchange's state (headers, body buffer,
                 errors)
    Response     the `UpstreamResponse` handed to the proxy; `release()` returns the
                 connection to its pool only if the response was read to the end and
                 both sides keep the connection alive

An exchange runs one of two ways: `exchange` (a coroutine: the caller awaits the head,
then reads the body with `Response`'s coroutines), or `start` (callbacks: a `Sink` hears
of the head, then of the whole body or a failure, with no future and no task; the
stream driver's common request).

Requests: the head and a body of up to `ONE_WRITE_MAX` bytes go out in one write. An
async-iterator body streams with `Transfer-Encoding: chunked`, or, when the caller's
headers carry Content-Length, as exactly that many bytes. Responses: reading pauses
while more than `Limits.high_water` body bytes wait for the consumer.

A reused connection that closes before the first byte of the response raises
`StaleConnection`, so that the client can send the request once more (see
`abrouter.router.upstream.httpclient`). Refused, reset, EOF mid-response or an invalid response is
`UpstreamUnavailable`; no data within `read_s` (no body bytes taken within `SEND_TIMEOUT_S`) is `UpstreamTimeout`.
"""

from __future__ import annotations

import asyncio
import socket
from collections.abc import AsyncIterable, AsyncIterator
from dataclasses import dataclass
from typing import Protocol

import httptools

from abrouter.router.errors import UpstreamError, UpstreamTimeout, UpstreamUnavailable
from abrouter.router.headers import Headers
from abrouter.router.upstream.transport import Sink

#: How long an upstream may take no bytes of a request body being sent to it (nginx's
#: proxy_send_timeout): a model server reading a large upload slowly is not a timeout, the
#: read timeout counts only while we wait for its answer.
SEND_TIMEOUT_S = 60.0
#: A body up to this size goes out in the same write as the request head.
ONE_WRITE_MAX = 64 * 1024
#: The most bytes of status line and headers one response may have (aiohttp's client
#: allows 8 KiB per line and 128 lines): an upstream that streams headers forever is an
#: invalid response, not unbounded memory.
MAX_RESPONSE_HEAD = 64 * 1024
#: Without a body these methods still send `Content-Length: 0` (nginx answers 411 otherwise).
_BODY_METHODS = frozenset({"POST", "PUT", "PATCH"})


class StaleConnection(UpstreamUnavailable):
    """A reused connection closed before the first byte of the response."""


class ExtraResponse(Exception):
    """A second response to one request: stops the parser before it touches the first."""


@dataclass(frozen=True, slots=True)
class Limits:
    connect_s: float
    read_s: float
    #: Idle connections kept per pool; more are closed when released.
    max_idle: int
    #: Open connections per pool (busy or idle); a request waits, up to `connect_s`, for one.
    max_active: int
    #: An idle connection older than this is closed instead of reused.
    idle_timeout_s: float
    #: Buffered response body bytes at which reading from the socket pauses.
    high_water: int


class Pool(Protocol):
    """What a connection needs from its pool (`abrouter.router.upstream.httpclient._Pool`)."""

    name: str
    host_header: str
    limits: Limits
    live: set[Connection]

    def put(self, conn: Connection) -> None: ...
    def forget(self, conn: Connection) -> None: ...


class Connection(asyncio.Protocol):
    """One upstream socket; the parser callbacks (`on_*`) fill in the current exchange."""

    transport: asyncio.Transport

    def __init__(self, pool: Pool, loop: asyncio.AbstractEventLoop) -> None:
        self.pool = pool
        self.pooled = False
        self.reused = False
        self.idle_since = 0.0
        self._loop = loop
        self._parser = httptools.HttpResponseParser(self)
        self._fresh_parser_needed = False
        self._busy = False
        self._closed = False
        self._read_paused = False
        self._write_paused = False
        self._waiter: asyncio.Future[None] | None = None
        self._wait_since = 0.0
        self._wait_limit = 0.0
        self._timer: asyncio.TimerHandle | None = None
        #: The callback path's receiver of the exchange in progress (`start`); None on the coroutine path.
        self._sink: Sink | None = None
        self._body: list[bytes] = []  # reused by every exchange
        self._begin(head=False)
        self._busy = False

    # --- the exchange, as the transport and the response drive it ---

    def start(self, method: str, target: str, headers: Headers, body: bytes | None, sink: Sink) -> None:
        """The callback path: send the request now; `sink` hears of the response (`_advance`), no task and
        no future. `abandon` stops it before the response's head reached the sink."""
        self._begin(head=method == "HEAD")
        self._sink = sink
        self._send(method, target, headers, body)
        self._arm(self.pool.limits.read_s)

    def abandon(self) -> None:
        """The caller left: the sink hears nothing more, and the connection is not reused."""
        self._sink = None
        self.transport.abort()

    async def exchange(
        self, method: str, target: str, headers: Headers, body: bytes | AsyncIterable[bytes] | None
    ) -> Response:
        try:
            self._begin(head=method == "HEAD")
            if body is None or isinstance(body, (bytes, bytearray, memoryview)):
                self._send(method, target, headers, body)
            else:
                await self._send_stream(method, target, headers, body)
            while not self.headers_done:
                if self._error is not None:
                    raise self._error
                await self._wait()
            return Response(self)
        except BaseException:
            self.transport.abort()
            raise

    async def next_chunk(self) -> bytes:
        """The body bytes buffered so far (waiting for some), or b"" at the end."""
        body = self._body
        while not body:
            if self._error is not None:
                raise self._error
            if self._complete:
                return b""
            await self._wait()
        chunk = body[0] if len(body) == 1 else b"".join(body)
        body.clear()
        self._buffered = 0
        if self._read_paused:
            self._read_paused = False
            self.transport.resume_reading()
        return chunk

    async def read_body(self) -> bytes:
        parts = []
        while chunk := await self.next_chunk():  # usually one: the body came with the headers
            parts.append(chunk)
        return parts[0] if len(parts) == 1 else b"".join(parts)

    def finish(self) -> None:
        """The consumer is done: pool the connection if its response was read to the end."""
        self._busy = False
        self._sink = None
        if not (self._complete and self._keep_alive and not self._cut and not self.transport.is_closing()):
            self.transport.abort()
            return
        self._body.clear()  # a body the consumer left unread
        self._buffered = 0
        if self._read_paused:  # an idle connection must notice the upstream closing it
            self._read_paused = False
            self.transport.resume_reading()
        self.pool.put(self)

    def _begin(self, *, head: bool) -> None:
        if self._fresh_parser_needed:  # after a HEAD the parser still expects that body
            self._parser = httptools.HttpResponseParser(self)
            self._fresh_parser_needed = False
        self._busy = True
        self._head = head
        self.status = 0
        self.reason = b""
        self.headers: Headers = []
        self._head_bytes = 0
        self.content_length: int | None = None
        self._chunked = False
        self.headers_done = False
        self._informational = False
        self._complete = False
        self._keep_alive = False
        self._received = False
        self._cut = False
        self._holding = False
        self._body.clear()
        self._buffered = 0
        self._error: UpstreamError | None = None

    def _send(self, method: str, target: str, headers: Headers, body: bytes | bytearray | memoryview | None) -> None:
        if body is None:
            declared = _declared_length(headers)
            length = 0 if declared is not None or method in _BODY_METHODS else None
            self.transport.write(_head(method, target, headers, self.pool.host_header, length))
            return
        head = _head(method, target, headers, self.pool.host_header, len(body))
        if len(body) <= ONE_WRITE_MAX:
            self.transport.write(head + body)
        else:
            self.transport.write(head)
            self.transport.write(body)

    async def _send_stream(self, method: str, target: str, headers: Headers, body: AsyncIterable[bytes]) -> None:
        """Streams `body`; stops early (and will not pool) if the upstream answers or goes away."""
        declared = _declared_length(headers)
        self.transport.write(_head(method, target, headers, self.pool.host_header, declared, chunked=declared is None))
        sent = 0
        async for chunk in body:
            if self._closed or self.headers_done:
                self._cut = True  # the body was not sent in full: the connection cannot carry another request
                return
            if not chunk:
                continue
            sent += len(chunk)
            if declared is None:
                self.transport.writelines((b"%x\r\n" % len(chunk), chunk, b"\r\n"))
            elif sent > declared:
                raise ValueError(f"request body is longer than its Content-Length ({declared})")
            else:
                self.transport.write(chunk)
            while self._write_paused and not (self._closed or self.headers_done):
                await self._wait(SEND_TIMEOUT_S)
        if declared is None:
            if not self._closed:
                self.transport.write(b"0\r\n\r\n")
        elif sent != declared:
            raise ValueError(f"request body ended after {sent} of its Content-Length {declared} bytes")

    async def _wait(self, limit_s: float | None = None) -> None:
        """Until the parser or the transport wakes us; `UpstreamTimeout` after `limit_s` without
        (by default `read_s`: no data from the upstream; `SEND_TIMEOUT_S` while it takes no body).

        One lazy timer per connection instead of one per wait (a timer handle made and
        cancelled on every request costs more than the check): it fires at the earliest
        deadline it was armed for and re-arms itself for the wait in progress, if any.
        """
        waiter = self._waiter = self._loop.create_future()
        self._arm(self.pool.limits.read_s if limit_s is None else limit_s)
        try:
            await waiter
        finally:
            self._waiter = None

    def _arm(self, limit_s: float) -> None:
        """A wait of at most `limit_s` from now begins (a future's, or the sink's for the response)."""
        loop = self._loop
        self._wait_limit = limit_s
        self._wait_since = loop.time()
        deadline = self._wait_since + limit_s
        timer = self._timer
        if timer is None or timer.when() > deadline:  # none armed, or armed under a longer read timeout
            if timer is not None:
                timer.cancel()
            self._timer = loop.call_at(deadline, self._check_deadline)

    def _check_deadline(self) -> None:
        self._timer = None
        waiter = self._waiter
        sink = self._sink
        if (waiter is None or waiter.done()) and sink is None:
            return  # no wait in progress: the next one arms the timer again
        deadline = self._wait_since + self._wait_limit
        if self._loop.time() < deadline:
            self._timer = self._loop.call_at(deadline, self._check_deadline)
        elif waiter is not None:
            _expire(waiter, self.pool, self._wait_limit)
        elif self._error is None:
            self._error = UpstreamTimeout(f"{self.pool.name}: no progress within {self._wait_limit}s")
            self._advance()

    def _wake(self) -> None:
        waiter = self._waiter
        if waiter is not None and not waiter.done():
            waiter.set_result(None)

    def _advance(self) -> None:
        """The callback path: tell the sink what it waits for, once it is there.

        Called after the parser is done with the bytes received (never from inside its callbacks:
        the sink answers the client, which may start the next exchange on this very connection),
        when the connection is lost and when the read deadline passes.
        """
        sink = self._sink
        if sink is None:
            return
        if self._error is not None:
            self._sink = None
            self.transport.abort()
            sink.failed(self._error)
            return
        if not self.headers_done:
            return
        if self._holding:  # the sink has the head and waits for the whole body
            if self._complete:
                self._sink = None
                body = self._body
                data = body[0] if len(body) == 1 else b"".join(body)
                body.clear()
                self._buffered = 0
                sink.body(data)
            return
        self._holding = True
        self._sink = None  # the sink may read the body itself, on the coroutine path
        if sink.head(Response(self)) and self._busy:
            self._sink = sink
            self._advance()

    # --- asyncio.Protocol ---

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]
        sock = transport.get_extra_info("socket")
        if sock is not None and sock.family in (socket.AF_INET, socket.AF_INET6):
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)  # small requests go out now
        self.pool.live.add(self)

    def data_received(self, data: bytes) -> None:
        if not self._busy:  # bytes nobody asked for (a 408 before closing, say): unusable
            self.transport.abort()
            return
        self._received = True
        try:
            self._parser.feed_data(data)
        except (httptools.HttpParserError, httptools.HttpParserUpgrade) as exc:
            self.transport.abort()  # after an ExtraResponse the first one stands, complete
            if not self._complete:
                self._error = UpstreamUnavailable(f"{self.pool.name}: invalid HTTP response: {exc}")
                self._wake()
            self._advance()
            return
        if self._sink is not None:
            self._wait_since = self._loop.time()  # progress: the read deadline counts from here
            self._advance()
        elif self._buffered > self.pool.limits.high_water and not self._read_paused:
            self._read_paused = True
            self.transport.pause_reading()

    def connection_lost(self, exc: Exception | None) -> None:
        self._closed = True
        self.pool.forget(self)
        if self._busy and not self._complete and self._error is None:
            if self.headers_done and exc is None and self.content_length is None and not self._chunked:
                self._complete = True  # no length, not chunked: the body ends with the connection
            else:
                self._error = self._lost(exc)
        self._wake()
        self._advance()

    def pause_writing(self) -> None:
        self._write_paused = True

    def resume_writing(self) -> None:
        self._write_paused = False
        self._wake()

    def _lost(self, exc: Exception | None) -> UpstreamUnavailable:
        why = f"{type(exc).__name__}: {exc}" if exc else "closed by the upstream"
        if not self._received and self.reused:
            return StaleConnection(f"{self.pool.name}: reused keep-alive connection {why} before the response")
        where = "mid-response" if self._received else "before the response"
        return UpstreamUnavailable(f"{self.pool.name}: connection {why} {where}")

    # --- httptools callbacks ---

    def on_message_begin(self) -> None:
        if self._complete:
            raise ExtraResponse

    def on_status(self, status: bytes) -> None:
        self.reason += status
        self._count_head(len(status))

    def on_header(self, name: bytes, value: bytes) -> None:
        self._count_head(len(name) + len(value) + 4)
        self.headers.append((name.decode("latin-1"), value.decode("latin-1")))
        if len(name) == 14 and name.lower() == b"content-length":
            self.content_length = int(value)
        elif len(name) == 17 and name.lower() == b"transfer-encoding":
            self._chunked = b"chunked" in value.lower()

    def _count_head(self, size: int) -> None:
        # Raised inside a parser callback, this surfaces as an HttpParserError: a 502.
        self._head_bytes += size
        if self._head_bytes > MAX_RESPONSE_HEAD:
            raise ValueError(f"response headers exceed {MAX_RESPONSE_HEAD} bytes")

    def on_headers_complete(self) -> None:
        self.status = self._parser.get_status_code()
        if self.status < 200:  # 1xx: an interim response; the real one follows
            self._informational = True
            return
        self._keep_alive = self._parser.should_keep_alive()
        self.headers_done = True
        if self._head:  # llhttp cannot be told a HEAD response has no body
            self._complete = True
            self._fresh_parser_needed = True
        self._wake()

    def on_body(self, body: bytes) -> None:
        self._body.append(body)
        self._buffered += len(body)
        self._wake()

    def on_message_complete(self) -> None:
        if self._informational:
            self._informational = False
            self.reason = b""
            self.headers = []
            self._head_bytes = 0
            self.content_length = None
            return
        self._complete = True
        self._wake()


class Response:
    """What the proxy reads; the connection stays the pool's business."""

    __slots__ = ("_conn", "content_length", "headers", "reason", "status")

    def __init__(self, conn: Connection) -> None:
        self.status = conn.status
        self.reason = conn.reason.decode("latin-1")
        self.headers = conn.headers
        self.content_length = conn.content_length
        self._conn: Connection | None = conn

    def chunks(self) -> AsyncIterator[bytes]:
        conn = self._conn
        if conn is None:
            raise RuntimeError("the response was released")
        return _Chunks(conn)

    async def read(self) -> bytes:
        if self._conn is None:
            raise RuntimeError("the response was released")
        return await self._conn.read_body()

    def release(self) -> None:
        conn, self._conn = self._conn, None
        if conn is not None:
            conn.finish()


class _Chunks:
    """A response's body as it arrives (an async iterator: mypyc compiles no async generators)."""

    __slots__ = ("_conn",)

    def __init__(self, conn: Connection) -> None:
        self._conn = conn

    def __aiter__(self) -> _Chunks:
        return self

    async def __anext__(self) -> bytes:
        chunk = await self._conn.next_chunk()
        if not chunk:
            raise StopAsyncIteration
        return chunk


def _expire(waiter: asyncio.Future[None], pool: Pool, limit_s: float) -> None:
    if not waiter.done():
        waiter.set_exception(UpstreamTimeout(f"{pool.name}: no progress within {limit_s}s"))


def _declared_length(headers: Headers) -> int | None:
    for name, value in headers:
        if len(name) == 14 and name.lower() == "content-length":
            return int(value)
    return None


def _head(method: str, target: str, headers: Headers, host: str, length: int | None, *, chunked: bool = False) -> bytes:
    """The request line and headers, with our own framing (Content-Length or chunked)."""
    lines = [f"{method} {target} HTTP/1.1"]
    has_host = False
    for name, value in headers:
        size = len(name)
        if (size == 14 and name.lower() == "content-length") or (size == 17 and name.lower() == "transfer-encoding"):
            continue
        if size == 4 and name.lower() == "host":
            has_host = True
        lines.append(f"{name}: {value}")
    if not has_host:
        lines.append(f"Host: {host}")
    if chunked:
        lines.append("Transfer-Encoding: chunked")
    elif length is not None:
        lines.append(f"Content-Length: {length}")
    lines.append("\r\n")
    text = "\r\n".join(lines)
    if text.count("\n") != len(lines) or text.count("\r") != len(lines):
        raise ValueError("a request line or header contains CR or LF")
    return text.encode("latin-1")
