"""The running router, apart from any server: ``async with running(...) as router``.

Per experiment served (a `Lane`): one event log (its own producer, seqs, spill and loss
accounting), one upstream transport, one pool of shadow workers and one spec watcher; per
process, one Redis client and one flush loop for every event log (`EventLogHub`), one
connection guard, and under ``--experiments NAMESPACE`` one watch of the namespace that opens and
retires lanes as Experiments are added and deleted. Everything is closed in reverse order
of opening. A server
adapter (`abrouter.router.http.server`, `abrouter.router.grpc.h2server` or `.server`) serves with the
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
from abrouter.router.eventlog.hub import EventLogHub
from abrouter.router.eventlog.log import EventLog
from abrouter.router.metrics import ProxyMetrics
from abrouter.router.routing import RoutingTable
from abrouter.router.settings import ServeSettings
from abrouter.router.shadow import ShadowPool
from abrouter.router.sources.base import Access, Removed, SpecSource, access, follow, offer
from abrouter.router.state import Lane, Lanes, Router, apply_spec, refuse_overlap, request_ids, upstream_timeouts
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
        metrics = ProxyMetrics()
        hub = EventLogHub(settings.redis_url) if settings.event_log else None

        async def close_all() -> None:
            try:
                for lane in opened.values():
                    await _close_lane(lane, shared=transport)
            finally:
                if hub is not None:  # after every lane's final flush (retired lanes' too)
                    await hub.aclose()

        stack.push_async_callback(close_all)  # runs last: the final flush of every event log
        for experiment in initial:
            opened[experiment.name] = await _open_lane(experiment, settings, transport, metrics, hub)
        lanes = Lanes(opened.values())
        router = Router(
            lanes=lanes, metrics=metrics, guard=ConnectionGuard(settings.client_limits), api_token=settings.api_token
        )
        tasks = [
            asyncio.create_task(follow(src, functools.partial(apply_spec, router, name), router.lane(name).source))
            for name, src in followed.items()
        ]
        if catalog is not None:
            tasks.append(asyncio.create_task(_follow_catalog(catalog, router, settings, transport, opened, hub)))
        try:
            yield router
        finally:
            for task in tasks:
                task.cancel()
            for task in tasks:
                with contextlib.suppress(asyncio.CancelledError):
                    await task


async def _open_lane(
    experiment: Experiment,
    settings: ServeSettings,
    transport: Transport | None,
    metrics: ProxyMetrics,
    hub: EventLogHub | None,
) -> Lane:
    eventlog: EventLog | DisabledEventLog = DisabledEventLog()
    if hub is not None:
        eventlog = EventLog(
            redis_url=settings.redis_url,
            experiment=experiment,
            spill_dir=settings.spill_dir,
            flush_interval_s=settings.flush_interval_s,
            max_events=settings.max_buffered_events,
            shards=settings.shards,
            hub=hub,
        )
    table = RoutingTable(experiment=experiment, since=time.time())
    eventlog.register_epoch(table.epoch, table.weights_by_name(), table.since)
    await eventlog.start()
    t = transport or make_transport(settings.upstream_transport, upstream_timeouts(experiment))
    lane = Lane(table=table, eventlog=eventlog, ids=request_ids(settings.secret, experiment), transport=t)
    lane.shadows = ShadowPool(experiment=experiment.name, transport=t, eventlog=eventlog, metrics=metrics)  # [shadow]
    lane.shadows.start()
    return lane


async def _close_lane(lane: Lane, *, shared: Transport | None) -> None:
    try:
        if lane.shadows is not None:
            await lane.shadows.close()  # before the transport it sends through
        if lane.transport is not shared:
            await lane.transport.close()
    finally:  # and the final flush happens
        await lane.eventlog.close()


async def _follow_catalog(
    catalog: CatalogSource,
    router: Router,
    settings: ServeSettings,
    shared: Transport | None,
    opened: dict[str, Lane],
    hub: EventLogHub | None,
) -> None:
    """Experiments added, changed and deleted in a namespace, applied live (`sources.catalog`)."""
    following = _Following(router, settings, shared, opened, hub, where=catalog.name)
    try:
        async for update in catalog.updates():
            if isinstance(update, Access):
                access(update, router.source, where=catalog.name)
            elif isinstance(update, Removed):
                following.remove(update.name)
            else:
                await following.offer(update.name, update.spec)
            await following.retry_waiting()
    finally:
        await following.close()


class _Following:
    """The experiments of a namespace as the router serves them; see `_follow_catalog`.

    An experiment whose match overlaps a served one's waits (logged, and shown at
    /abrouter/experiment) and is served once the overlap is gone. A deleted one stops
    being routed at once; its lane closes after its requests in flight could finish.
    """

    def __init__(
        self,
        router: Router,
        settings: ServeSettings,
        shared: Transport | None,
        opened: dict[str, Lane],
        hub: EventLogHub | None,
        *,
        where: str,
    ) -> None:
        self.router, self.settings, self.shared, self.opened, self.where = router, settings, shared, opened, where
        self.hub = hub
        #: Valid experiments not served because their match overlaps a served one's.
        self.waiting: dict[str, Experiment] = {}
        self.retiring: set[asyncio.Task[None]] = set()

    async def offer(self, name: str, spec: Experiment | ConfigError) -> None:
        where = f"{self.where}/{name}"
        if name in self.opened:
            offer(spec, functools.partial(apply_spec, self.router, name), self.opened[name].source, where=where)
        elif isinstance(spec, Experiment):
            self.waiting.pop(name, None)
            await self._add(spec)
        else:
            self.waiting.pop(name, None)
            log.error("%s: not served: %s", where, spec)

    async def _add(self, experiment: Experiment) -> bool:
        try:
            refuse_overlap(self.router.lanes, experiment)
        except ConfigError as exc:
            problem = f"{self.where}/{experiment.name}: not served while its match overlaps: {exc}"
            if experiment.name not in self.waiting:
                log.error("%s", problem)
            self.waiting[experiment.name] = experiment
            self.router.source.last_error = problem
            return False
        lane = await _open_lane(experiment, self.settings, self.shared, self.router.metrics, self.hub)
        self.opened[experiment.name] = lane
        self.router.lanes = Lanes([*self.router.lanes, lane])
        log.info("experiment %s added: %s", experiment.name, self.router.lanes.gateway.describe())
        return True

    def remove(self, name: str) -> None:
        self.waiting.pop(name, None)
        lane = self.opened.pop(name, None)
        if lane is None:
            return
        self.router.lanes = Lanes(x for x in self.router.lanes if x is not lane)
        log.info("experiment %s deleted: no longer served", name)
        task = asyncio.create_task(_retire(lane, self.shared))
        self.retiring.add(task)
        task.add_done_callback(self.retiring.discard)

    async def retry_waiting(self) -> None:
        for name, experiment in list(self.waiting.items()):
            if await self._add(experiment):
                del self.waiting[name]
        if not self.waiting and self.router.source.access_error is None:
            self.router.source.last_error = None

    async def close(self) -> None:
        for task in list(self.retiring):
            task.cancel()
        for task in list(self.retiring):
            with contextlib.suppress(asyncio.CancelledError):
                await task


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
