"""HTTP/1.1 over a plain socket, for tests that must write exactly the bytes they mean.

`read_response` parses one response as a careful client would: Content-Length,
chunked, or until the close; no body after HEAD, 1xx, 204 or 304.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass

#: Patient: a loaded 2-core machine; a hang still fails, just late.
PATIENCE_S = 15.0


@dataclass
class Response:
    status: int
    headers: list[tuple[str, str]]
    body: bytes

    def header(self, name: str) -> str | None:
        return next((v for k, v in self.headers if k.lower() == name.lower()), None)

    @property
    def closes(self) -> bool:
        return (self.header("connection") or "").lower() == "close"


async def connect(port: int) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    return await asyncio.open_connection("127.0.0.1", port, limit=1 << 20)


async def read_head(reader: asyncio.StreamReader) -> tuple[int, list[tuple[str, str]]]:
    head = await reader.readuntil(b"\r\n\r\n")
    status_line, *lines = head[:-4].decode("latin-1").split("\r\n")
    version, status, *_ = status_line.split(" ", 2)
    assert version == "HTTP/1.1", status_line
    headers = []
    for line in lines:
        name, sep, value = line.partition(":")
        assert sep and name == name.strip(), line
        headers.append((name, value.strip()))
    return int(status), headers


async def read_chunked(reader: asyncio.StreamReader) -> bytes:
    parts = []
    while True:
        size = int((await reader.readuntil(b"\r\n"))[:-2], 16)
        if size == 0:
            assert await reader.readuntil(b"\r\n") == b"\r\n"  # no trailers
            return b"".join(parts)
        part = await reader.readexactly(size + 2)
        assert part[-2:] == b"\r\n"
        parts.append(part[:-2])


async def read_response(reader: asyncio.StreamReader, *, head_only: bool = False) -> Response:
    """One response; `head_only` for the answer to a HEAD."""
    async with asyncio.timeout(PATIENCE_S):
        status, headers = await read_head(reader)
        response = Response(status, headers, b"")
        if head_only or status < 200 or status in (204, 304):
            return response
        if (response.header("transfer-encoding") or "").lower() == "chunked":
            response.body = await read_chunked(reader)
        elif (length := response.header("content-length")) is not None:
            response.body = await reader.readexactly(int(length))
        else:
            response.body = await reader.read()  # until the close
        return response


async def read_to_close(reader: asyncio.StreamReader, limit_s: float = PATIENCE_S) -> bytes:
    """Everything until the router closes (a reset counts as a close), within `limit_s`."""
    parts = []
    async with asyncio.timeout(limit_s):
        while True:
            try:
                chunk = await reader.read(65536)
            except ConnectionResetError:
                break
            if not chunk:
                break
            parts.append(chunk)
    return b"".join(parts)


async def exchange(port: int, data: bytes) -> bytes:
    """Send `data` on a new connection and read until the router closes it."""
    reader, writer = await connect(port)
    try:
        writer.write(data)
        await writer.drain()
        return await read_to_close(reader)
    finally:
        writer.close()


def head(method: str, target: str, headers: str = "") -> bytes:
    """A request head with exactly the framing headers given."""
    return f"{method} {target} HTTP/1.1\r\nHost: x\r\nX-User-Id: u1\r\n{headers}\r\n".encode()


def request(method: str, target: str, *, body: bytes = b"", headers: str = "", version: str = "1.1") -> bytes:
    sized = body or (method in ("POST", "PUT") and "transfer-encoding" not in headers.lower())
    length = f"Content-Length: {len(body)}\r\n" if sized else ""
    return f"{method} {target} HTTP/{version}\r\nHost: x\r\nX-User-Id: u1\r\n{headers}{length}\r\n".encode() + body
