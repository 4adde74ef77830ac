"""Our own HTTP/2 server (``--grpc-server own``) at the frame level, driven by python-hyper's `h2` client
and by hand-made frames: settings, pings, CONTINUATION, flow control, the stream cap, a bad preface,
and gRPC connections in the connection metrics."""

from __future__ import annotations

import asyncio
import json
import re

import grpc.aio
import h2.config
import h2.connection
import h2.events
import h2.settings
import hpack as reference
import pytest

from abrouter.router.grpc import h2server, relay
from abrouter.router.h2 import frames
from tests.router.grpc.conftest import GrpcRouter, MakeGrpcRouter
from tests.router.grpc.servers import EchoServer, ResettingServer

pytestmark = pytest.mark.parametrize("grpc_server", ["own"])


class RawClient:
    """An `h2` client connection on a real socket."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, window: int | None) -> None:
        self.reader, self.writer = reader, writer
        self.h2 = h2.connection.H2Connection(h2.config.H2Configuration(client_side=True, header_encoding="latin-1"))
        self.h2.initiate_connection()
        if window is not None:
            self.h2.update_settings({h2.settings.SettingCodes.INITIAL_WINDOW_SIZE: window})
        self.flush()

    @classmethod
    async def connect(cls, r: GrpcRouter, *, window: int | None = None) -> RawClient:
        reader, writer = await asyncio.open_connection("127.0.0.1", r.grpc_port)
        return cls(reader, writer, window)

    def flush(self) -> None:
        self.writer.write(self.h2.data_to_send())

    def call(self, path: str, message: bytes, metadata: list[tuple[str, str]] | None = None) -> int:
        stream_id = self.h2.get_next_available_stream_id()
        head = [(":method", "POST"), (":scheme", "http"), (":path", path), (":authority", "router")]
        head += [("content-type", "application/grpc"), ("te", "trailers"), ("x-user-id", "u42"), *(metadata or [])]
        self.h2.send_headers(stream_id, head)
        self.h2.send_data(stream_id, b"\x00" + len(message).to_bytes(4, "big") + message, end_stream=True)
        self.flush()
        return stream_id

    async def events(self) -> list[h2.events.Event]:
        data = await asyncio.wait_for(self.reader.read(65536), 30)
        if not data:
            raise ConnectionError("closed")
        events = self.h2.receive_data(data)
        self.flush()
        return events

    async def until(self, kind: type, stream_id: int | None = None) -> list[h2.events.Event]:
        """Every event up to the first of `kind` (on `stream_id`, if given)."""
        seen: list[h2.events.Event] = []
        while True:
            for event in await self.events():
                seen.append(event)
                if isinstance(event, kind) and (stream_id is None or getattr(event, "stream_id", None) == stream_id):
                    return seen

    def close(self) -> None:
        self.writer.close()


async def test_a_raw_h2_call_with_huffman_coded_headers_gets_the_tags_the_answer_and_the_status(
    make_grpc_router: MakeGrpcRouter, echo_servers: dict[str, EchoServer]
) -> None:
    r = await make_grpc_router({n: s.address for n, s in echo_servers.items()})
    client = await RawClient.connect(r)
    try:
        client.h2.ping(b"12345678")
        stream = client.call("/test.Echo/Unary", b"raw")
        events = await client.until(h2.events.StreamEnded, stream)
        events += (
            []
            if any(isinstance(e, h2.events.PingAckReceived) for e in events)
            else await client.until(h2.events.PingAckReceived)
        )
    finally:
        client.close()
    assert any(isinstance(e, h2.events.SettingsAcknowledged) for e in events)
    assert next(e for e in events if isinstance(e, h2.events.PingAckReceived)).ping_data == b"12345678"
    head = dict(next(e for e in events if isinstance(e, h2.events.ResponseReceived)).headers)
    body = b"".join(e.data for e in events if isinstance(e, h2.events.DataReceived))
    trailers = dict(next(e for e in events if isinstance(e, h2.events.TrailersReceived)).headers)
    variant = head["x-ab-variant"]
    assert head[":status"] == "200" and head["served-by"] == variant
    assert body[5:] == f"{variant}:raw".encode()
    assert trailers["grpc-status"] == "0" and trailers["trailer-x"] == "t"


async def test_a_header_block_beyond_one_frame_arrives_whole_both_ways_in_continuation_frames(
    make_grpc_router: MakeGrpcRouter, echo_servers: dict[str, EchoServer]
) -> None:
    r = await make_grpc_router({n: s.address for n, s in echo_servers.items()})
    big = "v" * 40_000  # beyond 16,384: HEADERS and CONTINUATION frames, to the router and from it upstream
    async with r.channel() as channel:
        metadata = (("x-user-id", "u"), ("big", big))
        seen = dict(json.loads(await channel.unary_unary("/test.Echo/Metadata")(b"", metadata=metadata, timeout=10)))
    assert seen["big"] == big


async def test_a_callers_small_window_is_never_overrun_and_the_data_flows_as_it_opens(
    make_grpc_router: MakeGrpcRouter, echo_servers: dict[str, EchoServer]
) -> None:
    r = await make_grpc_router({n: s.address for n, s in echo_servers.items()})
    client = await RawClient.connect(r, window=1000)  # a 1 MiB message through a 1,000-byte stream window
    try:
        stream = client.call("/test.Echo/BigStream", b"1")
        received, before_any_update = 0, None
        while True:
            events = await client.events()
            for event in events:
                if isinstance(event, h2.events.DataReceived):
                    assert len(event.data) <= 1000
                    received += event.flow_controlled_length
                    if before_any_update is None:
                        before_any_update = received
                        await asyncio.sleep(0.2)  # the router could send more now, if it ignored the window
                        extra = [
                            e
                            for e in client.h2.receive_data(await _read_some(client))
                            if isinstance(e, h2.events.DataReceived)
                        ]
                        assert sum(e.flow_controlled_length for e in extra) + received <= 1000
                        received += sum(e.flow_controlled_length for e in extra)
                    client.h2.acknowledge_received_data(event.flow_controlled_length, stream)
                    client.flush()
            if any(isinstance(e, h2.events.StreamEnded) for e in events):
                break
    finally:
        client.close()
    assert received == 5 + (1 << 20)


async def _read_some(client: RawClient) -> bytes:
    try:
        return await asyncio.wait_for(client.reader.read(65536), 0.2)
    except TimeoutError:
        return b""


def _raw_head(path: str) -> bytes:
    return reference.Encoder().encode(
        [
            (":method", "POST"),
            (":scheme", "http"),
            (":path", path),
            (":authority", "r"),
            ("content-type", "application/grpc"),
            ("x-user-id", "u1"),
        ]
    )


async def _frames_until(reader: asyncio.StreamReader, kind: int) -> list[tuple[int, int, int, bytes]]:
    out = []
    while True:
        head = await asyncio.wait_for(reader.readexactly(9), 30)
        high, low, k, flags, stream_id = frames.HEAD.unpack(head)
        payload = await reader.readexactly(high << 8 | low)
        out.append((k, flags, stream_id, payload))
        if k == kind:
            return out


async def test_streams_beyond_the_cap_are_refused_and_those_within_it_go_on(
    make_grpc_router: MakeGrpcRouter, echo_servers: dict[str, EchoServer], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(h2server.GrpcConnection, "MAX_STREAMS", 2)
    r = await make_grpc_router({n: s.address for n, s in echo_servers.items()})
    reader, writer = await asyncio.open_connection("127.0.0.1", r.grpc_port)
    message = b"\x00\x00\x00\x00\x031.0"  # Slow: one second
    out = [frames.PREFACE, frames.settings({})]
    for stream_id in (1, 3, 5):  # the third is beyond the cap of 2, sent before our SETTINGS could be read
        out.append(frames.headers(stream_id, _raw_head("/test.Echo/Slow"), end_stream=False, max_frame=16384))
        out.append(frames.data(stream_id, message, end_stream=True))
    writer.write(b"".join(out))
    try:
        seen = await _frames_until(reader, frames.RST_STREAM)
        assert seen[-1][2] == 5 and frames.parse_code(seen[-1][3]) == frames.REFUSED_STREAM
        settings = dict(frames.parse_settings(next(p for k, f, s, p in seen if k == frames.SETTINGS and not f)))
        assert settings[frames.MAX_CONCURRENT_STREAMS] == 2
        ended = set()
        while ended != {1, 3}:  # the two within the cap are answered
            _, flags, stream_id, _ = (await _frames_until(reader, frames.HEADERS))[-1]
            if flags & frames.END_STREAM:
                ended.add(stream_id)
    finally:
        writer.close()


async def test_bytes_that_are_not_an_http2_preface_get_a_goaway_with_protocol_error_and_the_door(
    make_grpc_router: MakeGrpcRouter, echo_servers: dict[str, EchoServer]
) -> None:
    r = await make_grpc_router({n: s.address for n, s in echo_servers.items()})
    reader, writer = await asyncio.open_connection("127.0.0.1", r.grpc_port)
    writer.write(b"GET / HTTP/1.1\r\nHost: r\r\n\r\n")
    try:
        seen = await _frames_until(reader, frames.GOAWAY)
        assert frames.parse_goaway(seen[-1][3])[1] == frames.PROTOCOL_ERROR
        assert await asyncio.wait_for(reader.read(), 30) == b""
    finally:
        writer.close()


async def test_grpc_connections_count_in_the_connection_metrics(
    make_grpc_router: MakeGrpcRouter, echo_servers: dict[str, EchoServer]
) -> None:
    r = await make_grpc_router({n: s.address for n, s in echo_servers.items()})

    async def open_now() -> int:
        async with r.client.get("/abrouter/metrics") as resp:
            text = await resp.text()
        found = re.search(r"^abrouter_connections_open(?:\{[^}]*\})? ([\d.]+)", text, re.M)
        assert found is not None
        return int(float(found.group(1)))

    before = await open_now()  # the scrape's own connection
    own = (("grpc.use_local_subchannel_pool", 1),)
    channels = [grpc.aio.insecure_channel(r.grpc_address, options=own) for _ in range(3)]
    try:
        for channel in channels:
            assert await channel.unary_unary("/test.Echo/Unary")(b"x", metadata=(("x-user-id", "u"),), timeout=10)
        assert await open_now() == before + 3
    finally:
        for channel in channels:
            await channel.close()
    for _ in range(500):
        if await open_now() == before:
            break
        await asyncio.sleep(0.02)
    assert await open_now() == before


async def test_an_upstream_that_resets_the_call_before_answering_is_unavailable_naming_the_variant(
    make_grpc_router: MakeGrpcRouter, echo_servers: dict[str, EchoServer]
) -> None:
    resetting = await ResettingServer().start()
    try:
        r = await make_grpc_router(
            {"control": echo_servers["control"].address, "candidate": resetting.address},
            {"control": 0, "candidate": 100},
        )
        async with r.channel() as channel:
            with pytest.raises(grpc.aio.AioRpcError) as err:
                await channel.unary_unary("/test.Echo/Unary")(b"x", metadata=(("x-user-id", "u"),), timeout=10)
        assert err.value.code() is grpc.StatusCode.UNAVAILABLE
        assert err.value.details() == "variant 'candidate': upstream unavailable"
        assert dict(err.value.initial_metadata() or ())["x-ab-variant"] == "candidate"
        assert resetting.resets == 1 + relay.MAX_RETRIES  # REFUSED_STREAM: sent again, up to the bound
        assert r.router.metrics.errors[(r.spec["name"], "candidate", "unavailable")] == 1
    finally:
        await resetting.stop()


async def test_an_upstream_that_resets_the_call_mid_answer_cuts_the_callers_and_is_an_error_of_the_variant(
    make_grpc_router: MakeGrpcRouter, echo_servers: dict[str, EchoServer]
) -> None:
    resetting = await ResettingServer(after_head=True).start()
    try:
        r = await make_grpc_router(
            {"control": echo_servers["control"].address, "candidate": resetting.address},
            {"control": 0, "candidate": 100},
        )
        async with r.channel() as channel:
            call = channel.unary_stream("/test.Echo/ServerStream")(b"3", metadata=(("x-user-id", "u"),), timeout=10)
            assert dict(await call.initial_metadata())["x-ab-variant"] == "candidate"
            with pytest.raises(grpc.aio.AioRpcError) as err:
                while await call.read() is not grpc.aio.EOF:  # the first message may come first, or not
                    pass
        assert err.value.code() is grpc.StatusCode.INTERNAL  # never an OK: the answer was cut
        assert err.value.details() == "variant 'candidate': the upstream reset the call mid-answer"
        for _ in range(500):
            if r.router.metrics.errors.get((r.spec["name"], "candidate", "stream_aborted")):
                break
            await asyncio.sleep(0.02)
        assert r.router.metrics.errors[(r.spec["name"], "candidate", "stream_aborted")] == 1
    finally:
        await resetting.stop()


async def test_an_inference_call_whose_first_message_never_comes_is_cut_at_its_deadline_and_not_counted(
    make_grpc_router: MakeGrpcRouter, echo_servers: dict[str, EchoServer]
) -> None:
    """With a model to match, the router waits for the first message; a caller that never sends it is reset."""
    r = await make_grpc_router({n: s.address for n, s in echo_servers.items()}, match={"model": "recsys"})
    reader, writer = await asyncio.open_connection("127.0.0.1", r.grpc_port)
    head = reference.Encoder().encode(
        [
            (":method", "POST"),
            (":scheme", "http"),
            (":path", "/inference.GRPCInferenceService/ModelInfer"),
            (":authority", "r"),
            ("content-type", "application/grpc"),
            ("grpc-timeout", "300m"),
        ]
    )
    writer.write(frames.PREFACE + frames.settings({}) + frames.headers(1, head, end_stream=False, max_frame=16384))
    try:
        seen = await _frames_until(reader, frames.RST_STREAM)
        assert seen[-1][2] == 1 and frames.parse_code(seen[-1][3]) == frames.CANCEL
    finally:
        writer.close()
    assert not r.router.metrics.requests and not r.router.metrics.errors  # neither an exposure nor an error
