"""Builds the aiohttp application and owns the lifecycles of its long-lived parts.

One upstream transport, one event log (with its Redis client) and one weights watcher
per app, created in `cleanup_ctx` and closed in reverse order on shutdown. aiohttp stops
accepting, lets in-flight requests finish, and only then runs the cleanups, so the
event log's final flush sees every request that was answered.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator

from aiohttp import web

from abrouter.contract.experiment import Experiment
from abrouter.router.eventlog.disabled import DisabledEventLog
from abrouter.router.eventlog.log import EventLog
from abrouter.router.http import api, badrequests
from abrouter.router.http.proxy import ROUTER, handle
from abrouter.router.routing import RoutingTable
from abrouter.router.settings import ServeSettings
from abrouter.router.sources.base import SourceStatus, SpecSource, follow
from abrouter.router.state import Router, apply_spec, request_ids, upstream_timeouts
from abrouter.router.upstream.aiohttp_client import AiohttpTransport
from abrouter.router.upstream.httpclient import HttptoolsTransport
from abrouter.router.upstream.transport import TimeoutConfig, Transport

#: Keyword arguments for aiohttp's request handler (`listener.start`, a test server's
#: ``server_kwargs``). Request bodies are not inflated: the proxy forwards the client's
#: bytes with their Content-Encoding untouched (the outcome API inflates its own).
SERVER_KWARGS: dict[str, object] = {"auto_decompress": False}

#: The largest request body the app reads whole (the outcome API), inflated or not.
CLIENT_MAX_SIZE = 4 * 1024 * 1024


def build_app(
    experiment: Experiment,
    settings: ServeSettings,
    *,
    source: SpecSource | None = None,
    transport: Transport | None = None,
) -> web.Application:
    app = web.Application(client_max_size=CLIENT_MAX_SIZE)
    status = SourceStatus()

    async def lifecycle(app: web.Application) -> AsyncIterator[None]:
        eventlog: EventLog | DisabledEventLog = DisabledEventLog()
        if settings.event_log:
            eventlog = EventLog(
                redis_url=settings.redis_url,
                experiment=experiment,
                spill_dir=settings.spill_dir,
                flush_interval_s=settings.flush_interval_s,
                max_events=settings.max_buffered_events,
            )
        table = RoutingTable(experiment=experiment, since=time.time())
        eventlog.register_epoch(table.epoch, table.weights_by_name(), table.since)
        await eventlog.start()
        t = transport or make_transport(settings.upstream_transport, upstream_timeouts(experiment))
        app[ROUTER] = Router(
            table=table, transport=t, eventlog=eventlog, ids=request_ids(settings.secret, experiment), source=status
        )
        watcher = asyncio.create_task(follow(source, lambda e: apply_spec(app[ROUTER], e), status)) if source else None
        try:
            yield
        finally:
            try:
                if watcher is not None:
                    watcher.cancel()
                    with contextlib.suppress(asyncio.CancelledError):
                        await watcher
            finally:  # whatever the watcher did, the final flush must happen
                try:
                    await t.close()
                finally:
                    await eventlog.close()

    app[api.API_TOKEN] = settings.api_token
    badrequests.install()  # a client's malformed requests: one rate-limited WARNING line
    app.cleanup_ctx.append(lifecycle)
    api.add_routes(app)
    app.router.add_route("*", "/{tail:.*}", handle)
    return app


def make_transport(kind: str, timeouts: TimeoutConfig) -> Transport:
    if kind == "aiohttp":
        return AiohttpTransport(timeouts)
    if kind == "httptools":
        return HttptoolsTransport(timeouts)
    raise ValueError(f"upstream_transport must be 'aiohttp' or 'httptools', got {kind!r}")
