"""What the event log reports about itself, for /abrouter/metrics and /abrouter/readyz."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class EventLogStats:
    """A snapshot for /metrics and /readyz. Counts are events unless named otherwise."""

    buffered: int  # in memory, not yet acknowledged by Redis
    spilled: int  # in this producer's spill file, waiting for Redis
    dropped: int  # lost: Redis down and the spill file could not be written
    flush_failures: int  # flush rounds that could not deliver everything to Redis
    flushed_batches: int  # batches Redis acknowledged (applied or already applied)
    repeated_outcomes: int  # not counted: their event_id was already in this batch or in Redis
    quarantined: int  # set aside in the quarantine file: the script refused their batch
    redis_up: bool
