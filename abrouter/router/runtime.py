"""The running router, apart from any server: ``async with running(...) as router``.

One upstream transport, one event log (with its Redis client), one connection guard, one
pool of shadow workers and one spec watcher per process, opened in that order and closed
in reverse. A server
adapter (`abrouter.router.http.server` today; a gRPC listener next) serves with the
`Router` it yields and stops accepting and drains *before* leaving the block, so the
event log's final flush sees every request that was answered.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator

from abrouter.contract.experiment import Experiment
from abrouter.router.connections import ConnectionGuard
from abrouter.router.eventlog.disabled import DisabledEventLog
from abrouter.router.eventlog.log import EventLog
from abrouter.router.routing import RoutingTable
from abrouter.router.settings import ServeSettings
from abrouter.router.shadow import ShadowPool
from abrouter.router.sources.base import SourceStatus, SpecSource, follow
from abrouter.router.state import Router, apply_spec, request_ids, upstream_timeouts
from abrouter.router.upstream.transport import TimeoutConfig, Transport


@contextlib.asynccontextmanager
async def running(
    experiment: Experiment,
    settings: ServeSettings,
    *,
    source: SpecSource | None = None,
    transport: Transport | None = None,
) -> AsyncIterator[Router]:
    """The router for `experiment`, following `source`; everything closed (and flushed) on exit."""
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
    try:
        t = transport or make_transport(settings.upstream_transport, upstream_timeouts(experiment))
        status = SourceStatus()
        router = Router(
            table=table,
            transport=t,
            eventlog=eventlog,
            ids=request_ids(settings.secret, experiment),
            source=status,
            guard=ConnectionGuard(settings.client_limits),
            api_token=settings.api_token,
        )
        router.shadows = ShadowPool(transport=t, eventlog=eventlog, metrics=router.metrics)  # [shadow]
        router.shadows.start()
        watcher = asyncio.create_task(follow(source, lambda e: apply_spec(router, e), status)) if source else None
        try:
            yield router
        finally:
            try:
                if watcher is not None:
                    watcher.cancel()
                    with contextlib.suppress(asyncio.CancelledError):
                        await watcher
                await router.shadows.close()  # before the transport it sends through
            finally:  # whatever the watcher did, the transport closes
                await t.close()
    finally:  # and the final flush happens
        await eventlog.close()


def make_transport(kind: str, timeouts: TimeoutConfig) -> Transport:
    if kind == "httptools":
        from abrouter.router.upstream.httpclient import HttptoolsTransport

        return HttptoolsTransport(timeouts)
    if kind == "aiohttp":
        from abrouter.router.upstream.aiohttp_client import AiohttpTransport

        return AiohttpTransport(timeouts)
    raise ValueError(f"upstream_transport must be 'httptools' or 'aiohttp', got {kind!r}")
