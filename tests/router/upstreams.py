"""Real upstream servers for the proxy tests: an aiohttp "model" and a raw-socket one.

The raw server exists because aiohttp's own server cannot send a response without a
Content-Type, and cannot reset a connection on cue; real model servers can do both.
"""

from __future__ import annotations

import asyncio
import gzip
import hashlib
import json
import socket
import struct

from aiohttp import web


class SlowGate:
    """Counts requests that reached /slow; /slow?gate=1 answers only once `open` is set."""

    def __init__(self) -> None:
        self.arrived = 0
        self.open = asyncio.Event()


SLOW = web.AppKey("slow", SlowGate)
GZIPPED = gzip.compress(json.dumps({"items": list(range(500))}).encode())


def model_app(name: str) -> web.Application:
    async def echo(request: web.Request) -> web.StreamResponse:
        body = await request.read()
        payload = {
            "upstream": name,
            "method": request.method,
            "path_qs": request.raw_path,
            "headers": [[k, v] for k, v in request.headers.items()],
            "body_len": len(body),
            "body_sha": hashlib.sha256(body).hexdigest(),
        }
        return web.json_response(payload, headers={"X-Upstream": name, "Inference-Header-Content-Length": "17"})

    async def gz(request: web.Request) -> web.Response:
        return web.Response(
            body=GZIPPED, headers={"Content-Encoding": "gzip", "Content-Type": "application/json", "X-Upstream": name}
        )

    async def slow(request: web.Request) -> web.Response:
        gate = request.app[SLOW]
        gate.arrived += 1
        if "gate" in request.query:
            await gate.open.wait()  # the test decides when in-flight requests may finish
        else:
            await asyncio.sleep(float(request.query.get("s", "2")))
        return web.json_response({"upstream": name, "slow": True}, headers={"X-Upstream": name})

    async def stream(request: web.Request) -> web.StreamResponse:
        response = web.StreamResponse(headers={"X-Upstream": name, "Content-Type": "application/x-ndjson"})
        await response.prepare(request)
        for i in range(int(request.query.get("n", "100"))):
            await response.write(json.dumps({"i": i, "pad": "x" * 1000}).encode() + b"\n")
        await response.write_eof()
        return response

    app = web.Application(client_max_size=64 * 1024 * 1024)
    app[SLOW] = SlowGate()
    app.router.add_route("*", "/gzip", gz)
    app.router.add_route("*", "/slow", slow)
    app.router.add_route("*", "/stream", stream)
    app.router.add_route("*", "/{tail:.*}", echo)
    return app


class RawUpstream:
    """Answers by path: /no-ct (a body and no Content-Type), /reset (RST, no response)."""

    def __init__(self) -> None:
        self.server: asyncio.AbstractServer | None = None
        self.port = 0

    async def start(self) -> RawUpstream:
        self.server = await asyncio.start_server(self._serve, "127.0.0.1", 0)
        self.port = self.server.sockets[0].getsockname()[1]
        return self

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    async def close(self) -> None:
        if self.server is not None:
            self.server.close()
            await self.server.wait_closed()

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            while True:
                head = await reader.readuntil(b"\r\n\r\n")
                path = head.split(b" ", 2)[1]
                length = next(
                    (
                        int(line.split(b":", 1)[1])
                        for line in head.split(b"\r\n")
                        if line.lower().startswith(b"content-length:")
                    ),
                    0,
                )
                await reader.readexactly(length)
                if path.startswith(b"/no-ct-stream"):  # chunked, so the proxy streams it
                    writer.write(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n0\r\n\r\n")
                    await writer.drain()
                    continue
                if path.startswith(b"/reset"):
                    sock = writer.get_extra_info("socket")
                    sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
                    writer.transport.abort()
                    return
                writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\nX-Upstream: raw\r\n\r\nhello")
                await writer.drain()
        except (asyncio.IncompleteReadError, ConnectionError):
            writer.close()
