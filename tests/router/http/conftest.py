"""Fixtures for the wire tests (test_wire.py, test_wire_fuzz.py): an upstream with the
shapes they need and a router with short client deadlines."""

from __future__ import annotations

import asyncio
import hashlib
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
import yaml
from aiohttp import web

from abrouter.contract import experiment as model
from abrouter.contract.keys import Keys
from abrouter.router.connections import Limits
from abrouter.router.settings import ServeSettings
from tests.router.conftest import RouterUnderTest
from tests.router.served import serve

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
    spec = {
        "name": experiment_name,
        "unit": {"header": "X-User-Id"},
        "variants": [
            {"name": "control", "upstream": url, "weight": 100},
            {"name": "candidate", "upstream": url, "weight": 0},
        ],
        "timeouts": {"connect": 1, "read": 5},
    }
    path = tmp_path / "experiment.yaml"
    path.write_text(yaml.safe_dump(spec))
    settings = ServeSettings(
        redis_url=redis_url,
        spill_dir=tmp_path / "spill",
        flush_interval_s=0.05,
        client_limits=Limits(header_s=DEADLINE, body_idle_s=DEADLINE, idle_s=DEADLINE),
    )
    client = await serve(model.load(path), settings)
    yield RouterUnderTest(client=client, path=path, spec=spec, keys=Keys(experiment_name), redis_url=redis_url)
    await client.close()
