"""Our own HTTP/2 both ways against what RFC 9113 and RFC 7541 make a peer do and an endpoint bear:
the router's gRPC port driven frame by frame (a client written by hand, and python-hyper's `h2`), and
the upstream leg against a quirky upstream written by hand (the router is its client).

The peers here are honest about the protocol but use its corners: padding, priority, header blocks
in many pieces, unknown frames and settings, HPACK table size updates, windows made negative,
GOAWAY with calls in flight; and they break it where real stacks are known to (stream ids, windows,
header block floods), to see the router answer as the RFC says.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import struct
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass

import grpc
import grpc.aio
import h2.config
import h2.connection
import h2.events
import h2.settings
import hpack as reference
import pytest

from abrouter.router.grpc import h2upstream, relay
from abrouter.router.h2 import frames, hpack
from abrouter.router.h2.connection import H2Connection
from tests.router.grpc.conftest import GrpcRouter, MakeGrpcRouter
from tests.router.grpc.servers import EchoServer

pytestmark = pytest.mark.parametrize("grpc_server", ["own"])

#: How long a test waits for what must come (H2_TEST_WAIT_S: shorter, to see failures sooner while working).
WAIT_S = float(os.environ.get("H2_TEST_WAIT_S", "30"))
UNIT = (("x-user-id", "u42"),)


@dataclass
class Frame:
    kind: int
    flags: int
    stream_id: int
    payload: bytes


class Wire:
    """One end of an HTTP/2 connection written by hand: frames out as given, frames in as read."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader, self.writer = reader, writer
        self.encoder = reference.Encoder()
        self.decoder = reference.Decoder()

    @classmethod
    async def client(cls, r: GrpcRouter, settings: dict[int, int] | None = None) -> Wire:
        reader, writer = await asyncio.open_connection("127.0.0.1", r.grpc_port)
        wire = cls(reader, writer)
        wire.send(frames.PREFACE + frames.settings(settings or {}))
        return wire

    def send(self, *chunks: bytes) -> None:
        self.writer.write(b"".join(chunks))

    async def frame(self) -> Frame:
        """The next frame; ConnectionError when the connection closed first."""
        try:
            head = await asyncio.wait_for(self.reader.readexactly(9), WAIT_S)
            high, low, kind, flags, stream_id = frames.HEAD.unpack(head)
            payload = await asyncio.wait_for(self.reader.readexactly(high << 8 | low), WAIT_S)
        except asyncio.IncompleteReadError as exc:
            raise ConnectionError("closed") from exc
        return Frame(kind, flags, stream_id & frames.MAX_WINDOW, payload)

    async def until(self, done: Callable[[Frame], bool], *, limit: int = 100_000) -> list[Frame]:
        """Frames up to the first `done` says is the one (at most `limit`)."""
        seen = []
        for _ in range(limit):
            f = await self.frame()
            seen.append(f)
            if done(f):
                return seen
        raise AssertionError(f"no such frame in {limit}")

    async def goaway(self) -> tuple[int, int]:
        """(last stream id, error code) of the GOAWAY that must come, once the connection closed after it."""
        seen = await self.until(lambda f: f.kind == frames.GOAWAY)
        with contextlib.suppress(ConnectionError):
            await asyncio.wait_for(self.reader.read(), WAIT_S)  # the rest, up to the close
        return frames.parse_goaway(seen[-1].payload)

    def close(self) -> None:
        self.writer.close()


@contextlib.asynccontextmanager
async def _wired(
    make_grpc_router: MakeGrpcRouter, echo_servers: dict[str, EchoServer], settings: dict[int, int] | None = None
) -> AsyncIterator[tuple[GrpcRouter, Wire]]:
    """A router in front of the echo servers, and a hand-written client connection to it (closed after)."""
    r = await make_grpc_router({n: s.address for n, s in echo_servers.items()})
    wire = await Wire.client(r, settings)
    try:
        yield r, wire
    finally:
        wire.close()


def _head(path: str, *extra: tuple[str, str]) -> list[tuple[str, str]]:
    return [
        (":method", "POST"),
        (":scheme", "http"),
        (":path", path),
        (":authority", "router"),
        ("content-type", "application/grpc"),
        ("te", "trailers"),
        *UNIT,
        *extra,
    ]


def _message(body: bytes) -> bytes:
    return b"\x00" + len(body).to_bytes(4, "big") + body


def _answer(seen: list[Frame], stream_id: int, decoder: reference.Decoder) -> tuple[dict, bytes, dict]:
    """(head, body, trailers) of one stream's answer among the frames seen (header blocks whole)."""
    blocks: list[dict] = []
    body = b""
    for f in seen:
        if f.stream_id != stream_id:
            continue
        if f.kind == frames.HEADERS:
            assert f.flags & frames.END_HEADERS, "the router's own header blocks are small here"
            blocks.append(dict(decoder.decode(frames.header_block(f.payload, f.flags))))
        elif f.kind == frames.DATA:
            body += frames.unpad(f.payload, f.flags)
    head, trailers = blocks[0], blocks[-1]
    return head, body, trailers


def _ends(stream_id: int) -> Callable[[Frame], bool]:
    return lambda f: (
        f.stream_id == stream_id and f.kind in (frames.HEADERS, frames.DATA) and bool(f.flags & frames.END_STREAM)
    )


def _padded(payload: bytes, pad: int) -> bytes:
    return bytes([pad]) + payload + b"\x00" * pad


# --- the router's gRPC port ---


async def test_a_head_padded_with_priority_in_many_continuations_among_unknown_frames_and_settings_is_answered(
    make_grpc_router: MakeGrpcRouter, echo_servers: dict[str, EchoServer]
) -> None:
    async with _wired(make_grpc_router, echo_servers, {0x4A4A: 7, frames.HEADER_TABLE_SIZE: 0, 0xFF00: 1}) as (
        _r,
        wire,
    ):
        block = wire.encoder.encode(_head("/test.Echo/Unary"), huffman=True)
        priority = struct.pack(">LB", 0, 200)  # depends on nothing, weight 201
        pieces = [block[:1], *[block[at : at + 1] for at in range(1, len(block))]]
        out = [
            frames.frame(0xFA, 0xFF, 0, b"unknown on the connection"),
            frames.frame(frames.PRIORITY, 0, 1, struct.pack(">LB", 0, 15)),  # PRIORITY on an idle stream
            frames.frame(frames.HEADERS, frames.PADDED | frames.PRIORITY_FLAG, 1, _padded(priority + pieces[0], 9)),
            *[frames.frame(frames.CONTINUATION, 0, 1, p) for p in pieces[1:-1]],
            frames.frame(frames.CONTINUATION, frames.END_HEADERS, 1, pieces[-1]),
            frames.frame(0xFB, 0, 1, b"unknown on the stream"),
            frames.frame(frames.PRIORITY, 0, 1, struct.pack(">LB", 0, 99)),
            frames.frame(frames.DATA, frames.PADDED, 1, _padded(_message(b"pad")[:3], 200)),
            frames.frame(frames.DATA, frames.PADDED | frames.END_STREAM, 1, _padded(_message(b"pad")[3:], 0)),
            frames.frame(frames.PING, 0, 0, b"pingpong"),
        ]
        assert len(pieces) > 50
        wire.send(*out)
        seen = await wire.until(_ends(1))
        if not any(f.kind == frames.PING for f in seen):
            seen += await wire.until(lambda f: f.kind == frames.PING)
    assert not any(f.kind in (frames.GOAWAY, frames.RST_STREAM) for f in seen)
    assert any(f.kind == frames.SETTINGS and f.flags & frames.ACK for f in seen)
    ping = next(f for f in seen if f.kind == frames.PING)
    assert ping.flags & frames.ACK and ping.payload == b"pingpong"
    head, body, trailers = _answer(seen, 1, wire.decoder)
    variant = head["x-ab-variant"]
    assert head[":status"] == "200" and body == _message(f"{variant}:pad".encode())
    assert trailers["grpc-status"] == "0"


async def test_the_callers_hpack_table_size_updates_eviction_huffman_and_never_indexed_fields_all_decode(
    make_grpc_router: MakeGrpcRouter, echo_servers: dict[str, EchoServer]
) -> None:
    async with _wired(make_grpc_router, echo_servers) as (_r, wire):
        # A table of 0, one that holds one field (each new field evicts the last), then the whole 4096 again.
        for stream_id, table_size, huffman in ((1, 4096, True), (3, 0, False), (5, 90, True), (7, 4096, False)):
            wire.encoder.header_table_size = table_size  # a size update starts the next block
            secret = reference.NeverIndexedHeaderTuple("authorization", f"secret-{stream_id}")
            fields = [*_head("/test.Echo/Metadata"), ("x-a", f"a{stream_id}"), ("x-b", "b" * 40), secret]
            block = wire.encoder.encode(fields, huffman=huffman)
            wire.send(
                frames.headers(stream_id, block, end_stream=False, max_frame=frames.DEFAULT_MAX_FRAME),
                frames.data(stream_id, _message(b""), end_stream=True),
            )
            seen = await wire.until(_ends(stream_id))
            assert not any(f.kind == frames.GOAWAY for f in seen)
            _, body, trailers = _answer(seen, stream_id, wire.decoder)
            echoed = dict(json.loads(body[5:]))
            assert trailers["grpc-status"] == "0"
            assert echoed["x-a"] == f"a{stream_id}" and echoed["x-b"] == "b" * 40
            assert echoed["authorization"] == f"secret-{stream_id}"


async def test_a_stream_id_from_the_servers_side_of_the_numbering_is_a_protocol_error(
    make_grpc_router: MakeGrpcRouter, echo_servers: dict[str, EchoServer]
) -> None:
    async with _wired(make_grpc_router, echo_servers) as (_r, wire):
        block = wire.encoder.encode(_head("/test.Echo/Unary"))
        wire.send(frames.headers(2, block, end_stream=False, max_frame=frames.DEFAULT_MAX_FRAME))
        assert (await wire.goaway())[1] == frames.PROTOCOL_ERROR


async def test_a_new_stream_id_below_one_already_used_is_a_protocol_error(
    make_grpc_router: MakeGrpcRouter, echo_servers: dict[str, EchoServer]
) -> None:
    async with _wired(make_grpc_router, echo_servers) as (_r, wire):
        slow = _message(b"0.5")
        for stream_id in (5, 3):
            block = wire.encoder.encode(_head("/test.Echo/Slow"))
            wire.send(
                frames.headers(stream_id, block, end_stream=False, max_frame=frames.DEFAULT_MAX_FRAME),
                frames.data(stream_id, slow, end_stream=True),
            )
        last, code = await wire.goaway()
        assert code == frames.PROTOCOL_ERROR and last == 5


async def test_data_on_a_stream_never_opened_is_a_protocol_error(
    make_grpc_router: MakeGrpcRouter, echo_servers: dict[str, EchoServer]
) -> None:
    async with _wired(make_grpc_router, echo_servers) as (_r, wire):
        wire.send(frames.data(9, _message(b"who?"), end_stream=True))
        assert (await wire.goaway())[1] == frames.PROTOCOL_ERROR


async def test_an_unknown_frame_inside_a_header_block_is_a_protocol_error(
    make_grpc_router: MakeGrpcRouter, echo_servers: dict[str, EchoServer]
) -> None:
    async with _wired(make_grpc_router, echo_servers) as (_r, wire):
        block = wire.encoder.encode(_head("/test.Echo/Unary"))
        wire.send(
            frames.frame(frames.HEADERS, 0, 1, block[:4]),
            frames.frame(0xFA, 0, 1, b"not here"),
            frames.frame(frames.CONTINUATION, frames.END_HEADERS, 1, block[4:]),
        )
        assert (await wire.goaway())[1] == frames.PROTOCOL_ERROR


async def test_a_flood_of_empty_continuation_frames_is_cut_off_with_a_goaway(
    make_grpc_router: MakeGrpcRouter, echo_servers: dict[str, EchoServer]
) -> None:
    async with _wired(make_grpc_router, echo_servers) as (_r, wire):
        block = wire.encoder.encode(_head("/test.Echo/Unary"))
        empty = frames.frame(frames.CONTINUATION, 0, 1, b"")
        # Frames of nothing, the header block never ending (CVE-2024-27316's kind): each costs the peer
        # 9 bytes and, unbounded, the router a list entry and a pass over the block so far.
        wire.send(frames.frame(frames.HEADERS, 0, 1, block), empty * 5_000)
        _, code = await wire.goaway()
        assert code in (frames.ENHANCE_YOUR_CALM, frames.PROTOCOL_ERROR)


async def test_a_rapid_reset_burst_is_cut_off_with_enhance_your_calm_after_a_bounded_number_of_calls(
    make_grpc_router: MakeGrpcRouter, echo_servers: dict[str, EchoServer]
) -> None:
    async with _wired(make_grpc_router, echo_servers) as (_r, wire):
        # CVE-2023-44487: open a call and reset it at once, 2,000 times in one write.
        burst = []
        for n in range(2_000):
            stream_id = 2 * n + 1
            block = wire.encoder.encode(_head("/test.Echo/Slow"))
            burst += [
                frames.headers(stream_id, block, end_stream=False, max_frame=frames.DEFAULT_MAX_FRAME),
                frames.data(stream_id, _message(b"30"), end_stream=True),
                frames.rst_stream(stream_id, frames.CANCEL),
            ]
        wire.send(*burst)
        last, code = await wire.goaway()
        assert code == frames.ENHANCE_YOUR_CALM
        assert last < 2 * H2Connection.RESET_CHECK_AFTER + 1  # the stream that tipped it, not the 2,000th


async def test_a_caller_that_cancels_some_calls_is_not_taken_for_an_attack(
    make_grpc_router: MakeGrpcRouter, echo_servers: dict[str, EchoServer]
) -> None:
    async with _wired(make_grpc_router, echo_servers) as (_r, wire):
        calls = 2 * H2Connection.RESET_CHECK_AFTER
        for n in range(calls):  # one in three cancelled, the rest answered
            stream_id = 2 * n + 1
            block = wire.encoder.encode(_head("/test.Echo/Unary"))
            wire.send(
                frames.headers(stream_id, block, end_stream=False, max_frame=frames.DEFAULT_MAX_FRAME),
                frames.data(stream_id, _message(b"x"), end_stream=n % 3 != 0),
            )
            if n % 3 == 0:
                wire.send(frames.rst_stream(stream_id, frames.CANCEL))
        answered = {2 * n + 1 for n in range(calls) if n % 3 != 0}
        seen: list[Frame] = []
        while answered:
            seen += await wire.until(lambda f: _ends(f.stream_id)(f) or f.kind == frames.GOAWAY)
            assert seen[-1].kind != frames.GOAWAY, frames.parse_goaway(seen[-1].payload)
            answered.discard(seen[-1].stream_id)


async def test_a_caller_sending_beyond_its_stream_window_gets_a_flow_control_error(
    make_grpc_router: MakeGrpcRouter, echo_servers: dict[str, EchoServer]
) -> None:
    async with _wired(make_grpc_router, echo_servers) as (_r, wire):
        settings = await wire.until(lambda f: f.kind == frames.SETTINGS and not f.flags & frames.ACK)
        window = dict(frames.parse_settings(settings[-1].payload))[frames.INITIAL_WINDOW_SIZE]
        # An inference call's first message names the model: the router holds its data until it is whole,
        # and this one never is (it says 100 MB), so nothing of the stream's window comes back.
        block = wire.encoder.encode(_head("/inference.GRPCInferenceService/ModelInfer"))
        wire.send(frames.headers(1, block, end_stream=False, max_frame=frames.DEFAULT_MAX_FRAME))
        wire.send(frames.data(1, b"\x00" + (100 << 20).to_bytes(4, "big")))
        chunk = b"\x01" * frames.DEFAULT_MAX_FRAME
        for _ in range(window // len(chunk) + 2):
            wire.send(frames.data(1, chunk))
        seen = await wire.until(lambda f: f.kind in (frames.GOAWAY, frames.RST_STREAM))
        code = frames.parse_goaway(seen[-1].payload)[1] if seen[-1].kind == frames.GOAWAY else None
        code = code if code is not None else frames.parse_code(seen[-1].payload)
        assert code == frames.FLOW_CONTROL_ERROR


async def test_a_large_message_both_ways_through_tiny_windows_made_negative_mid_stream_arrives_whole(
    make_grpc_router: MakeGrpcRouter, echo_servers: dict[str, EchoServer]
) -> None:
    r = await make_grpc_router({n: s.address for n, s in echo_servers.items()})
    reader, writer = await asyncio.open_connection("127.0.0.1", r.grpc_port)
    # python-hyper's h2 keeps both windows: it raises FlowControlError if the router sends beyond ours.
    conn = h2.connection.H2Connection(h2.config.H2Configuration(client_side=True, header_encoding="latin-1"))
    conn.local_settings = h2.settings.Settings(
        client=True, initial_values={h2.settings.SettingCodes.INITIAL_WINDOW_SIZE: 1000}
    )
    conn.initiate_connection()
    writer.write(conn.data_to_send())
    message = _message(bytes(range(256)) * (3 * 4096))  # 3 MiB
    stream_id = conn.get_next_available_stream_id()
    conn.send_headers(stream_id, _head("/test.Echo/Bidi"))
    sent = received = 0
    answer = bytearray()
    phase = "small"
    ended = False
    try:
        for _ in range(100_000):
            for _ in range(1000):  # as much as the router's windows allow
                room = min(conn.local_flow_control_window(stream_id), conn.max_outbound_frame_size, len(message) - sent)
                if room <= 0:
                    break
                conn.send_data(stream_id, message[sent : sent + room], end_stream=sent + room == len(message))
                sent += room
            writer.write(conn.data_to_send())
            if ended:
                break
            data = await asyncio.wait_for(reader.read(65536), WAIT_S)
            assert data, "the router closed the connection"
            for event in conn.receive_data(data):
                if isinstance(event, h2.events.DataReceived):
                    answer += event.data
                    received += event.flow_controlled_length
                    conn.acknowledge_received_data(event.flow_controlled_length, event.stream_id)
                    if phase == "small" and received > 1 << 20:
                        phase = "negative"  # the window drops below what is in flight: negative for a while
                        conn.update_settings({h2.settings.SettingCodes.INITIAL_WINDOW_SIZE: 0})
                elif isinstance(event, h2.events.SettingsAcknowledged) and phase == "negative":
                    phase = "wide"  # the router took the window of 0: now a wide one
                    conn.update_settings({h2.settings.SettingCodes.INITIAL_WINDOW_SIZE: 1 << 20})
                elif isinstance(event, h2.events.StreamEnded):
                    ended = True
                elif isinstance(event, (h2.events.StreamReset, h2.events.ConnectionTerminated)):
                    raise AssertionError(event)
            writer.write(conn.data_to_send())
    finally:
        writer.close()
    assert ended and phase == "wide"
    variant = "control" if answer[5:12] == b"control" else "candidate"
    assert bytes(answer) == _message(f"{variant}:".encode() + message[5:])


async def test_a_client_that_closes_its_connection_mid_call_cancels_the_upstreams_and_is_no_error_of_the_variant(
    make_grpc_router: MakeGrpcRouter, echo_servers: dict[str, EchoServer]
) -> None:
    r = await make_grpc_router({n: s.address for n, s in echo_servers.items()}, {"control": 100, "candidate": 0})
    wire = await Wire.client(r)
    block = wire.encoder.encode(_head("/test.Echo/Slow"))
    wire.send(
        frames.headers(1, block, end_stream=False, max_frame=frames.DEFAULT_MAX_FRAME),
        frames.data(1, _message(b"30"), end_stream=True),
    )
    for _ in range(1500):
        if "/test.Echo/Slow" in echo_servers["control"].calls:
            break
        await asyncio.sleep(0.02)
    wire.writer.transport.abort()  # no GOAWAY, no RST_STREAM: the TCP connection just goes
    for _ in range(1500):
        if echo_servers["control"].cancelled:
            break
        await asyncio.sleep(0.02)
    assert echo_servers["control"].cancelled == 1
    for _ in range(1500):
        if r.router.metrics.requests.get((r.spec["name"], "control", "4xx")):
            break
        await asyncio.sleep(0.02)
    assert r.router.metrics.requests[(r.spec["name"], "control", "4xx")] == 1
    assert not r.router.metrics.errors


# --- the upstream leg: the router as the client of a quirky upstream ---


@dataclass
class Request:
    stream_id: int
    head: dict[str, str]
    body: bytes


class UpstreamWire(Wire):
    """The upstream's end of one connection from the router: requests in, answers out by hand."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        super().__init__(reader, writer)
        self.heads: dict[int, dict[str, str]] = {}
        self.bodies: dict[int, bytearray] = {}
        self.ended: list[int] = []
        self.resets: dict[int, int] = {}
        self.goaways: list[tuple[int, int]] = []
        self.pings: list[bytes] = []
        #: Credit the router's DATA back at once (else the test keeps the windows).
        self.credit = True
        self._block: list[bytes] = []
        self._first_flags = 0

    async def step(self) -> Frame:
        """One frame in, the protocol's chores done (SETTINGS acknowledged, header blocks decoded, data credited)."""
        f = await self.frame()
        if f.kind == frames.SETTINGS and not f.flags & frames.ACK:
            self.send(frames.SETTINGS_ACK)
        elif f.kind in (frames.HEADERS, frames.CONTINUATION):
            self._block.append(frames.header_block(f.payload, f.flags) if f.kind == frames.HEADERS else f.payload)
            if f.kind == frames.HEADERS:
                self._first_flags = f.flags
            if f.flags & frames.END_HEADERS:
                fields = dict(self.decoder.decode(b"".join(self._block)))
                self._block = []
                self.heads.setdefault(f.stream_id, fields)
                self.bodies.setdefault(f.stream_id, bytearray())
                if self._first_flags & frames.END_STREAM:
                    self.ended.append(f.stream_id)
        elif f.kind == frames.DATA:
            self.bodies[f.stream_id] += frames.unpad(f.payload, f.flags)
            if self.credit and f.payload:
                self.send(frames.window_update(0, len(f.payload)), frames.window_update(f.stream_id, len(f.payload)))
            if f.flags & frames.END_STREAM:
                self.ended.append(f.stream_id)
        elif f.kind == frames.RST_STREAM:
            self.resets[f.stream_id] = frames.parse_code(f.payload)
        elif f.kind == frames.GOAWAY:
            self.goaways.append(frames.parse_goaway(f.payload))
        elif f.kind == frames.PING:
            if f.flags & frames.ACK:
                self.pings.append(f.payload)
            else:
                self.send(frames.ping_ack(f.payload))
        return f

    async def requests(self, count: int) -> list[Request]:
        """The next `count` requests whole (their request side ended)."""
        for _ in range(100_000):
            if len(self.ended) >= count:
                break
            await self.step()
        done, self.ended = self.ended[:count], self.ended[count:]
        return [Request(s, self.heads[s], bytes(self.bodies[s])) for s in done]

    def respond(self, stream_id: int, fields: list[tuple[str, str]], *, end_stream: bool = False) -> None:
        block = self.encoder.encode(fields)
        self.send(frames.headers(stream_id, block, end_stream=end_stream, max_frame=frames.DEFAULT_MAX_FRAME))


Serve = Callable[[UpstreamWire], Awaitable[None]]


class Upstream:
    """A gRPC upstream written by hand on 127.0.0.1: `serve` runs for each connection the router makes."""

    def __init__(self, serve: Serve, settings: dict[int, int] | None = None) -> None:
        self.serve, self.settings = serve, settings or {}
        self.connections: list[UpstreamWire] = []
        self.failures: list[BaseException] = []
        self.server: asyncio.Server | None = None
        self.port = 0

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.port}"

    async def start(self) -> Upstream:
        self.server = await asyncio.start_server(self._accept, "127.0.0.1", 0)
        self.port = self.server.sockets[0].getsockname()[1]
        return self

    async def _accept(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        wire = UpstreamWire(reader, writer)
        self.connections.append(wire)
        try:
            assert await asyncio.wait_for(reader.readexactly(len(frames.PREFACE)), WAIT_S) == frames.PREFACE
            wire.send(frames.settings(self.settings))
            await self.serve(wire)
            for _ in range(100_000):  # then the chores, until the router closes the connection
                await wire.step()
        except (ConnectionError, TimeoutError):
            pass
        except BaseException as exc:  # the test fails on it (`check`)
            self.failures.append(exc)
        finally:
            writer.close()

    def check(self) -> None:
        assert not self.failures, self.failures

    async def stop(self) -> None:
        assert self.server is not None
        self.server.close()
        for wire in self.connections:
            wire.writer.close()


@contextlib.asynccontextmanager
async def upstream(serve: Serve, settings: dict[int, int] | None = None) -> AsyncIterator[Upstream]:
    u = await Upstream(serve, settings).start()
    try:
        yield u
        u.check()
    finally:
        await u.stop()


def _big_channel(r: GrpcRouter) -> grpc.aio.Channel:
    big = [("grpc.max_metadata_size", 1 << 20), ("grpc.absolute_max_metadata_size", 1 << 20)]
    return grpc.aio.insecure_channel(r.grpc_address, options=big)


OK_HEAD = [(":status", "200"), ("content-type", "application/grpc")]


async def test_an_upstreams_answer_padded_with_priority_table_updates_unknown_frames_and_continued_trailers_arrives(
    make_grpc_router: MakeGrpcRouter,
) -> None:
    big = "t" * 40_000
    pinged: asyncio.Future[list[bytes]] = asyncio.get_running_loop().create_future()

    async def serve(wire: UpstreamWire) -> None:
        for _ in range(3):
            (req,) = await wire.requests(1)
            s = req.stream_id
            wire.encoder.header_table_size = {1: 256, 3: 0, 5: 4096}[s]  # a size update starts the next block
            block = wire.encoder.encode([*OK_HEAD, ("served-by", f"quirky-{s}"), ("x-pad", "p" * 100)])
            wire.send(
                frames.settings({0x7A7A: 1, frames.HEADER_TABLE_SIZE: 8192}),
                frames.frame(frames.PING, 0, 0, b"upstream"),
                frames.frame(0xEE, 0x3, s, b"an extension frame"),
                frames.frame(
                    frames.HEADERS,
                    frames.PADDED | frames.PRIORITY_FLAG | frames.END_HEADERS,
                    s,
                    _padded(struct.pack(">LB", 0x8000_0000, 7) + block, 30),
                ),
                frames.frame(frames.PRIORITY, 0, s, struct.pack(">LB", 0, 1)),
                frames.frame(frames.DATA, frames.PADDED, s, _padded(_message(req.body[5:] + b"!")[:4], 100)),
                frames.frame(frames.DATA, frames.PADDED, s, _padded(_message(req.body[5:] + b"!")[4:], 0)),
            )
            trailers = wire.encoder.encode([("grpc-status", "0"), ("big-trailer", big), ("n", str(s))], huffman=s != 3)
            wire.send(frames.headers(s, trailers, end_stream=True, max_frame=frames.DEFAULT_MAX_FRAME))
        assert len(trailers) > frames.DEFAULT_MAX_FRAME  # the trailers came in CONTINUATION frames
        for _ in range(100_000):
            if len(wire.pings) == 3:
                break
            await wire.step()
        pinged.set_result(wire.pings)

    async with upstream(serve) as u:
        r = await make_grpc_router({"control": u.address, "candidate": u.address})
        async with _big_channel(r) as channel:
            for n in (1, 3, 5):
                call = channel.unary_unary("/test.Quirky/Call")(b"m%d" % n, metadata=UNIT, timeout=10)
                assert await call == b"m%d!" % n
                head, trailers = dict(await call.initial_metadata()), dict(await call.trailing_metadata())
                assert head["served-by"] == f"quirky-{n}" and head["x-pad"] == "p" * 100
                assert trailers["big-trailer"] == big and trailers["n"] == str(n)
                assert await call.code() is grpc.StatusCode.OK
        assert await asyncio.wait_for(pinged, WAIT_S) == [b"upstream"] * 3  # each PING acknowledged as it was
        (wire,) = u.connections
        assert not wire.goaways


async def test_a_trailers_only_answer_reaches_the_caller_with_its_status_and_the_tags(
    make_grpc_router: MakeGrpcRouter,
) -> None:
    async def serve(wire: UpstreamWire) -> None:
        (req,) = await wire.requests(1)
        fields = [*OK_HEAD, ("grpc-status", "5"), ("grpc-message", "no%20such%20model"), ("why", "gone")]
        wire.respond(req.stream_id, fields, end_stream=True)

    async with upstream(serve) as u:
        r = await make_grpc_router({"control": u.address, "candidate": u.address})
        async with r.channel() as channel:
            with pytest.raises(grpc.aio.AioRpcError) as err:
                await channel.unary_unary("/test.Quirky/Call")(b"x", metadata=UNIT, timeout=10)
    e = err.value
    assert e.code() is grpc.StatusCode.NOT_FOUND and e.details() == "no such model"
    assert dict(e.initial_metadata() or ())["x-ab-variant"] in ("control", "candidate")
    assert dict(e.trailing_metadata() or ())["why"] == "gone"


async def test_an_upstreams_informational_heads_are_not_relayed_and_its_final_head_is(
    make_grpc_router: MakeGrpcRouter,
) -> None:
    """1xx heads may precede the final one (RFC 9113 §8.1). Before: the 103 went out as the answer's head."""

    async def serve(wire: UpstreamWire) -> None:
        (req,) = await wire.requests(1)
        s = req.stream_id
        wire.respond(s, [(":status", "103"), ("link", "</hint>; rel=preload")])
        wire.respond(s, [(":status", "100")])
        wire.respond(s, [*OK_HEAD, ("served-by", "final")])
        wire.send(frames.frame(frames.DATA, 0, s, _message(req.body[5:] + b"!")))
        wire.respond(s, [("grpc-status", "0")], end_stream=True)

    async with upstream(serve) as u:
        r = await make_grpc_router({"control": u.address, "candidate": u.address})
        async with r.channel() as channel:
            call = channel.unary_unary("/test.Quirky/Call")(b"hi", metadata=UNIT, timeout=10)
            assert await call == b"hi!"
            head = dict(await call.initial_metadata())
            assert head["served-by"] == "final" and "link" not in head
            assert head["x-ab-variant"] in ("control", "candidate")
            assert await call.code() is grpc.StatusCode.OK


def _echo(wire: UpstreamWire, req: Request) -> None:
    """Answer `req` with its own message."""
    wire.respond(req.stream_id, OK_HEAD)
    answer = _message(req.body[5:])
    for at in range(0, len(answer), frames.DEFAULT_MAX_FRAME):
        wire.send(frames.data(req.stream_id, answer[at : at + frames.DEFAULT_MAX_FRAME]))
    wire.respond(req.stream_id, [("grpc-status", "0")], end_stream=True)


async def _echo_all(wire: UpstreamWire) -> None:
    for _ in range(100):
        (req,) = await wire.requests(1)
        _echo(wire, req)


async def _failed_call(channel: grpc.aio.Channel, body: bytes = b"a", *, timeout: float = 20) -> grpc.aio.AioRpcError:
    """The error of a unary call that is to fail."""
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await asyncio.wait_for(channel.unary_unary("/test.Quirky/Call")(body, metadata=UNIT, timeout=timeout), WAIT_S)
    return err.value


async def _one_error(r: GrpcRouter, reason: str) -> None:
    """Once the router's side of the call ended: it counted as exactly one error of the control, for `reason`."""
    await _until(lambda: bool(r.router.metrics.errors))
    assert dict(r.router.metrics.errors) == {(r.spec["name"], "control", reason): 1}


async def _until(done: Callable[[], bool]) -> None:
    """Wait for the router's side of a call to end on its own (its metrics counted)."""
    for _ in range(int(WAIT_S / 0.02)):
        if done():
            return
        await asyncio.sleep(0.02)
    assert done()


async def _retries_scraped(r: GrpcRouter) -> str:
    async with r.client.get("/abrouter/metrics") as resp:
        text = await resp.text()
    return "\n".join(line for line in text.splitlines() if line.startswith("abrouter_grpc_retries_total{"))


async def test_an_upstreams_goaway_lets_the_calls_below_it_finish_and_sends_those_above_again_on_a_new_connection(
    make_grpc_router: MakeGrpcRouter,
) -> None:
    async def serve(wire: UpstreamWire) -> None:
        if len(u.connections) > 1:  # the new connection answers as usual
            await _echo_all(wire)
            return
        first, *_ = sorted(await wire.requests(3), key=lambda q: q.stream_id)
        wire.send(frames.goaway(first.stream_id, frames.NO_ERROR))  # the two above it are never answered here
        _echo(wire, first)

    async with upstream(serve) as u:
        r = await make_grpc_router({"control": u.address, "candidate": u.address}, {"control": 100, "candidate": 0})
        async with r.channel() as channel:
            method = channel.unary_unary("/test.Quirky/Call")
            sent = [b"a" * 10, b"b" * 20_000, b"c"]
            answers = await asyncio.wait_for(
                asyncio.gather(*(method(m, metadata=UNIT, timeout=20) for m in sent)), WAIT_S
            )
            assert answers == sent
            assert await method(b"d", metadata=UNIT, timeout=20) == b"d"
        assert len(u.connections) == 2
        metrics = r.router.metrics
        assert not metrics.errors
        assert dict(metrics.grpc_retries) == {(r.spec["name"], "control"): 2}
        assert sum(metrics.requests.values()) == 4
        await r.settle()
        assert sum(s.exposures for s in (await r.strata()).values()) == 4  # once per call, not per attempt
        assert (
            await _retries_scraped(r)
            == f'abrouter_grpc_retries_total{{experiment="{r.spec["name"]}",variant="control"}} 2'
        )


async def test_a_call_the_upstream_refuses_is_sent_again_whole_on_another_connection_and_answered(
    make_grpc_router: MakeGrpcRouter,
) -> None:
    async def serve(wire: UpstreamWire) -> None:
        (req,) = await wire.requests(1)
        bodies.append(req.body)
        if len(u.connections) == 1:
            wire.send(frames.rst_stream(req.stream_id, frames.REFUSED_STREAM))
        else:
            _echo(wire, req)

    bodies: list[bytes] = []
    async with upstream(serve) as u:
        r = await make_grpc_router({"control": u.address, "candidate": u.address}, {"control": 100, "candidate": 0})
        async with r.channel() as channel:
            call = channel.stream_unary("/test.Quirky/Upload")(
                iter([b"x" * 9000, b"y" * 7000, b"z"]), metadata=UNIT, timeout=20
            )
            answer = await asyncio.wait_for(call, WAIT_S)
            assert dict(await call.initial_metadata())["x-ab-variant"] == "control"
        assert len(bodies) == 2 and bodies[0] == bodies[1]  # every message, sent again as first sent
        assert bodies[0] == b"".join(_message(m) for m in (b"x" * 9000, b"y" * 7000, b"z"))
        assert answer == bodies[1][5:]
        assert len(u.connections) == 2
        assert not r.router.metrics.errors
        assert dict(r.router.metrics.grpc_retries) == {(r.spec["name"], "control"): 1}


async def test_a_call_still_streaming_when_its_upstream_goes_away_is_sent_again_and_the_rest_follows_in_order(
    make_grpc_router: MakeGrpcRouter,
) -> None:
    first = [b"p" * 1000, b"q" * 1000]
    rest = [bytes([65 + n]) * 50_000 for n in range(5)]  # beyond the upstream's 64 KiB window: its credit is needed

    async def serve(wire: UpstreamWire) -> None:
        if len(u.connections) == 1:
            for _ in range(100_000):  # the first two messages, the request still open
                if wire.bodies and len(next(iter(wire.bodies.values()))) >= sum(len(_message(m)) for m in first):
                    break
                await wire.step()
            wire.send(frames.goaway(0, frames.NO_ERROR))  # the call's stream is above 0: never processed
            refused.set()
            return
        (req,) = await wire.requests(1)
        bodies.append(req.body)
        _echo(wire, req)

    async def messages() -> AsyncIterator[bytes]:
        for m in first:
            yield m
        await asyncio.wait_for(refused.wait(), WAIT_S)
        for m in rest:
            yield m

    refused = asyncio.Event()
    bodies: list[bytes] = []
    async with upstream(serve) as u:
        r = await make_grpc_router({"control": u.address, "candidate": u.address}, {"control": 100, "candidate": 0})
        async with r.channel() as channel:
            call = channel.stream_unary("/test.Quirky/Upload")(messages(), metadata=UNIT, timeout=20)
            answer = await asyncio.wait_for(call, WAIT_S)
        assert bodies == [b"".join(_message(m) for m in first + rest)]
        assert answer == bodies[0][5:]
        assert len(u.connections) == 2
        assert not r.router.metrics.errors
        assert dict(r.router.metrics.grpc_retries) == {(r.spec["name"], "control"): 1}


async def test_a_call_refused_every_time_is_unavailable_after_the_bounded_retries_and_one_error_of_the_variant(
    make_grpc_router: MakeGrpcRouter,
) -> None:
    async def serve(wire: UpstreamWire) -> None:
        for _ in range(100):
            (req,) = await wire.requests(1)
            wire.send(frames.rst_stream(req.stream_id, frames.REFUSED_STREAM))

    async with upstream(serve) as u:
        r = await make_grpc_router({"control": u.address, "candidate": u.address}, {"control": 100, "candidate": 0})
        async with r.channel() as channel:
            err = await _failed_call(channel)
        assert err.code() is grpc.StatusCode.UNAVAILABLE
        assert "variant 'control'" in (err.details() or "")
        assert sum(len(w.heads) for w in u.connections) == 1 + relay.MAX_RETRIES
        assert dict(r.router.metrics.grpc_retries) == {(r.spec["name"], "control"): relay.MAX_RETRIES}
        await _one_error(r, "unavailable")


async def test_a_call_refused_while_every_pooled_connection_is_busy_goes_to_another_of_them_not_back(
    make_grpc_router: MakeGrpcRouter,
) -> None:
    """An upstream that takes one stream per connection: four calls held fill the pool's `MAX_CONNECTIONS`; a
    fifth goes to the least busy (the first), which refuses it, and is sent again on the second, which answers."""

    async def serve(wire: UpstreamWire) -> None:
        for _ in range(100):  # our SETTINGS acknowledged: the router knows its one-stream limit
            f = await wire.step()
            if f.kind == frames.SETTINGS and f.flags & frames.ACK:
                break
        (held,) = await wire.requests(1)
        arrived.append(wire)
        which = u.connections.index(wire)
        if which < 2:  # the fifth call comes to the first, is refused, and comes again to the second
            (extra,) = await wire.requests(1)  # beyond the limit: the router had no other connection with room
            if which == 0:
                wire.send(frames.rst_stream(extra.stream_id, frames.REFUSED_STREAM))
            else:
                _echo(wire, extra)
            extras.append((which, extra.body))
        await asyncio.wait_for(release.wait(), WAIT_S)
        _echo(wire, held)

    arrived: list[UpstreamWire] = []
    extras: list[tuple[int, bytes]] = []
    release = asyncio.Event()
    async with upstream(serve, {frames.MAX_CONCURRENT_STREAMS: 1}) as u:
        r = await make_grpc_router({"control": u.address, "candidate": u.address}, {"control": 100, "candidate": 0})
        async with r.channel() as channel:
            method = channel.unary_unary("/test.Quirky/Call")
            held = []
            for n in range(h2upstream.MAX_CONNECTIONS):  # one at a time: each fills a new connection
                held.append(asyncio.ensure_future(method(b"held%d" % n, metadata=UNIT, timeout=20)))
                await _until(lambda n=n: len(arrived) == n + 1)
            assert len(u.connections) == h2upstream.MAX_CONNECTIONS
            answer = await asyncio.wait_for(method(b"fifth", metadata=UNIT, timeout=20), WAIT_S)
            assert answer == b"fifth"
            assert extras == [(0, _message(b"fifth")), (1, _message(b"fifth"))]  # the second, as first sent
            release.set()
            assert await asyncio.wait_for(asyncio.gather(*held), WAIT_S) == [b"held%d" % n for n in range(4)]
        assert len(u.connections) == h2upstream.MAX_CONNECTIONS  # no fifth connection
        assert not r.router.metrics.errors
        assert dict(r.router.metrics.grpc_retries) == {(r.spec["name"], "control"): 1}


async def test_a_call_that_streamed_beyond_the_replay_bound_before_it_was_refused_is_unavailable_not_sent_again(
    make_grpc_router: MakeGrpcRouter,
) -> None:
    async def serve(wire: UpstreamWire) -> None:
        (req,) = await wire.requests(1)
        assert len(req.body) > relay.REPLAY_LIMIT
        wire.send(frames.rst_stream(req.stream_id, frames.REFUSED_STREAM))
        await _echo_all(wire)

    async with upstream(serve) as u:
        r = await make_grpc_router({"control": u.address, "candidate": u.address}, {"control": 100, "candidate": 0})
        async with _big_channel(r) as channel:
            big = b"x" * (relay.REPLAY_LIMIT + 1000)
            err = await _failed_call(channel, big)
        assert err.code() is grpc.StatusCode.UNAVAILABLE
        assert "variant 'control'" in (err.details() or "")
        assert len(u.connections) == 1 and sum(len(w.heads) for w in u.connections) == 1
        assert not r.router.metrics.grpc_retries
        await _one_error(r, "unavailable")


async def test_a_deadline_that_passes_while_a_failed_call_is_sent_again_is_deadline_exceeded(
    make_grpc_router: MakeGrpcRouter,
) -> None:
    async def serve(wire: UpstreamWire) -> None:
        (req,) = await wire.requests(1)
        if len(u.connections) == 1:
            wire.send(frames.rst_stream(req.stream_id, frames.REFUSED_STREAM))
        # the second connection takes the call and never answers

    async with upstream(serve) as u:
        r = await make_grpc_router({"control": u.address, "candidate": u.address}, {"control": 100, "candidate": 0})
        async with r.channel() as channel:
            err = await _failed_call(channel, timeout=3)
        assert err.code() is grpc.StatusCode.DEADLINE_EXCEEDED
        assert len(u.connections) == 2 and all(w.heads for w in u.connections)
        assert dict(r.router.metrics.grpc_retries) == {(r.spec["name"], "control"): 1}
        await _one_error(r, "timeout")


@pytest.mark.parametrize("code", [frames.CANCEL, frames.INTERNAL_ERROR])
async def test_a_call_the_upstream_resets_with_another_code_may_have_been_processed_and_is_not_sent_again(
    make_grpc_router: MakeGrpcRouter, code: int
) -> None:
    async def serve(wire: UpstreamWire) -> None:
        (req,) = await wire.requests(1)
        wire.send(frames.rst_stream(req.stream_id, code))
        await _echo_all(wire)

    async with upstream(serve) as u:
        r = await make_grpc_router({"control": u.address, "candidate": u.address}, {"control": 100, "candidate": 0})
        async with r.channel() as channel:
            err = await _failed_call(channel)
        assert err.code() is grpc.StatusCode.UNAVAILABLE
        assert sum(len(w.heads) for w in u.connections) == 1
        assert not r.router.metrics.grpc_retries
        await _one_error(r, "unavailable")


async def test_a_callers_reset_mid_call_resets_the_upstreams_stream_and_is_no_error_of_the_variant(
    make_grpc_router: MakeGrpcRouter,
) -> None:
    reset = asyncio.get_running_loop().create_future()

    async def serve(wire: UpstreamWire) -> None:
        (req,) = await wire.requests(1)
        wire.respond(req.stream_id, OK_HEAD)
        wire.send(frames.data(req.stream_id, _message(b"part")))
        for _ in range(100_000):
            if req.stream_id in wire.resets:
                break
            await wire.step()
        reset.set_result(wire.resets[req.stream_id])

    async with upstream(serve) as u:
        r = await make_grpc_router({"control": u.address, "candidate": u.address}, {"control": 100, "candidate": 0})
        wire = await Wire.client(r)
        try:
            block = wire.encoder.encode(_head("/test.Quirky/Stream"))
            wire.send(
                frames.headers(1, block, end_stream=False, max_frame=frames.DEFAULT_MAX_FRAME),
                frames.data(1, _message(b"go"), end_stream=True),
            )
            await wire.until(lambda f: f.kind == frames.DATA and f.stream_id == 1)
            wire.send(frames.rst_stream(1, frames.CANCEL))
            assert await asyncio.wait_for(reset, WAIT_S) == frames.CANCEL
        finally:
            wire.close()
        for _ in range(1500):
            if r.router.metrics.requests.get((r.spec["name"], "control", "4xx")):
                break
            await asyncio.sleep(0.02)
        assert r.router.metrics.requests[(r.spec["name"], "control", "4xx")] == 1
        assert not r.router.metrics.errors


async def test_an_upstream_frame_beyond_the_max_frame_size_is_a_frame_size_error_and_the_next_call_reconnects(
    make_grpc_router: MakeGrpcRouter,
) -> None:
    async def serve(wire: UpstreamWire) -> None:
        (req,) = await wire.requests(1)
        if len(u.connections) == 1:
            wire.respond(req.stream_id, OK_HEAD)
            wire.send(frames.data(req.stream_id, b"\x00" * (frames.DEFAULT_MAX_FRAME + 1)))
            return
        wire.respond(req.stream_id, OK_HEAD)
        wire.send(frames.data(req.stream_id, _message(b"second connection")))
        wire.respond(req.stream_id, [("grpc-status", "0")], end_stream=True)

    async with upstream(serve) as u:
        r = await make_grpc_router({"control": u.address, "candidate": u.address}, {"control": 100, "candidate": 0})
        async with r.channel() as channel:
            method = channel.unary_unary("/test.Quirky/Call")
            with pytest.raises(grpc.aio.AioRpcError) as err:
                await method(b"x", metadata=UNIT, timeout=10)
            assert err.value.code() is grpc.StatusCode.INTERNAL, err.value  # the head had come: cut mid-answer
            assert await method(b"y", metadata=UNIT, timeout=10) == b"second connection"
        first = u.connections[0]
        assert first.goaways and first.goaways[-1][1] == frames.FRAME_SIZE_ERROR
        assert len(u.connections) == 2


async def test_many_calls_on_one_upstream_connection_answered_interleaved_and_out_of_order_each_get_their_own(
    make_grpc_router: MakeGrpcRouter,
) -> None:
    count = 20

    async def serve(wire: UpstreamWire) -> None:
        reqs = await wire.requests(count)
        for req in reqs:
            wire.respond(req.stream_id, OK_HEAD)
        answers = {q.stream_id: _message(q.body[5:] * 3000) for q in reqs}
        for at in range(0, max(len(a) for a in answers.values()), 1000):  # a piece of each, round and round
            for stream_id in reversed(sorted(answers)):
                piece = answers[stream_id][at : at + 1000]
                if piece:
                    wire.send(frames.data(stream_id, piece))
        for stream_id in answers:
            wire.respond(stream_id, [("grpc-status", "0")], end_stream=True)

    async with upstream(serve) as u:
        r = await make_grpc_router({"control": u.address, "candidate": u.address})
        async with r.channel() as channel:
            method = channel.unary_unary("/test.Quirky/Call")
            calls = [method(b"<%02d>" % n, metadata=UNIT, timeout=20) for n in range(count)]
            answers = await asyncio.wait_for(asyncio.gather(*calls), WAIT_S)
        assert answers == [b"<%02d>" % n * 3000 for n in range(count)]
        assert len(u.connections) == 1


async def test_a_header_list_beyond_the_advertised_max_header_list_size_is_refused_not_forwarded(
    make_grpc_router: MakeGrpcRouter, echo_servers: dict[str, EchoServer]
) -> None:
    async with _wired(make_grpc_router, echo_servers) as (_r, wire):
        settings = await wire.until(lambda f: f.kind == frames.SETTINGS and not f.flags & frames.ACK)
        limit = dict(frames.parse_settings(settings[-1].payload))[frames.MAX_HEADER_LIST_SIZE]
        plain = hpack.Encoder()  # never indexes: the table holds only what the literal below adds
        value = b"v" * 4000
        added = b"\x40\x05x-big" + hpack.encode_integer(len(value), 7, 0) + value  # indexed: entry 62
        wire.send(
            frames.headers(1, plain.encode(_head("/test.Echo/Metadata")) + added, end_stream=False, max_frame=16384),
            frames.data(1, _message(b""), end_stream=True),
        )
        seen = await wire.until(_ends(1))
        assert _answer(seen, 1, wire.decoder)[2]["grpc-status"] == "0"
        # 2 bytes of block per 4 KB of header list: 12,000 of them are 48 MB, the advertised limit many times over.
        bomb = plain.encode(_head("/test.Echo/Metadata")) + b"\xbe" * 12_000
        assert 12_000 * (len(value) + 5 + 32) > limit
        wire.send(
            frames.headers(3, bomb, end_stream=False, max_frame=16384),
            frames.data(3, _message(b""), end_stream=True),
        )
        seen = await wire.until(lambda f: f.stream_id == 3 and (f.kind == frames.RST_STREAM or _ends(3)(f)))
        assert seen[-1].kind == frames.RST_STREAM or _answer(seen, 3, wire.decoder)[2]["grpc-status"] != "0"
        assert sum(c.count("/test.Echo/Metadata") for c in (s.calls for s in echo_servers.values())) == 1
        # The connection goes on (its HPACK table too): the entry is still there for the next call.
        wire.send(
            frames.headers(5, plain.encode(_head("/test.Echo/Metadata")) + b"\xbe", end_stream=False, max_frame=16384),
            frames.data(5, _message(b""), end_stream=True),
        )
        seen = await wire.until(_ends(5))
        _, body, trailers = _answer(seen, 5, wire.decoder)
        assert trailers["grpc-status"] == "0" and dict(json.loads(body[5:]))["x-big"] == value.decode()


#: Frames no endpoint may send, and the connection error RFC 9113 names for each (§6, §5.1, §4.2).
MALFORMED = {
    "ping-on-a-stream": (frames.frame(frames.PING, 0, 1, b"12345678"), frames.PROTOCOL_ERROR),
    "ping-of-seven-bytes": (frames.frame(frames.PING, 0, 0, b"1234567"), frames.FRAME_SIZE_ERROR),
    "settings-on-a-stream": (frames.frame(frames.SETTINGS, 0, 1, b""), frames.PROTOCOL_ERROR),
    "settings-ack-with-a-payload": (
        frames.frame(frames.SETTINGS, frames.ACK, 0, b"\x00\x04\x00\x00\x00\x01"),
        frames.FRAME_SIZE_ERROR,
    ),
    "settings-of-five-bytes": (frames.frame(frames.SETTINGS, 0, 0, b"\x00\x04\x00\x00\x00"), frames.FRAME_SIZE_ERROR),
    "enable-push-of-two": (frames.settings({frames.ENABLE_PUSH: 2}), frames.PROTOCOL_ERROR),
    "initial-window-beyond-2^31-1": (frames.settings({frames.INITIAL_WINDOW_SIZE: 2**31}), frames.FLOW_CONTROL_ERROR),
    "max-frame-size-below-16384": (frames.settings({frames.MAX_FRAME_SIZE: 16383}), frames.PROTOCOL_ERROR),
    "window-update-of-zero": (frames.window_update(0, 0), frames.PROTOCOL_ERROR),
    "window-update-beyond-2^31-1": (frames.window_update(0, 2**31 - 1), frames.FLOW_CONTROL_ERROR),
    "window-update-of-three-bytes": (
        frames.frame(frames.WINDOW_UPDATE, 0, 0, b"\x00\x00\x01"),
        frames.FRAME_SIZE_ERROR,
    ),
    "rst-stream-on-stream-0": (frames.rst_stream(0, frames.CANCEL), frames.PROTOCOL_ERROR),
    "rst-stream-on-a-stream-never-opened": (frames.rst_stream(7, frames.CANCEL), frames.PROTOCOL_ERROR),
    "goaway-on-a-stream": (frames.frame(frames.GOAWAY, 0, 1, bytes(8)), frames.PROTOCOL_ERROR),
    "priority-on-stream-0": (frames.frame(frames.PRIORITY, 0, 0, bytes(5)), frames.PROTOCOL_ERROR),
    "headers-on-stream-0": (frames.frame(frames.HEADERS, frames.END_HEADERS, 0, b"\x83"), frames.PROTOCOL_ERROR),
    "data-on-stream-0": (frames.data(0, b"x"), frames.PROTOCOL_ERROR),
    "continuation-without-headers": (
        frames.frame(frames.CONTINUATION, frames.END_HEADERS, 1, b"\x83"),
        frames.PROTOCOL_ERROR,
    ),
    "push-promise-from-a-client": (
        frames.frame(frames.PUSH_PROMISE, frames.END_HEADERS, 1, bytes(4)),
        frames.PROTOCOL_ERROR,
    ),
    "a-frame-beyond-16384-bytes": (frames.frame(0xFA, 0, 0, bytes(16385)), frames.FRAME_SIZE_ERROR),
    "a-header-block-that-does-not-decode": (
        frames.frame(frames.HEADERS, frames.END_HEADERS, 1, b"\xff\xff\xff"),
        frames.COMPRESSION_ERROR,
    ),
    "padding-longer-than-the-headers": (
        frames.frame(frames.HEADERS, frames.END_HEADERS | frames.PADDED, 1, b"\x05\x83"),
        frames.PROTOCOL_ERROR,
    ),
}


@pytest.mark.parametrize("case", list(MALFORMED))
async def test_a_frame_that_breaks_the_protocol_is_a_goaway_with_the_code_the_rfc_names(
    make_grpc_router: MakeGrpcRouter, echo_servers: dict[str, EchoServer], case: str
) -> None:
    bad, code = MALFORMED[case]
    async with _wired(make_grpc_router, echo_servers) as (_r, wire):
        wire.send(bad)
        assert (await wire.goaway())[1] == code


async def test_a_connection_whose_first_frame_is_not_settings_is_a_protocol_error(
    make_grpc_router: MakeGrpcRouter, echo_servers: dict[str, EchoServer]
) -> None:
    r = await make_grpc_router({n: s.address for n, s in echo_servers.items()})
    reader, writer = await asyncio.open_connection("127.0.0.1", r.grpc_port)
    wire = Wire(reader, writer)
    try:
        wire.send(frames.PREFACE + frames.frame(frames.PING, 0, 0, b"no hello"))  # §3.4: SETTINGS must come first
        assert (await wire.goaway())[1] == frames.PROTOCOL_ERROR
    finally:
        wire.close()


async def test_many_concurrent_streams_with_interleaved_data_on_one_connection_each_get_their_own_answer(
    make_grpc_router: MakeGrpcRouter, echo_servers: dict[str, EchoServer]
) -> None:
    r = await make_grpc_router({n: s.address for n, s in echo_servers.items()})
    reader, writer = await asyncio.open_connection("127.0.0.1", r.grpc_port)
    conn = h2.connection.H2Connection(h2.config.H2Configuration(client_side=True, header_encoding="latin-1"))
    conn.initiate_connection()
    streams = [conn.get_next_available_stream_id() + 2 * n for n in range(50)]
    messages = {s: _message(b"<%d>" % s * 200) for s in streams}  # 50 KB: within the first connection window
    for s in streams:
        conn.send_headers(s, _head("/test.Echo/Bidi"))
    for at in range(0, max(len(m) for m in messages.values()), 700):  # a piece of each stream in turn
        for s in streams:
            piece = messages[s][at : at + 700]
            if piece:
                conn.send_data(s, piece)
    for s in streams:
        conn.end_stream(s)
    writer.write(conn.data_to_send())
    answers: dict[int, bytearray] = {s: bytearray() for s in streams}
    ended: set[int] = set()
    try:
        for _ in range(100_000):
            if ended == set(streams):
                break
            data = await asyncio.wait_for(reader.read(65536), WAIT_S)
            assert data, "the router closed the connection"
            for event in conn.receive_data(data):
                if isinstance(event, h2.events.DataReceived):
                    answers[event.stream_id] += event.data
                    conn.acknowledge_received_data(event.flow_controlled_length, event.stream_id)
                elif isinstance(event, h2.events.StreamEnded):
                    ended.add(event.stream_id)
                elif isinstance(event, (h2.events.StreamReset, h2.events.ConnectionTerminated)):
                    raise AssertionError(event)
            writer.write(conn.data_to_send())
    finally:
        writer.close()
    for s in streams:
        variant, _, echoed = bytes(answers[s][5:]).partition(b":")
        assert variant in (b"control", b"candidate") and echoed == messages[s][5:]


async def test_an_upstream_that_limits_concurrent_streams_gets_no_more_and_the_calls_beyond_take_a_new_connection(
    make_grpc_router: MakeGrpcRouter,
) -> None:
    release = asyncio.Event()

    async def serve(wire: UpstreamWire) -> None:
        for _ in range(100):
            (req,) = await wire.requests(1)
            open_streams = [s for s in wire.heads if s not in wire.resets and s != req.stream_id and s not in done]
            assert not open_streams, f"a stream beyond SETTINGS_MAX_CONCURRENT_STREAMS 1: {req.stream_id}"
            if req.body[5:] != b"first":
                await asyncio.wait_for(release.wait(), WAIT_S)
            wire.respond(req.stream_id, OK_HEAD)
            wire.send(frames.data(req.stream_id, _message(req.body[5:])))
            wire.respond(req.stream_id, [("grpc-status", "0")], end_stream=True)
            done.add(req.stream_id)

    done: set[int] = set()
    async with upstream(serve, {frames.MAX_CONCURRENT_STREAMS: 1}) as u:
        r = await make_grpc_router({"control": u.address, "candidate": u.address})
        async with r.channel() as channel:
            method = channel.unary_unary("/test.Quirky/Call")
            assert await method(b"first", metadata=UNIT, timeout=10) == b"first"  # the upstream's SETTINGS are in
            calls = [asyncio.ensure_future(method(b"c%d" % n, metadata=UNIT, timeout=20)) for n in range(2)]
            for _ in range(1500):
                if len(u.connections) == 2 and all(w.heads for w in u.connections):
                    break
                await asyncio.sleep(0.02)
            release.set()
            assert await asyncio.wait_for(asyncio.gather(*calls), WAIT_S) == [b"c0", b"c1"]
        assert len(u.connections) == 2


async def test_the_router_never_sends_an_upstream_beyond_its_windows_tiny_negative_or_raised_frame_sizes(
    make_grpc_router: MakeGrpcRouter,
) -> None:
    big_frame = 1 << 18
    largest: list[int] = []

    async def serve(wire: UpstreamWire) -> None:
        wire.credit = False
        # What the router may send: the connection's window, the stream's; SETTINGS take effect once acknowledged.
        conn_window, initial, stream_window = frames.DEFAULT_WINDOW, frames.DEFAULT_WINDOW, {}
        pending_initial = [1000]
        wire.send(frames.window_update(0, 10 << 20))
        conn_window += 10 << 20
        received = 0
        for _ in range(100_000):
            f = await wire.step()
            if f.kind == frames.SETTINGS and f.flags & frames.ACK and pending_initial:
                new = pending_initial.pop(0)
                for s in stream_window:
                    stream_window[s] += new - initial
                initial = new
            elif f.kind == frames.HEADERS:
                stream_window.setdefault(f.stream_id, initial)
            elif f.kind == frames.DATA:
                size = len(f.payload)
                largest.append(size)
                received += size
                conn_window -= size
                stream_window[f.stream_id] -= size
                assert conn_window >= 0 and stream_window[f.stream_id] >= 0, (received, stream_window)
                if f.flags & frames.END_STREAM:
                    break
                if conn_window < 1 << 20:
                    wire.send(frames.window_update(0, 8 << 20))
                    conn_window += 8 << 20
                if stream_window[f.stream_id] <= 0:
                    if received > 1 << 20 and not pending_initial and initial > 0:
                        pending_initial.append(0)  # made negative: -1000 below what it was
                        wire.send(frames.settings({frames.INITIAL_WINDOW_SIZE: 0}))
                        wire.send(frames.window_update(f.stream_id, 500))  # still not above 0
                        stream_window[f.stream_id] += 500
                    grant = 70_000 if initial else 2_000
                    wire.send(frames.window_update(f.stream_id, grant))
                    stream_window[f.stream_id] += grant
        assert initial == 0  # the window of 0 was taken (and made the stream's negative)
        (req,) = await wire.requests(1)
        wire.respond(req.stream_id, OK_HEAD)
        wire.send(frames.data(req.stream_id, _message(b"%d" % len(req.body))))
        wire.respond(req.stream_id, [("grpc-status", "0")], end_stream=True)

    async with upstream(serve, {frames.INITIAL_WINDOW_SIZE: 1000, frames.MAX_FRAME_SIZE: big_frame}) as u:
        r = await make_grpc_router({"control": u.address, "candidate": u.address})
        async with r.channel() as channel:
            message = b"\x07" * (3 << 20)
            answer = await channel.unary_unary("/test.Quirky/Call")(message, metadata=UNIT, timeout=20)
        assert answer == b"%d" % (5 + len(message))
        assert max(largest) <= big_frame


async def test_a_caller_streaming_to_an_upstream_that_reads_nothing_is_held_to_the_windows(
    make_grpc_router: MakeGrpcRouter,
) -> None:
    read = asyncio.Event()

    async def serve(wire: UpstreamWire) -> None:
        wire.credit = False
        for _ in range(100_000):  # the head, and as much data as its default windows let through
            if wire.heads:
                break
            await wire.step()
        await asyncio.wait_for(read.wait(), WAIT_S)
        wire.credit = True
        s = next(iter(wire.heads))
        wire.send(frames.window_update(0, frames.DEFAULT_WINDOW), frames.window_update(s, frames.DEFAULT_WINDOW))
        (req,) = await wire.requests(1)
        wire.respond(req.stream_id, OK_HEAD)
        wire.send(frames.data(req.stream_id, _message(b"%d" % len(req.body))))
        wire.respond(req.stream_id, [("grpc-status", "0")], end_stream=True)

    async with upstream(serve) as u:
        r = await make_grpc_router({"control": u.address, "candidate": u.address})
        reader, writer = await asyncio.open_connection("127.0.0.1", r.grpc_port)
        conn = h2.connection.H2Connection(h2.config.H2Configuration(client_side=True, header_encoding="latin-1"))
        conn.initiate_connection()
        s = conn.get_next_available_stream_id()
        conn.send_headers(s, _head("/test.Quirky/Upload"))
        message = _message(b"\x05" * (8 << 20))
        sent = 0
        try:
            for _ in range(100_000):  # send while the router's windows let us, until they stay shut
                room = min(conn.local_flow_control_window(s), conn.max_outbound_frame_size, len(message) - sent)
                if room > 0:
                    conn.send_data(s, message[sent : sent + room])
                    sent += room
                    writer.write(conn.data_to_send())
                    continue
                try:
                    data = await asyncio.wait_for(reader.read(65536), 1.0)
                except TimeoutError:
                    break  # shut: nothing more comes from the router
                conn.receive_data(data)
                writer.write(conn.data_to_send())
            # The router took at most one stream window from us beyond what the upstream took (64 KiB).
            settings = conn.remote_settings
            assert sent <= settings.initial_window_size + frames.DEFAULT_WINDOW, sent
            assert sent < len(message)
            read.set()
            answer = bytearray()
            for _ in range(100_000):
                room = min(conn.local_flow_control_window(s), conn.max_outbound_frame_size, len(message) - sent)
                if room > 0:
                    conn.send_data(s, message[sent : sent + room], end_stream=sent + room == len(message))
                    sent += room
                    writer.write(conn.data_to_send())
                    continue
                data = await asyncio.wait_for(reader.read(65536), WAIT_S)
                assert data, "the router closed the connection"
                events = conn.receive_data(data)
                writer.write(conn.data_to_send())
                answer += b"".join(e.data for e in events if isinstance(e, h2.events.DataReceived))
                if any(isinstance(e, h2.events.StreamEnded) for e in events):
                    break
        finally:
            writer.close()
        assert bytes(answer) == _message(b"%d" % len(message))


async def test_an_upstreams_http_error_without_a_grpc_status_is_the_code_grpc_maps_it_to(
    make_grpc_router: MakeGrpcRouter,
) -> None:
    async def serve(wire: UpstreamWire) -> None:
        (req,) = await wire.requests(1)
        wire.respond(req.stream_id, [(":status", "503"), ("content-type", "text/plain")], end_stream=True)

    async with upstream(serve) as u:
        r = await make_grpc_router({"control": u.address, "candidate": u.address})
        async with r.channel() as channel:
            with pytest.raises(grpc.aio.AioRpcError) as err:
                await channel.unary_unary("/test.Quirky/Call")(b"x", metadata=UNIT, timeout=10)
    assert err.value.code() is grpc.StatusCode.UNAVAILABLE


async def test_a_second_head_on_a_request_without_end_stream_is_malformed_and_its_stream_reset(
    make_grpc_router: MakeGrpcRouter, echo_servers: dict[str, EchoServer]
) -> None:
    async with _wired(make_grpc_router, echo_servers) as (_r, wire):
        message = _message(b"half")
        wire.send(
            frames.headers(1, wire.encoder.encode(_head("/test.Echo/Unary")), end_stream=False, max_frame=16384),
            frames.data(1, message[:4]),
            frames.headers(1, wire.encoder.encode([("x-not", "trailers")]), end_stream=False, max_frame=16384),
            frames.data(1, message[4:], end_stream=True),
        )
        seen = await wire.until(lambda f: f.stream_id == 1 and (f.kind == frames.RST_STREAM or _ends(1)(f)))
        assert seen[-1].kind == frames.RST_STREAM and frames.parse_code(seen[-1].payload) == frames.PROTOCOL_ERROR
        # The connection goes on.
        wire.send(
            frames.headers(3, wire.encoder.encode(_head("/test.Echo/Unary")), end_stream=False, max_frame=16384),
            frames.data(3, _message(b"next"), end_stream=True),
        )
        assert _answer(await wire.until(_ends(3)), 3, wire.decoder)[2]["grpc-status"] == "0"


async def test_a_clients_goaway_lets_its_calls_in_flight_finish_and_then_the_connection_closes(
    make_grpc_router: MakeGrpcRouter, echo_servers: dict[str, EchoServer]
) -> None:
    async with _wired(make_grpc_router, echo_servers) as (_r, wire):
        wire.send(
            frames.headers(1, wire.encoder.encode(_head("/test.Echo/Slow")), end_stream=False, max_frame=16384),
            frames.data(1, _message(b"0.2"), end_stream=True),
            frames.goaway(0, frames.NO_ERROR),
        )
        seen = await wire.until(_ends(1))
        assert _answer(seen, 1, wire.decoder)[2]["grpc-status"] == "0"
        assert await asyncio.wait_for(wire.reader.read(), WAIT_S) == b""  # closed, nothing more to say


@pytest.mark.parametrize(
    "bad",
    [("connection", "keep-alive"), ("transfer-encoding", "chunked"), ("X-Upper", "case"), ("te", "gzip")],
    ids=["connection", "transfer-encoding", "upper-case-name", "te-not-trailers"],
)
async def test_a_request_with_a_field_http2_forbids_is_malformed_and_no_error_of_the_variant(
    make_grpc_router: MakeGrpcRouter, echo_servers: dict[str, EchoServer], bad: tuple[str, str]
) -> None:
    async with _wired(make_grpc_router, echo_servers) as (r, wire):
        fields = [f for f in _head("/test.Echo/Unary") if f[0] != "te" or bad[0] != "te"] + [bad]
        wire.send(
            frames.headers(1, wire.encoder.encode(fields), end_stream=False, max_frame=16384),
            frames.data(1, _message(b"x"), end_stream=True),
        )
        seen = await wire.until(lambda f: f.stream_id == 1 and (f.kind == frames.RST_STREAM or _ends(1)(f)))
        assert seen[-1].kind == frames.RST_STREAM and frames.parse_code(seen[-1].payload) == frames.PROTOCOL_ERROR
    assert not r.router.metrics.errors


async def test_data_after_the_callers_end_stream_is_a_stream_closed_error_and_the_call_is_no_error_of_the_variant(
    make_grpc_router: MakeGrpcRouter, echo_servers: dict[str, EchoServer]
) -> None:
    async with _wired(make_grpc_router, echo_servers) as (r, wire):
        wire.send(
            frames.headers(1, wire.encoder.encode(_head("/test.Echo/Slow")), end_stream=False, max_frame=16384),
            frames.data(1, _message(b"0.5"), end_stream=True),
            frames.data(1, _message(b"more")),  # the stream is half-closed (remote): no more DATA
        )
        seen = await wire.until(lambda f: f.stream_id == 1 and (f.kind == frames.RST_STREAM or _ends(1)(f)))
        assert seen[-1].kind == frames.RST_STREAM and frames.parse_code(seen[-1].payload) == frames.STREAM_CLOSED
        wire.send(  # the connection goes on
            frames.headers(3, wire.encoder.encode(_head("/test.Echo/Unary")), end_stream=False, max_frame=16384),
            frames.data(3, _message(b"next"), end_stream=True),
        )
        assert _answer(await wire.until(_ends(3)), 3, wire.decoder)[2]["grpc-status"] == "0"
    assert not r.router.metrics.errors


async def test_an_upstream_that_drops_its_connection_mid_answer_is_an_error_of_the_variant_and_the_caller_hears_it(
    make_grpc_router: MakeGrpcRouter,
) -> None:
    async def serve(wire: UpstreamWire) -> None:
        (req,) = await wire.requests(1)
        wire.respond(req.stream_id, OK_HEAD)
        wire.send(frames.data(req.stream_id, _message(b"a whole answer")[:6]))
        await wire.writer.drain()
        wire.writer.transport.abort()
        raise ConnectionError("dropped on purpose")

    async with upstream(serve) as u:
        r = await make_grpc_router({"control": u.address, "candidate": u.address}, {"control": 100, "candidate": 0})
        async with r.channel() as channel:
            with pytest.raises(grpc.aio.AioRpcError) as err:
                await channel.unary_unary("/test.Quirky/Call")(b"x", metadata=UNIT, timeout=10)
        assert err.value.code() is grpc.StatusCode.INTERNAL  # cut after the head: a reset, not a status
        for _ in range(1500):
            if r.router.metrics.errors:
                break
            await asyncio.sleep(0.02)
        assert [key[1] for key in r.router.metrics.errors] == ["control"]


async def test_a_settings_change_that_takes_an_open_streams_window_beyond_2_to_the_31_is_a_flow_control_error(
    make_grpc_router: MakeGrpcRouter, echo_servers: dict[str, EchoServer]
) -> None:
    async with _wired(make_grpc_router, echo_servers) as (_r, wire):
        wire.send(
            frames.headers(1, wire.encoder.encode(_head("/test.Echo/Slow")), end_stream=False, max_frame=16384),
            frames.data(1, _message(b"1.0"), end_stream=True),
            frames.window_update(1, frames.MAX_WINDOW - frames.DEFAULT_WINDOW),  # the stream's window: 2^31-1
            frames.settings({frames.INITIAL_WINDOW_SIZE: frames.DEFAULT_WINDOW + 1}),  # one more: too many
        )
        assert (await wire.goaway())[1] == frames.FLOW_CONTROL_ERROR


async def test_a_client_that_floods_pings_and_never_reads_the_acks_is_cut_off_not_buffered_for(
    make_grpc_router: MakeGrpcRouter, echo_servers: dict[str, EchoServer]
) -> None:
    r = await make_grpc_router({n: s.address for n, s in echo_servers.items()})
    _, writer = await asyncio.open_connection("127.0.0.1", r.grpc_port)
    writer.transport.pause_reading()  # the router's answers pile up: in the kernel, then in the router
    writer.write(frames.PREFACE + frames.settings({}))
    pings = frames.frame(frames.PING, 0, 0, b"flooding") * 10_000
    written = 0
    try:
        for _ in range(100):  # 17 MB of PINGs (CVE-2019-9512's kind), far beyond what the kernel's buffers hold
            writer.write(pings)
            await asyncio.wait_for(writer.drain(), WAIT_S)
            written += 1
    except ConnectionError:
        pass  # cut off
    finally:
        writer.close()
    assert written < 100


@pytest.mark.parametrize(
    "hello",
    [
        b"GET / HTTP/1.1\r\nHost: r\r\nConnection: Upgrade, HTTP2-Settings\r\nUpgrade: h2c\r\nHTTP2-Settings: \r\n\r\n",
        b"PRI * HTTP/2.0\r\n\r\nXX\r\n\r\n",
        b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03" + bytes(32),  # a TLS ClientHello, on the h2c port
    ],
    ids=["http1-upgrade-to-h2c", "a-preface-gone-wrong", "tls"],
)
async def test_a_client_that_does_not_speak_h2c_gets_a_goaway_and_the_door_and_no_traceback(
    make_grpc_router: MakeGrpcRouter,
    echo_servers: dict[str, EchoServer],
    hello: bytes,
    caplog: pytest.LogCaptureFixture,
) -> None:
    r = await make_grpc_router({n: s.address for n, s in echo_servers.items()})
    reader, writer = await asyncio.open_connection("127.0.0.1", r.grpc_port)
    wire = Wire(reader, writer)
    try:
        wire.send(hello)
        assert (await wire.goaway())[1] == frames.PROTOCOL_ERROR
    finally:
        wire.close()
    assert not [rec for rec in caplog.records if rec.levelno >= logging.ERROR or rec.exc_info]


async def test_an_upstream_that_speaks_http1_is_unavailable_naming_the_variant_and_no_traceback(
    make_grpc_router: MakeGrpcRouter, caplog: pytest.LogCaptureFixture
) -> None:
    async def http1(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        with contextlib.suppress(ConnectionError, TimeoutError):
            await asyncio.wait_for(reader.read(1024), WAIT_S)
            writer.write(b"HTTP/1.1 400 Bad Request\r\nContent-Length: 0\r\nConnection: close\r\n\r\n")
            await writer.drain()
        writer.close()

    server = await asyncio.start_server(http1, "127.0.0.1", 0)
    address = f"127.0.0.1:{server.sockets[0].getsockname()[1]}"
    try:
        r = await make_grpc_router({"control": address, "candidate": address}, {"control": 100, "candidate": 0})
        async with r.channel() as channel:
            with pytest.raises(grpc.aio.AioRpcError) as err:
                await channel.unary_unary("/test.Quirky/Call")(b"x", metadata=UNIT, timeout=10)
    finally:
        server.close()
    assert err.value.code() is grpc.StatusCode.UNAVAILABLE
    assert "variant 'control'" in (err.value.details() or "")
    assert not [rec for rec in caplog.records if rec.exc_info]


async def test_an_upstream_that_answers_before_the_request_ended_has_its_stream_closed_by_the_router(
    make_grpc_router: MakeGrpcRouter,
) -> None:
    closed: asyncio.Future[str] = asyncio.get_running_loop().create_future()

    async def serve(wire: UpstreamWire) -> None:
        for _ in range(100_000):  # the head and the first message; the caller's stream goes on
            if wire.heads and any(wire.bodies.values()):
                break
            await wire.step()
        s = next(iter(wire.heads))
        wire.respond(s, [*OK_HEAD, ("grpc-status", "7"), ("grpc-message", "enough")], end_stream=True)
        for _ in range(100_000):
            if s in wire.resets or s in wire.ended:
                break
            await wire.step()
        closed.set_result("reset" if s in wire.resets else "ended")

    async with upstream(serve) as u:
        r = await make_grpc_router({"control": u.address, "candidate": u.address})
        wire = await Wire.client(r)
        try:
            wire.send(
                frames.headers(1, wire.encoder.encode(_head("/test.Quirky/Upload")), end_stream=False, max_frame=16384),
                frames.data(1, _message(b"first of many")),
            )
            seen = await wire.until(lambda f: f.stream_id == 1 and _ends(1)(f))
            assert _answer(seen, 1, wire.decoder)[2]["grpc-status"] == "7"
            # The upstream's stream ended its way; the router's way too (RST_STREAM or END_STREAM), not left open.
            assert await asyncio.wait_for(closed, WAIT_S) in ("reset", "ended")
        finally:
            wire.close()
