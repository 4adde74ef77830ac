"""The stream driver: one proxied request from the parsed head to the exposure record.

Wire adapters only translate. An adapter (the HTTP/1.1 server in
`abrouter.router.http.server`) turns its protocol's bytes into a
head (`Incoming`), a request body (bytes it holds whole, or a `BodyStream` it feeds:
data, end of body, client gone) and calls `proxy`; for a body it holds whole, `serve`:
the same rules by callbacks, no task and no coroutine per request where the transport
can `start` the request and the response is held whole too (its `Whole` is the
transport's `Sink`; a streamed response still runs in a task, and a transport without
`start` feeds the same `Sink` from `request`). The driver sends what the client gets
through the adapter's `Downstream`: a whole response, or a head, data and an end; an
abort; or a `Problem` (a neutral `Failure`) that the adapter renders in its protocol.

(The gRPC adapters, `abrouter.router.grpc.relay` on our own HTTP/2 and
`abrouter.router.grpc.server` on grpc.aio, call the `Exchange` themselves: a call is a
stream of messages both ways, a status and trailers, relayed frame by frame with HTTP/2's
own flow control, so none of the body rules below applies; the exchange's calls and
neutral failures are the same.)

The driver owns the exchange calls, the body rules and the failure sequence, once:

- bodies up to `BUFFER_LIMIT` with a known length are held whole and sent in one write
  (no Nagle delay, no chunking); larger or unsized bodies stream in both directions
  with back-pressure (the adapter stops reading while a `BodyStream` holds more than
  `BUFFER_LIMIT`; the driver waits on `Downstream.send` while the client is slow);
- no response from the upstream: the exchange's `Problem` (upstream timeout or
  unavailable), an error of the variant;
- the upstream fails mid-response: the client's stream is aborted (it sees a cut
  response, never a complete-looking one), an error of the variant;
- the client leaves before the end of the response (or the adapter cancels the driver's
  task for it, or calls `Whole.client_gone`): logged as 499, an exposure but not an error
  of the variant;
- the client's request body never arrived whole: neither an exposure nor an error;
- anything else is a bug: a 500 (`Failure.INTERNAL`) if nothing was sent yet, else an
  abort, and the traceback in the log;
- [shadow] a request the control answered whole, when shadow variants want it
  (`shadow.wanted`), is handed to its experiment's `ShadowPool` as a copy after the exchange is
  finished, never awaited; its response body is hashed as it goes, for the comparison.

No framework and no I/O library here (checked by import-linter): asyncio and the
`Transport` seam only.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import time
from collections import deque
from collections.abc import Callable
from typing import Protocol, cast

from abrouter.contract.model import Variant
from abrouter.router import exchange, shadow
from abrouter.router.errors import UpstreamError
from abrouter.router.exchange import Exchange, Failure, Incoming, Problem
from abrouter.router.headers import Headers
from abrouter.router.upstream.transport import Pending, Transport, UpstreamResponse, feed

log = logging.getLogger("abrouter.proxy")

#: Bodies up to this size are held whole and sent in one write; larger or unsized bodies
#: stream in both directions.
BUFFER_LIMIT = 256 * 1024


def hold_whole(content_length: int | None) -> bool:
    """Whether a request body of this declared length is read whole before it is forwarded."""
    return content_length is not None and content_length <= BUFFER_LIMIT


class ClientGone(Exception):
    """The client went away: its connection closed before the exchange ended."""


class Downstream(Protocol):
    """What the driver sends to the client; one per request, implemented by each adapter."""

    #: True once anything of the response went out (`respond`, `start` or `fail`).
    started: bool

    def respond(self, status: int, reason: str, headers: Headers, body: bytes, *, bodiless: bool = False) -> None:
        """A whole response in one write; `bodiless` for HEAD, 204 and 304 (headers as they are)."""

    def start(self, status: int, reason: str, headers: Headers) -> None:
        """The head of a streamed response; its length is the upstream's, or unknown."""

    async def send(self, chunk: bytes) -> None:
        """Data of a streamed response; waits while the client is slow. Raises `ClientGone`."""

    def end(self) -> None:
        """The streamed response is complete."""

    def abort(self) -> None:
        """Cut the response: the client must see it incomplete."""

    def fail(self, problem: Problem) -> None:
        """A response the router makes itself, rendered in the adapter's protocol."""


class BodyStream:
    """A request body arriving while it is forwarded. The adapter feeds it; the driver reads it.

    `pause` and `resume` are the adapter's flow control: reading from the client stops
    while more than `high_water` bytes wait here, and resumes once they were forwarded.
    """

    __slots__ = ("_chunks", "_done", "_gone", "_paused", "_size", "_waiter", "high_water", "pause", "resume")

    def __init__(self, pause: Callable[[], None], resume: Callable[[], None], high_water: int = BUFFER_LIMIT) -> None:
        self.pause, self.resume, self.high_water = pause, resume, high_water
        self._chunks: deque[bytes] = deque()
        self._size = 0
        self._done = False
        self._gone = False
        self._paused = False
        self._waiter: asyncio.Future[None] | None = None

    # --- the adapter's side ---

    def feed(self, chunk: bytes) -> None:
        self._chunks.append(chunk)
        self._size += len(chunk)
        if self._size > self.high_water and not self._paused:
            self._paused = True
            self.pause()
        self._wake()

    def end(self) -> None:
        """The body arrived whole."""
        self._done = True
        self._wake()

    def cut(self) -> None:
        """The client went away (or was cut by a deadline) before the end of the body."""
        if not self._done:
            self._gone = True
        self._wake()

    # --- the driver's side ---

    @property
    def is_cut(self) -> bool:
        """True if the body will never arrive whole."""
        return self._gone

    def __aiter__(self) -> BodyStream:
        return self

    async def __anext__(self) -> bytes:
        # An async iterator rather than an async generator: mypyc compiles no async generators.
        while True:
            if self._chunks:
                chunk = b"".join(self._chunks) if len(self._chunks) > 1 else self._chunks[0]
                self._chunks.clear()
                self._size = 0
                if self._paused:
                    self._paused = False
                    self.resume()
                return chunk
            if self._gone:
                raise ClientGone("the client went away before the end of its request body")
            if self._done:
                raise StopAsyncIteration
            self._waiter = asyncio.get_running_loop().create_future()
            try:
                await self._waiter
            finally:
                self._waiter = None

    def _wake(self) -> None:
        if self._waiter is not None and not self._waiter.done():
            self._waiter.set_result(None)


RequestBody = bytes | BodyStream | None


Router = exchange.Services


class Lane(exchange.Experimenting, Protocol):
    """What the driver needs of an experiment served (`abrouter.router.state.Lane`)."""

    #: [shadow] Where copies for the experiment's shadow variants go (None: not copied).
    shadows: shadow.ShadowPool | None


async def proxy(router: Router, incoming: Incoming, body: RequestBody, down: Downstream) -> None:
    """Proxy one request to its variant; every outcome is recorded (see the module docstring)."""
    ex = _open(router, incoming, body, down)
    if ex is None:
        return
    pool = cast(Lane, ex.lane).shadows
    shadows = _shadows(pool, ex, body)  # [shadow]
    live = shadow.digest() if shadows else None
    try:
        await _forward(router, ex, body, down, live)
    except (ClientGone, asyncio.CancelledError):
        _client_left(ex, body)
        raise
    except Exception:
        live = None
        _crashed(ex, down)
    finally:
        ex.finish(now=time.time())
    if live is not None and pool is not None and ex.error is None:  # the control answered whole
        pool.offer(shadow.Copy.of(ex, shadows, body if isinstance(body, bytes) else None, live.digest()))


def serve(router: Router, incoming: Incoming, body: bytes | None, down: Downstream) -> Whole | None:
    """`proxy` by callbacks, for a request body held whole (or none): no task, no coroutine, when the
    transport can `start` it and the response is held whole too; the same rules, the same records.

    Returns the request's `Whole`, whose `client_gone` the adapter calls if the client leaves first;
    None when it was answered already (refused). Never raises: a bug is a 500, logged.
    """
    try:
        ex = _open(router, incoming, body, down)
        if ex is None:
            return None
    except Exception:
        log.exception("bug while proxying %s %s", incoming.method, incoming.target[:200])
        down.fail(Problem(Failure.INTERNAL, "internal error in the router; see its log"))
        return None
    whole = Whole(ex, body, down)
    whole.go()
    return whole


class Whole:
    """One request of `serve`: the transport's `Sink` for its response, then the stream's task if the
    response is to be streamed (larger than `BUFFER_LIMIT`, or unsized)."""

    __slots__ = ("done", "down", "ex", "live", "pending", "pool", "request_body", "response", "shadows", "task")

    def __init__(self, ex: Exchange, body: bytes | None, down: Downstream) -> None:
        self.ex, self.request_body, self.down = ex, body, down
        self.pool = cast(Lane, ex.lane).shadows
        self.shadows = _shadows(self.pool, ex, body)  # [shadow]
        self.live = shadow.digest() if self.shadows else None
        self.pending: Pending | None = None
        self.response: UpstreamResponse | None = None
        self.task: asyncio.Task[None] | None = None
        self.done = False

    def go(self) -> None:
        ex = self.ex
        body = self.request_body if ex.body is None else ex.body
        transport = ex.lane.transport
        try:
            start = getattr(transport, "start", None)  # the callback path, where the transport has it
            pending: Pending | None = None
            if start is not None:
                pending = start(
                    base_url=ex.variant.upstream, method=ex.incoming.method, path_qs=ex.incoming.target,
                    headers=ex.upstream_headers(), body=body, sink=self,
                )  # fmt: skip
            if pending is None:
                self.task = asyncio.get_running_loop().create_task(self._request(transport, body))
            self.pending = pending
        except Exception:
            self._crash()
            self._end()

    async def _request(self, transport: Transport, body: bytes | None) -> None:
        """The coroutine path's request, for a transport without `start` (or no connection at hand)."""
        ex = self.ex
        try:
            response = transport.request(
                base_url=ex.variant.upstream, method=ex.incoming.method, path_qs=ex.incoming.target,
                headers=ex.upstream_headers(), body=body,
            )  # fmt: skip
            await feed(self, response)
        except Exception:
            self._crash()
            self._end()

    # --- the transport's Sink ---

    def head(self, response: UpstreamResponse) -> bool:
        self.pending = None
        if self.done:
            response.release()
            return False
        self.response = response
        ex = self.ex
        try:
            ex.received(response.status)
            if _held_whole(ex, response):
                return True
            self.task = asyncio.get_running_loop().create_task(self._stream(response))
        except Exception:
            self._crash()
            self._end()
        return False

    def body(self, data: bytes) -> None:
        if self.done:
            return
        response = self.response
        assert response is not None
        try:
            _respond(self.ex, response, self.down, data, self.live)
        except Exception:
            self._crash()
        self._end()

    def failed(self, exc: UpstreamError) -> None:
        self.pending = None
        if self.done:
            return
        try:
            self.down.fail(self.ex.failed(exc))  # nothing went out yet: the client gets a clean 502/504
        except Exception:
            self._crash()
        self._end()

    # --- the adapter's side ---

    def client_gone(self) -> None:
        """The client left before the end of the response: logged as 499 (see the module docstring)."""
        if self.done:
            return
        if self.task is not None:
            self.task.cancel()
        pending, self.pending = self.pending, None
        if pending is not None:
            pending.cancel()
        self.ex.client_gone()
        self.live = None  # no copy of an exchange the client left
        self._end()

    # --- the end ---

    async def _stream(self, response: UpstreamResponse) -> None:
        if self.done:
            return
        try:
            await _stream(self.ex, response, self.down, self.live)
        except (ClientGone, asyncio.CancelledError):
            self.task = None
            if not self.done:
                self.client_gone()
                self.down.abort()
            return
        except Exception:
            self._crash()
        self._end()

    def _crash(self) -> None:
        self.live = None
        _crashed(self.ex, self.down)

    def _end(self) -> None:
        """Release the upstream's response, record the exchange, and offer its copies (once)."""
        if self.done:
            return
        self.done = True
        response, self.response = self.response, None
        if response is not None:
            response.release()
        ex = self.ex
        ex.finish(now=time.time())
        live, pool = self.live, self.pool
        if live is not None and pool is not None and ex.error is None:  # the control answered whole
            pool.offer(shadow.Copy.of(ex, self.shadows, self.request_body, live.digest()))


def _open(router: Router, incoming: Incoming, body: RequestBody, down: Downstream) -> Exchange | None:
    """The request's exchange; None when it refused the request (its problem rendered)."""
    try:
        return Exchange.start(router, incoming, now=time.time(), body=body if isinstance(body, bytes) else None)
    except exchange.Refused as refused:
        down.fail(refused.problem)
        return None


def _crashed(ex: Exchange, down: Downstream) -> None:
    """A bug: a 500 if nothing went out yet, else the response is cut; the traceback in the log."""
    ex.crashed()
    log.exception("bug while proxying %s %s", ex.request.method, ex.incoming.target[:200])
    if down.started:
        down.abort()
    else:
        down.fail(ex.problem(Failure.INTERNAL, "internal error in the router; see its log"))


def _shadows(pool: shadow.ShadowPool | None, ex: Exchange, body: RequestBody) -> tuple[Variant, ...]:
    """[shadow] The shadows this request is copied to; a streamed body is not kept, so not copied (counted)."""
    if pool is None:
        return ()
    shadows = shadow.wanted(ex)
    if shadows and isinstance(body, BodyStream):
        pool.dropped("streamed_body", len(shadows))
        return ()
    return shadows


def _client_left(ex: Exchange, body: RequestBody) -> None:
    if isinstance(body, BodyStream) and body.is_cut:
        ex.incomplete()  # the upstream never saw a whole request
    else:
        ex.client_gone()


async def _forward(
    router: Router, ex: Exchange, body: RequestBody, down: Downstream, live: hashlib.blake2b | None = None
) -> None:
    try:
        upstream = await ex.lane.transport.request(
            base_url=ex.variant.upstream,
            method=ex.incoming.method,
            path_qs=ex.incoming.target,  # origin form: never the client's scheme or authority
            headers=ex.upstream_headers(),
            body=body if ex.body is None else ex.body,
        )
    except UpstreamError as exc:
        if isinstance(body, BodyStream) and body.is_cut:  # the client stalled (and was cut) or hung up mid-body
            raise ClientGone(str(exc)) from exc
        down.fail(ex.failed(exc))
        return
    try:
        ex.received(upstream.status)
        await _relay(ex, upstream, down, live)
    finally:
        upstream.release()


async def _relay(ex: Exchange, upstream: UpstreamResponse, down: Downstream, live: hashlib.blake2b | None) -> None:
    """Send the upstream's response; `live` (when copies are wanted) hashes its body as it goes."""
    if not _held_whole(ex, upstream):
        await _stream(ex, upstream, down, live)
        return
    data = b""
    if not _bodiless(ex, upstream.status):
        try:
            data = await upstream.read()
        except UpstreamError as exc:
            down.fail(ex.failed(exc))  # nothing went out yet: the client gets a clean 502/504
            return
    _respond(ex, upstream, down, data, live)


def _bodiless(ex: Exchange, status: int) -> bool:
    return ex.incoming.method == "HEAD" or status in (204, 304)


def _held_whole(ex: Exchange, upstream: UpstreamResponse) -> bool:
    """Whether the response is read whole and sent in one write (else it streams)."""
    length = upstream.content_length
    return _bodiless(ex, upstream.status) or (length is not None and length <= BUFFER_LIMIT)


def _respond(
    ex: Exchange, upstream: UpstreamResponse, down: Downstream, data: bytes, live: hashlib.blake2b | None
) -> None:
    """A response held whole goes out in one write."""
    headers = ex.response_headers(upstream.headers)
    if _bodiless(ex, upstream.status):
        down.respond(upstream.status, upstream.reason, headers, b"", bodiless=True)
        ex.first_byte()
        return
    down.respond(upstream.status, upstream.reason, headers, data)
    ex.first_byte()
    if live is not None:
        live.update(data)


async def _stream(ex: Exchange, upstream: UpstreamResponse, down: Downstream, live: hashlib.blake2b | None) -> None:
    """A streamed response: its head, its data as it comes (waiting while the client is slow), its end."""
    down.start(upstream.status, upstream.reason, ex.response_headers(upstream.headers))
    ex.first_byte()
    try:
        async for chunk in upstream.chunks():
            await down.send(chunk)
            if live is not None:
                live.update(chunk)
    except UpstreamError as exc:
        log.warning("variant %s: upstream failed mid-response, cutting the client's: %s", ex.variant.name, exc)
        ex.aborted()
        down.abort()
        return
    down.end()
