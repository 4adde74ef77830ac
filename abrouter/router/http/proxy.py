"""The data path: assign, forward, tag, log. Never awaits Redis.

`Router` holds what one app serves with; `handle` is the aiohttp handler for every path
outside ``/abrouter/``. Assignment and header rules live in pure modules; this one only
moves bytes and records what happened.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import random
import time
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from aiohttp import web

from abrouter.router import headers as hdr
from abrouter.router.eventlog.log import EventLog

if TYPE_CHECKING:
    from abrouter.router.http.app import DisabledEventLog
from abrouter.contract.keys import unit_hash
from abrouter.router.eventlog.events import Exposure
from abrouter.router.metrics import ProxyMetrics
from abrouter.router.requestid import RequestIds
from abrouter.router.routing import RoutingTable
from abrouter.router.sources.file import SourceStatus
from abrouter.router.upstream.transport import Transport, UpstreamError, UpstreamResponse, UpstreamTimeout

log = logging.getLogger("abrouter.proxy")

#: Bodies up to this size are read whole and sent in one write (no Nagle delay, no
#: chunking); larger or unsized bodies stream in both directions.
BUFFER_LIMIT = 256 * 1024
COOKIE_MAX_AGE_S = 365 * 86400
#: Status logged when the client disconnected before the upstream answered; not an error
#: of the variant.
CLIENT_CLOSED = 499
#: Epoch 0 in a request id marks a QA override, which is not part of the experiment.
FORCED_EPOCH = 0


@dataclass
class Router:
    table: RoutingTable
    transport: Transport
    eventlog: EventLog | DisabledEventLog
    ids: RequestIds
    metrics: ProxyMetrics = field(default_factory=ProxyMetrics)
    source: SourceStatus = field(default_factory=SourceStatus)
    rng: random.Random = field(default_factory=lambda: random.Random(os.urandom(16)))


ROUTER = web.AppKey("router", Router)


@dataclass(frozen=True, slots=True)
class Assignment:
    index: int
    unit_hash: str
    forced: bool
    new_cookie: str | None = None


class _ExactResponse(web.Response):
    """A web.Response that sends no Content-Type unless the upstream sent one.

    aiohttp adds ``application/octet-stream`` to every non-empty response; KServe and
    friends dispatch on Content-Type, so the proxy must not invent one.
    """

    def __init__(self, *, keep_content_type: bool, **kwargs: object) -> None:
        super().__init__(**kwargs)  # type: ignore[arg-type]
        self._keep_content_type = keep_content_type

    async def _prepare_headers(self) -> None:
        await super()._prepare_headers()
        if not self._keep_content_type:
            self._headers.popall("Content-Type", None)


def unit_of(request: web.Request, table: RoutingTable) -> str | None:
    source = table.experiment.unit
    if source.kind == "header":
        value = request.headers.get(source.name)
    elif source.kind == "cookie":
        value = request.cookies.get(source.name)
    else:
        value = request.query.get(source.name)
    return value or None


def assign(request: web.Request, router: Router, table: RoutingTable) -> Assignment:
    forced = request.headers.get(hdr.FORCE_HEADER)
    if forced and table.experiment.allow_force_variant:
        if forced not in table.index:
            known = ", ".join(table.index)
            raise web.HTTPBadRequest(
                text=_json_error("unknown_variant", f"{hdr.FORCE_HEADER}: unknown variant {forced!r}; known: {known}"),
                content_type="application/json",
            )
        return Assignment(table.index[forced], _random_unit(router.rng), forced=True)
    unit = unit_of(request, table)
    new_cookie = None
    if unit is None and table.experiment.unit.kind == "cookie":
        unit = new_cookie = uuid.uuid4().hex
    if unit is None:  # no id: an independent random draw, and the request is its own unit
        return Assignment(table.assigner.assign_random(router.rng), _random_unit(router.rng), forced=False)
    return Assignment(table.assigner.assign(unit), unit_hash(unit), forced=False, new_cookie=new_cookie)


def _random_unit(rng: random.Random) -> str:
    """A unit hash for a request that is its own unit (no id given)."""
    return f"{rng.getrandbits(64):016x}"


class StreamAborted(Exception):
    """The upstream failed after the response headers went out; the client connection is cut."""


def _raw_headers(request: web.Request) -> list[tuple[str, str]]:
    return [(k.decode("latin-1"), v.decode("latin-1")) for k, v in request.raw_headers]


def _json_error(code: str, message: str, **extra: str) -> str:
    return json.dumps({"error": code, "message": message, **extra})


async def _request_body(request: web.Request) -> bytes | AsyncIterator[bytes] | None:
    if not request.body_exists:
        return None
    if request.content_length is not None and request.content_length <= BUFFER_LIMIT:
        return await request.read()

    async def stream() -> AsyncIterator[bytes]:
        async for chunk in request.content.iter_any():
            yield chunk

    return stream()


async def handle(request: web.Request) -> web.StreamResponse:
    router = request.app[ROUTER]
    table = router.table  # one consistent snapshot for the whole request
    started = time.perf_counter()
    choice = assign(request, router, table)
    variant = table.experiment.variants[choice.index]
    request_id = router.ids.issue(
        unit_hash=choice.unit_hash,
        epoch=FORCED_EPOCH if choice.forced else table.epoch,
        variant_index=choice.index,
        now=time.time(),
    )
    tags = {"experiment": table.experiment.name, "variant": variant.name, "request_id": request_id}
    # No response yet: if the client goes away first, this is what gets logged (nginx's 499).
    status, error = CLIENT_CLOSED, None
    try:
        upstream = await router.transport.request(
            base_url=variant.upstream,
            method=request.method,
            path_qs=request.raw_path,
            headers=hdr.upstream_request_headers(
                _raw_headers(request), upstream=variant.upstream, client_ip=request.remote or "", scheme=request.scheme
            ),
            body=await _request_body(request),
        )
        status = upstream.status
        return await _relay(request, upstream, tags, choice)
    except StreamAborted:
        error = "stream_aborted"
        raise
    except UpstreamError as exc:
        error = "timeout" if isinstance(exc, UpstreamTimeout) else "unavailable"
        status = 504 if error == "timeout" else 502
        log.warning("variant %s: upstream %s: %s", variant.name, error, exc)
        return _error_response(status, error, str(exc), tags, cookie=_new_cookie(request, choice))
    except (ConnectionError, asyncio.CancelledError):
        raise  # the client went away: logged with the status it got, or 499
    except Exception:
        status, error = 500, "internal"
        raise
    finally:
        _record(
            router,
            table,
            choice,
            request_id=request_id,
            variant=variant.name,
            status=status,
            seconds=time.perf_counter() - started,
            error=error,
        )


def _record(
    router: Router,
    table: RoutingTable,
    choice: Assignment,
    *,
    request_id: str,
    variant: str,
    status: int,
    seconds: float,
    error: str | None,
) -> None:
    router.metrics.observe_request(variant, status, seconds, error)
    if choice.forced:
        return  # QA overrides are not exposures of the experiment
    router.eventlog.record_exposure(
        Exposure(
            request_id=request_id,
            unit_hash=choice.unit_hash,
            variant=variant,
            epoch=table.epoch,
            ts=time.time(),
            status=status,
            latency_ms=seconds * 1000.0,
            error=error is not None or status >= 500,
        )
    )


def _new_cookie(request: web.Request, choice: Assignment) -> list[tuple[str, str]]:
    """Set-Cookie for a unit id the router just made up, so the client's next request sticks."""
    if choice.new_cookie is None:
        return []
    name = request.app[ROUTER].table.experiment.unit.name
    return [("Set-Cookie", f"{name}={choice.new_cookie}; Path=/; Max-Age={COOKIE_MAX_AGE_S}; HttpOnly; SameSite=Lax")]


async def _relay(
    request: web.Request, upstream: UpstreamResponse, tags: dict[str, str], choice: Assignment
) -> web.StreamResponse:
    headers = hdr.tag_response(upstream.headers, **tags) + _new_cookie(request, choice)
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
        return await _stream(request, upstream, headers)
    finally:
        upstream.release()


async def _stream(
    request: web.Request, upstream: UpstreamResponse, headers: list[tuple[str, str]]
) -> web.StreamResponse:
    response = web.StreamResponse(status=upstream.status, reason=upstream.reason, headers=headers)
    await response.prepare(request)
    try:
        async for chunk in upstream.chunks():
            await response.write(chunk)
    except UpstreamError as exc:
        log.warning("upstream failed mid-response, cutting the client connection: %s", exc)
        raise StreamAborted(str(exc)) from exc
    await response.write_eof()
    return response


def _error_response(
    status: int, error: str, detail: str, tags: dict[str, str], *, cookie: list[tuple[str, str]]
) -> web.Response:
    body = _json_error(
        f"upstream_{error}", f"variant {tags['variant']!r}: upstream {error}: {detail}", variant=tags["variant"]
    )
    headers = hdr.tag_response([], **tags) + cookie
    return web.Response(status=status, text=body, content_type="application/json", headers=headers)
