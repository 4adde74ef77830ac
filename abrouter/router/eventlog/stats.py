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
    #: Times this process found Redis had lost the experiment's data (restarted empty).
    redis_resets: int = 0
    #: Unix time since which Redis holds the experiment's data, after such a loss.
    data_incomplete_since: float | None = None
    #: Events lost because the spill file reached its size cap (also counted in dropped).
    spill_full_dropped: int = 0
    #: Bytes in this producer's spill file.
    spill_bytes: int = 0
    #: Events in batches Redis acknowledged and later lost (it came back with older data
    #: or empty) that were no longer retained for re-sending.
    lost_events: int = 0
    #: Events not logged because too many waited for a Redis that could not keep up
    #: (also counted in dropped).
    shed: int = 0
