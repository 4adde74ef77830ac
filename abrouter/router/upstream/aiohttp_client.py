"""`AiohttpTransport`: the upstream leg on aiohttp's `ClientSession` (the default transport).

Implements `abrouter.router.upstream.transport.Transport`.
"""

from __future__ import annotations

from collections.abc import AsyncIterable, AsyncIterator

import aiohttp
import yarl

from abrouter.router.errors import UpstreamTimeout, UpstreamUnavailable
from abrouter.router.headers import Headers
from abrouter.router.upstream.transport import TimeoutConfig, UpstreamResponse


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
