"""`HttptoolsTransport` against real local servers: aiohttp apps, and raw sockets for the odd cases."""

from __future__ import annotations

import asyncio
import shutil
import socket
import ssl
import subprocess
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

import pytest
from aiohttp import web

from abrouter.router.errors import UpstreamTimeout, UpstreamUnavailable
from abrouter.router.upstream.httpclient import HttptoolsTransport
from abrouter.router.upstream.transport import TimeoutConfig
from tests.router.conftest import MakeRouter

Handler = Callable[[asyncio.StreamReader, asyncio.StreamWriter, int], Awaitable[None]]


class ScriptedServer:
    """A raw HTTP/1.1 server on 127.0.0.1 whose handler plays one connection (numbered from 0)."""

    def __init__(self, handler: Handler) -> None:
        self.handler = handler
        self.connections = 0
        self.heads: list[bytes] = []
        self.server: asyncio.AbstractServer | None = None
        self.url = ""

    async def __aenter__(self) -> ScriptedServer:
        self.server = await asyncio.start_server(self._serve, "127.0.0.1", 0)
        self.url = f"http://127.0.0.1:{self.server.sockets[0].getsockname()[1]}"
        return self

    async def __aexit__(self, *exc: object) -> None:
        assert self.server is not None
        self.server.close()
        await self.server.wait_closed()

    async def read_request(self, reader: asyncio.StreamReader) -> bytes:
        """One request's head (recorded in `heads`); its body is read and dropped."""
        head = await reader.readuntil(b"\r\n\r\n")
        self.heads.append(head)
        lines = head.lower().split(b"\r\n")
        length = next((int(line.split(b":", 1)[1]) for line in lines if line.startswith(b"content-length:")), 0)
        await reader.readexactly(length)
        if b"transfer-encoding: chunked" in lines:
            while (size := int((await reader.readline()).strip(), 16)) > 0:
                await reader.readexactly(size + 2)
            await reader.readline()
        return head

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        index, self.connections = self.connections, self.connections + 1
        try:
            await self.handler(reader, writer, index)
        except (asyncio.IncompleteReadError, ConnectionError):
            pass
        finally:
            writer.close()


OK = b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok"


def counting_app() -> tuple[web.Application, set[int]]:
    """An aiohttp app that records the client port of every request (one per connection)."""
    ports: set[int] = set()

    async def echo(request: web.Request) -> web.StreamResponse:
        ports.add(request.transport.get_extra_info("peername")[1])
        body = await request.read()
        if request.path == "/chunked":
            response = web.StreamResponse()
            await response.prepare(request)
            for i in range(int(request.query.get("n", "3"))):
                await response.write(b"%d," % i * 1000)
            await response.write_eof()
            return response
        if request.path == "/empty":
            return web.Response(status=int(request.query.get("status", "204")))
        if request.path == "/slow":
            await asyncio.sleep(float(request.query["s"]))
        return web.Response(body=b"got:" + body, headers={"X-Method": request.method})

    app = web.Application(client_max_size=64 * 1024 * 1024)
    app.router.add_route("*", "/{tail:.*}", echo)
    return app, ports


async def call(
    t: HttptoolsTransport,
    url: str,
    path: str = "/",
    *,
    method: str = "GET",
    headers: list[tuple[str, str]] | None = None,
    body: Any = None,
) -> tuple[int, dict[str, str], bytes]:
    response = await t.request(base_url=url, method=method, path_qs=path, headers=headers or [], body=body)
    try:
        data = await response.read() if method != "HEAD" else b""
        return response.status, dict(response.headers), data
    finally:
        response.release()


async def body_of(*chunks: bytes) -> AsyncIterator[bytes]:
    for chunk in chunks:
        yield chunk


async def test_sequential_requests_share_one_connection_and_concurrent_ones_are_pooled(counting: tuple[str, set[int]]):
    url, ports = counting
    t = HttptoolsTransport(TimeoutConfig(1, 1), max_idle=4)
    try:
        for i in range(20):
            status, headers, body = await call(t, url, f"/x?{i}", method="POST", body=b"%d" % i)
            assert (status, headers["X-Method"], body) == (200, "POST", b"got:%d" % i)
        assert len(ports) == 1
        await asyncio.gather(*(call(t, url) for _ in range(10)))
        assert len(ports) == 10  # one new connection per concurrent request beyond the idle one
        await asyncio.gather(*(call(t, url) for _ in range(10)))
        assert len(ports) == 16  # max_idle=4 kept four of the ten
    finally:
        await t.close()


async def test_request_framing_and_headers_as_given(transport: HttptoolsTransport):
    async def play(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, index: int) -> None:
        while True:
            await server.read_request(reader)
            writer.write(
                b"HTTP/1.1 201 Made It\r\nX-MiXed: 1\r\nSet-Cookie: a=1\r\nSet-Cookie: b=2\r\nContent-Length: 0\r\n\r\n"
            )

    async with ScriptedServer(play) as server:
        status, _, _ = await call(
            transport,
            server.url + "/base",
            "/p?q=1",
            method="POST",
            headers=[("X-Repeat", "1"), ("x-repeat", "2"), ("Content-Length", "99")],
            body=b"abc",
        )
        assert status == 201
        response = await transport.request(base_url=server.url, method="POST", path_qs="/none", headers=[], body=None)
        assert (response.reason, response.headers[:3]) == (
            "Made It",
            [("X-MiXed", "1"), ("Set-Cookie", "a=1"), ("Set-Cookie", "b=2")],
        )
        response.release()
        await call(transport, server.url, "/stream", method="PUT", body=body_of(b"ab", b"", b"cde"))
        await call(
            transport,
            server.url,
            "/sized",
            method="PUT",
            headers=[("Content-Length", "5")],
            body=body_of(b"ab", b"cde"),
        )
        with pytest.raises(ValueError, match="longer than its Content-Length"):
            await call(
                transport,
                server.url,
                "/sized",
                method="PUT",
                headers=[("Content-Length", "3")],
                body=body_of(b"ab", b"cde"),
            )
        with pytest.raises(ValueError, match="CR or LF"):
            await call(transport, server.url, headers=[("X-Evil", "a\r\nInjected: 1")])
        first, empty_post, chunked, sized = server.heads[:4]
        assert first.startswith(b"POST /base/p?q=1 HTTP/1.1\r\n")
        assert b"X-Repeat: 1\r\nx-repeat: 2\r\n" in first and b"Content-Length: 3\r\n" in first
        assert b"Content-Length: 99" not in first and f"Host: {server.url[7:]}".encode() in first
        assert b"Content-Length: 0\r\n" in empty_post  # nginx answers 411 to a POST without it
        assert b"Transfer-Encoding: chunked\r\n" in chunked and b"Content-Length" not in chunked
        assert b"Content-Length: 5\r\n" in sized and b"Transfer-Encoding" not in sized
        assert server.connections == 2  # the over-long body cut its connection


def close_on_second_request() -> Handler:
    """Answers the first request on a connection, then drops it on the next one: the stale-connection race."""

    async def play(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, index: int) -> None:
        await reader.readuntil(b"\r\n\r\n")
        await reader.readexactly(3)
        writer.write(OK)
        await reader.readuntil(b"\r\n\r\n")  # the next request: close without a byte of answer

    return play


async def test_a_stale_pooled_connection_is_retried_once_for_bytes_bodies(transport: HttptoolsTransport):
    async with ScriptedServer(close_on_second_request()) as server:
        assert (await call(transport, server.url, method="POST", body=b"one"))[2] == b"ok"
        assert (await call(transport, server.url, method="POST", body=b"two"))[2] == b"ok"
        assert server.connections == 2


async def test_after_a_stale_connection_the_retry_does_not_take_another_idle_one(transport: HttptoolsTransport):
    # Two idle connections, both dead by now (an upstream restart, say): the retry must not
    # pick the second one and fail again.
    async with ScriptedServer(close_on_second_request()) as server:
        await asyncio.gather(*(call(transport, server.url, method="POST", body=b"one") for _ in range(2)))
        assert server.connections == 2
        assert (await call(transport, server.url, method="POST", body=b"two"))[2] == b"ok"
        assert server.connections == 3


async def test_open_connections_per_upstream_are_capped_and_requests_wait_for_one(counting: tuple[str, set[int]]):
    url, ports = counting
    t = HttptoolsTransport(TimeoutConfig(connect_s=5, read_s=5), max_active=2)
    try:
        results = await asyncio.gather(*(call(t, url, "/slow?s=0.1") for _ in range(8)))
        assert [status for status, _, _ in results] == [200] * 8
        assert len(ports) == 2  # the six others waited and reused the two
    finally:
        await t.close()


async def test_no_free_connection_within_the_connect_timeout_is_a_timeout(counting: tuple[str, set[int]]):
    url, _ = counting
    t = HttptoolsTransport(TimeoutConfig(connect_s=0.2, read_s=5), max_active=1)
    try:
        busy = asyncio.create_task(call(t, url, "/slow?s=1"))
        await asyncio.sleep(0.05)
        with pytest.raises(UpstreamTimeout, match="1 of at most 1 open"):
            await call(t, url)
        assert (await busy)[0] == 200
        assert (await call(t, url))[0] == 200  # the slot is free again
    finally:
        await t.close()


async def test_a_streamed_body_is_not_retried_on_a_stale_connection(transport: HttptoolsTransport):
    async with ScriptedServer(close_on_second_request()) as server:
        assert (await call(transport, server.url, method="POST", body=b"one"))[2] == b"ok"
        with pytest.raises(UpstreamUnavailable, match="reused keep-alive connection"):
            await call(transport, server.url, method="POST", body=body_of(b"t", b"wo"))
        assert server.connections == 1


async def test_a_fresh_connection_closed_before_the_response_is_not_retried(transport: HttptoolsTransport):
    async def play(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, index: int) -> None:
        await reader.readuntil(b"\r\n\r\n")

    async with ScriptedServer(play) as server:
        with pytest.raises(UpstreamUnavailable, match="before the response"):
            await call(transport, server.url)
        assert server.connections == 1


async def test_connection_close_from_the_upstream_is_honoured(transport: HttptoolsTransport):
    async def play(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, index: int) -> None:
        await server.read_request(reader)
        writer.write(b"HTTP/1.1 200 OK\r\nConnection: close\r\nContent-Length: 2\r\n\r\nok")
        await asyncio.sleep(0.2)  # keeps the socket open: the client must not reuse it anyway

    async with ScriptedServer(play) as server:
        for _ in range(3):
            assert (await call(transport, server.url))[2] == b"ok"
        assert server.connections == 3


async def test_a_connection_with_stray_bytes_or_a_cut_upload_is_not_reused(transport: HttptoolsTransport):
    async def play(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, index: int) -> None:
        head = await reader.readuntil(b"\r\n\r\n")
        if b"/early" in head:  # answers before the body, which it never reads
            writer.write(b"HTTP/1.1 413 Too Large\r\nContent-Length: 0\r\n\r\n")
        elif b"/glued" in head:  # a second response in the same packet
            writer.write(OK + b"HTTP/1.1 408 Request Timeout\r\nContent-Length: 0\r\n\r\n")
        else:  # an unsolicited response while the connection is idle
            writer.write(OK)
            await asyncio.sleep(0.05)
            writer.write(b"HTTP/1.1 408 Request Timeout\r\nContent-Length: 0\r\n\r\n")
        await reader.read()  # no answer to anything else, until the client closes

    async def slow_body() -> AsyncIterator[bytes]:
        for _ in range(20):
            yield b"x" * 1000
            await asyncio.sleep(0.02)

    async with ScriptedServer(play) as server:
        assert (await call(transport, server.url, "/early", method="POST", body=slow_body()))[0] == 413
        assert (await call(transport, server.url, "/glued"))[2] == b"ok"
        assert (await call(transport, server.url, "/late"))[2] == b"ok"
        await asyncio.sleep(0.1)
        assert (await call(transport, server.url, "/late"))[2] == b"ok"
        assert server.connections == 4


async def test_idle_connections_closed_by_the_upstream_or_expired_are_not_reused(aiohttp_server: Any):
    app, ports = counting_app()
    server = await aiohttp_server(app, keepalive_timeout=0.05)
    url = str(server.make_url("")).rstrip("/")
    t = HttptoolsTransport(TimeoutConfig(1, 1), idle_timeout_s=0.3)
    try:
        await call(t, url)
        await asyncio.sleep(0.2)  # the server closes it; the pool notices
        assert sum(len(p.idle) for p in t._pools.values()) == 0
        await call(t, url)
        assert len(ports) == 2
    finally:
        await t.close()
    t = HttptoolsTransport(TimeoutConfig(1, 1), idle_timeout_s=0.05)
    server = await aiohttp_server(app)
    url = str(server.make_url("")).rstrip("/")
    try:
        await call(t, url)
        await asyncio.sleep(0.1)  # older than idle_timeout_s: closed, not reused
        await call(t, url)
        assert len(ports) == 4
    finally:
        await t.close()


async def test_chunked_and_until_close_responses_are_decoded(
    transport: HttptoolsTransport, counting: tuple[str, set[int]]
):
    url, ports = counting
    response = await transport.request(base_url=url, method="GET", path_qs="/chunked?n=50", headers=[], body=None)
    assert response.content_length is None and ("Transfer-Encoding", "chunked") in response.headers
    assert await response.read() == b"".join(b"%d," % i * 1000 for i in range(50))
    response.release()
    await call(transport, url)
    assert len(ports) == 1  # a chunked response keeps the connection

    async def until_close(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, index: int) -> None:
        await raw.read_request(reader)
        writer.write(b"HTTP/1.1 200 OK\r\nConnection: close\r\n\r\nall of it")

    async with ScriptedServer(until_close) as raw:
        assert (await call(transport, raw.url))[2] == b"all of it"
        assert (await call(transport, raw.url))[2] == b"all of it"
        assert raw.connections == 2


async def test_a_response_over_the_high_water_mark_streams_with_bounded_buffering(aiohttp_server: Any):
    block = bytes(range(256)) * 256  # 64 KiB

    async def big(request: web.Request) -> web.StreamResponse:
        response = web.StreamResponse()
        response.content_length = 320 * len(block)  # 20 MiB
        await response.prepare(request)
        for _ in range(320):
            await response.write(block)
        return response

    app = web.Application()
    app.router.add_get("/big", big)
    server = await aiohttp_server(app)
    t = HttptoolsTransport(TimeoutConfig(1, 1), high_water=64 * 1024)
    try:
        response = await t.request(
            base_url=str(server.make_url("")).rstrip("/"), method="GET", path_qs="/big", headers=[], body=None
        )
        total, largest = 0, 0
        async for chunk in response.chunks():
            total, largest = total + len(chunk), max(largest, len(chunk))
            await asyncio.sleep(0.001)  # a slow client: without flow control the buffer would hold it all
        response.release()
        assert total == 320 * len(block)
        assert largest <= 64 * 1024 + 256 * 1024  # high water + at most one socket read
    finally:
        await t.close()


async def test_head_204_and_304_have_no_body_and_keep_the_connection(
    transport: HttptoolsTransport, counting: tuple[str, set[int]]
):
    url, ports = counting
    response = await transport.request(base_url=url, method="HEAD", path_qs="/", headers=[], body=None)
    assert response.status == 200 and response.content_length == 4 and await response.read() == b""
    response.release()
    for path in ("/empty?status=204", "/empty?status=304"):
        assert (await call(transport, url, path))[::2] == (int(path[-3:]), b"")
    assert (await call(transport, url, method="POST", body=b"after"))[2] == b"got:after"
    assert len(ports) == 1


async def test_interim_1xx_responses_are_skipped(transport: HttptoolsTransport):
    async def play(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, index: int) -> None:
        while True:
            await raw.read_request(reader)
            writer.write(b"HTTP/1.1 103 Early Hints\r\nLink: </a.css>\r\n\r\n" + OK)

    async with ScriptedServer(play) as raw:
        status, headers, body = await call(transport, raw.url)
        assert (status, headers, body) == (200, {"Content-Length": "2"}, b"ok")
        assert (await call(transport, raw.url))[2] == b"ok" and raw.connections == 1


async def test_timeouts(transport: HttptoolsTransport, counting: tuple[str, set[int]]):
    url, _ = counting
    with pytest.raises(UpstreamTimeout, match=r"no progress within 0\.5s"):
        await call(transport, url, "/slow?s=2")

    async def stall_mid_body(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, index: int) -> None:
        await raw.read_request(reader)
        writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\nhalf.")
        await asyncio.sleep(2)

    async with ScriptedServer(stall_mid_body) as raw:
        response = await transport.request(base_url=raw.url, method="GET", path_qs="/", headers=[], body=None)
        with pytest.raises(UpstreamTimeout):
            await response.read()
        response.release()

    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(0)
    fillers = [socket.socket() for _ in range(4)]  # fill the accept queue: further SYNs are dropped
    try:
        for f in fillers:
            f.setblocking(False)
            f.connect_ex(listener.getsockname())
        quick = HttptoolsTransport(TimeoutConfig(connect_s=0.2, read_s=1))
        with pytest.raises(UpstreamTimeout, match=r"no connection within 0\.2s"):
            await call(quick, f"http://127.0.0.1:{listener.getsockname()[1]}")
        await quick.close()
    finally:
        for s in (*fillers, listener):
            s.close()


async def test_refused_reset_eof_and_garbage_are_unavailable(
    transport: HttptoolsTransport, unused_tcp_port_factory: Any
):
    with pytest.raises(UpstreamUnavailable, match="cannot connect"):
        await call(transport, f"http://127.0.0.1:{unused_tcp_port_factory()}")

    async def play(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, index: int) -> None:
        head = await raw.read_request(reader)
        if b"/reset" in head:
            writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\nhal")
            await writer.drain()
            writer.get_extra_info("socket").setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, b"\1\0\0\0\0\0\0\0")
            writer.transport.abort()
        elif b"/eof" in head:
            writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\nhalf")
        else:
            writer.write(b"HTTP/1.1 OK\r\n\r\n")

    async with ScriptedServer(play) as raw:
        for path, message in (("/reset", "mid-response"), ("/eof", "mid-response"), ("/junk", "invalid HTTP")):
            response = None
            with pytest.raises(UpstreamUnavailable, match=message):
                response = await transport.request(base_url=raw.url, method="GET", path_qs=path, headers=[], body=None)
                await response.read()
            if response is not None:
                response.release()


async def test_releasing_an_unfinished_response_closes_its_connection(
    transport: HttptoolsTransport, counting: tuple[str, set[int]]
):
    url, ports = counting
    response = await transport.request(base_url=url, method="GET", path_qs="/chunked?n=2000", headers=[], body=None)
    assert await response.chunks().__anext__()
    response.release()
    await call(transport, url)
    assert len(ports) == 2


@pytest.fixture(scope="module")
def self_signed(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    if shutil.which("openssl") is None:
        pytest.skip("needs the openssl command to make a certificate")
    d = tmp_path_factory.mktemp("tls")
    subprocess.run(
        [
            "openssl",
            "req",
            "-x509",
            "-newkey",
            "rsa:2048",
            "-nodes",
            "-days",
            "1",
            "-subj",
            "/CN=localhost",
            "-addext",
            "subjectAltName=DNS:localhost",
            "-keyout",
            str(d / "key.pem"),
            "-out",
            str(d / "cert.pem"),
        ],
        check=True,
        capture_output=True,
    )
    return d / "cert.pem", d / "key.pem"


async def test_https_upstream_with_a_verified_certificate(self_signed: tuple[Path, Path], aiohttp_server: Any):
    cert, key = self_signed
    server_ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    server_ctx.load_cert_chain(cert, key)
    app, ports = counting_app()
    server = await aiohttp_server(app, ssl=server_ctx)
    url = f"https://localhost:{server.port}"
    t = HttptoolsTransport(TimeoutConfig(1, 1), ssl_context=ssl.create_default_context(cafile=str(cert)))
    untrusting = HttptoolsTransport(TimeoutConfig(1, 1))
    try:
        for _ in range(3):
            assert (await call(t, url, method="POST", body=b"tls"))[2] == b"got:tls"
        assert len(ports) == 1
        with pytest.raises(UpstreamUnavailable, match="CERTIFICATE_VERIFY_FAILED"):
            await call(untrusting, url)
    finally:
        await t.close()
        await untrusting.close()


async def test_make_router_builds_the_transport_it_is_asked_for(make_router: MakeRouter):
    r = await make_router(transport="httptools")
    assert type(r.lane.transport) is HttptoolsTransport
    resp = await r.client.post("/predict", headers={"X-User-Id": "u1"}, data=b"{}")
    assert resp.status == 200 and (await resp.json())["body_len"] == 2


async def test_an_upstream_that_streams_headers_forever_is_a_502_not_unbounded_memory(transport: HttptoolsTransport):
    """Issue 7 #9: the response head is capped (`httpconn.MAX_RESPONSE_HEAD`)."""
    sent = 0

    async def play(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, index: int) -> None:
        nonlocal sent
        await server.read_request(reader)
        writer.write(b"HTTP/1.1 200 OK\r\n")
        for i in range(10_000):  # 10,000 x 1 KiB of headers, bounded so the test ends anyway
            writer.write(b"X-Filler-%d: %s\r\n" % (i, b"x" * 1000))
            sent += 1
            await writer.drain()

    async with ScriptedServer(play) as server:
        with pytest.raises(UpstreamUnavailable, match="invalid HTTP response"):
            await call(transport, server.url)
    assert sent < 10_000
