"""`HttptoolsTransport.start`, the callback path the stream driver takes for a body held whole, against
real local servers: the response's head and whole body reach a `Sink` with no task, and every rule of
`request` holds there too (keep-alive reuse, the stale connection's retry, deadlines, failures)."""

from __future__ import annotations

import asyncio
import socket
from typing import Any

import pytest

from abrouter.router.errors import UpstreamError, UpstreamTimeout, UpstreamUnavailable
from abrouter.router.upstream.httpclient import HttptoolsTransport
from abrouter.router.upstream.transport import Pending, TimeoutConfig, UpstreamResponse, feed
from tests.router.upstream.test_httpclient import OK, ScriptedServer, call, close_on_second_request

WAIT_S = 10.0


class Recorder:
    """A `Sink` that keeps what it hears; `hold` False reads the body itself, as a stream."""

    def __init__(self, *, hold: bool = True) -> None:
        self.hold = hold
        self.events: list[Any] = []
        self.response: UpstreamResponse | None = None
        self.done: asyncio.Future[None] = asyncio.get_running_loop().create_future()

    def head(self, response: UpstreamResponse) -> bool:
        self.response = response
        self.events.append(("head", response.status, response.content_length))
        if not self.hold:
            asyncio.get_running_loop().create_task(self._read(response))
        return self.hold

    async def _read(self, response: UpstreamResponse) -> None:
        async for chunk in response.chunks():
            self.events.append(("chunk", chunk))
        self._end()

    def body(self, data: bytes) -> None:
        self.events.append(("body", data))
        self._end()

    def failed(self, exc: UpstreamError) -> None:
        self.events.append(("failed", exc))
        self._end()

    def _end(self) -> None:
        if self.response is not None:
            self.response.release()
        self.done.set_result(None)


async def start(
    t: HttptoolsTransport, url: str, path: str = "/", *, method: str = "GET", body: bytes | None = None,
    sink: Recorder | None = None, wait: bool = True,
) -> tuple[Recorder, Pending | None]:  # fmt: skip
    """As the driver does: `start` on an idle connection, else the same sink fed from `request`."""
    sink = sink or Recorder()
    request = {"base_url": url, "method": method, "path_qs": path, "headers": [], "body": body}
    pending = t.start(**request, sink=sink)
    if pending is None:
        asyncio.get_running_loop().create_task(feed(sink, t.request(**request)))
    if wait:
        await asyncio.wait_for(asyncio.shield(sink.done), WAIT_S)
    return sink, pending


async def test_requests_on_an_idle_connection_go_out_at_once_and_keep_it(counting: tuple[str, set[int]]) -> None:
    url, ports = counting
    t = HttptoolsTransport(TimeoutConfig(1, 1))
    try:
        sink, pending = await start(t, url, "/x", method="POST", body=b"0")
        assert pending is None  # no connection yet: opened on the coroutine path
        assert sink.events == [("head", 200, 5), ("body", b"got:0")]
        for i in range(1, 6):
            sink, pending = await start(t, url, f"/x?{i}", method="POST", body=b"%d" % i)
            assert pending is not None
            assert sink.events == [("head", 200, 5), ("body", b"got:%d" % i)]
        assert len(ports) == 1
    finally:
        await t.close()


async def test_a_stale_idle_connection_is_sent_once_more_on_a_fresh_one(transport: HttptoolsTransport) -> None:
    async with ScriptedServer(close_on_second_request()) as server:
        assert (await call(transport, server.url, method="POST", body=b"one"))[2] == b"ok"
        sink, pending = await start(transport, server.url, method="POST", body=b"two")
        assert pending is not None and sink.events == [("head", 200, 2), ("body", b"ok")]
        assert server.connections == 2


async def test_a_fresh_connection_closed_before_the_response_is_not_sent_again(transport: HttptoolsTransport) -> None:
    async def play(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, index: int) -> None:
        await server.read_request(reader)
        if index == 0:  # answers its first request, then closes at the second one
            writer.write(OK)
            await server.read_request(reader)
        writer.transport.abort()

    async with ScriptedServer(play) as server:
        await call(transport, server.url)
        sink, pending = await start(transport, server.url)  # reused, stale: once more, on a fresh connection
        assert pending is not None and server.connections == 2
        assert [e[0] for e in sink.events] == ["failed"]
        assert isinstance(sink.events[0][1], UpstreamUnavailable)


async def test_no_head_or_no_body_within_the_read_timeout_is_a_timeout(
    transport: HttptoolsTransport, counting: tuple[str, set[int]]
) -> None:
    url, _ = counting
    await call(transport, url)
    sink, pending = await start(transport, url, "/slow?s=2")
    assert pending is not None
    ((what, exc),) = sink.events
    assert what == "failed" and isinstance(exc, UpstreamTimeout) and "no progress within 0.5s" in str(exc)

    async def stall_mid_body(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, index: int) -> None:
        while True:
            head = await raw.read_request(reader)
            if b"/stall" in head:
                writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\nhalf.")
                await asyncio.sleep(2)
            writer.write(OK)

    async with ScriptedServer(stall_mid_body) as raw:
        await call(transport, raw.url)
        sink, pending = await start(transport, raw.url, "/stall")
        assert pending is not None
        assert sink.events[0] == ("head", 200, 10) and [e[0] for e in sink.events[1:]] == ["failed"]
        assert isinstance(sink.events[1][1], UpstreamTimeout)


async def test_a_reset_an_early_end_or_garbage_is_unavailable(transport: HttptoolsTransport) -> None:
    async def play(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, index: int) -> None:
        while True:
            head = await raw.read_request(reader)
            if b"/reset" in head:
                writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\nhal")
                await writer.drain()
                writer.get_extra_info("socket").setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, b"\1\0\0\0\0\0\0\0")
                writer.transport.abort()
            elif b"/eof" in head:
                writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\nhalf")
                writer.close()
            elif b"/junk" in head:
                writer.write(b"HTTP/1.1 OK\r\n\r\n")
            else:
                writer.write(OK)

    async with ScriptedServer(play) as raw:
        for path, message in (("/reset", "mid-response"), ("/eof", "mid-response"), ("/junk", "invalid HTTP")):
            await call(transport, raw.url)
            sink, pending = await start(transport, raw.url, path)
            assert pending is not None
            what, exc = sink.events[-1]
            assert what == "failed" and isinstance(exc, UpstreamUnavailable) and message in str(exc), sink.events


async def test_head_204_and_304_end_at_their_head_and_keep_the_connection(
    transport: HttptoolsTransport, counting: tuple[str, set[int]]
) -> None:
    url, ports = counting
    await call(transport, url)
    sink, pending = await start(transport, url, method="HEAD")
    assert pending is not None and sink.events == [("head", 200, 4), ("body", b"")]
    for status in (204, 304):
        sink, pending = await start(transport, url, f"/empty?status={status}")
        assert pending is not None and sink.events[0][:2] == ("head", status) and sink.events[1] == ("body", b"")
    sink, _ = await start(transport, url, method="POST", body=b"after")
    assert sink.events[-1] == ("body", b"got:after") and len(ports) == 1


async def test_a_sink_that_streams_the_body_reads_it_as_it_comes(
    transport: HttptoolsTransport, counting: tuple[str, set[int]]
) -> None:
    url, ports = counting
    await call(transport, url)
    sink, pending = await start(transport, url, "/chunked?n=3", sink=Recorder(hold=False))
    assert pending is not None and sink.events[0] == ("head", 200, None)
    assert b"".join(e[1] for e in sink.events[1:]) == b"".join(b"%d," % i * 1000 for i in range(3))
    assert (await call(transport, url))[0] == 200 and len(ports) == 1  # read to the end: reused


async def test_an_interim_1xx_response_is_skipped(transport: HttptoolsTransport) -> None:
    async def play(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, index: int) -> None:
        while True:
            await raw.read_request(reader)
            writer.write(b"HTTP/1.1 103 Early Hints\r\nLink: </a.css>\r\n\r\n" + OK)

    async with ScriptedServer(play) as raw:
        await call(transport, raw.url)
        sink, pending = await start(transport, raw.url)
        assert pending is not None and sink.events == [("head", 200, 2), ("body", b"ok")]


async def test_a_request_cancelled_before_its_head_is_heard_no_more_and_its_connection_not_reused(
    transport: HttptoolsTransport, counting: tuple[str, set[int]]
) -> None:
    url, ports = counting
    await call(transport, url)
    sink, pending = await start(transport, url, "/slow?s=0.2", wait=False)
    assert pending is not None
    pending.cancel()
    await asyncio.sleep(0.5)
    assert sink.events == [] and not sink.done.done()
    assert (await call(transport, url))[0] == 200 and len(ports) == 2


@pytest.mark.parametrize("hold", [True, False])
async def test_a_response_larger_than_the_high_water_mark_reaches_the_sink_whole(
    transport: HttptoolsTransport, counting: tuple[str, set[int]], hold: bool
) -> None:
    url, _ = counting
    await call(transport, url)
    body = b"x" * (600 * 1024)
    sink, _ = await start(transport, url, method="POST", body=body, sink=Recorder(hold=hold))
    assert b"".join(e[1] for e in sink.events[1:]) == b"got:" + body


async def test_a_request_that_cannot_be_written_raises_and_its_connection_is_not_reused(
    transport: HttptoolsTransport, counting: tuple[str, set[int]]
) -> None:
    url, ports = counting
    await call(transport, url)
    with pytest.raises(ValueError, match="CR or LF"):
        transport.start(
            base_url=url, method="GET", path_qs="/", headers=[("X-A", "a\r\nb")], body=None, sink=Recorder()
        )
    assert (await call(transport, url))[0] == 200 and len(ports) == 2
