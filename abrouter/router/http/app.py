"""Builds the aiohttp application and owns the lifecycles of its long-lived parts.

One upstream transport, one event log (with its Redis client) and one weights watcher
per app, created in `cleanup_ctx` and closed in reverse order on shutdown. aiohttp stops
accepting, lets in-flight requests finish, and only then runs the cleanups, so the
event log's final flush sees every request that was answered.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from aiohttp import web

from abrouter.contract.experiment import Experiment
from abrouter.router.eventlog.events import Exposure, Outcome
from abrouter.router.eventlog.log import EventLog, EventLogStats, EventLogUnavailable
from abrouter.router.http import api
from abrouter.router.http.proxy import ROUTER, Router, handle
from abrouter.router.requestid import RequestIds
from abrouter.router.routing import RoutingTable, next_table
from abrouter.router.sources.file import SourceStatus, WeightsSource
from abrouter.router.upstream.httpclient import HttptoolsTransport
from abrouter.router.upstream.transport import AiohttpTransport, TimeoutConfig, Transport

log = logging.getLogger("abrouter")


@dataclass(frozen=True)
class ServeSettings:
    redis_url: str
    spill_dir: Path
    #: Seconds between event-log flushes to Redis.
    flush_interval_s: float = 0.25
    #: Events held in memory before a flush is forced.
    max_buffered_events: int = 50_000
    #: Shared by all replicas so any of them accepts request ids issued by another;
    #: from ABROUTER_SECRET. Without it ids are checked for integrity only.
    secret: bytes = b""
    #: False runs a plain proxy that records nothing (to measure the event log's cost).
    event_log: bool = True
    #: The upstream client: "aiohttp" (`AiohttpTransport`, the default until the other has
    #: run in production) or "httptools" (`router.httpclient.HttptoolsTransport`, ~1.6x the
    #: requests per core in bench/README.md).
    upstream_transport: Literal["aiohttp", "httptools"] = "aiohttp"


class DisabledEventLog:
    """The event log's interface, recording nothing: `abrouter serve --no-event-log`."""

    stats = EventLogStats(
        buffered=0,
        spilled=0,
        dropped=0,
        flush_failures=0,
        flushed_batches=0,
        repeated_outcomes=0,
        quarantined=0,
        redis_up=False,
    )

    def record_exposure(self, e: Exposure) -> None:
        pass

    def record_outcome(self, o: Outcome) -> bool:
        return True

    def register_epoch(self, epoch: int, weights: dict[str, float], since: float) -> None:
        pass

    def update_experiment(self, experiment: Experiment) -> None:
        pass

    async def lookup_units(self, unit_hashes: list[str]) -> dict[str, tuple[int, str] | None]:
        raise EventLogUnavailable("the event log is disabled (--no-event-log)")

    async def start(self) -> None:
        pass

    async def close(self) -> None:
        pass


#: The value k8s/kustomization.yaml ships with, to be replaced before any real deployment.
PLACEHOLDER_SECRET = b"replace-me-with-openssl-rand-hex-32"


def secret_from_env() -> bytes:
    return os.environ.get("ABROUTER_SECRET", "").encode()


def secret_problem(secret: bytes) -> str | None:
    """Why request ids could be forged with this secret, or None."""
    advice = (
        "anyone can forge request ids and credit outcomes to a variant; set it to the same random "
        "value on every replica (e.g. openssl rand -hex 32)"
    )
    if not secret:
        return f"ABROUTER_SECRET is not set: {advice}"
    if secret == PLACEHOLDER_SECRET:
        return f"ABROUTER_SECRET is the placeholder from k8s/kustomization.yaml: {advice}"
    return None


def build_app(
    experiment: Experiment,
    settings: ServeSettings,
    *,
    source: WeightsSource | None = None,
    transport: Transport | None = None,
) -> web.Application:
    app = web.Application(client_max_size=4 * 1024 * 1024)
    status = source.status if source is not None else SourceStatus()

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
            table=table, transport=t, eventlog=eventlog, ids=request_ids(settings, experiment), source=status
        )
        watcher = asyncio.create_task(source.run(lambda e: apply_spec(app[ROUTER], e))) if source else None
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

    app.cleanup_ctx.append(lifecycle)
    api.add_routes(app)
    app.router.add_route("*", "/{tail:.*}", handle)
    return app


def upstream_timeouts(experiment: Experiment) -> TimeoutConfig:
    return TimeoutConfig(experiment.timeouts.connect_s, experiment.timeouts.read_s)


def make_transport(kind: str, timeouts: TimeoutConfig) -> Transport:
    if kind == "aiohttp":
        return AiohttpTransport(timeouts)
    if kind == "httptools":
        return HttptoolsTransport(timeouts)
    raise ValueError(f"upstream_transport must be 'aiohttp' or 'httptools', got {kind!r}")


def request_ids(settings: ServeSettings, experiment: Experiment) -> RequestIds:
    """Ids are bound to the experiment and its variant list: an id issued before a restart
    that changed the variants is unknown, never credited to whichever variant took its index."""
    names = ",".join(v.name for v in experiment.variants)
    return RequestIds(b"\0".join([settings.secret, experiment.name.encode(), names.encode()]))


def apply_spec(router: Router, experiment: Experiment) -> None:
    """Switch to a changed spec (raises ReloadRejected to keep the old one)."""
    table = next_table(router.table, experiment, now=time.time())
    if table is router.table:
        return
    router.eventlog.update_experiment(experiment)
    if experiment.timeouts != router.table.experiment.timeouts:
        router.transport.set_timeouts(upstream_timeouts(experiment))
    if table.epoch != router.table.epoch:
        router.eventlog.register_epoch(table.epoch, table.weights_by_name(), table.since)
        log.info("weights epoch %d: %s", table.epoch, table.weights_by_name())
    router.table = table
