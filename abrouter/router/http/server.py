"""The HTTP/1.1 server adapter: bytes in, stream events out, on `asyncio.Protocol` and httptools.

One `HttpProtocol` per client connection. Its httptools (llhttp) parser's callbacks
build each request's head, feed its body and drive the connection's `ConnectionClock`;
the stream driver (`abrouter.router.stream`) decides everything else. A request is a
`_Cycle`, which is also the driver's `Downstream` for that request: it renders what the
driver sends as HTTP/1.1 bytes. This module decides only wire matters:

- framing: a whole response gets its own Content-Length and goes out in one write; a
  streamed one keeps the upstream's Content-Length or is chunked (HTTP/1.0: until close);
  HEAD, 204 and 304 carry no body;
- keep-alive and ``Connection: close`` (llhttp's rule for the request's version and
  headers); a response that ends before its request body arrived closes the connection;
- pipelining: requests are answered in order, one at a time; reading pauses while a
  parsed request waits for its turn;
- ``Expect: 100-continue``: answered when the body is about to be read;
- flow control: reading stops while a streamed request body waits for the upstream
  (`BodyStream`), and the driver waits while the client reads slowly (pause/resume
  writing); the connection's clock knows, so a client is never late while we are slow;
- limits and defences: llhttp refuses request smuggling (Content-Length with
  Transfer-Encoding, repeated or invalid Content-Length, bad chunk sizes, obsolete line
  folding, bare CR or LF) with a 400; an over-long target is a 414, over-long headers a
  431, a reserved endpoint's body over `endpoints.MAX_BODY` a 413; each closes the
  connection and is counted by reason (``abrouter_bad_requests_total``);
- an HTTP/2 preface (a gRPC or h2c client) is counted, and its first request answered
  505 with gRPC's UNAVAILABLE and a reason, then GOAWAY (`abrouter.router.http.h2refusal`).

Reserved endpoints (``/abrouter/...``) are read whole and answered by
`abrouter.router.endpoints` in a task; every other request goes to the stream driver:
one whose body is held whole (the common request) to `stream.serve`, by callbacks once
the parser is done with the bytes at hand, a streamed body to `stream.proxy` in a task.
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
from collections import deque

import httptools

from abrouter.router import endpoints, stream
from abrouter.router.connections import ConnectionClock
from abrouter.router.exchange import Failure, Incoming, Problem, origin_form
from abrouter.router.headers import Headers
from abrouter.router.http import h2refusal
from abrouter.router.state import Router

log = logging.getLogger("abrouter.server")

#: The longest request target (nginx's large_client_header_buffers line: 8 KiB); longer is a 414.
MAX_TARGET = 8 * 1024
#: The most bytes of one header field (name and value), as nginx's and aiohttp's 8 KiB lines; more is a 431.
MAX_FIELD_BYTES = 8 * 1024
#: The most bytes of header fields one request may have; more is a 431.
MAX_HEADER_BYTES = 64 * 1024
#: The most header fields one request may have; more is a 431.
MAX_HEADER_FIELDS = 128

_STATUS_OF_FAILURE = {
    Failure.BAD_TARGET: 400,
    Failure.UNKNOWN_VARIANT: 400,
    Failure.NO_EXPERIMENT: 404,
    Failure.UPSTREAM_TIMEOUT: 504,
    Failure.UPSTREAM_UNAVAILABLE: 502,
    Failure.INTERNAL: 500,
}
_REASONS = {
    100: "Continue", 200: "OK", 201: "Created", 202: "Accepted", 204: "No Content", 304: "Not Modified",
    400: "Bad Request", 401: "Unauthorized", 404: "Not Found", 405: "Method Not Allowed",
    413: "Content Too Large", 414: "URI Too Long", 415: "Unsupported Media Type", 422: "Unprocessable Content",
    431: "Request Header Fields Too Large",
    500: "Internal Server Error", 502: "Bad Gateway", 503: "Service Unavailable", 504: "Gateway Timeout",
}  # fmt: skip
_CONTINUE = b"HTTP/1.1 100 Continue\r\n\r\n"
#: The first line of an HTTP/2 client's preface (RFC 9113 §3.4).
_H2_PREFACE = h2refusal.PREFACE[:16]


def render(problem: Problem) -> endpoints.Reply:
    """A failure of the stream driver as HTTP: its status and the Open Inference Protocol's JSON error."""
    extra = {"variant": problem.variant} if problem.variant is not None else {}
    body = json.dumps({"error": problem.message, "code": problem.failure.value, **extra}).encode()
    return endpoints.Reply(_STATUS_OF_FAILURE[problem.failure], body, problem.headers)


class _Reject(Exception):
    """A request refused at the wire: answered with `reply`, then the connection closes."""

    def __init__(self, reason: str, reply: endpoints.Reply) -> None:
        super().__init__(reason)
        self.reason, self.reply = reason, reply


def _reject(status: int, reason: str, message: str) -> _Reject:
    return _Reject(reason, endpoints.error(status, reason, message))


class HttpProtocol(asyncio.Protocol):
    """One client connection (see the module docstring)."""

    def __init__(
        self, router: Router, loop: asyncio.AbstractEventLoop, registry: set[HttpProtocol] | None = None
    ) -> None:
        self.router = router
        self.registry = registry
        self.loop = loop
        self.guard = router.guard
        self.clock = ConnectionClock(self.guard.limits, since=loop.time())
        self.parser = httptools.HttpRequestParser(self)
        self.transport: asyncio.Transport | None = None
        self.peer = ""
        self.closed = False
        self.first_data = True
        #: Requests parsed and waiting their turn, oldest first; the first one is being answered.
        self.queue: deque[_Cycle] = deque()
        self.parsing: _Cycle | None = None
        self.read_paused_for: set[str] = set()
        self.write_paused = False
        self.drain_waiter: asyncio.Future[None] | None = None
        self.draining = False  # the server is shutting down: close once the current response ends
        self.h2: h2refusal.Refusal | None = None  # an HTTP/2 client, answered by `h2refusal`
        #: A request said it is the last (``Connection: close``, HTTP/1.0): bytes after it are ignored.
        self.last_request_read = False
        #: Requests whose body arrived whole while the parser ran: served once it is done (`_Cycle._run`).
        self.ready: list[_Cycle] = []
        self.feeding = False

    # --- asyncio.Protocol ---

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]  # uvloop's are no asyncio.Transport
        peer = transport.get_extra_info("peername")
        self.peer = peer[0] if isinstance(peer, tuple) else ""
        self.clock.since = self.loop.time()
        self.guard.opened(self.clock, self.close)
        if self.registry is not None:
            self.registry.add(self)

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        self.guard.closed(self.clock)
        if self.registry is not None:
            self.registry.discard(self)
        for cycle in self.queue:
            cycle.client_gone()
        if self.parsing is not None and self.parsing not in self.queue:
            self.parsing.client_gone()
        self.queue.clear()
        if self.drain_waiter is not None and not self.drain_waiter.done():
            self.drain_waiter.set_exception(stream.ClientGone("the client closed the connection"))

    def data_received(self, data: bytes) -> None:
        self.clock.received(self.loop.time())
        if self.last_request_read:
            return
        if self.h2 is not None:
            self._h2_data(data)
            return
        if self.first_data:
            self.first_data = False
            if data.startswith(_H2_PREFACE[: len(data)]) and data[:3] == b"PRI":
                self._refuse_h2(data)
                return
        self.feeding = True
        try:
            self.parser.feed_data(data)
        except httptools.HttpParserUpgrade as exc:
            self._declined_upgrade(data, exc)
        except _Reject as exc:
            self._fatal(exc)
        except httptools.HttpParserError as exc:
            cause = exc.__cause__ or exc.__context__
            if self.last_request_read and self.parsing is None:
                pass  # RFC 9112 §9.6: no request after one that closes the connection is processed
            elif isinstance(cause, _Reject):
                self._fatal(cause)
            else:
                message = f"malformed request: {exc}"
                self._fatal(_Reject("bad_request", endpoints.error(400, "bad_request", message)))
        finally:
            self.feeding = False
        if self.ready:
            ready, self.ready = self.ready, []
            for cycle in ready:
                cycle._run()

    def pause_writing(self) -> None:
        self.write_paused = True

    def resume_writing(self) -> None:
        self.write_paused = False
        if self.drain_waiter is not None and not self.drain_waiter.done():
            self.drain_waiter.set_result(None)

    # --- httptools callbacks ---

    def on_message_begin(self) -> None:
        self.parsing = _Cycle(self)

    def on_url(self, url: bytes) -> None:
        cycle = self.parsing
        assert cycle is not None
        cycle.target += url.decode("latin-1")
        if len(cycle.target) > MAX_TARGET:
            raise _reject(414, "target_too_long", f"request target longer than {MAX_TARGET} bytes")

    def on_header(self, name: bytes, value: bytes) -> None:
        cycle = self.parsing
        assert cycle is not None
        size = len(name) + len(value) + 4
        cycle.head_bytes += size
        cycle.headers.append((name.decode("latin-1"), value.decode("latin-1")))
        if size > MAX_FIELD_BYTES or cycle.head_bytes > MAX_HEADER_BYTES or len(cycle.headers) > MAX_HEADER_FIELDS:
            raise _reject(
                431,
                "headers_too_large",
                f"request headers exceed {MAX_FIELD_BYTES} bytes in one field, {MAX_HEADER_BYTES} bytes "
                f"in all or {MAX_HEADER_FIELDS} fields",
            )
        if len(name) == 14 and name.lower() == b"content-length":
            cycle.content_length = int(value)
        elif len(name) == 6 and name.lower() == b"expect":
            cycle.expect_continue = value.strip().lower() == b"100-continue"
        elif len(name) == 4 and name.lower() == b"host":
            cycle.hosts += 1

    def on_headers_complete(self) -> None:
        cycle = self.parsing
        assert cycle is not None
        parser = self.parser
        cycle.method = parser.get_method().decode("ascii")
        cycle.http10 = parser.get_http_version() == "1.0"
        if cycle.hosts > 1 or (cycle.hosts == 0 and not cycle.http10):
            # RFC 9112 §3.2: exactly one Host in HTTP/1.1 (a second one is how proxies disagree).
            raise _reject(400, "bad_host", f"an HTTP/1.1 request needs exactly one Host header, got {cycle.hosts}")
        cycle.keep_alive = parser.should_keep_alive()
        self.clock.headers_complete(self.loop.time())
        cycle.headers_done()
        self.queue.append(cycle)
        if len(self.queue) == 1:
            cycle.activate()
        else:  # pipelined: parse no further until the responses before it are done
            self._pause_reading("pipeline")

    def on_body(self, body: bytes) -> None:
        cycle = self.parsing
        assert cycle is not None
        cycle.body_data(body)

    def on_message_complete(self) -> None:
        cycle = self.parsing
        assert cycle is not None
        self.parsing = None
        self.clock.body_complete()
        if not cycle.keep_alive:
            self.last_request_read = True
        cycle.body_end()

    # --- what the cycles call ---

    def write(self, data: bytes) -> None:
        assert self.transport is not None
        self.transport.write(data)

    async def drain(self) -> None:
        """Wait while the client reads slower than we write."""
        if self.closed:
            raise stream.ClientGone("the client closed the connection")
        if self.write_paused:
            self.drain_waiter = self.loop.create_future()
            try:
                await self.drain_waiter
            finally:
                self.drain_waiter = None

    def response_done(self, cycle: _Cycle) -> None:
        """`cycle`'s response went out whole: the next request's turn, or close."""
        self.clock.response_done(self.loop.time())
        if self.queue and self.queue[0] is cycle:
            self.queue.popleft()
        if not cycle.keep_alive or not cycle.body_complete or self.draining:
            self.close()
            return
        if self.queue:
            self.queue[0].activate()
        if len(self.queue) <= 1:  # the request answered now may still be arriving: its body must be read
            self._resume_reading("pipeline")

    def _pause_reading(self, why: str) -> None:
        if not self.read_paused_for and self.transport is not None and not self.closed:
            self.transport.pause_reading()
            self.clock.pause()
        self.read_paused_for.add(why)

    def _resume_reading(self, why: str) -> None:
        if why not in self.read_paused_for:
            return
        self.read_paused_for.discard(why)
        if not self.read_paused_for and self.transport is not None and not self.closed:
            self.clock.resume(self.loop.time())
            self.transport.resume_reading()

    def close(self) -> None:
        if self.transport is not None and not self.closed:
            self.transport.close()

    def abort(self) -> None:
        if self.transport is not None:
            self.transport.abort()

    def drain_and_close(self) -> None:
        """Server shutdown: close now if idle, else after the response in progress."""
        self.draining = True
        if not self.queue:
            self.close()

    # --- wire errors ---

    def _fatal(self, reject: _Reject) -> None:
        """A request we cannot parse or accept: its reply once the responses before it are out, then close."""
        self.router.metrics.bad_requests[reject.reason] += 1
        _note_malformed(reject)
        self._pause_reading("fatal")
        cycle = self.parsing
        self.parsing = None
        if cycle is not None and cycle in self.queue:  # its head was accepted: a body that broke the rules
            cycle.client_gone()
            self.queue.remove(cycle)
        reply = reject.reply
        if not self.queue:
            self._send_reply_and_close(reply)
        else:
            self.queue[-1].then_reply = reply

    def _send_reply_and_close(self, reply: endpoints.Reply) -> None:
        if self.transport is None or self.closed:
            return
        self.write(_reply_bytes(reply, connection=_CLOSE, head_only=False))
        self.close()

    def _refuse_h2(self, data: bytes) -> None:
        self.router.metrics.bad_requests["http2"] += 1
        log.warning("an HTTP/2 (or gRPC) client connected to the HTTP/1.1 port; its first call is answered 505")
        self.h2 = h2refusal.Refusal()
        self.write(h2refusal.SERVER_PREFACE)
        self._h2_data(data)

    def _h2_data(self, data: bytes) -> None:
        assert self.h2 is not None
        last = self.h2.feed(data)
        if last is not None:
            self.write(last)
            self.close()

    def _declined_upgrade(self, data: bytes, exc: httptools.HttpParserUpgrade) -> None:
        """An Upgrade we do not do (WebSocket, h2c): the request is served as plain HTTP, and
        the bytes after it are parsed as the next request, by a fresh parser.

        httptools tells llhttp to skip an Upgrade request's body, so one that has a body is
        refused before it starts: forwarded, it would lack its body (a timeout counted
        against the variant) and the body would be parsed as the next request."""
        cycle = self.queue[-1] if self.queue else None  # parsing stopped at the Upgrade request
        if cycle is not None and _declares_body(cycle):
            if cycle.task is not None:
                cycle.task.cancel()  # created by this same call, never run: no exchange began
            if cycle in self.ready:
                self.ready.remove(cycle)  # not served yet: no exchange began
            self.queue.pop()
            self._fatal(_reject(400, "upgrade_with_body", "a request with Upgrade may not have a body here"))
            return
        offset = exc.args[0] if exc.args and isinstance(exc.args[0], int) else len(data)
        self.parser = httptools.HttpRequestParser(self)
        rest = data[offset:]
        if rest:
            self.data_received(rest)


class _Cycle:
    """One request on a connection, and the driver's `Downstream` for its response."""

    __slots__ = (
        "active",
        "body",
        "body_complete",
        "chunked",
        "conn",
        "content_length",
        "done",
        "expect_continue",
        "head_bytes",
        "headers",
        "hosts",
        "http10",
        "keep_alive",
        "method",
        "parts",
        "relay",
        "reserved",
        "size",
        "started",
        "target",
        "task",
        "then_reply",
    )

    def __init__(self, conn: HttpProtocol) -> None:
        self.conn = conn
        self.target = ""
        self.headers: Headers = []
        self.head_bytes = 0
        self.hosts = 0
        self.method = ""
        self.content_length: int | None = None
        self.expect_continue = False
        self.http10 = False
        self.keep_alive = True
        self.reserved = False
        #: The body as it arrives: parts held whole, or the stream the driver reads.
        self.parts: list[bytes] | None = None
        self.size = 0
        self.body: stream.BodyStream | None = None
        self.body_complete = False
        self.active = False
        self.started = False
        self.chunked = False
        self.done = False
        self.task: asyncio.Task[None] | None = None
        #: The driver's handle of a request served by callbacks (`stream.serve`).
        self.relay: stream.Whole | None = None
        #: A wire error found in the next request: sent once this response is out.
        self.then_reply: endpoints.Reply | None = None

    # --- the request, as the protocol parses it ---

    def headers_done(self) -> None:
        path = origin_form(self.target)
        self.reserved = path is not None and endpoints.is_reserved(path.partition("?")[0])
        if self.reserved:
            if self.content_length is not None and self.content_length > endpoints.MAX_BODY:
                raise _Reject("body_too_large", endpoints.too_large())
            self.parts = []
        elif stream.hold_whole(self.content_length):
            self.parts = []
        else:
            conn = self.conn
            self.body = stream.BodyStream(
                pause=lambda: conn._pause_reading("body"), resume=lambda: conn._resume_reading("body")
            )

    def body_data(self, data: bytes) -> None:
        if self.parts is not None:
            self.parts.append(data)
            self.size += len(data)
            if self.reserved and self.size > endpoints.MAX_BODY:
                raise _Reject("body_too_large", endpoints.too_large())
        elif self.body is not None:
            self.body.feed(data)

    def body_end(self) -> None:
        self.body_complete = True
        if self.body is not None:
            self.body.end()
        elif self.active and self.task is None:
            self._run()

    def activate(self) -> None:
        """This request's turn to be answered."""
        self.active = True
        if self.expect_continue and not self.body_complete:
            self.conn.write(_CONTINUE)
        if self.body is not None or self.body_complete:
            self._run()

    def client_gone(self) -> None:
        """The connection closed: cut the body, and stop a response in progress."""
        if self.body is not None:
            self.body.cut()
        if self.done:
            return
        if self.task is not None:
            self.task.cancel()
        elif self.relay is not None:
            self.relay.client_gone()
            self.relay = None

    def _run(self) -> None:
        """Answer the request: a reserved endpoint's or a streamed body's in a task, a body held whole
        (the common request) by the driver's callbacks (`stream.serve`), never while the parser runs."""
        if self.reserved:
            self.task = self.conn.loop.create_task(self._reserved())
        elif self.parts is None:
            self.task = self.conn.loop.create_task(self._proxy())
        elif self.conn.feeding:
            self.conn.ready.append(self)
        elif not self.done and not self.conn.closed:
            relay = stream.serve(self.conn.router, self._incoming(), self._whole_body(), self)
            if relay is not None and not relay.done:
                self.relay = relay

    def _incoming(self) -> Incoming:
        return Incoming(self.method, self.target, self.headers, self.conn.peer, "http")

    def _whole_body(self) -> bytes | None:
        parts = self.parts
        if not parts:
            return b"" if self.content_length == 0 else None
        return parts[0] if len(parts) == 1 else b"".join(parts)

    async def _proxy(self) -> None:
        try:
            await stream.proxy(self.conn.router, self._incoming(), self.body, self)
        except (stream.ClientGone, asyncio.CancelledError):
            self.conn.abort()

    async def _reserved(self) -> None:
        path = origin_form(self.target) or self.target
        request = endpoints.Request(self.method, path.partition("?")[0], self.headers, b"".join(self.parts or ()))
        try:
            reply = await endpoints.handle(self.conn.router, request)
        except asyncio.CancelledError:
            return
        except Exception:
            log.exception("bug in the reserved endpoint %s %s", self.method, request.path[:200])
            reply = endpoints.error(500, "internal", "internal error in the router; see its log")
        self._send_reply(reply)

    # --- Downstream ---

    def respond(self, status: int, reason: str, headers: Headers, body: bytes, *, bodiless: bool = False) -> None:
        self.started = True
        head = _head(status, reason, headers, None if bodiless else len(body), self._connection(), chunked=False)
        self.conn.write(head + body if body and not bodiless else head)
        self._finished()

    def start(self, status: int, reason: str, headers: Headers) -> None:
        self.started = True
        length = _declared_length(headers)
        self.chunked = length is None and not self.http10
        if length is None and self.http10:
            self.keep_alive = False  # the body ends with the connection
        self.conn.write(_head(status, reason, headers, length, self._connection(), chunked=self.chunked))

    async def send(self, chunk: bytes) -> None:
        if not chunk:
            return
        conn = self.conn
        if conn.closed:
            raise stream.ClientGone("the client closed the connection")
        if self.chunked:
            conn.write(b"%x\r\n%b\r\n" % (len(chunk), chunk))
        else:
            conn.write(chunk)
        await conn.drain()

    def end(self) -> None:
        if self.chunked:
            self.conn.write(b"0\r\n\r\n")
        self._finished()

    def abort(self) -> None:
        self.done = True
        self.relay = None
        self.conn.abort()

    def fail(self, problem: Problem) -> None:
        self._send_reply(render(problem))

    # --- the end of a response ---

    def _send_reply(self, reply: endpoints.Reply) -> None:
        if self.conn.closed:
            self.done = True
            return
        self.started = True
        self.conn.write(_reply_bytes(reply, connection=self._connection(), head_only=self.method == "HEAD"))
        self._finished()

    def _connection(self) -> str:
        """The Connection line of this response's head: whether the connection stays open after it.

        Not when the client asked to close, nor when its request body has not arrived
        whole (the rest of it cannot be told from a next request), nor while shutting down.
        An HTTP/1.0 client that keeps the connection alive is told so (else it waits for a close).
        """
        conn = self.conn
        self.keep_alive = (
            self.keep_alive and self.body_complete and not conn.draining and "fatal" not in conn.read_paused_for
        )
        if not self.keep_alive:
            return _CLOSE
        return _KEEP_ALIVE if self.http10 else ""

    def _finished(self) -> None:
        self.done = True
        self.relay = None  # the driver's handle and this its Downstream: no cycle left for the collector
        conn = self.conn
        if self.then_reply is not None:  # the next request broke the rules: its 400 follows, then close
            conn.write(_reply_bytes(self.then_reply, connection=_CLOSE, head_only=False))
            self.keep_alive = False
        conn.response_done(self)


def _declares_body(cycle: _Cycle) -> bool:
    return bool(cycle.content_length) or any(name.lower() == "transfer-encoding" for name, _ in cycle.headers)


def _declared_length(headers: Headers) -> int | None:
    for name, value in headers:
        if len(name) == 14 and name.lower() == "content-length":
            try:
                return int(value)
            except ValueError:
                return None
    return None


_status_lines: dict[tuple[int, str], bytes] = {}


def _status_line(status: int, reason: str) -> bytes:
    line = _status_lines.get((status, reason))
    if line is None:
        text = reason or _REASONS.get(status, "")
        line = f"HTTP/1.1 {status} {text}\r\n".encode("latin-1")
        if len(_status_lines) < 256:
            _status_lines[(status, reason)] = line
    return line


_CLOSE = "Connection: close\r\n"
_KEEP_ALIVE = "Connection: keep-alive\r\n"


def _head(status: int, reason: str, headers: Headers, length: int | None, connection: str, *, chunked: bool) -> bytes:
    """The status line and headers; our own framing (Content-Length, chunked) and `connection` line.

    `length` None with `chunked` False keeps the headers' own Content-Length, if any (HEAD,
    204, 304 and a streamed body of declared length).
    """
    lines = []
    for name, value in headers:
        size = len(name)
        if length is not None and size == 14 and name.lower() == "content-length":
            continue
        lines.append(f"{name}: {value}\r\n")
    if length is not None:
        lines.append(f"Content-Length: {length}\r\n")
    elif chunked:
        lines.append("Transfer-Encoding: chunked\r\n")
    if connection:
        lines.append(connection)
    lines.append("\r\n")
    return _status_line(status, reason) + "".join(lines).encode("latin-1")


def _reply_bytes(reply: endpoints.Reply, *, connection: str, head_only: bool) -> bytes:
    headers = [*reply.headers, ("Content-Type", reply.content_type)]
    head = _head(reply.status, "", headers, len(reply.body), connection, chunked=False)
    return head if head_only else head + reply.body


class _MalformedLog:
    """One WARNING line per interval for the client's malformed requests, with their reason."""

    interval_s = 10.0

    def __init__(self) -> None:
        self.next = 0.0
        self.held = 0

    def note(self, reject: _Reject) -> None:
        now = time.monotonic()
        if now < self.next:
            self.held += 1
            return
        self.next = now + self.interval_s
        held, self.held = self.held, 0
        message = json.loads(reject.reply.body).get("error", reject.reason)
        log.warning(
            "request refused with %d (%s): %s (%d more in the last %.0f s not logged)",
            reject.reply.status,
            reject.reason,
            message,
            held,
            self.interval_s,
        )


#: This process's: one line per interval for all its connections.
malformed_log = _MalformedLog()


def _note_malformed(reject: _Reject) -> None:
    malformed_log.note(reject)
