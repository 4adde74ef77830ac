"""The upstream leg of the proxy, behind one small interface (no HTTP library here).

`Transport` is the swap point: the proxy only calls `request()` and reads an
`UpstreamResponse`. Two implementations: `aiohttp_client.AiohttpTransport` (the default,
one `ClientSession` with a keep-alive pool per upstream; ~4.9k req/s on one core) and
`httpclient.HttptoolsTransport` (httptools on a raw asyncio pool, `--upstream-transport
httptools`, ~8k; bench/README.md). Neither touches assignment, headers, logging or the
server side.

The stream driver's callback path (a request body held whole) asks a transport that has it
for `start`: the request goes out now and a `Sink` hears of the response, no task and no
coroutine per request (`HttptoolsTransport` has it, when an idle connection is at hand);
otherwise it drives the same `Sink` from `request` in a task (`feed`).

Errors are translated at this boundary: a refused or reset connection is
`UpstreamUnavailable` (the proxy answers 502), a connect or read timeout is
`UpstreamTimeout` (504) (both in `abrouter.router.errors`).
"""

from __future__ import annotations

from collections.abc import AsyncIterable, AsyncIterator, Awaitable
from dataclasses import dataclass
from typing import Protocol

from abrouter.router.errors import UpstreamError
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


class Sink(Protocol):
    """Who hears of a response on the callback path (the stream driver)."""

    def head(self, response: UpstreamResponse) -> bool:
        """The response's head: True to have its body whole in `body`, False to read it with `chunks()`.

        From then on the sink owns `response` (it calls `release()`)."""

    def body(self, data: bytes) -> None:
        """The response's whole body (after `head` returned True)."""

    def failed(self, exc: UpstreamError) -> None:
        """No response (before `head`), or its body failed before it was whole (after)."""


class Pending(Protocol):
    """A request started for a `Sink`, until its head reached the sink."""

    def cancel(self) -> None:
        """The caller left: stop; the sink hears nothing more."""


async def feed(sink: Sink, response: Awaitable[UpstreamResponse]) -> None:
    """Drive `sink` from the coroutine API (`Transport.request`): the callback path without `start`."""
    try:
        got = await response
    except UpstreamError as exc:
        sink.failed(exc)
        return
    if sink.head(got):
        try:
            data = await got.read()
        except UpstreamError as exc:
            sink.failed(exc)
            return
        sink.body(data)
