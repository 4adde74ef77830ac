"""`Router`: what one router process serves with, shared by every server adapter.

Also `apply_spec`, the switch to a reloaded spec, which every weights source feeds.
No server framework here.
"""

from __future__ import annotations

import logging
import os
import random
import time
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field

from abrouter.contract.experiment import Experiment
from abrouter.router.connections import ConnectionGuard, Limits
from abrouter.router.eventlog.disabled import DisabledEventLog
from abrouter.router.eventlog.log import EventLog
from abrouter.router.eventlog.stats import EventLogStats
from abrouter.router.exchange import Incoming
from abrouter.router.matching import Gateway, ModelAt
from abrouter.router.metrics import ProxyMetrics
from abrouter.router.requestid import RequestIds
from abrouter.router.routing import RoutingTable, next_table
from abrouter.router.shadow import ShadowPool
from abrouter.router.sources.base import SourceStatus
from abrouter.router.upstream.transport import TimeoutConfig, Transport
from abrouter.router.workers import WorkerSlot, sum_stats

log = logging.getLogger("abrouter")


@dataclass
class Lane:
    """One experiment this router serves: its routing table, event log, request ids and
    upstream transport (its own pool and timeouts), and how its spec's reloads went."""

    table: RoutingTable
    eventlog: EventLog | DisabledEventLog
    ids: RequestIds
    transport: Transport
    source: SourceStatus = field(default_factory=SourceStatus)
    #: [shadow] The copies for the experiment's shadow variants and their workers (None: nothing is copied).
    shadows: ShadowPool | None = None

    @property
    def name(self) -> str:
        return self.table.experiment.name


class Lanes:
    """The experiments served, by name, and the `Gateway` over their matches.

    Replaced whole (`with_lane`, `without`) rather than changed in place, so a request
    always routes over one consistent set.
    """

    __slots__ = ("by_name", "gateway")

    def __init__(self, lanes: Iterable[Lane]) -> None:
        self.by_name: dict[str, Lane] = {lane.name: lane for lane in lanes}
        self.gateway = Gateway(
            {name: lane.table.experiment.match for name, lane in self.by_name.items()},
            rewrites=any(v.model is not None for lane in self.by_name.values() for v in lane.table.experiment.variants),
        )

    def route(
        self, incoming: Incoming, body: bytes | None, model: ModelAt | None = None
    ) -> tuple[Lane, ModelAt | None] | None:
        found = self.gateway.find(incoming.target, incoming.headers, body, model=model)
        if found is None:
            return None
        return self.by_name[found[0]], found[1]

    def __iter__(self) -> Iterator[Lane]:
        return iter(self.by_name.values())

    def __len__(self) -> int:
        return len(self.by_name)

    @property
    def only(self) -> Lane | None:
        """The one experiment, when the router serves exactly one."""
        return next(iter(self.by_name.values())) if len(self.by_name) == 1 else None


@dataclass
class Router:
    lanes: Lanes
    metrics: ProxyMetrics = field(default_factory=ProxyMetrics)
    #: The namespace's source under ``--experiments NAMESPACE`` (access errors); each lane has its own.
    source: SourceStatus = field(default_factory=SourceStatus)
    rng: random.Random = field(default_factory=lambda: random.Random(os.urandom(16)))
    #: The client connections of every listener of this process: deadlines and the cap.
    guard: ConnectionGuard = field(default_factory=lambda: ConnectionGuard(Limits()))
    #: From ABROUTER_API_TOKEN: the bearer token of the outcome and admin endpoints (empty: none).
    api_token: bytes = field(default=b"", repr=False)
    #: Under `abrouter serve --workers N` (N > 1): which worker this process is (None: the only one).
    workers: WorkerSlot | None = None

    def lane(self, name: str) -> Lane:
        return self.lanes.by_name[name]

    def eventlog_stats(self) -> EventLogStats:
        """The event logs of every experiment, summed."""
        return sum_stats([lane.eventlog.stats for lane in self.lanes])

    @property
    def event_logging(self) -> bool:
        """False under --no-event-log."""
        return not all(isinstance(lane.eventlog, DisabledEventLog) for lane in self.lanes)


def upstream_timeouts(experiment: Experiment) -> TimeoutConfig:
    return TimeoutConfig(experiment.timeouts.connect_s, experiment.timeouts.read_s)


def request_ids(secret: bytes, experiment: Experiment) -> RequestIds:
    """Ids are bound to the experiment and its variant list: an id issued before a restart
    that changed the variants is unknown, never credited to whichever variant took its index."""
    names = ",".join(v.name for v in experiment.variants)
    return RequestIds(b"\0".join([secret, experiment.name.encode(), names.encode()]))


def apply_spec(router: Router, name: str, experiment: Experiment) -> None:
    """Switch experiment `name` to a changed spec (raises ReloadRejected, or ConfigError for
    a match that overlaps another experiment's, to keep the old one)."""
    lane = router.lane(name)
    old = lane.table.experiment
    table = next_table(lane.table, experiment, now=time.time())
    if table is lane.table:
        return
    reroutes = experiment.match != old.match or _rewrites(experiment) != _rewrites(old)
    if reroutes:
        refuse_overlap(router.lanes, experiment)  # before anything changed
    lane.eventlog.update_experiment(experiment)
    if experiment.timeouts != old.timeouts:
        lane.transport.set_timeouts(upstream_timeouts(experiment))
    if table.epoch != lane.table.epoch:
        lane.eventlog.register_epoch(table.epoch, table.weights_by_name(), table.since)
        log.info("%s: weights epoch %d: %s", name, table.epoch, table.weights_by_name())
    lane.table = table
    if reroutes:
        router.lanes = Lanes(router.lanes)  # a new gateway over the same lanes


def refuse_overlap(lanes: Lanes, experiment: Experiment) -> None:
    """ConfigError naming both when `experiment`'s match is another served experiment's."""
    matches = {lane.name: lane.table.experiment.match for lane in lanes}
    Gateway({**matches, experiment.name: experiment.match})


def _rewrites(experiment: Experiment) -> tuple[str | None, ...]:
    return tuple(v.model for v in experiment.variants)
