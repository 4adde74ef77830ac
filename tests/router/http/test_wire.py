"""Issue 14, "behaviour that must hold on the new path": the HTTP/1.1 server over real sockets.

Raw sockets write exactly the bytes each case needs (`tests.router.http.raw`); real
clients (aiohttp, grpc) check that what they send is understood. The upstream is a
real aiohttp app (`wire_app`) with the shapes these cases need: a slow drip, a large
stream that counts what it could write, a sink that reads only when told, bodiless
statuses.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import logging
from typing import Any

import aiohttp
import pytest
import redis.asyncio
from aiohttp import web

from abrouter.router.eventlog.events import Exposure, decode_events
from tests.router.conftest import MakeRouter, RouterUnderTest
from tests.router.http import raw

MIB = 1024 * 1024


class WireState:
    def __init__(self) -> None:
        self.written = 0  # bytes /big could hand to its socket
        self.received = 0  # bytes /sink read
        self.gate = asyncio.Event()
        self.arrived = asyncio.Event()


WIRE = web.AppKey("wire", WireState)


def wire_app() -> web.Application:
    async def echo(request: web.Request) -> web.Response:
        body = await request.read()
        payload = {"method": request.method, "path_qs": request.raw_path, "body_len": len(body)}
        payload["body_sha"] = hashlib.sha256(body).hexdigest()
        payload["chunked"] = request.headers.get("Transfer-Encoding", "").lower() == "chunked"
        return web.json_response(payload)

    async def drip(request: web.Request) -> web.StreamResponse:
        await request.read()
        response = web.StreamResponse(headers={"Content-Type": "application/x-ndjson"})
        await response.prepare(request)
        for i in range(int(request.query.get("n", "50"))):
            await response.write(b'{"i": %d}\n' % i)
            await asyncio.sleep(float(request.query.get("every", "0.05")))
        await response.write_eof()
        return response

    async def big(request: web.Request) -> web.StreamResponse:
        state = request.app[WIRE]
        response = web.StreamResponse(headers={"Content-Type": "application/octet-stream"})
        await response.prepare(request)
        piece = bytes(range(256)) * 256  # 64 KiB
        for _ in range(int(request.query.get("mib", "64")) * 16):
            await response.write(piece)  # waits while the router does not take it
            state.written += len(piece)
        await response.write_eof()
        return response

    async def sink(request: web.Request) -> web.Response:
        state = request.app[WIRE]
        state.arrived.set()
        await state.gate.wait()
        digest = hashlib.sha256()
        async for chunk in request.content.iter_any():
            digest.update(chunk)
            state.received += len(chunk)
        return web.json_response({"body_len": state.received, "body_sha": digest.hexdigest()})

    async def status(request: web.Request) -> web.Response:
        code = int(request.match_info["code"])
        return web.Response(status=code, headers={"ETag": '"v1"', "X-Status": str(code)})

    app = web.Application(client_max_size=256 * MIB)
    app[WIRE] = WireState()
    app.router.add_route("*", "/drip", drip)
    app.router.add_route("*", "/big", big)
    app.router.add_route("*", "/sink", sink)
    app.router.add_route("*", "/status/{code}", status)
    app.router.add_route("*", "/{tail:.*}", echo)
    return app


@pytest.fixture
async def wire(aiohttp_server: Any) -> tuple[str, WireState]:
    app = wire_app()
    srv = await aiohttp_server(app)
    return str(srv.make_url("")).rstrip("/"), app[WIRE]


@pytest.fixture
async def r(make_router: MakeRouter, wire: tuple[str, WireState]) -> RouterUnderTest:
    url, _ = wire
    return await make_router({"control": 100, "candidate": 0}, urls={"control": url, "candidate": url})


async def exposures(r: RouterUnderTest) -> list[Exposure]:
    """Every exposure event in the Redis stream, oldest first."""
    await r.settle()
    client = redis.asyncio.Redis.from_url(r.redis_url)
    try:
        entries = await client.xrange(r.keys.events)
    finally:
        await client.aclose()
    events = [e for _, fields in entries for e in decode_events(fields[b"events"])]
    return [e for e in events if isinstance(e, Exposure)]


def no_variant_errors(r: RouterUnderTest) -> None:
    assert dict(r.router.metrics.errors) == {}


# ------------------------------------------------------------------ streaming and back-pressure


async def settled(read: Any, quiet_s: float = 0.5, limit_s: float = 10.0) -> int:
    """`read()` once it stopped changing for `quiet_s` (or after `limit_s`)."""
    loop = asyncio.get_running_loop()
    end = loop.time() + limit_s
    last = read()
    while loop.time() < end:
        await asyncio.sleep(quiet_s)
        now = read()
        if now == last:
            return now
        last = now
    return last


async def test_a_large_upload_to_a_stalled_upstream_is_held_back_then_arrives_whole(
    r: RouterUnderTest, wire: tuple[str, WireState]
) -> None:
    """The router stops reading while the upstream does not: the client cannot push the
    whole body into the router's memory."""
    _, state = wire
    total = 64 * MIB
    reader, writer = await raw.connect(r.client.port)
    writer.write(raw.head("POST", "/sink", f"Content-Length: {total}\r\n"))
    piece = b"z" * MIB
    sent = 0

    async def push(limit: int) -> None:
        nonlocal sent
        while sent < limit:
            writer.write(piece)
            await writer.drain()
            sent += len(piece)

    pushing = asyncio.create_task(push(total))
    await state.arrived.wait()
    stalled_at = await settled(lambda: sent)
    assert not pushing.done() and stalled_at < 40 * MIB, stalled_at  # socket buffers, not the whole body
    state.gate.set()
    await pushing
    answer = await raw.read_response(reader)
    writer.close()
    assert answer.status == 200
    digest = hashlib.sha256()
    for _ in range(total // MIB):
        digest.update(piece)
    assert json.loads(answer.body) == {"body_len": total, "body_sha": digest.hexdigest()}
    no_variant_errors(r)


async def test_a_large_stream_to_a_client_that_does_not_read_holds_the_upstream_back(
    r: RouterUnderTest, wire: tuple[str, WireState]
) -> None:
    _, state = wire
    reader, writer = await raw.connect(r.client.port)
    writer.write(raw.request("GET", "/big?mib=64"))
    status, headers = await raw.read_head(reader)
    assert status == 200 and ("Transfer-Encoding", "chunked") in headers
    held = await settled(lambda: state.written)
    assert held < 40 * MIB, held  # the router waits for its client and stops reading the upstream
    body = await raw.read_chunked(reader)
    writer.close()
    assert len(body) == 64 * MIB and body[:512] == bytes(range(256)) * 2
    await r.settle()
    assert r.router.metrics.requests == {("control", "2xx"): 1}


async def test_chunked_both_ways(r: RouterUnderTest) -> None:
    reader, writer = await raw.connect(r.client.port)
    pieces = [b"a" * 10, b"b" * 300_000, b"c"]
    chunked = b"".join(b"%x\r\n%b\r\n" % (len(p), p) for p in pieces) + b"0\r\n\r\n"
    writer.write(raw.request("POST", "/echo", headers="Transfer-Encoding: chunked\r\n") + chunked)
    answer = await raw.read_response(reader)
    seen = json.loads(answer.body)
    assert answer.status == 200 and seen["body_len"] == sum(map(len, pieces))
    assert seen["body_sha"] == hashlib.sha256(b"".join(pieces)).hexdigest()
    writer.write(raw.request("GET", "/drip?n=5&every=0"))  # an unsized response: chunked to us
    answer = await raw.read_response(reader)
    writer.close()
    assert answer.header("transfer-encoding") == "chunked" and answer.body.count(b"\n") == 5


async def test_head_204_and_304_carry_no_body_and_keep_the_connection_framed(r: RouterUnderTest) -> None:
    reader, writer = await raw.connect(r.client.port)
    writer.write(raw.request("HEAD", "/echo"))
    head = await raw.read_response(reader, head_only=True)
    assert head.status == 200 and int(head.header("content-length") or 0) > 0  # the GET's length, no body
    for code in (204, 304):
        writer.write(raw.request("GET", f"/status/{code}"))
        answer = await raw.read_response(reader)
        assert answer.status == code and answer.header("x-status") == str(code)
        assert answer.header("transfer-encoding") is None
    writer.write(raw.request("GET", "/echo?after=1"))  # stray body bytes would be read as its status line
    answer = await raw.read_response(reader)
    writer.close()
    assert answer.status == 200 and json.loads(answer.body)["path_qs"] == "/echo?after=1"


@pytest.mark.parametrize("size", [1000, 2 * MIB], ids=["held", "streamed"])
async def test_expect_100_continue(r: RouterUnderTest, size: int) -> None:
    reader, writer = await raw.connect(r.client.port)
    body = b"q" * size
    writer.write(raw.head("POST", "/echo", f"Expect: 100-continue\r\nContent-Length: {size}\r\n"))
    interim = await raw.read_response(reader)
    assert interim.status == 100 and interim.body == b""
    writer.write(body)
    answer = await raw.read_response(reader)
    writer.close()
    assert answer.status == 200 and json.loads(answer.body)["body_len"] == size


async def test_expect_100_continue_from_a_real_client(r: RouterUnderTest) -> None:
    async with aiohttp.ClientSession() as session:
        resp = await session.post(
            r.client.make_url("/echo"), data=b"x" * 5000, expect100=True, headers={"X-User-Id": "u1"}
        )
        assert resp.status == 200 and (await resp.json())["body_len"] == 5000


async def test_pipelined_requests_are_answered_in_order(r: RouterUnderTest) -> None:
    reader, writer = await raw.connect(r.client.port)
    bodies = [b"first", b"", b"x" * 300_000, b"last"]
    data = b""
    for i, body in enumerate(bodies):
        if i == 1:
            data += raw.request("GET", "/abrouter/healthz")
            data += raw.request("GET", f"/echo?i={i}")
        else:
            data += raw.request("POST", f"/echo?i={i}", body=body)
    data += raw.request("POST", "/echo?i=chunked", headers="Transfer-Encoding: chunked\r\n") + b"3\r\nabc\r\n0\r\n\r\n"
    writer.write(data)  # one write: every request is in the router's first read (or close to it)
    seen = []
    for _ in range(len(bodies) + 2):
        answer = await raw.read_response(reader)
        assert answer.status == 200
        payload = json.loads(answer.body)
        seen.append(payload.get("path_qs", "healthz"))
        if "body_sha" in payload:
            i = payload["path_qs"].split("=")[1]
            expected = b"abc" if i == "chunked" else bodies[int(i)]
            assert payload["body_sha"] == hashlib.sha256(expected).hexdigest()
    writer.close()
    assert seen == ["/echo?i=0", "healthz", "/echo?i=1", "/echo?i=2", "/echo?i=3", "/echo?i=chunked"]


async def test_connection_close_is_honoured(r: RouterUnderTest) -> None:
    reader, writer = await raw.connect(r.client.port)
    writer.write(raw.request("GET", "/echo", headers="Connection: close\r\n") + raw.request("GET", "/echo?never"))
    answer = await raw.read_response(reader)
    assert answer.status == 200 and answer.closes
    assert await raw.read_to_close(reader) == b""  # and the pipelined request after it is not answered
    writer.close()
    await r.settle()
    assert r.router.metrics.requests == {("control", "2xx"): 1}


async def test_an_http_1_0_client(r: RouterUnderTest) -> None:
    data = await raw.exchange(r.client.port, raw.request("GET", "/echo", version="1.0"))
    head, _, body = data.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 200 ") and json.loads(body)["path_qs"] == "/echo"
    data = await raw.exchange(r.client.port, raw.request("POST", "/drip?n=3&every=0", version="1.0", body=b"{}"))
    head, _, body = data.partition(b"\r\n\r\n")  # unsized: no chunking for 1.0, the body ends with the close
    assert head.startswith(b"HTTP/1.1 200 ") and b"chunked" not in head.lower()
    assert body == b'{"i": 0}\n{"i": 1}\n{"i": 2}\n'


# ------------------------------------------------------------------ the 499 rule


@pytest.mark.parametrize("upstream_transport", ["aiohttp", "httptools"])
@pytest.mark.parametrize("method", ["POST", "GET"])
async def test_a_streamed_response_the_client_abandons_is_a_499_exposure_and_no_error(
    r: RouterUnderTest, method: str, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO)
    for _ in range(3):
        reader, writer = await raw.connect(r.client.port)
        body = b'{"messages": []}' if method == "POST" else b""
        writer.write(raw.request(method, "/drip?n=100&every=0.05", body=body))
        status, _ = await raw.read_head(reader)
        assert status == 200
        await reader.readuntil(b'{"i": 1}')  # two chunks, then the client gives up
        writer.close()
    async with asyncio.timeout(raw.PATIENCE_S):
        while sum(r.router.metrics.requests.values()) < 3:
            await asyncio.sleep(0.02)
    assert r.router.metrics.requests == {("control", "4xx"): 3}
    no_variant_errors(r)
    assert [e.status for e in await exposures(r)] == [499, 499, 499]
    assert sum(s.exposures for s in (await r.strata()).values()) == 3
    metrics = await r.client.get("/abrouter/metrics")
    sample = f'abrouter_requests_total{{experiment="{r.spec["name"]}",variant="control",code="4xx"}} 3'
    assert sample in await metrics.text()
    assert not [rec for rec in caplog.records if rec.exc_info or rec.levelno >= logging.ERROR]


async def test_a_real_client_that_times_out_on_a_stream_is_a_499(r: RouterUnderTest) -> None:
    async with aiohttp.ClientSession() as session:
        with pytest.raises(asyncio.TimeoutError):
            async with session.post(
                r.client.make_url("/drip?n=100&every=0.05"),
                data=b"{}",
                headers={"X-User-Id": "u1"},
                timeout=aiohttp.ClientTimeout(sock_read=0.01, total=0.5),
            ) as resp:
                await resp.read()
    assert [e.status for e in await exposures(r)] == [499]
    no_variant_errors(r)


# ------------------------------------------------------------------ time to first byte


async def test_time_to_first_byte_of_a_stream_is_recorded_beside_the_total(r: RouterUnderTest) -> None:
    resp = await r.client.get("/drip?n=5&every=0.1", headers={"X-User-Id": "u1"})
    assert resp.status == 200 and (await resp.read()).count(b"\n") == 5
    text = await (await r.client.get("/abrouter/metrics")).text()
    name = r.spec["name"]
    labels = f'{{experiment="{name}",variant="control"}}'

    def sample(metric: str) -> float:
        return float(next(ln for ln in text.splitlines() if ln.startswith(metric + labels)).split()[-1])

    assert sample("abrouter_response_first_byte_seconds_count") == 1
    assert sample("abrouter_request_duration_seconds_count") == 1
    # The head went out before the last of five drips: the first byte came before the end.
    assert sample("abrouter_response_first_byte_seconds_sum") < sample("abrouter_request_duration_seconds_sum")
