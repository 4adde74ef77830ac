"""The aiohttp adapter of the data path: parse, hand to the exchange, move bytes. Never awaits Redis.

`handle` serves every path outside ``/abrouter/``. Everything that is not aiohttp (the
unit id, assignment, request id, tags, upstream headers, failure replies and the event
record) is `abrouter.router.exchange`; this module only reads the request, streams bodies
and writes the response.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import AsyncIterator
from typing import Any

from aiohttp import web

from abrouter.router import exchange
from abrouter.router.errors import StreamAborted, UpstreamError
from abrouter.router.state import Router
from abrouter.router.upstream.transport import UpstreamResponse

log = logging.getLogger("abrouter.proxy")

#: Bodies up to this size are read whole and sent in one write (no Nagle delay, no
#: chunking); larger or unsized bodies stream in both directions.
BUFFER_LIMIT = 256 * 1024

ROUTER = web.AppKey("router", Router)


class _ExactContentType:
    """Sends no Content-Type unless the upstream sent one (mixed into aiohttp's responses).

    aiohttp adds ``application/octet-stream`` to every non-empty response; KServe and
    friends dispatch on Content-Type, so the proxy must not invent one.
    """

    _headers: Any

    def __init__(self, *, keep_content_type: bool, **kwargs: object) -> None:
        super().__init__(**kwargs)
        self._keep_content_type = keep_content_type

    async def _prepare_headers(self) -> None:
        await super()._prepare_headers()  # type: ignore[misc]
        if not self._keep_content_type:
            self._headers.popall("Content-Type", None)


class _ExactResponse(_ExactContentType, web.Response):
    pass


class _ExactStream(_ExactContentType, web.StreamResponse):
    pass


def incoming(request: web.Request) -> exchange.Incoming:
    return exchange.Incoming(
        method=request.method,
        target=request.raw_path,
        headers=[(k.decode("latin-1"), v.decode("latin-1")) for k, v in request.raw_headers],
        peer=request.remote or "",
        scheme=request.scheme,
    )


def reply(r: exchange.Reply) -> web.Response:
    return web.Response(status=r.status, body=r.body, content_type=r.content_type, headers=r.headers)


async def _request_body(request: web.Request) -> bytes | AsyncIterator[bytes] | None:
    if not request.body_exists:
        return None
    if request.content_length is not None and request.content_length <= BUFFER_LIMIT:
        return await request.read()

    async def stream() -> AsyncIterator[bytes]:
        async for chunk in request.content.iter_any():
            yield chunk

    return stream()


def _body_cut(request: web.Request) -> bool:
    """True if the request has a body that never arrived whole."""
    body = request.content
    return request.body_exists and (body.exception() is not None or not body.is_eof())


async def handle(request: web.Request) -> web.StreamResponse:
    router = request.app[ROUTER]
    try:
        ex = exchange.Exchange.start(router, incoming(request), now=time.time())
    except exchange.Refused as refused:
        return reply(refused.reply)
    try:
        upstream = await router.transport.request(
            base_url=ex.variant.upstream,
            method=request.method,
            path_qs=ex.incoming.target,  # origin form: never the client's scheme or authority
            headers=ex.upstream_headers(),
            body=await _request_body(request),
        )
        ex.received(upstream.status)
        return await _relay(request, upstream, ex)
    except StreamAborted:
        ex.aborted()
        raise
    except (UpstreamError, ConnectionError) as exc:
        if _body_cut(request):  # the client stalled (and was cut) or hung up mid-body
            ex.incomplete()
            return web.Response(status=400)  # to a closed connection: nobody reads it
        if isinstance(exc, ConnectionError):
            raise  # the client went away: logged with the status it got, or 499
        return reply(ex.failed(exc))
    except asyncio.CancelledError:
        raise  # the client went away: logged with the status it got, or 499
    except Exception:
        ex.crashed()
        raise
    finally:
        ex.finish(now=time.time())


async def _relay(request: web.Request, upstream: UpstreamResponse, ex: exchange.Exchange) -> web.StreamResponse:
    headers = ex.response_headers(upstream.headers)
    keep_ct = any(name.lower() == "content-type" for name, _ in headers)
    try:
        if request.method == "HEAD" or upstream.status in (204, 304):
            return _ExactResponse(
                status=upstream.status, reason=upstream.reason, headers=headers, keep_content_type=keep_ct
            )
        if upstream.content_length is not None and upstream.content_length <= BUFFER_LIMIT:
            body = await upstream.read()
            headers = [(n, v) for n, v in headers if n.lower() != "content-length"]
            return _ExactResponse(
                status=upstream.status, reason=upstream.reason, headers=headers, body=body, keep_content_type=keep_ct
            )
        return await _stream(request, upstream, headers, keep_content_type=keep_ct)
    finally:
        upstream.release()


async def _stream(
    request: web.Request, upstream: UpstreamResponse, headers: list[tuple[str, str]], *, keep_content_type: bool
) -> web.StreamResponse:
    response = _ExactStream(
        status=upstream.status, reason=upstream.reason, headers=headers, keep_content_type=keep_content_type
    )
    await response.prepare(request)
    try:
        async for chunk in upstream.chunks():
            await response.write(chunk)
    except UpstreamError as exc:
        log.warning("upstream failed mid-response, cutting the client connection: %s", exc)
        raise StreamAborted(str(exc)) from exc
    await response.write_eof()
    return response
