"""`Router`: what one router process serves with, shared by every server adapter.

Also `apply_spec`, the switch to a reloaded spec, which every weights source feeds.
No server framework here.
"""

from __future__ import annotations

import logging
import os
import random
import time
from dataclasses import dataclass, field

from abrouter.contract.experiment import Experiment
from abrouter.router.connections import ConnectionGuard, Limits
from abrouter.router.eventlog.disabled import DisabledEventLog
from abrouter.router.eventlog.log import EventLog
from abrouter.router.metrics import ProxyMetrics
from abrouter.router.requestid import RequestIds
from abrouter.router.routing import RoutingTable, next_table
from abrouter.router.shadow import ShadowPool
from abrouter.router.sources.base import SourceStatus
from abrouter.router.upstream.transport import TimeoutConfig, Transport
from abrouter.router.workers import WorkerSlot

log = logging.getLogger("abrouter")


@dataclass
class Router:
    table: RoutingTable
    transport: Transport
    eventlog: EventLog | DisabledEventLog
    ids: RequestIds
    metrics: ProxyMetrics = field(default_factory=ProxyMetrics)
    source: SourceStatus = field(default_factory=SourceStatus)
    rng: random.Random = field(default_factory=lambda: random.Random(os.urandom(16)))
    #: The client connections of every listener of this process: deadlines and the cap.
    guard: ConnectionGuard = field(default_factory=lambda: ConnectionGuard(Limits()))
    #: From ABROUTER_API_TOKEN: the bearer token of the outcome and admin endpoints (empty: none).
    api_token: bytes = field(default=b"", repr=False)
    #: Under `abrouter serve --workers N` (N > 1): which worker this process is (None: the only one).
    workers: WorkerSlot | None = None
    #: [shadow] The copies for shadow variants and their workers (None: nothing is copied).
    shadows: ShadowPool | None = None


def upstream_timeouts(experiment: Experiment) -> TimeoutConfig:
    return TimeoutConfig(experiment.timeouts.connect_s, experiment.timeouts.read_s)


def request_ids(secret: bytes, experiment: Experiment) -> RequestIds:
    """Ids are bound to the experiment and its variant list: an id issued before a restart
    that changed the variants is unknown, never credited to whichever variant took its index."""
    names = ",".join(v.name for v in experiment.variants)
    return RequestIds(b"\0".join([secret, experiment.name.encode(), names.encode()]))


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
