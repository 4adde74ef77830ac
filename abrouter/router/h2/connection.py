"""One HTTP/2 connection on `asyncio.Protocol`, either side: frames in, stream events out, and back.

`H2Connection` reads frames (`abrouter.router.h2.frames`), decodes header blocks
(`abrouter.router.h2.hpack`) and tells each stream's `Handler` what arrived: its header
lists (the head, then the trailers), its data, its reset. It keeps the protocol's
bookkeeping itself: the peer's settings (acknowledged), pings (answered), GOAWAY, and flow
control both ways:

- sending: DATA goes out as the peer's windows (the stream's and the connection's) allow,
  in frames no larger than the peer's SETTINGS_MAX_FRAME_SIZE; what does not fit waits in
  the stream (`Stream.pending`) until a WINDOW_UPDATE; trailers wait behind the data;
- receiving: a stream's window is replenished only once its handler has passed the data on
  (`consumed`), so a stream whose far side reads slowly stops its sender: a proxy holds at
  most one stream window per stream. A server-side stream's window is `STREAM_WINDOW`; a
  client-side one starts at `CLIENT_STREAM_WINDOW` (64 KiB, our SETTINGS_INITIAL_WINDOW_SIZE
  there) and grows to `STREAM_WINDOW` at its first replenishment, as far as its
  `Stream.budget` allows: a proxy charges the upstream streams of one caller connection's
  calls to that connection's `WindowBudget` (`RELAY_BUDGET`, 16 MiB), each keeping its
  growth until it ends and its data was passed on or dropped (an answer that ended may still
  wait for the caller: `drop`), so the response data one caller that does not read can make it hold
  is at most `RELAY_BUDGET` + `CLIENT_STREAM_WINDOW` per stream (80 MiB at `MAX_STREAMS`),
  not `STREAM_WINDOW` per stream (1 GiB). The connection's window is replenished as data
  arrives while the data held (received on open streams, neither passed on nor dropped
  with a stream that ended or was reset) is below `H2Connection.HOLD_LIMIT`; at or above
  it, the server side's WINDOW_UPDATE waits until enough was passed on or dropped, so one
  peer's connection holds less than `HOLD_LIMIT` + `CONNECTION_WINDOW`, however many
  streams it opens (without the bound: `MAX_STREAMS` stream windows, 1 GiB); a proxy's
  copies of data it passed on count as held too (`hold`, `let_go`). The client
  side never waits (a proxy's upstream connection is shared by many callers' calls: one
  slow caller must not stall the others); there a stream's window bounds each stream.
  The handler learns when its data has gone out (`Handler.sent`), once this connection's
  transport is not holding back (pause/resume writing).

Everything written in one turn of the event loop leaves in one `transport.write` per
connection, and one callback per loop (`Flusher`) writes out every connection written to
in that turn: a read that relays calls to several connections schedules one flush, not one each.
A subclass says which side it is (`CLIENT`) and what to do with a new stream from the
peer (`stream_received`, the server side) and with the peer's GOAWAY.
"""

from __future__ import annotations

import asyncio
import logging
import weakref
from collections import deque
from typing import ClassVar, Final

from abrouter.router.h2 import frames, hpack
from abrouter.router.h2.frames import FrameError

log = logging.getLogger("abrouter.h2")

Fields = list[tuple[str, str]]

#: Our receive windows: per stream, and for the connection (replenished as data arrives, while under `HOLD_LIMIT` held).
STREAM_WINDOW: Final = 1 << 20
CONNECTION_WINDOW: Final = 1 << 24
#: A client-side stream's window at its start (our SETTINGS_INITIAL_WINDOW_SIZE there; gRPC's own default): what
#: a stream may make us hold whatever its budget. It grows to `STREAM_WINDOW` once a quarter of it was passed on.
CLIENT_STREAM_WINDOW: Final = 1 << 16
#: The growth (window beyond `CLIENT_STREAM_WINDOW`) the streams charged to one `WindowBudget` may have together:
#: a connection window, 16 streams at `STREAM_WINDOW`; the calls beyond those flow at `CLIENT_STREAM_WINDOW`.
RELAY_BUDGET: Final = CONNECTION_WINDOW
#: The data a server-side connection holds (received, not yet passed on) at which it stops replenishing
#: the connection's window (`H2Connection.HOLD_LIMIT`): one connection window, so that below it nothing
#: changes (the window goes back as data arrives, as a connection whose streams are read keeps it) and
#: one peer makes us hold less than two windows, 32 MiB, rather than a stream window per stream.
CONNECTION_HOLD_LIMIT: Final = CONNECTION_WINDOW
#: The most bytes of header block (HEADERS and its CONTINUATIONs) we accept, and of the header list it
#: decodes to (our SETTINGS_MAX_HEADER_LIST_SIZE: names, values and 32 bytes a field).
MAX_HEADER_BLOCK: Final = hpack.MAX_LIST_SIZE
#: The most frames (HEADERS and its CONTINUATIONs) one header block may come in: empty ones cost nothing else.
MAX_BLOCK_FRAMES: Final = 1024
#: The most frames we answer (PING and SETTINGS acknowledged, new streams refused) while the peer does not
#: read what we wrote (the transport holds back): a peer that sends them and never reads is cut off.
MAX_HELD_ANSWERS: Final = 1000


class Flusher:
    """The connections of one event loop written to in this turn, flushed by one `call_soon`."""

    __slots__ = ("dirty", "loop", "scheduled")

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self.loop = loop
        self.dirty: list[H2Connection] = []
        self.scheduled = False

    def add(self, conn: H2Connection) -> None:
        self.dirty.append(conn)
        if not self.scheduled:
            self.scheduled = True
            self.loop.call_soon(self.run)

    def run(self) -> None:
        self.scheduled = False
        dirty, self.dirty = self.dirty, []
        for conn in dirty:
            try:
                conn._flush()
            except Exception:  # one connection's failed write does not keep the others' back
                log.exception("HTTP/2 write failed")


_flushers: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, Flusher] = weakref.WeakKeyDictionary()


def flusher(loop: asyncio.AbstractEventLoop) -> Flusher:
    """The loop's `Flusher` (one per loop)."""
    found = _flushers.get(loop)
    if found is None:
        found = _flushers[loop] = Flusher(loop)
    return found


class Handler:
    """What a stream's owner hears of it: its owner subclasses it (a class, not a `Protocol`: compiled, the
    connection calls a subclass's methods directly, not by looking them up by name per frame)."""

    __slots__ = ()

    def headers(self, stream: Stream, fields: Fields, end_stream: bool) -> None:
        """A header list arrived on the stream: its head, or (`end_stream`) its trailers."""

    def data(self, stream: Stream, payload: bytes, end_stream: bool) -> None:
        """Data arrived on the stream (`end_stream`: its last)."""

    def reset(self, stream: Stream, code: int) -> None:
        """The peer reset the stream, or the connection was lost (CANCEL) or went away before it."""

    def sent(self, stream: Stream, size: int) -> None:
        """`size` bytes of the stream's data went out (and the transport is not holding back): told even once
        the stream ended, if they went while the transport held back (what a proxy held for them is let go)."""


class WindowBudget:
    """The window growth (beyond `CLIENT_STREAM_WINDOW`) that the client-side streams charged to it may still
    be given: a proxy's upstream streams for one caller connection's calls share one, so a caller that reads
    none of its answers makes the proxy hold at most the budget and a `CLIENT_STREAM_WINDOW` per call."""

    __slots__ = ("left",)

    def __init__(self, size: int) -> None:
        self.left = size


class Stream:
    """One stream of a connection: its windows, what waits to be sent, and its owner."""

    __slots__ = (
        "budget",
        "conn",
        "end_queued",
        "handler",
        "held",
        "id",
        "local_closed",
        "pending",
        "recv_window",
        "remote_closed",
        "send_window",
        "trailers",
        "unacked",
        "window",
    )

    def __init__(self, conn: H2Connection, stream_id: int, handler: Handler | None) -> None:
        self.conn = conn
        self.id = stream_id
        self.handler = handler
        self.send_window = conn.peer_initial_window
        #: Our receive window's size (`recv_window` + `held` + `unacked`): it grows on the client side only.
        self.window = conn.stream_window
        self.recv_window = self.window
        #: What the client side's growth is charged to (None: it grows to `STREAM_WINDOW` unbounded).
        self.budget: WindowBudget | None = None
        self.unacked = 0
        #: The peer's data received on the stream and not yet passed on (`H2Connection.consumed`).
        self.held = 0
        #: Data waiting for the windows (None until some has to: most streams' data goes out at once).
        self.pending: deque[bytes] | None = None
        #: The stream's end is queued behind `pending`: trailers (a header list) or END_STREAM (an empty one).
        self.trailers: Fields | None = None
        self.end_queued = False
        self.local_closed = False
        self.remote_closed = False


class H2Connection(asyncio.Protocol):
    """One connection (see the module docstring)."""

    CLIENT: ClassVar[bool] = False
    #: The most streams the peer may open at once (a server's SETTINGS_MAX_CONCURRENT_STREAMS).
    MAX_STREAMS: ClassVar[int] = 1024
    #: Rapid reset (CVE-2023-44487): once the peer opened this many streams, a connection where
    #: more than half were reset by the peer before they ended gets GOAWAY ENHANCE_YOUR_CALM
    #: (as Envoy's premature-reset check), so one write cannot start thousands of calls for nothing.
    RESET_CHECK_AFTER: ClassVar[int] = 100
    #: The server side: data held (`held`) at which the connection's window waits (see the module docstring).
    #: A subclass whose handlers keep a stream's first bytes while they wait for more of it raises the limit
    #: above what all its streams may keep that way: else they would wait on one another, the window shut.
    HOLD_LIMIT: ClassVar[int] = CONNECTION_HOLD_LIMIT
    #: The server side: the size of `budget`, which a proxy charges the streams it opens elsewhere for this
    #: connection's streams to (their windows' growth: see the module docstring).
    BUDGET: ClassVar[int] = RELAY_BUDGET

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self.loop = loop
        #: The class's `CLIENT`, `HOLD_LIMIT` and `MAX_STREAMS` as they were when it was made: attributes of
        #: the instance, read per frame (compiled, a class variable is a dictionary lookup, these a field).
        self.client = self.CLIENT
        self.hold_limit = self.HOLD_LIMIT
        self.max_streams = self.MAX_STREAMS
        self.transport: asyncio.Transport | None = None
        self.decoder = hpack.Decoder()
        self.encoder = hpack.Encoder()
        self.streams: dict[int, Stream] = {}
        self.peer_initial_window = frames.DEFAULT_WINDOW
        self.peer_max_frame = frames.DEFAULT_MAX_FRAME
        self.peer_max_streams = 2**31 - 1
        self.send_window = frames.DEFAULT_WINDOW
        self.recv_unacked = 0
        #: The peer's data received on open streams and neither passed on (`consumed`) nor dropped with its stream.
        self.held = 0
        #: Our streams' receive window at their start (and our SETTINGS_INITIAL_WINDOW_SIZE).
        self.stream_window = CLIENT_STREAM_WINDOW if self.CLIENT else STREAM_WINDOW
        #: The server side: what a proxy's streams relaying this connection's answers charge their growth to.
        self.budget: WindowBudget | None = None if self.client else WindowBudget(self.BUDGET)
        self.closed = False
        self.write_paused = False
        #: Our GOAWAY went out (no new streams taken), and the peer's arrived (no new streams opened).
        self.going_away = False
        self.peer_went_away = False
        #: The highest stream id the peer opened.
        self.last_peer_stream = 0
        #: Streams the peer opened, and those it reset while they were open (`RESET_CHECK_AFTER`).
        self.peer_opened = 0
        self.peer_resets = 0
        self._out: list[bytes] = []
        self._flushing = False
        self._flusher = flusher(loop)
        self._parts: list[bytes] = []
        self._have = 0
        self._need = 0
        self._preface = not self.client
        self._continuing: tuple[int, int, list[bytes]] | None = None
        self._block_size = 0
        #: The peer's preface ends with its SETTINGS (§3.4): its first frame.
        self._settings_due = True
        self._held_answers = 0
        self._blocked: set[Stream] = set()
        self._deferred: list[tuple[Stream, Handler, int]] = []
        self._next_id = -1

    # --- asyncio.Protocol ---

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]  # uvloop's are no asyncio.Transport
        settings = {frames.INITIAL_WINDOW_SIZE: self.stream_window, frames.MAX_HEADER_LIST_SIZE: MAX_HEADER_BLOCK}
        if self.client:
            settings[frames.ENABLE_PUSH] = 0
        else:
            settings[frames.MAX_CONCURRENT_STREAMS] = self.max_streams
        preface = frames.PREFACE if self.client else b""
        self._write(
            preface + frames.settings(settings) + frames.window_update(0, CONNECTION_WINDOW - frames.DEFAULT_WINDOW)
        )

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        streams, self.streams = list(self.streams.values()), {}
        self.held = 0
        for stream in streams:
            if stream.budget is None:
                stream.held = 0
            elif not stream.held:
                self._give_back(stream)
            if stream.handler is not None:
                stream.handler.reset(stream, frames.CANCEL)
                stream.handler = None

    def pause_writing(self) -> None:
        self.write_paused = True

    def resume_writing(self) -> None:
        self.write_paused = False
        self._held_answers = 0
        deferred, self._deferred = self._deferred, []
        for stream, handler, size in deferred:  # the handler it had then: told even if the stream ended since
            handler.sent(stream, size)

    def data_received(self, data: bytes) -> None:
        if self._parts:
            self._parts.append(data)
            self._have += len(data)
            if self._have < self._need:
                return
            data = b"".join(self._parts)
            self._parts = []
        try:
            at = self._preface_done(data) if self._preface else 0
            if at < 0:
                return
            self._frames(data, at)
        except FrameError as exc:
            self.fail(exc.code, str(exc))
        except hpack.HpackError as bad:  # not `exc` again: compiled (mypyc), a name keeps its first type
            self.fail(frames.COMPRESSION_ERROR, str(bad))

    def _preface_done(self, data: bytes) -> int:
        size = len(frames.PREFACE)
        if len(data) < size:
            if not frames.PREFACE.startswith(data):
                raise FrameError(frames.PROTOCOL_ERROR, "not an HTTP/2 client preface")
            self._keep(data, size)
            return -1
        if not data.startswith(frames.PREFACE):
            raise FrameError(frames.PROTOCOL_ERROR, "not an HTTP/2 client preface")
        self._preface = False
        self.preface_received()
        return size

    def _keep(self, rest: bytes, need: int) -> None:
        self._parts = [rest]
        self._have = len(rest)
        self._need = need

    def _frames(self, data: bytes, at: int) -> None:
        # The frame head read byte by byte: typed ints all through when compiled (no struct tuple, no boxed ints).
        size = len(data)
        while size - at >= 9:
            length = data[at] << 16 | data[at + 1] << 8 | data[at + 2]
            if length > frames.DEFAULT_MAX_FRAME:
                raise FrameError(frames.FRAME_SIZE_ERROR, f"a frame of {length} bytes, beyond our 16384")
            end = at + 9 + length
            if end > size:
                break
            kind = data[at + 3]
            flags = data[at + 4]
            stream_id = (data[at + 5] & 0x7F) << 24 | data[at + 6] << 16 | data[at + 7] << 8 | data[at + 8]
            payload = data[at + 9 : end]
            if kind > frames.HEADERS or self._settings_due or self._continuing is not None:
                self._frame(kind, flags, stream_id, payload)
            elif kind == frames.DATA:  # the two frames of every call, dispatched here: one call fewer each
                self._data(flags, stream_id, payload)
            else:
                self._headers(flags, stream_id, payload)
            at = end
            if self.closed:
                return
        if at < size:
            rest = data[at:]
            need = 9 if len(rest) < 9 else 9 + (rest[0] << 16 | rest[1] << 8 | rest[2])
            self._keep(rest, need)

    # --- frames in ---

    def _frame(self, kind: int, flags: int, stream_id: int, payload: bytes) -> None:
        if self._settings_due:
            if kind != frames.SETTINGS or flags & frames.ACK:
                raise FrameError(frames.PROTOCOL_ERROR, "the peer's first frame is not its SETTINGS")
            self._settings_due = False
        if self._continuing is not None and kind != frames.CONTINUATION:
            raise FrameError(frames.PROTOCOL_ERROR, "a header block interrupted by another frame")
        if kind == frames.DATA:
            self._data(flags, stream_id, payload)
        elif kind == frames.HEADERS:
            self._headers(flags, stream_id, payload)
        elif kind == frames.CONTINUATION:
            self._continuation(flags, stream_id, payload)
        elif kind == frames.WINDOW_UPDATE:
            self._window_update(stream_id, frames.parse_window_update(payload))
        elif kind == frames.RST_STREAM:
            code = frames.parse_code(payload)
            if stream_id == 0 or self._idle(stream_id):
                raise FrameError(frames.PROTOCOL_ERROR, f"RST_STREAM on stream {stream_id}, never opened")
            if not self.client and stream_id in self.streams:
                self._count_reset()
            self._rst_stream(stream_id, code)
        elif kind == frames.SETTINGS:
            if stream_id:
                raise FrameError(frames.PROTOCOL_ERROR, "SETTINGS on a stream")
            if not flags & frames.ACK:
                self._settings(frames.parse_settings(payload))
            elif payload:
                raise FrameError(frames.FRAME_SIZE_ERROR, "SETTINGS ACK with a payload")
        elif kind == frames.PING:
            if stream_id:
                raise FrameError(frames.PROTOCOL_ERROR, "PING on a stream")
            if len(payload) != 8:
                raise FrameError(frames.FRAME_SIZE_ERROR, "PING payload not 8 bytes")
            if not flags & frames.ACK:
                self._answer(frames.ping_ack(payload))
        elif kind == frames.GOAWAY:
            if stream_id:
                raise FrameError(frames.PROTOCOL_ERROR, "GOAWAY on a stream")
            last, code = frames.parse_goaway(payload)
            self._goaway(last, code)
        elif kind == frames.PUSH_PROMISE:
            raise FrameError(frames.PROTOCOL_ERROR, "PUSH_PROMISE, which we disabled")
        elif kind == frames.PRIORITY:  # otherwise ignored, like unknown types (§5.5)
            if stream_id == 0:
                raise FrameError(frames.PROTOCOL_ERROR, "PRIORITY on stream 0")
            if len(payload) != 5:
                raise FrameError(frames.FRAME_SIZE_ERROR, "PRIORITY payload not 5 bytes")

    def _data(self, flags: int, stream_id: int, payload: bytes) -> None:
        size = len(payload)
        self.recv_unacked += size
        if self.recv_unacked > CONNECTION_WINDOW:  # kept to, else a window held back (`HOLD_LIMIT`) bounds nothing
            raise FrameError(frames.FLOW_CONTROL_ERROR, "the peer sent beyond the connection's window")
        stream = self.streams.get(stream_id)
        if stream is None:
            if stream_id == 0 or self._idle(stream_id):
                raise FrameError(frames.PROTOCOL_ERROR, f"DATA on stream {stream_id}, never opened")
            self._replenish()
            return  # a stream we reset or finished: its bytes count for the connection only
        if stream.remote_closed:  # after the peer's END_STREAM (§5.1, half-closed (remote))
            self._stream_error(stream_id, frames.STREAM_CLOSED)
            self._replenish()
            return
        stream.recv_window -= size
        if stream.recv_window < 0:
            raise FrameError(frames.FLOW_CONTROL_ERROR, f"stream {stream_id} sent beyond its window")
        stream.held += size
        self.held += size
        if self.recv_unacked >= CONNECTION_WINDOW // 2:
            self._replenish()
        body = payload
        if flags & frames.PADDED:
            body = frames.unpad(payload, flags)
            self.consumed(stream, size - len(body))  # padding: nobody needs to pass it on
        end = bool(flags & frames.END_STREAM)
        if end:
            stream.remote_closed = True
        if stream.handler is not None and (body or end):
            stream.handler.data(stream, body, end)
        if end:
            self._remote_closed(stream)

    def _headers(self, flags: int, stream_id: int, payload: bytes) -> None:
        if stream_id == 0:
            raise FrameError(frames.PROTOCOL_ERROR, "HEADERS on stream 0")
        block = frames.header_block(payload, flags) if flags & (frames.PADDED | frames.PRIORITY_FLAG) else payload
        if flags & frames.END_HEADERS:
            self._header_block(stream_id, flags, block)
        else:
            self._continuing = (stream_id, flags, [block])
            self._block_size = len(block)

    def _continuation(self, flags: int, stream_id: int, payload: bytes) -> None:
        if self._continuing is None or self._continuing[0] != stream_id:
            raise FrameError(frames.PROTOCOL_ERROR, "CONTINUATION without its HEADERS")
        _, first_flags, parts = self._continuing
        parts.append(payload)
        self._block_size += len(payload)
        if self._block_size > MAX_HEADER_BLOCK or len(parts) > MAX_BLOCK_FRAMES:
            raise FrameError(
                frames.ENHANCE_YOUR_CALM, f"a header block beyond {MAX_HEADER_BLOCK} bytes or {MAX_BLOCK_FRAMES} frames"
            )
        if flags & frames.END_HEADERS:
            self._continuing = None
            self._header_block(stream_id, first_flags, b"".join(parts))

    def _header_block(self, stream_id: int, flags: int, block: bytes) -> None:
        # Decoded always: the table must follow the peer's, even for a refused stream. A few bytes of
        # block can stand for MBs of fields (indexed ones repeated): beyond our SETTINGS_MAX_HEADER_LIST_SIZE
        # none is kept and the stream is reset rather than the fields passed on.
        too_big = False
        try:
            fields = self.decoder.decode(block)
        except hpack.HeaderListTooLarge:
            fields, too_big = [], True
        end = bool(flags & frames.END_STREAM)
        stream = self.streams.get(stream_id)
        if stream is None:
            if self._idle(stream_id) and (self.client or not stream_id & 1):
                raise FrameError(frames.PROTOCOL_ERROR, f"HEADERS on stream {stream_id}, which the peer may not open")
            if self.client or stream_id <= self.last_peer_stream:
                if not end and not self.client:  # not trailers (they end the stream): a new stream below the last
                    raise FrameError(frames.PROTOCOL_ERROR, f"a new stream {stream_id} below {self.last_peer_stream}")
                return  # a stream that ended: nothing listens
            self.last_peer_stream = stream_id
            if self.going_away or self._peer_streams() >= self.max_streams:
                self._answer(frames.rst_stream(stream_id, frames.REFUSED_STREAM))
                return
            if too_big or self.decoder.malformed:
                self._answer(
                    frames.rst_stream(stream_id, frames.ENHANCE_YOUR_CALM if too_big else frames.PROTOCOL_ERROR)
                )
                return
            stream = self.streams[stream_id] = Stream(self, stream_id, None)
            self.peer_opened += 1
            if end:
                stream.remote_closed = True
            self.stream_received(stream, fields, end)
            return
        if stream.remote_closed:  # after the peer's END_STREAM (§5.1, half-closed (remote))
            self._stream_error(stream_id, frames.STREAM_CLOSED)
            return
        # A request's second header list is its trailers: without END_STREAM it is malformed (RFC 9113 §8.1).
        code = (
            frames.ENHANCE_YOUR_CALM
            if too_big
            else frames.PROTOCOL_ERROR
            if not (end or self.client) or self.decoder.malformed
            else 0
        )
        if code:
            self._stream_error(stream_id, code)
            return
        if end:
            stream.remote_closed = True
        if stream.handler is not None:
            stream.handler.headers(stream, fields, end)
        if end:
            self._remote_closed(stream)

    def _idle(self, stream_id: int) -> bool:
        """Whether `stream_id` was never opened: beyond the last of the peer's or ours, or on our side's numbering
        (a server opens none, push being off)."""
        if self.client:
            return stream_id > self._next_id or not stream_id & 1
        return stream_id > self.last_peer_stream or not stream_id & 1

    def _peer_streams(self) -> int:
        return len(self.streams) if not self.client else 0

    def _window_update(self, stream_id: int, increment: int) -> None:
        if increment == 0:  # a stream error on a stream (§6.9): we end the connection for it too (§5.4.1)
            raise FrameError(frames.PROTOCOL_ERROR, f"WINDOW_UPDATE of 0 on stream {stream_id}")
        if stream_id == 0:
            self.send_window += increment
            if self.send_window > frames.MAX_WINDOW:
                raise FrameError(frames.FLOW_CONTROL_ERROR, "connection window beyond 2^31-1")
            for blocked in list(self._blocked):
                self._pump(blocked)
            return
        stream = self.streams.get(stream_id)
        if stream is None and self._idle(stream_id):
            raise FrameError(frames.PROTOCOL_ERROR, f"WINDOW_UPDATE on stream {stream_id}, never opened")
        if stream is not None:
            stream.send_window += increment
            if stream.send_window > frames.MAX_WINDOW:
                raise FrameError(frames.FLOW_CONTROL_ERROR, f"stream {stream_id}'s window beyond 2^31-1")
            if stream.pending or stream.trailers is not None or stream.end_queued:
                self._pump(stream)

    def _rst_stream(self, stream_id: int, code: int) -> None:
        stream = self._take(stream_id)
        if stream is None:
            return
        self._blocked.discard(stream)
        self._release(stream)
        stream.local_closed = stream.remote_closed = True
        if stream.handler is not None:
            stream.handler.reset(stream, code)
            stream.handler = None  # the handler holds the stream: no cycle left for the collector
        self.stream_closed(stream)

    def _count_reset(self) -> None:
        """The peer reset a stream of its own before it ended: past `RESET_CHECK_AFTER` streams, more
        resets than not is a rapid-reset attack, not a caller that cancels now and then."""
        self.peer_resets += 1
        if self.peer_opened >= self.RESET_CHECK_AFTER and 2 * self.peer_resets > self.peer_opened:
            raise FrameError(
                frames.ENHANCE_YOUR_CALM,
                f"{self.peer_resets} of {self.peer_opened} streams reset by the peer before they ended",
            )

    def _stream_error(self, stream_id: int, code: int) -> None:
        """A stream error (§5.4.2): RST_STREAM, and its handler hears of it as of a reset by the peer."""
        self._write(frames.rst_stream(stream_id, code))
        self._rst_stream(stream_id, code)

    def _settings(self, values: list[tuple[int, int]]) -> None:
        for key, value in values:
            if key == frames.INITIAL_WINDOW_SIZE:
                if value > frames.MAX_WINDOW:
                    raise FrameError(frames.FLOW_CONTROL_ERROR, "SETTINGS_INITIAL_WINDOW_SIZE beyond 2^31-1")
                delta = value - self.peer_initial_window
                self.peer_initial_window = value
                for stream in self.streams.values():
                    stream.send_window += delta
                    if stream.send_window > frames.MAX_WINDOW:  # §6.9.2
                        raise FrameError(frames.FLOW_CONTROL_ERROR, f"stream {stream.id}'s window beyond 2^31-1")
            elif key == frames.MAX_FRAME_SIZE:
                if not frames.DEFAULT_MAX_FRAME <= value <= frames.MAX_FRAME_LIMIT:
                    raise FrameError(frames.PROTOCOL_ERROR, f"SETTINGS_MAX_FRAME_SIZE {value} out of range")
                self.peer_max_frame = value
            elif key == frames.MAX_CONCURRENT_STREAMS:
                self.peer_max_streams = value
            elif key == frames.ENABLE_PUSH and value > 1:
                raise FrameError(frames.PROTOCOL_ERROR, f"SETTINGS_ENABLE_PUSH {value}, neither 0 nor 1")
        self._answer(frames.SETTINGS_ACK)
        for stream in list(self.streams.values()):
            if stream.pending:
                self._pump(stream)

    def _goaway(self, last: int, code: int) -> None:
        self.peer_went_away = True
        if self.client:  # ours above `last` were never processed: they may go elsewhere
            for stream_id in [s for s in self.streams if s > last]:
                self._rst_stream(stream_id, frames.REFUSED_STREAM)
        self.peer_goaway(last, code)
        if not self.streams:
            self.close()

    # --- hooks ---

    def preface_received(self) -> None:
        """The server side: the client's preface arrived."""

    def stream_received(self, stream: Stream, fields: Fields, end_stream: bool) -> None:
        """The server side: the peer opened `stream` with these headers; set its `handler`."""
        self.reset(stream, frames.REFUSED_STREAM)

    def peer_goaway(self, last: int, code: int) -> None:
        """The peer's GOAWAY arrived."""

    def stream_closed(self, stream: Stream) -> None:
        """A stream ended both ways, or was reset."""

    # --- sending ---

    def open_stream(self, handler: Handler) -> Stream:
        """The client side: a new stream (its headers are sent with `send_headers`)."""
        stream_id = self._next_id = self._next_id + 2
        stream = self.streams[stream_id] = Stream(self, stream_id, handler)
        return stream

    def send_headers(self, stream: Stream, fields: Fields, *, end_stream: bool = False) -> None:
        self._send_block(stream.id, self.encoder.encode(fields), frames.END_STREAM if end_stream else 0)
        if end_stream:
            self._local_closed(stream)

    def send_data(self, stream: Stream, payload: bytes, *, end_stream: bool = False) -> None:
        """Data, sent as the windows allow (see the module docstring); `end_stream` after it."""
        if stream.local_closed or stream.end_queued or stream.trailers is not None:
            return
        size = len(payload)
        pending = stream.pending
        if (
            (pending is None or not pending)
            and size <= stream.send_window
            and size <= self.send_window
            and size <= self.peer_max_frame
        ):  # nothing waits and it fits: one frame now (`_pump`'s first turn, without the queue)
            if size:
                stream.send_window -= size
                self.send_window -= size
                self._send_frame(frames.DATA, frames.END_STREAM if end_stream else 0, stream.id, payload)
                self._sent(stream, size)
            elif end_stream:
                self._send_frame(frames.DATA, frames.END_STREAM, stream.id, b"")
            if end_stream:
                self._local_closed(stream)
            return
        if payload:
            if pending is None:
                pending = stream.pending = deque()
            pending.append(payload)
        if end_stream:
            stream.end_queued = True
        self._pump(stream)

    def send_trailers(self, stream: Stream, fields: Fields) -> None:
        """The stream's last header list, after the data still waiting."""
        if stream.local_closed or stream.end_queued or stream.trailers is not None:
            return
        stream.trailers = fields
        self._pump(stream)

    def reset(self, stream: Stream, code: int) -> None:
        """Reset `stream` (nothing more is said of it to its handler)."""
        if self._take(stream.id) is None:
            return
        self._blocked.discard(stream)
        self._release(stream)
        stream.local_closed = stream.remote_closed = True
        stream.handler = None
        self._write(frames.rst_stream(stream.id, code))
        self.stream_closed(stream)

    def consumed(self, stream: Stream, size: int) -> None:
        """`size` bytes of `stream`'s data were passed on: the peer may send as many more."""
        if size > stream.held:  # no more than it holds: nothing once the stream was forgotten
            size = stream.held
            if size <= 0:
                return
        stream.held -= size
        if stream.handler is None:  # forgotten, its data still on its way out through another connection
            if not stream.held and stream.budget is not None:
                self._give_back(stream)
            return
        self.held -= size
        if self.recv_unacked >= CONNECTION_WINDOW // 2:  # the connection's window waited on what was held
            self._replenish()
        if stream.remote_closed or self.closed:
            return
        stream.unacked += size
        if stream.unacked >= stream.window >> 2:
            increment = stream.unacked + (self._grow(stream) if stream.window < STREAM_WINDOW else 0)
            stream.recv_window += increment
            self._write(frames.window_update(stream.id, increment))
            stream.unacked = 0

    def _grow(self, stream: Stream) -> int:
        """How much `stream`'s window grows (up to `STREAM_WINDOW`, as far as its budget allows), charged."""
        grow = STREAM_WINDOW - stream.window
        budget = stream.budget
        if budget is not None:
            if budget.left < grow:
                grow = budget.left if budget.left > 0 else 0
            budget.left -= grow
        stream.window += grow
        return grow

    def hold(self, stream: Stream, size: int) -> None:
        """`size` bytes of `stream`'s data are kept after they are passed on (a proxy's copy, to send again):
        counted as held (the server side's `HOLD_LIMIT`) until `let_go`, or until the stream is forgotten."""
        if stream.handler is not None:  # not once it was forgotten: nothing would give them back
            stream.held += size
            self.held += size

    def let_go(self, stream: Stream, size: int) -> None:
        """`size` bytes counted by `hold` are no longer kept (the stream's window is not touched)."""
        if size > stream.held:  # nothing once the stream was forgotten
            size = stream.held
        stream.held -= size
        self.held -= size
        if self.recv_unacked >= CONNECTION_WINDOW // 2:
            self._replenish()

    def drop(self, stream: Stream) -> None:
        """`stream` was forgotten with data of it still on its way out (`_release`), and that data was dropped
        (a proxy's caller went away): let go, its window's growth given back."""
        if stream.handler is None:
            stream.held = 0
            if stream.budget is not None:
                self._give_back(stream)

    def goaway(self, code: int = frames.NO_ERROR) -> None:
        """No new streams from the peer; those open go on. The connection closes once none are left."""
        if not self.going_away and not self.closed:
            self.going_away = True
            self._write(frames.goaway(self.last_peer_stream, code))
        if not self.streams:
            self.close()

    def fail(self, code: int, message: str) -> None:
        """A connection error: GOAWAY with `code`, then close (cut at once if the peer is not reading)."""
        log.debug("HTTP/2 connection error %d: %s", code, message)
        if not self.closed:
            self.going_away = True
            self._write(frames.goaway(self.last_peer_stream, code, message.encode()[:200]))
            if self.write_paused and self.transport is not None:  # what we hold would wait for it forever
                self.closed = True
                self.transport.abort()
            else:
                self.close()

    def close(self) -> None:
        if self.transport is not None and not self.closed:
            self._flush()
            self.transport.close()
            self.closed = True

    def abort(self) -> None:
        if self.transport is not None:
            self.transport.abort()

    # --- internals ---

    def _pump(self, stream: Stream) -> None:
        pending = stream.pending
        while pending:
            room = stream.send_window
            if self.send_window < room:
                room = self.send_window
            if self.peer_max_frame < room:
                room = self.peer_max_frame
            if room <= 0:
                self._blocked.add(stream)
                return
            chunk = pending[0]
            if len(chunk) <= room:
                pending.popleft()
            else:
                pending[0] = chunk[room:]
                chunk = chunk[:room]
            size = len(chunk)
            stream.send_window -= size
            self.send_window -= size
            end = not pending and stream.end_queued
            self._send_frame(frames.DATA, frames.END_STREAM if end else 0, stream.id, chunk)
            self._sent(stream, size)
            if end:
                self._blocked.discard(stream)
                self._local_closed(stream)
                return
        self._blocked.discard(stream)
        if stream.local_closed:
            return
        if stream.trailers is not None:
            self._send_block(stream.id, self.encoder.encode(stream.trailers), frames.END_STREAM)
            self._local_closed(stream)
        elif stream.end_queued:
            self._send_frame(frames.DATA, frames.END_STREAM, stream.id, b"")
            self._local_closed(stream)

    def _sent(self, stream: Stream, size: int) -> None:
        handler = stream.handler
        if handler is None:
            return
        if self.write_paused:
            self._deferred.append((stream, handler, size))
        else:
            handler.sent(stream, size)

    def _local_closed(self, stream: Stream) -> None:
        stream.local_closed = True
        if stream.remote_closed:
            self._forget(stream)
        elif not self.client:  # a server that answered whole need not read the rest (RFC 9113 §8.1)
            stream.handler = None
            self.reset(stream, frames.NO_ERROR)

    def _remote_closed(self, stream: Stream) -> None:
        stream.remote_closed = True
        if stream.local_closed:
            self._forget(stream)

    def _forget(self, stream: Stream) -> None:
        if self._take(stream.id) is not None:
            self._blocked.discard(stream)
            self._release(stream)
            self.stream_closed(stream)
            stream.handler = None  # the handler holds the stream: no cycle left for the collector
            if (self.going_away or self.peer_went_away) and not self.streams:
                self.close()

    def _take(self, stream_id: int) -> Stream | None:
        """The stream, no longer in `streams` (compiled, `dict.pop` with a default is a call by name)."""
        streams = self.streams
        stream = streams.get(stream_id)
        if stream is not None:
            del streams[stream_id]
        return stream

    def _release(self, stream: Stream) -> None:
        """`stream` is forgotten: what it held is dropped with it (or was never to be passed on); but a stream
        charged to a budget (a proxy's upstream stream) keeps what it held, and its charge, until the data was
        passed on (`consumed`: it may wait for the caller in the other connection) or dropped there (`drop`)."""
        if stream.held:
            self.held -= stream.held
            if stream.budget is None:
                stream.held = 0
            if self.recv_unacked >= CONNECTION_WINDOW // 2:
                self._replenish()
        if stream.budget is not None and not stream.held:
            self._give_back(stream)

    def _give_back(self, stream: Stream) -> None:
        """`stream` (charged to a budget) is forgotten: its window's growth goes back to the budget."""
        budget = stream.budget
        assert budget is not None
        budget.left += stream.window - CLIENT_STREAM_WINDOW
        stream.window = CLIENT_STREAM_WINDOW
        stream.budget = None

    def _replenish(self) -> None:
        """The connection's WINDOW_UPDATE, once half its window arrived, unless (the server side) the data
        held reached `HOLD_LIMIT`: then the peer may send at most what is left of its window."""
        if self.recv_unacked >= CONNECTION_WINDOW // 2 and (self.client or self.held < self.hold_limit):
            self._write(frames.window_update(0, self.recv_unacked))
            self.recv_unacked = 0

    def _answer(self, data: bytes) -> None:
        """A frame the peer's frame calls for: at most `MAX_HELD_ANSWERS` while the peer does not read."""
        if self.write_paused:
            self._held_answers += 1
            if self._held_answers > MAX_HELD_ANSWERS:
                raise FrameError(frames.ENHANCE_YOUR_CALM, "frames to answer in a flood, and ours not read")
        self._write(data)

    def _write(self, data: bytes) -> None:
        if self.closed:
            return
        self._out.append(data)
        if not self._flushing:
            self._flushing = True
            self._flusher.add(self)

    def _send_frame(self, kind: int, flags: int, stream_id: int, payload: bytes) -> None:
        """A frame written as its header and its payload (joined with the rest at `_flush`: not copied here)."""
        if self.closed:
            return
        out = self._out
        out.append(frames.head(kind, flags, stream_id, len(payload)))
        if payload:
            out.append(payload)
        if not self._flushing:
            self._flushing = True
            self._flusher.add(self)

    def _send_block(self, stream_id: int, block: bytes, flags: int) -> None:
        """A header block: one HEADERS frame, or HEADERS and CONTINUATIONs beyond the peer's frame size."""
        if len(block) <= self.peer_max_frame:
            self._send_frame(frames.HEADERS, flags | frames.END_HEADERS, stream_id, block)
        else:
            end = bool(flags & frames.END_STREAM)
            self._write(frames.headers(stream_id, block, end_stream=end, max_frame=self.peer_max_frame))

    def _flush(self) -> None:
        self._flushing = False
        if not self._out or self.transport is None or self.transport.is_closing():
            self._out.clear()
            return
        out = self._out[0] if len(self._out) == 1 else b"".join(self._out)
        self._out.clear()
        self.transport.write(out)
