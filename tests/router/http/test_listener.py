"""Client deadlines and the connection cap, over real sockets against the listener `abrouter serve` runs.

Deadlines are 0.3 s here; a connection must be closed within its deadline plus one
sweep interval plus `SLACK` (a loaded 2-core machine).
"""

from __future__ import annotations

import asyncio
import gzip
import hashlib
import io
import json
import os
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from aiohttp import web

from abrouter.contract.keys import Keys, decode_agg
from abrouter.router.connections import Limits, Phase
from abrouter.router.state import Router
from tests.router.http import raw
from tests.router.served import RouterClient, serve_spec, two_arms

DEADLINE = 0.3
SLACK = 0.7
LIMITS = Limits(header_s=DEADLINE, body_idle_s=DEADLINE, idle_s=DEADLINE, max_connections=8)


@dataclass
class Served:
    server: RouterClient
    keys: Keys
    redis_url: str

    @property
    def router(self) -> Router:
        return self.server.router

    async def connect(self) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
        return await asyncio.open_connection("127.0.0.1", self.server.port)

    async def exposures_and_errors(self) -> tuple[int, int]:
        import redis.asyncio

        await self.router.lanes.only.eventlog.flush()  # type: ignore[union-attr]
        client = redis.asyncio.Redis.from_url(self.redis_url)
        try:
            strata = decode_agg(await client.hgetall(self.keys.agg))
        finally:
            await client.aclose()
        return sum(s.exposures for s in strata.values()), sum(self.router.metrics.errors.values())


async def start(
    redis_url: str, name: str, tmp_path: Path, urls: dict[str, str], limits: Limits, transport: str = "aiohttp"
) -> Served:
    spec = two_arms(name, urls["control"], urls["candidate"], metrics=[{"name": "conversion", "kind": "binary"}])
    server = await serve_spec(spec, redis_url=redis_url, tmp_path=tmp_path, limits=limits, transport=transport)
    return Served(server=server, keys=Keys(name), redis_url=redis_url)


@pytest.fixture
def upstream_transport() -> str:
    return "httptools"


@pytest.fixture
async def served(
    redis_url: str, experiment_name: str, tmp_path: Path, upstream_urls: dict[str, str], upstream_transport: str
) -> AsyncIterator[Served]:
    s = await start(redis_url, experiment_name, tmp_path, upstream_urls, LIMITS, upstream_transport)
    yield s
    await s.server.close()


def open_fds() -> int:
    return len(os.listdir("/proc/self/fd"))


async def closed_after(reader: asyncio.StreamReader, limit_s: float) -> tuple[float, bytes]:
    """Seconds until the router closed the connection (reading whatever it sent), and what it sent."""
    start = time.monotonic()
    data = await raw.read_to_close(reader, limit_s)
    return time.monotonic() - start, data


async def drip(writer: asyncio.StreamWriter, data: bytes, every_s: float) -> None:
    """Send `data` a byte at a time, until the router hangs up."""
    for i in range(len(data)):
        writer.write(data[i : i + 1])
        try:
            await writer.drain()
        except ConnectionError:
            return
        await asyncio.sleep(every_s)


HEADERS = b"POST /predict HTTP/1.1\r\nHost: x\r\nX-User-Id: u1\r\n"


async def test_dripping_headers_are_cut_at_the_header_deadline(served: Served) -> None:
    reader, writer = await served.connect()
    dripping = asyncio.create_task(drip(writer, HEADERS + b"X-Padding: " + b"a" * 200 + b"\r\n\r\n", 0.02))
    elapsed, answer = await closed_after(reader, DEADLINE + SLACK)
    dripping.cancel()
    writer.close()
    assert DEADLINE * 0.9 <= elapsed and answer == b""  # cut, not answered: the request never started
    assert served.router.guard.timeouts[Phase.HEADERS] == 1
    assert await served.exposures_and_errors() == (0, 0)


@pytest.mark.parametrize("upstream_transport", ["aiohttp", "httptools"])
@pytest.mark.parametrize("size", [1000, 2_000_000], ids=["buffered", "streamed"])
async def test_a_stalled_body_is_cut_and_is_neither_an_exposure_nor_an_error(served: Served, size: int) -> None:
    reader, writer = await served.connect()
    writer.write(HEADERS + b"Content-Length: %d\r\n\r\n" % size + b"x" * 300)
    start = time.monotonic()
    _, answer = await closed_after(reader, DEADLINE + SLACK)
    writer.close()
    assert time.monotonic() - start >= DEADLINE * 0.9 and answer == b""
    assert served.router.guard.timeouts[Phase.BODY] == 1
    await asyncio.sleep(0.1)  # the handler sees the cut
    assert await served.exposures_and_errors() == (0, 0)
    assert served.router.metrics.requests == {}


async def test_a_slow_but_steady_upload_is_never_cut(served: Served) -> None:
    body = bytes(range(256)) * 4 * 1024  # 1 MiB in 16 pieces over ~4 deadlines
    reader, writer = await served.connect()
    writer.write(HEADERS + b"Content-Length: %d\r\n\r\n" % len(body))
    for i in range(0, len(body), len(body) // 16):
        writer.write(body[i : i + len(body) // 16])
        await writer.drain()
        await asyncio.sleep(DEADLINE / 4)
    head, _, rest = (await reader.readuntil(b"\r\n\r\n")).partition(b"\r\n")
    assert head == b"HTTP/1.1 200 OK", head
    length = int(
        next(line for line in rest.split(b"\r\n") if line.lower().startswith(b"content-length")).split(b":")[1]
    )
    seen = json.loads(await reader.readexactly(length))
    assert seen["body_len"] == len(body) and seen["body_sha"] == hashlib.sha256(body).hexdigest()
    writer.close()
    assert served.router.guard.timeouts[Phase.BODY] == 0
    assert await served.exposures_and_errors() == (1, 0)


async def test_a_silent_new_connection_and_an_idle_kept_alive_one_are_closed(served: Served) -> None:
    silent_reader, silent = await served.connect()
    reader, writer = await served.connect()
    writer.write(b"GET /abrouter/healthz HTTP/1.1\r\nHost: x\r\n\r\n")
    assert (await reader.readuntil(b"\r\n")) == b"HTTP/1.1 200 OK\r\n"
    await reader.readuntil(b"\r\n\r\n")
    elapsed, _ = await closed_after(reader, DEADLINE + SLACK)  # the body, then the close
    assert elapsed >= DEADLINE * 0.9
    _, answer = await closed_after(silent_reader, SLACK)  # opened first: already closed
    assert answer == b""
    writer.close()
    silent.close()
    # The silent one owed its first request's headers; the other was idle between requests.
    assert (served.router.guard.timeouts[Phase.HEADERS], served.router.guard.timeouts[Phase.IDLE]) == (1, 1)


async def test_beyond_the_cap_connections_get_a_503_and_fds_return_to_baseline(served: Served) -> None:
    baseline = open_fds()
    held = [await served.connect() for _ in range(LIMITS.max_connections)]
    await asyncio.sleep(0.05)
    reader, writer = await served.connect()
    _, answer = await closed_after(reader, SLACK)
    assert answer.startswith(b"HTTP/1.1 503 ") and b'"code":"too_many_connections"' in answer
    writer.close()
    assert served.router.guard.refused == 1 and served.router.guard.open == LIMITS.max_connections
    for _, w in held:
        w.close()
    deadline = time.monotonic() + DEADLINE + SLACK
    while served.router.guard.open or open_fds() > baseline:
        assert time.monotonic() < deadline, (served.router.guard.open, open_fds(), baseline)
        await asyncio.sleep(0.02)
    reader, writer = await served.connect()  # a place is free again
    writer.write(b"GET /abrouter/metrics HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
    _, answer = await closed_after(reader, SLACK)
    writer.close()
    assert answer.startswith(b"HTTP/1.1 200 OK")
    assert b"abrouter_connections_refused_total" in answer and b"abrouter_connections_open" in answer


async def test_300_dripping_connections_are_all_gone_within_the_deadline(
    redis_url: str, experiment_name: str, tmp_path: Path, upstream_urls: dict[str, str]
) -> None:
    """The finding: 300 drips held 300 fds for as long as they liked."""
    s = await start(redis_url, experiment_name, tmp_path, upstream_urls, Limits(header_s=DEADLINE))
    try:
        baseline = open_fds()
        conns = [await s.connect() for _ in range(300)]
        drips = [asyncio.create_task(drip(w, HEADERS * 10, 0.05)) for _, w in conns]
        results = await asyncio.gather(*(closed_after(r, DEADLINE + SLACK + 1.0) for r, _ in conns))
        for task in drips:
            task.cancel()
        for _, w in conns:
            w.close()
        assert all(answer == b"" for _, answer in results)
        assert s.router.guard.timeouts[Phase.HEADERS] == 300
        await asyncio.sleep(0.1)
        assert open_fds() <= baseline
    finally:
        await s.server.close()


async def test_an_upload_held_back_by_a_slow_upstream_is_not_the_clients_fault(
    redis_url: str, experiment_name: str, tmp_path: Path, aiohttp_server: Any
) -> None:
    """While the router does not read (the upstream is slower), the client cannot send: no body deadline."""

    async def slow_reader(request: web.Request) -> web.Response:
        first = await request.content.readexactly(65536)
        await asyncio.sleep(4 * DEADLINE)  # every buffer on the way fills; the router stops reading
        size = len(first)
        async for chunk in request.content.iter_any():
            size += len(chunk)
        return web.json_response({"body_len": size})

    upstream = web.Application()
    upstream.router.add_post("/predict", slow_reader)
    url = str((await aiohttp_server(upstream)).make_url("")).rstrip("/")
    s = await start(redis_url, experiment_name, tmp_path, {"control": url, "candidate": url}, LIMITS)
    try:
        body = b"x" * (16 * 1024 * 1024)  # more than the socket buffers between client and upstream
        async with aiohttp.ClientSession() as session:
            resp = await session.post(
                f"http://127.0.0.1:{s.server.port}/predict", data=io.BytesIO(body), headers={"X-User-Id": "u1"}
            )
            assert resp.status == 200 and (await resp.json())["body_len"] == len(body)
        assert s.router.guard.timeouts[Phase.BODY] == 0
    finally:
        await s.server.close()


async def test_the_listener_passes_a_gzip_body_through_untouched(served: Served) -> None:
    """`abrouter serve` gives its handler the same keywords as the tests' server (no inflating)."""
    plain = b'{"inputs": []}' * 100
    packed = gzip.compress(plain)
    async with aiohttp.ClientSession() as session:
        resp = await session.post(
            f"http://127.0.0.1:{served.server.port}/predict",
            data=packed,
            headers={"X-User-Id": "u1", "Content-Encoding": "gzip"},
        )
        seen = await resp.json()
    sent = {k.lower(): v for k, v in seen["headers"]}
    assert resp.status == 200 and int(sent["content-length"]) == len(packed)  # inflated, it would be chunked
    assert seen["body_sha"] == hashlib.sha256(plain).hexdigest()  # the upstream inflates our bytes itself


@pytest.mark.parametrize("size", [1000, 2_000_000], ids=["buffered", "streamed"])
async def test_a_client_that_hangs_up_mid_body_is_neither_an_exposure_nor_an_error(served: Served, size: int) -> None:
    _, writer = await served.connect()
    writer.write(HEADERS + b"Content-Length: %d\r\n\r\n" % size + b"x" * 300)
    await writer.drain()
    await asyncio.sleep(0.1)  # the handler has started
    writer.close()
    await asyncio.sleep(0.2)
    assert served.router.guard.timeouts[Phase.BODY] == 0  # the client left; no deadline did it
    assert await served.exposures_and_errors() == (0, 0)
    assert served.router.metrics.requests == {}
