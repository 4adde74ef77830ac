"""The floor of any proxy in this harness: bytes piped between two TCP connections on uvloop, nothing parsed.

Each accepted connection gets its own connection to the upstream, and what either side
sends is written to the other as it arrives (HTTP/2 passes through unread: one upstream,
no streams, frames, headers or flow control of its own). `bench/grpc_bench.py` runs it
beside Envoy and the router: its CPU per call is what the reads, writes and wake-ups on
127.0.0.1 cost (mostly the kernel's), which every proxy pays; the rest of a proxy's is its own.

    python bench/tcp_floor.py --port 50061 --upstream 127.0.0.1:50051
"""

from __future__ import annotations

import argparse
import asyncio

from abrouter.router.serving import new_loop


class _Upstream(asyncio.Protocol):
    def __init__(self, down: asyncio.Transport) -> None:
        self.down = down

    def data_received(self, data: bytes) -> None:
        self.down.write(data)

    def connection_lost(self, exc: Exception | None) -> None:
        self.down.close()


class _Downstream(asyncio.Protocol):
    def __init__(self, host: str, port: int) -> None:
        self.host, self.port = host, port
        self.held: list[bytes] = []
        self.up: asyncio.Transport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport: asyncio.Transport = transport  # type: ignore[assignment]
        asyncio.get_running_loop().create_task(self._connect())

    async def _connect(self) -> None:
        loop = asyncio.get_running_loop()
        up, _ = await loop.create_connection(lambda: _Upstream(self.transport), self.host, self.port)
        self.up = up
        for data in self.held:
            up.write(data)
        self.held.clear()

    def data_received(self, data: bytes) -> None:
        if self.up is None:
            self.held.append(data)
        else:
            self.up.write(data)

    def connection_lost(self, exc: Exception | None) -> None:
        if self.up is not None:
            self.up.close()


async def serve(port: int, upstream: str) -> None:
    host, _, up_port = upstream.rpartition(":")
    loop = asyncio.get_running_loop()
    server = await loop.create_server(lambda: _Downstream(host, int(up_port)), "127.0.0.1", port)
    async with server:
        await server.serve_forever()


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--port", type=int, required=True)
    p.add_argument("--upstream", required=True)
    args = p.parse_args()
    loop = new_loop()
    try:
        loop.run_until_complete(serve(args.port, args.upstream))
    finally:
        loop.close()


if __name__ == "__main__":
    main()
