"""How much of a caller's request data one connection can make the router hold (`H2Connection.HOLD_LIMIT`).

A caller on the router's gRPC port, written by hand, keeps the router's windows as a compliant peer must
and sends on many streams to an upstream (also by hand) that grants no window: the router's connection
window shuts once it holds the limit (it holds less than the limit and one connection window), not once
every stream's window is spent; each way a stream is forgotten (the caller's reset, the router's answer
with the request ended or not, a refused stream) gives its bytes back, so the connection keeps flowing.
The limit is lowered here (the connection window, 16 MiB, is not), so a test moves a few tens of MiB.
"""

from __future__ import annotations

import asyncio
import hashlib
import random
from pathlib import Path

import pytest

from abrouter.router.grpc import h2server, h2upstream, relay
from abrouter.router.h2 import frames
from abrouter.router.h2.connection import CLIENT_STREAM_WINDOW, CONNECTION_WINDOW, STREAM_WINDOW, H2Connection
from tests.router.grpc.conftest import GrpcRouter, MakeGrpcRouter
from tests.router.grpc.servers import EchoServer
from tests.router.grpc.test_h2_conformance import (
    OK_HEAD,
    UNIT,
    WAIT_S,
    Frame,
    UpstreamWire,
    Wire,
    _head,
    _message,
    upstream,
)
from tests.router.grpc.windows import WindowedSender

#: The listener's own limit, before a test lowers it.
LISTENER_LIMIT = h2server.GrpcConnection.HOLD_LIMIT
own = pytest.mark.parametrize("grpc_server", ["own"])

#: Above half the connection window: the window is given back once before the limit holds it.
LIMIT = 12 << 20
#: The most request data the router may have let the caller send: what it may hold, and what an upstream
#: that grants nothing took (its default connection window).
BOUND = LIMIT + CONNECTION_WINDOW + frames.DEFAULT_WINDOW
#: More than `BOUND` in stream windows: without the limit the router would take it all.
STREAMS = BOUND // STREAM_WINDOW + 3
#: Calls held for as long as a loaded machine takes to move the data (the default read timeout is 5 s here).
TIMEOUTS = {"connect": 5, "read": 120}


@pytest.fixture
def limit(monkeypatch: pytest.MonkeyPatch) -> int:
    """`LIMIT` for the listener's connections."""
    monkeypatch.setattr(h2server.GrpcConnection, "HOLD_LIMIT", LIMIT)
    return LIMIT


class Caller(WindowedSender):
    """A caller that keeps to the router's windows: each stream's data goes out, a frame per stream in turn,
    as far as they allow; what comes back is kept per stream (header blocks decoded in order)."""

    wire: Wire

    def __init__(self, wire: Wire) -> None:
        super().__init__(wire)
        self.heads: dict[int, dict[str, str]] = {}
        self.trailers: dict[int, dict[str, str]] = {}
        self.bodies: dict[int, bytearray] = {}
        self.ended: set[int] = set()
        self.resets: dict[int, int] = {}
        self.goaway: tuple[int, int] | None = None
        #: Credit the router's DATA back at once (else it stays in the router: a caller that does not read).
        self.credit = True

    @classmethod
    async def connect(cls, r: GrpcRouter) -> Caller:
        """A connection, once the router's SETTINGS (its stream window) and its connection window came."""
        caller = cls(await Wire.client(r))
        for _ in range(100):
            caller.take(await caller.wire.frame())
            if caller.initial == STREAM_WINDOW and caller.conn_window == CONNECTION_WINDOW:
                return caller
        raise AssertionError("no SETTINGS or connection window from the router")

    def open(self, stream_id: int, path: str, body: bytes) -> None:
        """A call whose request is `body` (ended with its last byte)."""
        self.wire.send(
            frames.headers(stream_id, self.wire.encoder.encode(_head(path)), end_stream=False, max_frame=16384)
        )
        self.windows[stream_id] = self.initial
        self.left[stream_id] = body
        self.sent[stream_id] = 0
        self.bodies[stream_id] = bytearray()

    def reset(self, stream_id: int) -> None:
        self.wire.send(frames.rst_stream(stream_id, frames.CANCEL))
        self.left.pop(stream_id, None)

    @property
    def total(self) -> int:
        return sum(self.sent.values())

    def take(self, f: Frame) -> None:
        """What the router sent: windows, settings, answers."""
        self.take_window(f)
        if f.kind == frames.SETTINGS and not f.flags & frames.ACK:
            self.wire.send(frames.SETTINGS_ACK)
        elif f.kind == frames.HEADERS:
            assert f.flags & frames.END_HEADERS, "the router's header blocks are small here"
            fields = dict(self.wire.decoder.decode(frames.header_block(f.payload, f.flags)))
            (self.trailers if f.stream_id in self.heads else self.heads)[f.stream_id] = fields
        elif f.kind == frames.DATA:
            self.bodies[f.stream_id] += frames.unpad(f.payload, f.flags)
            if f.payload and self.credit:
                self.wire.send(
                    frames.window_update(0, len(f.payload)), frames.window_update(f.stream_id, len(f.payload))
                )
        elif f.kind == frames.RST_STREAM:
            self.resets[f.stream_id] = frames.parse_code(f.payload)
            self.left.pop(f.stream_id, None)
        elif f.kind == frames.GOAWAY:
            self.goaway = frames.parse_goaway(f.payload)
        if f.kind in (frames.HEADERS, frames.DATA) and f.flags & frames.END_STREAM:
            self.ended.add(f.stream_id)

    async def step(self) -> Frame:
        f = await self.wire.frame()
        self.take(f)
        return f

    async def until_ended(self, streams: list[int]) -> None:
        """Send as the windows allow, until the router ended each of `streams`."""
        for _ in range(1_000_000):
            while self.pump():
                await self.wire.writer.drain()
            if self.ended.issuperset(streams):
                return
            await self.step()
        raise AssertionError(f"not ended: {sorted(set(streams) - self.ended)}")


def _body(seed: int, size: int) -> bytes:
    """A request of one message of `size` bytes, different at every place (a byte out of order shows)."""
    return _message(random.Random(seed).randbytes(size))


def _digest(body: bytes) -> bytes:
    return _message(hashlib.sha256(body).hexdigest().encode())


async def _heads(wire: UpstreamWire, calls: int) -> None:
    """Frames in (no window granted) until `calls` requests began."""
    wire.credit = False
    for _ in range(100_000):
        if len(wire.heads) >= calls:
            return
        await wire.step()


def _grant(wire: UpstreamWire) -> None:
    """Windows for everything: the connection's, and each stream's begun so far."""
    wire.send(frames.window_update(0, 1 << 30))
    for s in wire.heads:
        wire.send(frames.window_update(s, 1 << 24))


async def _answer(wire: UpstreamWire, calls: int) -> None:
    """Read `calls` requests whole, and answer each with the digest of what arrived."""
    for req in await wire.requests(calls):
        wire.respond(req.stream_id, OK_HEAD)
        wire.send(frames.data(req.stream_id, _digest(req.body)))
        wire.respond(req.stream_id, [("grpc-status", "0")], end_stream=True)


def _streams(count: int, first: int = 1) -> list[int]:
    return [first + 2 * n for n in range(count)]


def _held_at_the_connection(caller: Caller, limit: int = LIMIT) -> None:
    """The connection's window shut, not the streams': the router holds its limit, not a window per stream."""
    bound = limit + CONNECTION_WINDOW + frames.DEFAULT_WINDOW
    assert caller.total <= bound, (caller.total, bound)
    assert caller.conn_window == 0
    assert caller.left and all(caller.windows[s] > 0 for s in caller.left), caller.windows


# --- the bound ---


@own
@pytest.mark.usefixtures("limit")
async def test_a_caller_sending_on_many_streams_to_an_upstream_that_reads_nothing_is_held_at_the_limit_then_flows(
    make_grpc_router: MakeGrpcRouter,
) -> None:
    read = asyncio.Event()
    streams = _streams(STREAMS)
    bodies = {s: _body(s, STREAM_WINDOW + (STREAM_WINDOW >> 2)) for s in streams}  # beyond a stream window each

    async def serve(wire: UpstreamWire) -> None:
        await _heads(wire, len(streams))
        await asyncio.wait_for(read.wait(), WAIT_S * 4)
        _grant(wire)
        await _answer(wire, len(streams))

    async with upstream(serve) as u:
        r = await make_grpc_router({"control": u.address, "candidate": u.address}, timeouts=TIMEOUTS)
        caller = await Caller.connect(r)
        try:
            for s in streams:
                caller.open(s, "/test.Quirky/Upload", bodies[s])
            await caller.until_shut()
            _held_at_the_connection(caller)
            # Not before the limit: the last window given back came with less than it held, and half a window
            # later it held the limit.
            assert caller.total >= LIMIT + CONNECTION_WINDOW // 2
            read.set()
            await caller.until_ended(streams)
        finally:
            caller.wire.close()
    assert not caller.resets and caller.goaway is None
    for s in streams:
        assert caller.trailers[s]["grpc-status"] == "0", caller.trailers[s]
        assert bytes(caller.bodies[s]) == _digest(bodies[s])  # every byte arrived, in order


@own
async def test_the_copies_kept_to_send_calls_again_count_as_held_until_the_upstream_answers(
    make_grpc_router: MakeGrpcRouter, monkeypatch: pytest.MonkeyPatch
) -> None:
    """An upstream that reads every request but answers none yet: each call's first bytes are kept (up to
    `relay.REPLAY_LIMIT`) in case the upstream refuses it, and count as held, so the window shuts; the
    upstream's first response frame lets them go, and the rest of every request flows."""
    limit = 2 << 20  # below half the connection window: it shuts once the first window is spent (16 MiB)
    monkeypatch.setattr(h2server.GrpcConnection, "HOLD_LIMIT", limit)
    streams = _streams(CONNECTION_WINDOW // relay.REPLAY_LIMIT + 64)  # each keeps at most REPLAY_LIMIT
    bodies = {s: _body(s, relay.REPLAY_LIMIT + (relay.REPLAY_LIMIT >> 1)) for s in streams}
    shut = asyncio.Event()

    async def serve(wire: UpstreamWire) -> None:
        """Reads in large pieces, frames parsed by hand: it keeps up with the router (its windows were opened
        wide at once), so what the router holds is its copies, not bytes the upstream was slow to take."""
        wire.send(frames.window_update(0, 1 << 30))
        data, at = bytearray(), 0
        bodies: dict[int, bytearray] = {}
        ended: set[int] = set()
        answered: set[int] = set()
        for _ in range(1_000_000):
            if shut.is_set():  # the test saw the window shut (and woke us with a PING): each call is answered
                for s in set(bodies) - answered:
                    wire.respond(s, OK_HEAD)
                    answered.add(s)
                if len(ended) == len(streams):
                    break
            piece = await asyncio.wait_for(wire.reader.read(1 << 20), WAIT_S)
            assert piece, "the router closed the connection"
            data += piece
            while len(data) - at >= 9:
                high, low, kind, flags, stream_id = frames.HEAD.unpack_from(data, at)
                end = at + 9 + (high << 8 | low)
                if end > len(data):
                    break
                payload = bytes(data[at + 9 : end])
                at = end
                if kind == frames.HEADERS:
                    bodies.setdefault(stream_id, bytearray())
                elif kind == frames.DATA:
                    bodies[stream_id] += payload
                elif kind == frames.SETTINGS and not flags & frames.ACK:
                    wire.send(frames.SETTINGS_ACK)
                elif kind == frames.PING and not flags & frames.ACK:
                    wire.send(frames.ping_ack(payload))
                if kind in (frames.HEADERS, frames.DATA) and flags & frames.END_STREAM:
                    ended.add(stream_id)
            del data[:at]
            at = 0
        for s, body in bodies.items():
            wire.send(frames.data(s, _digest(bytes(body))))
            wire.respond(s, [("grpc-status", "0")], end_stream=True)
        while await wire.reader.read(1 << 20):  # the rest, unread, until the router closes the connection
            pass

    async with upstream(serve, {frames.INITIAL_WINDOW_SIZE: frames.MAX_WINDOW}) as u:
        r = await make_grpc_router({"control": u.address, "candidate": u.address}, timeouts=TIMEOUTS)
        caller = await Caller.connect(r)
        try:
            for s in streams:
                caller.open(s, "/test.Quirky/Upload", bodies[s])
            await caller.until_shut()
            _held_at_the_connection(caller, limit)
            assert max(caller.sent.values()) <= relay.REPLAY_LIMIT  # all of it kept
            shut.set()
            u.connections[0].send(frames.frame(frames.PING, 0, 0, bytes(8)))
            await caller.until_ended(streams)
        finally:
            caller.wire.close()
    assert not caller.resets and caller.goaway is None
    for s in streams:
        assert caller.trailers[s]["grpc-status"] == "0", caller.trailers[s]
        assert bytes(caller.bodies[s]) == _digest(bodies[s])


# --- what a forgotten stream held is given back ---


@own
@pytest.mark.usefixtures("limit")
async def test_streams_the_caller_resets_while_held_give_their_bytes_back_and_the_connection_flows(
    make_grpc_router: MakeGrpcRouter,
) -> None:
    held = _streams(STREAMS)
    after = held[-1] + 2
    body = _body(after, 3 * STREAM_WINDOW)

    async def serve(wire: UpstreamWire) -> None:
        await _heads(wire, len(held) + 1)  # the held calls and the one after: only that one is read
        wire.send(frames.window_update(0, 1 << 30), frames.window_update(max(wire.heads), 1 << 24))
        await _answer(wire, 1)

    async with upstream(serve) as u:
        r = await make_grpc_router({"control": u.address, "candidate": u.address}, timeouts=TIMEOUTS)
        caller = await Caller.connect(r)
        try:
            for s in held:
                caller.open(s, "/test.Quirky/Upload", _body(s, 2 * STREAM_WINDOW))
            await caller.until_shut()
            _held_at_the_connection(caller)
            for s in held:
                caller.reset(s)
            await caller.settle()
            assert caller.conn_window >= CONNECTION_WINDOW // 2  # given back at once
            caller.open(after, "/test.Quirky/Upload", body)
            await caller.until_ended([after])
        finally:
            caller.wire.close()
    assert caller.goaway is None
    assert caller.trailers[after]["grpc-status"] == "0" and bytes(caller.bodies[after]) == _digest(body)


@own
async def test_calls_answered_while_held_ended_or_not_give_their_bytes_back_and_the_connection_flows(
    make_grpc_router: MakeGrpcRouter, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The upstream answers without reading: a call whose request ended is over both ways (forgotten), one
    whose request had not is reset by the router after its answer; what either held is given back."""
    limit = 6 << 20  # below half the connection window: it shuts once the first window is spent (16 MiB)
    monkeypatch.setattr(h2server.GrpcConnection, "HOLD_LIMIT", limit)
    whole = _streams(13)  # 6.5 MiB, more than the limit alone: their requests end while held
    cut = _streams(12, first=whole[-1] + 2)  # the rest of the window, less than a stream window each
    after = cut[-1] + 2
    body = _body(after, 3 * STREAM_WINDOW)
    shut = asyncio.Event()

    async def serve(wire: UpstreamWire) -> None:
        await _heads(wire, len(whole) + len(cut))
        await asyncio.wait_for(shut.wait(), WAIT_S * 4)
        for s in list(wire.heads):
            wire.respond(s, [*OK_HEAD, ("grpc-status", "8"), ("grpc-message", "busy")], end_stream=True)
        await _heads(wire, len(whole) + len(cut) + 1)
        wire.send(frames.window_update(0, 1 << 30), frames.window_update(max(wire.heads), 1 << 24))
        await _answer(wire, 1)

    async with upstream(serve) as u:
        r = await make_grpc_router({"control": u.address, "candidate": u.address}, timeouts=TIMEOUTS)
        caller = await Caller.connect(r)
        try:
            for s in whole:
                caller.open(s, "/test.Quirky/Upload", _body(s, STREAM_WINDOW // 2 - 5))
            for s in cut:
                caller.open(s, "/test.Quirky/Upload", _body(s, 2 * STREAM_WINDOW))
            await caller.until_shut()
            _held_at_the_connection(caller, limit)
            assert all(caller.sent[s] == STREAM_WINDOW // 2 for s in whole)  # ended, and held
            shut.set()
            await caller.until_ended(whole + cut)
            await caller.settle()
            assert caller.conn_window >= CONNECTION_WINDOW // 2
            caller.open(after, "/test.Quirky/Upload", body)
            await caller.until_ended([after])
        finally:
            caller.wire.close()
    assert caller.goaway is None
    assert all(caller.trailers[s]["grpc-status"] == "8" for s in whole + cut)
    assert caller.trailers[after]["grpc-status"] == "0" and bytes(caller.bodies[after]) == _digest(body)


@own
@pytest.mark.usefixtures("limit")
async def test_a_request_passed_on_after_it_ended_holds_nothing_while_its_answer_is_awaited(
    make_grpc_router: MakeGrpcRouter,
) -> None:
    """Calls whose requests ended before the upstream took them, and are not answered: once taken they hold
    nothing, and another call streams beyond what the limit and a window would let through."""
    waiting = _streams(LIMIT // STREAM_WINDOW + 2)  # more than the limit, each within its stream window
    after = waiting[-1] + 2
    body = _body(after, LIMIT + CONNECTION_WINDOW)
    ended = asyncio.Event()

    async def serve(wire: UpstreamWire) -> None:
        await _heads(wire, len(waiting))
        await asyncio.wait_for(ended.wait(), WAIT_S * 4)
        _grant(wire)  # the requests, ended at the router, go now
        await _heads(wire, len(waiting) + 1)
        wire.send(frames.window_update(max(wire.heads), 1 << 30))
        for _ in range(100_000):  # the last call's request whole (the others' are not answered)
            if max(wire.heads) in wire.ended:
                break
            await wire.step()
        s = max(wire.heads)
        wire.respond(s, OK_HEAD)
        wire.send(frames.data(s, _digest(bytes(wire.bodies[s]))))
        wire.respond(s, [("grpc-status", "0")], end_stream=True)

    async with upstream(serve) as u:
        r = await make_grpc_router({"control": u.address, "candidate": u.address}, timeouts=TIMEOUTS)
        caller = await Caller.connect(r)
        try:
            for s in waiting:
                caller.open(s, "/test.Quirky/Upload", _body(s, STREAM_WINDOW - 5))
            await caller.until_shut()
            assert not caller.left  # all sent and ended, none taken yet (held)
            ended.set()
            caller.open(after, "/test.Quirky/Upload", body)
            await caller.until_ended([after])
        finally:
            caller.wire.close()
    assert caller.goaway is None and not caller.resets
    assert caller.trailers[after]["grpc-status"] == "0" and bytes(caller.bodies[after]) == _digest(body)


@own
async def test_data_on_streams_refused_beyond_the_stream_cap_is_not_held(
    make_grpc_router: MakeGrpcRouter, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(h2server.GrpcConnection, "MAX_STREAMS", 2)
    # Below half the window: held refused data would keep back the window given at half of it.
    monkeypatch.setattr(h2server.GrpcConnection, "HOLD_LIMIT", 6 << 20)
    held = _streams(2)
    refused = _streams(STREAMS, first=held[-1] + 2)

    async def serve(wire: UpstreamWire) -> None:
        await _heads(wire, len(held))
        for _ in range(100_000):  # no window, no answer: the two calls stay open
            await wire.step()

    async with upstream(serve) as u:
        r = await make_grpc_router({"control": u.address, "candidate": u.address}, timeouts=TIMEOUTS)
        caller = await Caller.connect(r)
        try:
            for s in held:
                caller.open(s, "/test.Quirky/Upload", _body(s, STREAM_WINDOW // 2))
            for s in refused:  # each sends its stream window before it learns of the refusal
                caller.open(s, "/test.Quirky/Upload", _body(s, STREAM_WINDOW - 5))
            while caller.pump():  # all of it before a frame is read: the connection's window is spent
                pass
            assert caller.conn_window == 0 and caller.total == CONNECTION_WINDOW
            await caller.settle()
        finally:
            caller.wire.close()
    assert set(caller.resets) == set(refused) and caller.goaway is None
    assert caller.conn_window >= CONNECTION_WINDOW // 2  # given back: nothing of it held


@own
@pytest.mark.usefixtures("limit")
async def test_a_caller_sending_beyond_the_connection_window_it_was_held_to_gets_a_flow_control_error(
    make_grpc_router: MakeGrpcRouter,
) -> None:
    streams = _streams(STREAMS)

    async def serve(wire: UpstreamWire) -> None:
        await _heads(wire, len(streams))
        for _ in range(100_000):
            await wire.step()

    async with upstream(serve) as u:
        r = await make_grpc_router({"control": u.address, "candidate": u.address}, timeouts=TIMEOUTS)
        caller = await Caller.connect(r)
        try:
            for s in streams:
                caller.open(s, "/test.Quirky/Upload", _body(s, 2 * STREAM_WINDOW))
            await caller.until_shut()
            _held_at_the_connection(caller)
            s = next(iter(caller.left))  # one frame more than the window, and nothing after it
            caller.wire.send(frames.data(s, caller.left[s][:16384]))
            assert (await caller.wire.goaway())[1] == frames.FLOW_CONTROL_ERROR
        finally:
            caller.wire.close()


@own
async def test_an_upstream_connection_is_never_held_back_for_a_caller_that_does_not_read(
    make_grpc_router: MakeGrpcRouter, echo_servers: dict[str, EchoServer], monkeypatch: pytest.MonkeyPatch
) -> None:
    """Calls of many callers share an upstream connection: one caller's unread answer (held there, up to a
    stream window) must not stop the others' answers, whatever the limit (here: any byte held)."""
    monkeypatch.setattr(h2upstream.UpstreamConnection, "HOLD_LIMIT", 1)
    # One unit: one variant, one upstream connection; the unread answer is held until the test ends.
    r = await make_grpc_router({n: e.address for n, e in echo_servers.items()}, timeouts=TIMEOUTS)
    slow = await Caller.connect(r)
    slow.credit = False
    try:
        slow.open(1, "/test.Echo/BigStream", _message(b"4"))  # 4 MiB; it takes 64 KiB
        for _ in range(10_000):
            slow.pump()
            if slow.windows and sum(len(b) for b in slow.bodies.values()) >= frames.DEFAULT_WINDOW:
                break
            slow.take(await slow.wire.frame())
        async with r.channel() as channel:
            call = channel.unary_stream("/test.Echo/BigStream")(b"24", metadata=UNIT, timeout=WAIT_S)
            got = [len(m) async for m in call]  # 24 MiB: beyond the upstream connection's window
        assert got == [1 << 20] * 24
        assert 1 not in slow.ended
    finally:
        slow.wire.close()


def test_the_readme_states_the_listeners_limits_and_the_worst_case_per_caller_connection() -> None:
    readme = " ".join((Path(__file__).parents[3] / "README.md").read_text().split())
    assert LISTENER_LIMIT == H2Connection.MAX_STREAMS * (5 + relay.NAME_PREFIX)
    worst = round((LISTENER_LIMIT + CONNECTION_WINDOW) / 2**20)
    assert f"less than about {worst} MiB of request data" in readme
    assert f"at {round(LISTENER_LIMIT / 2**20)} MiB held its connection window is not opened again" in readme
    answers = round((H2Connection.BUDGET + H2Connection.MAX_STREAMS * CLIENT_STREAM_WINDOW) / 2**20)
    assert f"at most about {answers} MiB of response data" in readme
    assert f"starts at {CLIENT_STREAM_WINDOW >> 10} KiB and grows to {STREAM_WINDOW >> 20} MiB" in readme
    assert f"budget of {H2Connection.BUDGET >> 20} MiB allows" in readme
    assert f"So about {round(worst + answers, -1)} MiB at the most per caller connection, both ways" in readme
