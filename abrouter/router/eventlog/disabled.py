"""`DisabledEventLog`: the event log's interface, recording nothing (`serve --no-event-log`)."""

from __future__ import annotations

from collections.abc import Mapping, Sequence

from abrouter.contract.experiment import Experiment
from abrouter.router.errors import EventLogUnavailable
from abrouter.router.eventlog.events import Exposure, Outcome
from abrouter.router.eventlog.stats import EventLogStats


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

    def register_epoch(self, epoch: int, weights: Mapping[str, float], since: float) -> None:
        pass

    def update_experiment(self, experiment: Experiment) -> None:
        pass

    async def lookup_units(self, unit_hashes: Sequence[str]) -> dict[str, tuple[int, str] | None]:
        raise EventLogUnavailable("the event log is disabled (--no-event-log)")

    async def start(self) -> None:
        pass

    async def close(self) -> None:
        pass
