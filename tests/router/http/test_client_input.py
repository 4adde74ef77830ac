"""Issue 7 #2, #3, #12: the client cannot steer the upstream leg, request bytes pass
through untouched, and the router invents no Content-Type. Both upstream transports,
real sockets, real Redis."""

from __future__ import annotations

import asyncio
import gzip
import hashlib
import json
import logging

import pytest

from abrouter.router.http import server
from tests.router.conftest import MakeRouter, RouterUnderTest
from tests.router.upstreams import RawUpstream

pytestmark = pytest.mark.parametrize("upstream_transport", ["aiohttp", "httptools"])


async def raw_request(r: RouterUnderTest, head: str, body: bytes = b"") -> tuple[int, dict[str, str], bytes]:
    """One request over a plain socket, so the request target is exactly what we write."""
    port = r.client.server.port
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        writer.write(head.encode("latin-1") + body)
        await writer.drain()
        status_line = await reader.readline()
        headers: dict[str, str] = {}
        while (line := await reader.readline()) not in (b"\r\n", b""):
            name, _, value = line.decode("latin-1").partition(":")
            headers[name.strip().lower()] = value.strip()
        data = await reader.readexactly(int(headers.get("content-length", "0")))
        return int(status_line.split()[1]), headers, data
    finally:
        writer.close()


async def test_an_absolute_form_target_goes_to_the_configured_upstream_only(make_router: MakeRouter) -> None:
    r = await make_router({"control": 100, "candidate": 0})
    head = "GET http://127.0.0.1:1/echo?x=1 HTTP/1.1\r\nHost: 127.0.0.1:1\r\nX-User-Id: u1\r\nConnection: close\r\n\r\n"
    status, headers, body = await raw_request(r, head)
    assert status == 200 and headers["x-upstream"] == "control"
    assert json.loads(body)["path_qs"] == "/echo?x=1"  # origin form, on the configured host


async def test_a_target_with_another_scheme_is_a_400_and_no_error_of_a_variant(make_router: MakeRouter) -> None:
    r = await make_router({"control": 100, "candidate": 0})
    for _ in range(5):
        head = "GET host://ignored/secret HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer t\r\nConnection: close\r\n\r\n"
        status, _, body = await raw_request(r, head)
        assert status == 400 and json.loads(body)["code"] == "bad_target"
    await r.settle()
    assert await r.strata() == {}  # refused before assignment: nothing counted for any variant


async def test_a_gzip_request_body_reaches_the_upstream_as_sent(make_router: MakeRouter) -> None:
    r = await make_router({"control": 100, "candidate": 0})
    plain = json.dumps({"inputs": [{"name": "x", "data": list(range(2000))}]}).encode()
    packed = gzip.compress(plain)
    resp = await r.client.post(
        "/predict",
        data=packed,
        headers={"Content-Encoding": "gzip", "Content-Type": "application/json", "X-User-Id": "u1"},
    )
    assert resp.status == 200
    echo = await resp.json()
    sent = {k.lower(): v for k, v in echo["headers"]}
    assert sent["content-encoding"] == "gzip" and int(sent["content-length"]) == len(packed)
    # The upstream (aiohttp, which inflates) got exactly our bytes: they inflate to `plain`.
    assert echo["body_sha"] == hashlib.sha256(plain).hexdigest() and echo["body_len"] == len(plain)


async def test_invalid_gzip_is_the_upstreams_to_judge_not_a_500_of_the_variant(
    make_router: MakeRouter, raw_upstream: RawUpstream
) -> None:
    r = await make_router({"control": 100, "candidate": 0}, urls={"control": raw_upstream.url})
    resp = await r.client.post(
        "/predict", data=b"not gzip at all", headers={"Content-Encoding": "gzip", "X-User-Id": "u1"}
    )
    # The bytes reached the upstream as sent (it reads Content-Length bytes and answers).
    assert resp.status == 200 and await resp.read() == b"hello"


async def test_the_outcome_api_inflates_a_gzip_body_itself_and_bounds_it(make_router: MakeRouter) -> None:
    r = await make_router()
    resp = await r.client.post("/predict", headers={"X-User-Id": "u1"}, data=b"{}")
    resp.release()
    body = gzip.compress(json.dumps({"unit": "u1", "metric": "revenue", "value": 2}).encode())
    resp = await r.client.post("/abrouter/outcomes", data=body, headers={"Content-Encoding": "gzip"})
    assert resp.status == 202, await resp.text()
    bomb = gzip.compress(b"[" + b" " * (8 * 1024 * 1024) + b"]")
    resp = await r.client.post("/abrouter/outcomes", data=bomb, headers={"Content-Encoding": "gzip"})
    assert resp.status == 413 and (await resp.json())["code"] == "too_large"
    resp = await r.client.post("/abrouter/outcomes", data=b"junk", headers={"Content-Encoding": "gzip"})
    assert resp.status == 400 and "not valid gzip" in (await resp.json())["error"]


async def test_a_streamed_response_without_content_type_gets_none(
    make_router: MakeRouter, raw_upstream: RawUpstream
) -> None:
    """Issue 7 #12: aiohttp's StreamResponse would add application/octet-stream."""
    r = await make_router({"control": 100, "candidate": 0}, urls={"control": raw_upstream.url})
    resp = await r.client.post("/no-ct-stream", headers={"X-User-Id": "u1"}, data=b"{}")
    assert resp.status == 200 and await resp.read() == b"hello"
    assert "Content-Type" not in resp.headers


async def test_malformed_requests_log_one_warning_line_per_interval(
    make_router: MakeRouter, caplog: pytest.LogCaptureFixture
) -> None:
    """Issue 7 #15: not an ERROR with a traceback and the client's bytes, for each of them."""
    caplog.set_level(logging.INFO, logger="abrouter.server")
    r = await make_router()
    server.malformed_log.next = 0.0  # a fresh interval: an earlier test used this process's
    for _ in range(5):
        reader, writer = await asyncio.open_connection("127.0.0.1", r.client.server.port)
        writer.write(b"GET /predict HTTP/1.1\r\nHost: x\r\nX-Big: " + b"Q" * 20_000 + b"\r\n\r\n")
        await writer.drain()
        assert (await reader.read(12)).startswith(b"HTTP/1.1 431")
        writer.close()
    await asyncio.sleep(0.05)
    records = [rec for rec in caplog.records if rec.name == "abrouter.server"]
    assert len(records) == 1
    (rec,) = records
    assert rec.levelname == "WARNING" and rec.exc_info is None and "\n" not in rec.getMessage()
    assert "QQQ" not in caplog.text
    # The whole reason, not cut at its first colon (issue 14).
    assert rec.getMessage().startswith("request refused with 431 (headers_too_large): request headers exceed 8192")
    assert r.router.metrics.bad_requests["headers_too_large"] == 5
    assert sum(r.router.metrics.errors.values()) == 0  # a client's mistake is no variant's error


async def test_an_http10_client_keeping_the_connection_alive_is_told_so_and_served_twice(
    make_router: MakeRouter,
) -> None:
    """Without `Connection: keep-alive` in the answer an HTTP/1.0 client waits for a close."""
    r = await make_router({"control": 100, "candidate": 0})
    reader, writer = await asyncio.open_connection("127.0.0.1", r.client.server.port)
    try:
        for _ in range(2):
            writer.write(
                b"POST /echo HTTP/1.0\r\nConnection: keep-alive\r\nX-User-Id: u1\r\nContent-Length: 2\r\n\r\n{}"
            )
            head = (await reader.readuntil(b"\r\n\r\n")).decode("latin-1").lower()
            assert head.startswith("http/1.1 200") and "connection: keep-alive" in head
            fields = dict(line.split(": ", 1) for line in head.split("\r\n")[1:] if ": " in line)
            length = int(fields["content-length"])
            await reader.readexactly(length)
    finally:
        writer.close()
