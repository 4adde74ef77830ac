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
import io
import json
import logging
import socket
import subprocess
import sys
from pathlib import Path
from typing import Any

import aiohttp
import pytest
import redis.asyncio

from abrouter.router import connections
from abrouter.router.eventlog.events import Exposure, decode_events
from abrouter.router.http import server
from tests.router.conftest import MakeRouter, RouterUnderTest
from tests.router.http import raw
from tests.router.http.conftest import MIB, SLOW, WireState
from tests.router.served import two_arms, write_spec


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


async def recorded(r: RouterUnderTest, n: int) -> None:
    """Wait until `n` proxied requests were recorded (a client's leaving is seen a moment later)."""
    async with asyncio.timeout(raw.PATIENCE_S):
        while sum(r.router.metrics.requests.values()) < n:
            await asyncio.sleep(0.02)


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
    assert r.router.metrics.requests == {(r.lane.name, "control", "2xx"): 1}


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
    assert r.router.metrics.requests == {(r.lane.name, "control", "2xx"): 1}


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
    await recorded(r, 3)
    assert r.router.metrics.requests == {(r.lane.name, "control", "4xx"): 3}
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
    await recorded(r, 1)
    assert [e.status for e in await exposures(r)] == [499]
    no_variant_errors(r)


@pytest.mark.parametrize("method", ["POST", "GET"])
async def test_a_client_that_times_out_on_a_slow_arm_before_any_byte_is_a_499(r: RouterUnderTest, method: str) -> None:
    """tritonclient's timeout on a slow arm: the client leaves before the response's head."""
    for _ in range(3):
        _, writer = await raw.connect(r.client.port)
        writer.write(raw.request(method, "/slow?s=0.4", body=b'{"inputs": []}' if method == "POST" else b""))
        await writer.drain()
        await asyncio.sleep(0.05)  # the request is with the upstream
        writer.close()
    await recorded(r, 3)
    assert r.router.metrics.requests == {(r.lane.name, "control", "4xx"): 3}
    no_variant_errors(r)
    assert [e.status for e in await exposures(r)] == [499, 499, 499]


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


# ------------------------------------------------------------------ deadlines never cut a response in flight


def no_timeouts(r: RouterUnderTest) -> None:
    assert {phase: n for phase, n in r.router.guard.timeouts.items() if n} == {}


@pytest.mark.parametrize(
    "pipelined",
    [raw.request("GET", "/echo?i=2"), raw.request("POST", "/echo?i=2", body=b"y" * 1000)],
    ids=["bodyless", "bodied"],
)
async def test_pipelined_bytes_never_cut_a_slow_response_in_flight(limited: RouterUnderTest, pipelined: bytes) -> None:
    reader, writer = await raw.connect(limited.client.port)
    writer.write(raw.request("GET", SLOW) + pipelined)
    first = await raw.read_response(reader)
    second = await raw.read_response(reader)
    writer.close()
    assert (first.status, json.loads(first.body)["path_qs"]) == (200, SLOW)
    assert (second.status, json.loads(second.body)["path_qs"]) == (200, "/echo?i=2")
    no_timeouts(limited)


async def test_half_a_pipelined_request_never_cuts_a_slow_response_in_flight(limited: RouterUnderTest) -> None:
    reader, writer = await raw.connect(limited.client.port)
    writer.write(raw.request("GET", SLOW) + b"GET /echo?i=2 HTTP/1.1\r\nHost: x\r\n")  # and then nothing
    first = await raw.read_response(reader)
    assert (first.status, json.loads(first.body)["path_qs"]) == (200, SLOW)
    assert await raw.read_to_close(reader) == b""  # the stalled second request is cut, after the first
    writer.close()


async def test_a_request_after_a_declined_upgrade_is_not_cut_by_a_deadline(limited: RouterUnderTest) -> None:
    reader, writer = await raw.connect(limited.client.port)
    upgrade = "Connection: Upgrade\r\nUpgrade: websocket\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n"
    writer.write(raw.request("GET", "/echo?i=1", headers=upgrade) + raw.request("GET", SLOW))
    first = await raw.read_response(reader)
    assert first.status == 200 and json.loads(first.body)["path_qs"] == "/echo?i=1"  # plain HTTP: no 101
    second = await raw.read_response(reader)
    assert second.status == 200 and json.loads(second.body)["path_qs"] == SLOW
    writer.write(raw.request("GET", SLOW, headers="Upgrade: h2c\r\nConnection: Upgrade, HTTP2-Settings\r\n"))
    third = await raw.read_response(reader)
    writer.close()
    assert third.status == 200 and json.loads(third.body)["path_qs"] == SLOW
    no_timeouts(limited)


# ------------------------------------------------------------------ defences: 400 and close, limits

SMUGGLING = {
    "conflicting content-length": (
        b"POST /echo HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\nContent-Length: 6\r\n\r\nhello!"
    ),
    "repeated content-length": b"POST /echo HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\nContent-Length: 5\r\n\r\nhello",
    "content-length list": b"POST /echo HTTP/1.1\r\nHost: x\r\nContent-Length: 5, 5\r\n\r\nhello",
    "content-length with transfer-encoding": (
        b"POST /echo HTTP/1.1\r\nHost: x\r\nContent-Length: 4\r\nTransfer-Encoding: chunked\r\n\r\n"
        b"0\r\n\r\nGET /echo?smuggled HTTP/1.1\r\nHost: x\r\n\r\n"
    ),
    "transfer-encoding not ending in chunked": (
        b"POST /echo HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked, identity\r\n\r\n0\r\n\r\n"
    ),
    "obsolete line folding": b"GET /echo HTTP/1.1\r\nHost: x\r\nX-Folded: a\r\n b\r\n\r\n",
    "bare CR": b"GET /echo HTTP/1.1\rHost: x\r\n\r\n",
    "bare CR in a header": b"GET /echo HTTP/1.1\r\nHost: x\r\nX-A: a\rb\r\n\r\n",
    "bare LF": b"GET /echo HTTP/1.1\nHost: x\n\n",
    "bad chunk size": b"POST /echo HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\nhello\r\n0\r\n\r\n",
    "chunk size overflow": (
        b"POST /echo HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n1000000000000000000000\r\nx\r\n"
    ),
    "negative content-length": b"POST /echo HTTP/1.1\r\nHost: x\r\nContent-Length: -1\r\n\r\n",
    "space before colon": b"GET /echo HTTP/1.1\r\nHost : x\r\n\r\n",
    "NUL in a header": b"GET /echo HTTP/1.1\r\nHost: x\r\nX-A: a\x00b\r\n\r\n",
}


def closed_answer(data: bytes) -> tuple[int, dict[str, Any], bytes]:
    """The one response in `data` (everything the router sent before closing)."""
    head, sep, body = data.partition(b"\r\n\r\n")
    assert sep, data
    lines = head.decode("latin-1").split("\r\n")
    headers = {k.lower(): v.strip() for k, _, v in (line.partition(":") for line in lines[1:])}
    assert headers.get("connection") == "close", lines
    assert len(body) == int(headers["content-length"]), data  # nothing after it
    return int(lines[0].split()[1]), json.loads(body), body


@pytest.mark.parametrize("name", list(SMUGGLING))
async def test_request_smuggling_is_a_400_and_a_close(
    r: RouterUnderTest, name: str, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.WARNING, logger="abrouter.server")
    server.malformed_log.next = 0.0  # a fresh interval: an earlier test used this process's
    status, payload, _ = closed_answer(await raw.exchange(r.client.port, SMUGGLING[name]))
    assert status == 400 and payload["code"] == "bad_request", payload
    (line,) = [rec.getMessage() for rec in caplog.records if rec.name == "abrouter.server"]
    assert line.startswith(f"request refused with 400 (bad_request): {payload['error']} (")  # the whole reason
    await r.settle()
    assert sum(r.router.metrics.bad_requests.values()) == 1 and r.router.metrics.requests == {}
    assert await r.strata() == {}  # nothing reached a variant, nor was smuggled to one
    no_variant_errors(r)


@pytest.mark.parametrize("framing", ["Content-Length: 5\r\n", "Transfer-Encoding: chunked\r\n"])
async def test_an_upgrade_request_with_a_body_is_a_400_not_a_variants_504(r: RouterUnderTest, framing: str) -> None:
    """httptools skips the body of an Upgrade request: it would reach the upstream without
    its body (a 504 counted against the variant) and be parsed as the next request."""
    body = b"hello" if framing.startswith("Content") else b"5\r\nhello\r\n0\r\n\r\n"
    upgrade = raw.head("POST", "/echo", "Connection: Upgrade\r\nUpgrade: websocket\r\n" + framing) + body
    status, payload, _ = closed_answer(await raw.exchange(r.client.port, upgrade + raw.request("GET", "/echo")))
    assert (status, payload["code"]) == (400, "upgrade_with_body"), payload
    await r.settle()
    assert r.router.metrics.requests == {} and await r.strata() == {}
    assert dict(r.router.metrics.bad_requests) == {"upgrade_with_body": 1}
    no_variant_errors(r)


async def test_header_target_and_body_limits(r: RouterUnderTest) -> None:
    port = r.client.port
    status, payload, _ = closed_answer(
        await raw.exchange(port, raw.request("GET", "/echo", headers="X-Big: " + "h" * 20_000 + "\r\n"))
    )
    assert (status, payload["code"]) == (431, "headers_too_large")
    status, payload, _ = closed_answer(await raw.exchange(port, raw.request("GET", "/echo?" + "q" * 10_000)))
    assert (status, payload["code"]) == (414, "target_too_long")
    declared = raw.head("POST", "/abrouter/outcomes", f"Content-Length: {5 * MIB}\r\n")
    status, payload, _ = closed_answer(await raw.exchange(port, declared))  # refused before the body is sent
    assert (status, payload["code"]) == (413, "too_large")
    piece = b"[" + b" " * (MIB - 1)
    chunked = b"".join(b"%x\r\n%b\r\n" % (len(piece), piece) for _ in range(5)) + b"0\r\n\r\n"
    status, payload, _ = closed_answer(
        await raw.exchange(port, raw.head("POST", "/abrouter/outcomes", "Transfer-Encoding: chunked\r\n") + chunked)
    )
    assert (status, payload["code"]) == (413, "too_large")
    assert dict(r.router.metrics.bad_requests) == {"headers_too_large": 1, "target_too_long": 1, "body_too_large": 2}
    resp = await r.client.post("/echo", data=io.BytesIO(b"x" * (5 * MIB)), headers={"X-User-Id": "u1"})
    assert resp.status == 200 and (await resp.json())["body_len"] == 5 * MIB  # the proxied path has no such limit
    no_variant_errors(r)


@pytest.mark.parametrize(
    ("target", "origin"),
    [("http://evil.example:1/echo?x=1", "/echo?x=1"), ("https://evil.example", "/"), ("HTTP://EVIL/a", "/a")],
)
async def test_an_absolute_form_target_is_cut_to_origin_form(r: RouterUnderTest, target: str, origin: str) -> None:
    reader, writer = await raw.connect(r.client.port)
    writer.write(raw.request("GET", target))
    answer = await raw.read_response(reader)
    writer.close()
    assert answer.status == 200 and json.loads(answer.body)["path_qs"] == origin


@pytest.mark.parametrize("value", [b"Bearer \xff\xfe\xfd", b"\xc3\x28", b"Bearer s\xe9cret", b"B\xe9arer secret"])
async def test_a_non_utf8_authorization_is_a_401(make_router: MakeRouter, value: bytes) -> None:
    r = await make_router(api_token=b"secret")
    item = b'{"unit": "u1", "metric": "revenue", "value": 1}'
    data = raw.head("POST", "/abrouter/outcomes", f"Content-Length: {len(item)}\r\nConnection: close\r\n")
    data = data.replace(b"Host: x\r\n", b"Host: x\r\nAuthorization: " + value + b"\r\n") + item
    head, _, body = (await raw.exchange(r.client.port, data)).partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 401 ") and json.loads(body)["code"] == "unauthorized"


# ------------------------------------------------------------------ HTTP/2 and gRPC on the HTTP/1.1 port

H2_PREFACE = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"
H2_SETTINGS = b"\x00\x00\x00\x04\x00\x00\x00\x00\x00"
#: HEADERS on stream 1, END_STREAM and END_HEADERS: GET http://x/ in HPACK's static table.
H2_GET = b"\x00\x00\x03\x01\x05\x00\x00\x00\x01\x82\x86\x84"


def h2_frames(data: bytes) -> list[tuple[int, int, bytes]]:
    """(type, stream, payload) of each frame."""
    frames = []
    while data:
        length, kind = int.from_bytes(data[:3], "big"), data[3]
        frames.append((kind, int.from_bytes(data[5:9], "big"), data[9 : 9 + length]))
        data = data[9 + length :]
    return frames


@pytest.mark.parametrize("split", [False, True], ids=["one-write", "as-a-client-waits-for-settings"])
async def test_an_http2_request_is_answered_505_unavailable_then_goaway(r: RouterUnderTest, split: bool) -> None:
    reader, writer = await raw.connect(r.client.port)
    if split:
        writer.write(H2_PREFACE[:16])
        await writer.drain()
        await asyncio.sleep(0.05)
        writer.write(H2_PREFACE[16:] + H2_SETTINGS)
        assert await reader.readexactly(9) == H2_SETTINGS  # our server preface
        writer.write(H2_GET)
        frames = [(4, 0, b""), *h2_frames(await raw.read_to_close(reader))]
    else:
        writer.write(H2_PREFACE + H2_SETTINGS + H2_GET)
        frames = h2_frames(await raw.read_to_close(reader))
    writer.close()
    assert [(kind, stream) for kind, stream, _ in frames] == [(0x4, 0), (0x1, 1), (0x7, 0)], frames
    block = frames[1][2]  # HPACK, literal: :status 505, grpc-status 14 (UNAVAILABLE) and why
    assert block.startswith(b"\x08\x03505") and b"grpc-status\x0214" in block and b"HTTP/1.1 only" in block
    goaway = frames[2][2]
    assert int.from_bytes(goaway[:4], "big") == 1 and b"HTTP/1.1" in goaway[8:]  # stream 1 was answered
    assert dict(r.router.metrics.bad_requests) == {"http2": 1}
    no_variant_errors(r)


async def test_a_grpc_client_is_told_the_port_speaks_http_1_1(r: RouterUnderTest) -> None:
    import grpc

    async with grpc.aio.insecure_channel(f"127.0.0.1:{r.client.port}") as channel:
        call = channel.unary_unary("/inference.GRPCInferenceService/ModelInfer")
        with pytest.raises(grpc.aio.AioRpcError) as caught:
            await call(b"", timeout=raw.PATIENCE_S)
    assert caught.value.code() == grpc.StatusCode.UNAVAILABLE
    assert (
        caught.value.details() == "abrouter: this port speaks HTTP/1.1 only; gRPC goes to the port of serve --grpc-port"
    )
    assert r.router.metrics.bad_requests["http2"] == 1  # one connection: no retries
    metrics = await (await r.client.get("/abrouter/metrics")).text()
    assert f'abrouter_bad_requests_total{{experiment="{r.spec["name"]}",reason="http2"}} 1' in metrics
    assert r.router.metrics.requests == {}
    no_variant_errors(r)


# ------------------------------------------------------------------ the connection cap under a low fd limit


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


async def test_at_ulimit_200_clients_beyond_the_cap_get_the_503_and_no_variant_a_502(
    redis_url: str, experiment_name: str, tmp_path: Path, wire: tuple[str, WireState]
) -> None:
    """`abrouter serve` itself, under ``ulimit -n 200``: 150 clients at once, each needing an upstream socket."""
    url, _ = wire
    config = write_spec(tmp_path, two_arms(experiment_name, url, timeouts={"connect": 2, "read": 10}))
    port = free_port()
    command = [sys.executable, "-m", "abrouter", "serve", "--config", str(config), "--host", "127.0.0.1"]
    command += ["--port", str(port), "--redis-url", redis_url, "--spill-dir", str(tmp_path / "spill")]
    # The limit is set by a shell before exec, not by a preexec_fn: Python code between fork
    # and exec in this process (which loaded grpc for other tests) can abort the child.
    limited = ["sh", "-c", 'ulimit -n 200 && exec "$@"', "sh", *command]
    proc = subprocess.Popen(limited, stderr=subprocess.PIPE, text=True)
    try:
        async with asyncio.timeout(30):
            while True:
                try:
                    request = b"GET /abrouter/healthz HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"
                    answer = await raw.exchange(port, request)
                    if answer.startswith(b"HTTP/1.1 200"):
                        break
                except OSError:
                    pass
                assert proc.poll() is None, proc.stderr.read() if proc.stderr else ""
                await asyncio.sleep(0.1)
        request = raw.request("GET", "/slow?s=1.5", headers="Connection: close\r\n")
        answers = await asyncio.gather(*(raw.exchange(port, request) for _ in range(150)))
        statuses = [int(a.split(b" ", 2)[1]) if a.startswith(b"HTTP/1.1 ") else a for a in answers]
        refused = [a for a in answers if a.startswith(b"HTTP/1.1 503 ")]
        assert sorted(set(statuses), key=str) == [200, 503], statuses  # never a reset, never a 502
        assert all(b'"code":"too_many_connections"' in a for a in refused)
        request = b"GET /abrouter/metrics HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"
        metrics = (await raw.exchange(port, request)).decode()
        assert f'abrouter_connections_refused_total{{experiment="{experiment_name}"}} {len(refused)}\n' in metrics
        assert "abrouter_errors_total{" not in metrics
        served = sum(
            int(line.rsplit(" ", 1)[1]) for line in metrics.splitlines() if line.startswith("abrouter_requests_total{")
        )
        assert served == 150 - len(refused)
    finally:
        proc.terminate()
        _, err = proc.communicate(timeout=30)
    assert "Too many open files" not in err and "Traceback" not in err, err
    assert f"connection cap lowered from 10000 to {(200 - connections.RESERVED_FDS) // 2}" in err
