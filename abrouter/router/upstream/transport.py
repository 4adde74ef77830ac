"""The upstream leg of the proxy, behind one small interface.

`Transport` is the swap point: the proxy only calls `request()` and reads an
`UpstreamResponse`. This module's `AiohttpTransport` (the default) uses one
`ClientSession` with a keep-alive pool per upstream; measured here it caps the router at
~4.9k req/s on one core. `router.httpclient.HttptoolsTransport` (httptools on a raw
asyncio pool, `--upstream-transport httptools`) implements the same protocol at ~8k
(bench/README.md), without touching assignment, headers, logging or the server side.

Errors are translated at this boundary: a refused or reset connection is
`UpstreamUnavailable` (the proxy answers 502), a connect or read timeout is
`UpstreamTimeout` (504).
"""

from __future__ import annotations

from collections.abc import AsyncIterable, AsyncIterator
from dataclasses import dataclass
from typing import Protocol

import aiohttp
import yarl

from abrouter.router.headers import Headers


class UpstreamError(Exception):
    """The upstream could not give a response."""


class UpstreamUnavailable(UpstreamError):
    """Connection refused, reset or closed before a complete response (502)."""


class UpstreamTimeout(UpstreamError):
    """No connection or no data within the configured timeout (504)."""


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


class _AiohttpResponse:
    def __init__(self, response: aiohttp.ClientResponse) -> None:
        self._response = response
        self.status = response.status
        self.reason = response.reason or ""
        self.headers = [(k.decode("latin-1"), v.decode("latin-1")) for k, v in response.raw_headers]
        self.content_length = response.content_length

    async def chunks(self) -> AsyncIterator[bytes]:
        try:
            async for chunk in self._response.content.iter_any():
                yield chunk
        except TimeoutError as exc:
            raise UpstreamTimeout(f"read timed out: {exc}") from exc
        except aiohttp.ClientError as exc:
            raise UpstreamUnavailable(str(exc) or type(exc).__name__) from exc

    async def read(self) -> bytes:
        try:
            return await self._response.read()
        except TimeoutError as exc:
            raise UpstreamTimeout(f"read timed out: {exc}") from exc
        except aiohttp.ClientError as exc:
            raise UpstreamUnavailable(str(exc) or type(exc).__name__) from exc

    def release(self) -> None:
        self._response.release()


class AiohttpTransport:
    """One ClientSession for the app's lifetime; never one per request."""

    def __init__(self, timeouts: TimeoutConfig, *, pool_size: int = 512) -> None:
        connector = aiohttp.TCPConnector(
            limit=0, limit_per_host=pool_size, keepalive_timeout=60, ttl_dns_cache=30, enable_cleanup_closed=True
        )
        self._session = aiohttp.ClientSession(
            connector=connector,
            auto_decompress=False,  # Content-Encoding travels with its bytes, untouched
            # Never invent headers the client did not send (Content-Type above all).
            skip_auto_headers=("User-Agent", "Accept", "Accept-Encoding", "Content-Type"),
            cookie_jar=aiohttp.DummyCookieJar(),
        )
        self.set_timeouts(timeouts)

    def set_timeouts(self, timeouts: TimeoutConfig) -> None:
        """New connect and read timeouts, for requests that start from now on."""
        self._timeout = aiohttp.ClientTimeout(total=None, sock_connect=timeouts.connect_s, sock_read=timeouts.read_s)

    async def request(
        self, *, base_url: str, method: str, path_qs: str, headers: Headers, body: bytes | AsyncIterable[bytes] | None
    ) -> UpstreamResponse:
        try:
            response = await self._session.request(
                method,
                yarl.URL(base_url + path_qs, encoded=True),
                headers=headers,
                data=body,
                allow_redirects=False,
                compress=None,
                skip_auto_headers=("Content-Type",),
                timeout=self._timeout,
            )
        except TimeoutError as exc:
            raise UpstreamTimeout(f"no response within the timeout from {base_url}") from exc
        except (aiohttp.ClientError, OSError) as exc:  # refused, reset, or a malformed response
            raise UpstreamUnavailable(f"{base_url}: {exc or type(exc).__name__}") from exc
        return _AiohttpResponse(response)

    async def close(self) -> None:
        await self._session.close()
