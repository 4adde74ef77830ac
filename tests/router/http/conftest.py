"""Fixtures for the wire tests (test_wire.py, test_wire_fuzz.py): an upstream with the
shapes they need and a router with short client deadlines."""

from __future__ import annotations

import asyncio
import hashlib
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
from aiohttp import web

from abrouter.contract.keys import Keys
from abrouter.router.connections import Limits
from tests.router.conftest import RouterUnderTest
from tests.router.served import serve_spec, two_arms

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

    async def slow(request: web.Request) -> web.Response:
        await request.read()
        await asyncio.sleep(float(request.query.get("s", "1")))
        return web.json_response({"path_qs": request.raw_path})

    async def status(request: web.Request) -> web.Response:
        code = int(request.match_info["code"])
        return web.Response(status=code, headers={"ETag": '"v1"', "X-Status": str(code)})

    app = web.Application(client_max_size=256 * MIB)
    app[WIRE] = WireState()
    app.router.add_route("*", "/drip", drip)
    app.router.add_route("*", "/big", big)
    app.router.add_route("*", "/sink", sink)
    app.router.add_route("*", "/slow", slow)
    app.router.add_route("*", "/status/{code}", status)
    app.router.add_route("*", "/{tail:.*}", echo)
    return app


@pytest.fixture
async def wire(aiohttp_server: Any) -> tuple[str, WireState]:
    app = wire_app()
    srv = await aiohttp_server(app)
    return str(srv.make_url("")).rstrip("/"), app[WIRE]


DEADLINE = 0.3
#: Four deadlines: a response this slow is in flight across several sweeps.
SLOW = "/slow?s=1.2"


@pytest.fixture
async def limited(
    redis_url: str, experiment_name: str, tmp_path: Path, wire: tuple[str, WireState]
) -> AsyncIterator[RouterUnderTest]:
    """A router whose client deadlines are all `DEADLINE`."""
    url, _ = wire
    spec = two_arms(experiment_name, url)
    spec["variants"][0]["weight"], spec["variants"][1]["weight"] = 100, 0
    limits = Limits(header_s=DEADLINE, body_idle_s=DEADLINE, idle_s=DEADLINE)
    client = await serve_spec(spec, redis_url=redis_url, tmp_path=tmp_path, limits=limits)
    path = tmp_path / "experiment.yaml"
    yield RouterUnderTest(client=client, path=path, spec=spec, keys=Keys(experiment_name), redis_url=redis_url)
    await client.close()
