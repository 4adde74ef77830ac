"""The running router, apart from any server: ``async with running(...) as router``.

Per experiment served (a `Lane`): one event log (with its Redis client), one upstream
transport and one spec watcher; per process, one connection guard, and under
``--experiments NAMESPACE`` one watch of the namespace that opens and retires lanes as
Experiments are added and deleted. Everything is closed in reverse order of opening. A server
adapter (`abrouter.router.http.server` today; a gRPC listener next) serves with the
`Router` it yields and stops accepting and drains *before* leaving the block, so the
event log's final flush sees every request that was answered.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
import time
from collections.abc import AsyncIterator, Mapping, Sequence
from typing import TYPE_CHECKING

from abrouter.contract.experiment import ConfigError, Experiment
from abrouter.router.connections import ConnectionGuard
from abrouter.router.eventlog.disabled import DisabledEventLog
from abrouter.router.eventlog.log import EventLog
from abrouter.router.routing import RoutingTable
from abrouter.router.settings import ServeSettings
from abrouter.router.sources.base import Access, Removed, SpecSource, access, follow, offer
from abrouter.router.state import Lane, Lanes, Router, apply_spec, request_ids, upstream_timeouts
from abrouter.router.upstream.transport import TimeoutConfig, Transport

if TYPE_CHECKING:  # the Kubernetes client only under --experiments NAMESPACE
    from abrouter.router.sources.catalog import CatalogSource

log = logging.getLogger("abrouter")


@contextlib.asynccontextmanager
async def running(
    experiments: Experiment | Sequence[Experiment],
    settings: ServeSettings,
    *,
    source: SpecSource | None = None,
    sources: Mapping[str, SpecSource] | None = None,
    catalog: CatalogSource | None = None,
    transport: Transport | None = None,
) -> AsyncIterator[Router]:
    """The router for `experiments`, each following its source; everything closed (and flushed) on exit.

    `source` follows the one experiment given (the single-experiment form); `sources` maps
    experiment names to theirs; `catalog` follows a whole namespace (experiments added,
    changed and deleted live). `transport` (tests) is shared by every experiment; by
    default each gets its own.
    """
    initial = [experiments] if isinstance(experiments, Experiment) else list(experiments)
    followed = dict(sources or {})
    if source is not None:
        (only,) = initial
        followed[only.name] = source
    async with contextlib.AsyncExitStack() as stack:
        opened: dict[str, Lane] = {}

        async def close_all() -> None:
            for lane in opened.values():
                await _close_lane(lane, shared=transport)

        stack.push_async_callback(close_all)  # runs last: the final flush of every event log
        for experiment in initial:
            opened[experiment.name] = await _open_lane(experiment, settings, transport)
        lanes = Lanes(opened.values())
        router = Router(lanes=lanes, guard=ConnectionGuard(settings.client_limits), api_token=settings.api_token)
        tasks = [
            asyncio.create_task(follow(src, functools.partial(apply_spec, router, name), router.lane(name).source))
            for name, src in followed.items()
        ]
        if catalog is not None:
            tasks.append(asyncio.create_task(_follow_catalog(catalog, router, settings, transport, opened)))
        try:
            yield router
        finally:
            for task in tasks:
                task.cancel()
            for task in tasks:
                with contextlib.suppress(asyncio.CancelledError):
                    await task


async def _open_lane(experiment: Experiment, settings: ServeSettings, transport: Transport | None) -> Lane:
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
    return Lane(table=table, eventlog=eventlog, ids=request_ids(settings.secret, experiment), transport=t)


async def _close_lane(lane: Lane, *, shared: Transport | None) -> None:
    try:
        if lane.transport is not shared:
            await lane.transport.close()
    finally:  # and the final flush happens
        await lane.eventlog.close()


async def _follow_catalog(
    catalog: CatalogSource, router: Router, settings: ServeSettings, shared: Transport | None, opened: dict[str, Lane]
) -> None:
    """Experiments added, changed and deleted in a namespace, applied live (`sources.catalog`)."""
    retiring: set[asyncio.Task[None]] = set()
    try:
        async for update in catalog.updates():
            if isinstance(update, Access):
                access(update, router.source, where=catalog.name)
            elif isinstance(update, Removed):
                lane = opened.pop(update.name, None)
                if lane is not None:
                    router.lanes = Lanes(x for x in router.lanes if x is not lane)
                    log.info("experiment %s deleted: no longer served", update.name)
                    task = asyncio.create_task(_retire(lane, shared))
                    retiring.add(task)
                    task.add_done_callback(retiring.discard)
            elif update.name in opened:
                offer(update.spec, functools.partial(apply_spec, router, update.name), opened[update.name].source,
                      where=f"{catalog.name}/{update.name}")  # fmt: skip
            elif isinstance(update.spec, Experiment):
                await _add(update.spec, router, settings, shared, opened, where=catalog.name)
            else:
                log.error("%s/%s: not served: %s", catalog.name, update.name, update.spec)
    finally:
        for task in list(retiring):
            task.cancel()
        for task in list(retiring):
            with contextlib.suppress(asyncio.CancelledError):
                await task


async def _add(
    experiment: Experiment,
    router: Router,
    settings: ServeSettings,
    shared: Transport | None,
    opened: dict[str, Lane],
    *,
    where: str,
) -> None:
    lane = await _open_lane(experiment, settings, shared)
    try:
        lanes = Lanes([*router.lanes, lane])
    except ConfigError as exc:  # its match overlaps a served experiment's
        log.error("%s/%s: not served: %s", where, experiment.name, exc)
        await _close_lane(lane, shared=shared)
        return
    opened[experiment.name] = lane
    router.lanes = lanes
    log.info("experiment %s added: %s", experiment.name, lanes.gateway.describe())


async def _retire(lane: Lane, shared: Transport | None) -> None:
    """Close a deleted experiment's lane once its requests in flight are done (or timed out)."""
    t = lane.table.experiment.timeouts
    try:
        await asyncio.sleep(t.connect_s + t.read_s + 1.0)
    finally:
        await _close_lane(lane, shared=shared)


def make_transport(kind: str, timeouts: TimeoutConfig) -> Transport:
    if kind == "httptools":
        from abrouter.router.upstream.httpclient import HttptoolsTransport

        return HttptoolsTransport(timeouts)
    if kind == "aiohttp":
        from abrouter.router.upstream.aiohttp_client import AiohttpTransport

        return AiohttpTransport(timeouts)
    raise ValueError(f"upstream_transport must be 'httptools' or 'aiohttp', got {kind!r}")
