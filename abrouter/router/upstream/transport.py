"""The upstream leg of the proxy, behind one small interface (no HTTP library here).

`Transport` is the swap point: the proxy only calls `request()` and reads an
`UpstreamResponse`. Two implementations: `aiohttp_client.AiohttpTransport` (the default,
one `ClientSession` with a keep-alive pool per upstream; ~4.9k req/s on one core) and
`httpclient.HttptoolsTransport` (httptools on a raw asyncio pool, `--upstream-transport
httptools`, ~8k; bench/README.md). Neither touches assignment, headers, logging or the
server side.

Errors are translated at this boundary: a refused or reset connection is
`UpstreamUnavailable` (the proxy answers 502), a connect or read timeout is
`UpstreamTimeout` (504) (both in `abrouter.router.errors`).
"""

from __future__ import annotations

from collections.abc import AsyncIterable, AsyncIterator
from dataclasses import dataclass
from typing import Protocol

from abrouter.router.headers import Headers


@dataclass(frozen=True)
class TimeoutConfig:
    connect_s: float
    read_s: float


class UpstreamResponse(Protocol):
    status: int
    reason: str
    headers: Headers
    #: From Content-Length when the upstream sent one, else None (chunked / until close).
    content_length: int | None

    def chunks(self) -> AsyncIterator[bytes]: ...
    async def read(self) -> bytes: ...
    def release(self) -> None: ...


class Transport(Protocol):
    async def request(
        self, *, base_url: str, method: str, path_qs: str, headers: Headers, body: bytes | AsyncIterable[bytes] | None
    ) -> UpstreamResponse: ...
    def set_timeouts(self, timeouts: TimeoutConfig) -> None: ...
    async def close(self) -> None: ...
