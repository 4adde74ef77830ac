"""The stream driver: one proxied request from the parsed head to the exposure record.

Wire adapters only translate. An adapter (the HTTP/1.1 server in
`abrouter.router.http.server`) turns its protocol's bytes into a
head (`Incoming`), a request body (bytes it holds whole, or a `BodyStream` it feeds:
data, end of body, client gone) and calls `proxy`. The driver sends what the client gets
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
  task for it): logged as 499, an exposure but not an error of the variant;
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
from abrouter.router.upstream.transport import UpstreamResponse

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
    try:
        ex = Exchange.start(router, incoming, now=time.time(), body=body if isinstance(body, bytes) else None)
    except exchange.Refused as refused:
        down.fail(refused.problem)
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
        ex.crashed()
        log.exception("bug while proxying %s %s", incoming.method, ex.incoming.target[:200])
        if down.started:
            down.abort()
        else:
            down.fail(ex.problem(Failure.INTERNAL, "internal error in the router; see its log"))
    finally:
        ex.finish(now=time.time())
    if live is not None and pool is not None and ex.error is None:  # the control answered whole
        pool.offer(shadow.Copy.of(ex, shadows, body if isinstance(body, bytes) else None, live.digest()))


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
    headers = ex.response_headers(upstream.headers)
    status, reason = upstream.status, upstream.reason
    if ex.incoming.method == "HEAD" or status in (204, 304):
        down.respond(status, reason, headers, b"", bodiless=True)
        ex.first_byte()
        return
    if upstream.content_length is not None and upstream.content_length <= BUFFER_LIMIT:
        try:
            data = await upstream.read()
        except UpstreamError as exc:
            down.fail(ex.failed(exc))  # nothing went out yet: the client gets a clean 502/504
            return
        down.respond(status, reason, headers, data)
        ex.first_byte()
        if live is not None:
            live.update(data)
        return
    down.start(status, reason, headers)
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
