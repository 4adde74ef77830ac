"""What `abrouter serve --workers N` needs to be one router to its users. Pure: no I/O.

Each worker process writes a `Snapshot` of its counters every `SNAPSHOT_INTERVAL_S`
(`abrouter.router.workerfiles` does the writing); the reserved endpoints of any worker
combine its own live snapshot with the others' latest:

- `/abrouter/metrics` renders `total(...)`: counters, histograms and gauges summed over
  the workers, as one Prometheus target. A worker that died keeps counting through its
  last snapshot, folded by the supervisor into one sum of the retired workers (`retire`),
  with its gauges at zero, so the summed counters do not drop when a worker is restarted
  (except for what it counted in its last half second).
- `/abrouter/readyz` is ready only while every worker has a fresh snapshot (`missing`).
"""

from __future__ import annotations

import dataclasses
import json
import math
from collections import defaultdict
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from abrouter.router.connections import ConnectionGuard
from abrouter.router.eventlog.stats import EventLogStats
from abrouter.router.metrics import BUCKETS_S, ProxyMetrics, _Histogram

#: How often a worker writes its snapshot.
SNAPSHOT_INTERVAL_S = 0.5
#: A worker whose snapshot is older than this is not serving (a loaded machine may stall a
#: worker's loop for a second or two; readiness must not flap for that).
STALE_AFTER_S = 5.0
#: Restart backoff after a worker dies: doubled per quick death, up to the cap.
BACKOFF_FIRST_S = 0.5
BACKOFF_MAX_S = 10.0
#: A worker that lived this long resets the backoff.
BACKOFF_RESET_AFTER_S = 10.0


@dataclass(frozen=True)
class WorkerSlot:
    """Which worker this process is, of how many, and where the workers' snapshots live."""

    index: int
    count: int
    directory: Path


@dataclass(frozen=True)
class Connections:
    """A connection guard's numbers."""

    open: int = 0
    refused: int = 0
    timeouts: Mapping[str, int] = field(default_factory=dict)


@dataclass(frozen=True)
class Snapshot:
    """One worker's counters at `written` (Unix time)."""

    worker: int
    pid: int
    written: float
    metrics: ProxyMetrics
    eventlog: EventLogStats
    connections: Connections
    #: In the sum of retired workers only: the processes it includes (their own files no longer count).
    retired_pids: tuple[int, ...] = ()


def parse_count(text: str, *, cpus: int) -> int:
    """The value of `--workers` (or ABROUTER_WORKERS): a positive integer, or "auto" (`cpus`)."""
    value = text.strip().lower()
    if value == "auto":
        return max(1, cpus)
    try:
        n = int(value)
    except ValueError:
        raise ValueError(f"--workers must be a positive integer or 'auto', got {text!r}") from None
    if n < 1:
        raise ValueError(f"--workers must be >= 1 (or 'auto'), got {n}")
    return n


def backoff_s(quick_deaths: int) -> float:
    """How long to wait before restarting a worker that died `quick_deaths` times in a row,
    each within `BACKOFF_RESET_AFTER_S` of its start: 0.5 s, 1 s, 2 s, ... up to `BACKOFF_MAX_S`."""
    return min(BACKOFF_MAX_S, BACKOFF_FIRST_S * (1 << max(0, min(quick_deaths - 1, 16))))


def connections_of(guard: ConnectionGuard) -> Connections:
    return Connections(
        open=guard.open, refused=guard.refused, timeouts={phase.value: n for phase, n in guard.timeouts.items()}
    )


def missing(
    slot: WorkerSlot, live: Mapping[int, Snapshot], now: float, *, stale_after_s: float = STALE_AFTER_S
) -> list[int]:
    """The workers (by index) without a snapshot written in the last `stale_after_s`, this one excepted."""
    return [
        i for i in range(slot.count) if i != slot.index and (i not in live or now - live[i].written > stale_after_s)
    ]


def total(
    live: Iterable[Snapshot], retired: Iterable[Snapshot] = ()
) -> tuple[ProxyMetrics, EventLogStats, Connections]:
    """The sum over the workers: every counter and gauge of `live`, the counters of `retired`.

    `redis_up` holds only when it holds in every live worker; `data_incomplete_since` is
    the latest of the workers'.
    """
    live, retired = list(live), list(retired)
    m = ProxyMetrics()
    for s in (*live, *retired):
        _add_metrics(m, s.metrics)
    summed = sum_stats([s.eventlog for s in live], [s.eventlog for s in retired])
    timeouts: dict[str, int] = defaultdict(int)
    for s in (*live, *retired):
        for phase, n in s.connections.timeouts.items():
            timeouts[phase] += n
    conns = Connections(
        open=sum(s.connections.open for s in live),
        refused=sum(s.connections.refused for s in (*live, *retired)),
        timeouts=dict(timeouts),
    )
    return m, summed, conns


def retire(previous: Snapshot | None, dead: Snapshot) -> Snapshot:
    """The sum of retired workers with `dead` added: its counters, none of its gauges."""
    gone = [dead] if previous is None else [previous, dead]
    m, stats, conns = total([], gone)
    pids = (previous.retired_pids if previous else ()) + (dead.pid,)
    return Snapshot(
        worker=-1, pid=-1, written=dead.written, metrics=m, eventlog=stats, connections=conns, retired_pids=pids
    )


_SUMMED_STATS = tuple(
    f.name for f in dataclasses.fields(EventLogStats) if f.name not in ("redis_up", "data_incomplete_since")
)


def sum_stats(live: Sequence[EventLogStats], retired: Sequence[EventLogStats] = ()) -> EventLogStats:
    """Event logs' stats summed (the workers', or one process's experiments'): every counter
    and gauge of `live`, the counters of `retired`; `redis_up` only when it holds in every
    live one; `data_incomplete_since` the latest."""
    gone = [_counters_only(x) for x in retired]
    incomplete = [x.data_incomplete_since for x in live if x.data_incomplete_since is not None]
    return EventLogStats(
        **{f: sum(getattr(x, f) for x in (*live, *gone)) for f in _SUMMED_STATS},
        redis_up=bool(live) and all(x.redis_up for x in live),
        data_incomplete_since=max(incomplete) if incomplete else None,
    )


def _counters_only(stats: EventLogStats) -> EventLogStats:
    return dataclasses.replace(stats, buffered=0, spilled=0, spill_bytes=0)


def _add_metrics(into: ProxyMetrics, m: ProxyMetrics) -> None:
    for key, n in m.requests.items():
        into.requests[key] += n
    for key, n in m.errors.items():
        into.errors[key] += n
    for arm, h in m.latency.items():
        _add_histogram(into.latency[arm], h)
    for arm, h in m.first_byte.items():
        _add_histogram(into.first_byte[arm], h)
    for pair, n in m.outcomes.items():
        into.outcomes[pair] += n
    into.outcomes_rejected += m.outcomes_rejected
    into.no_experiment += m.no_experiment
    for reason, n in m.bad_requests.items():
        into.bad_requests[reason] += n
    for key, n in m.shadow.items():  # [shadow]
        into.shadow[key] += n
    for pair, n in m.shadow_dropped.items():
        into.shadow_dropped[pair] += n


def _add_histogram(into: _Histogram, h: _Histogram) -> None:
    into.counts = [a + b for a, b in zip(into.counts, h.counts)]
    into.total += h.total
    into.n += h.n


# --- the snapshot file's JSON -------------------------------------------------------------


def to_json(s: Snapshot) -> str:
    m = s.metrics
    return json.dumps(
        {
            "worker": s.worker,
            "pid": s.pid,
            "written": s.written,
            "requests": [[e, v, c, n] for (e, v, c), n in m.requests.items()],
            "errors": [[e, v, r, n] for (e, v, r), n in m.errors.items()],
            "latency": [[e, v, _histogram_json(h)] for (e, v), h in m.latency.items()],
            "first_byte": [[e, v, _histogram_json(h)] for (e, v), h in m.first_byte.items()],
            "outcomes": [[e, metric, n] for (e, metric), n in m.outcomes.items()],
            "outcomes_rejected": m.outcomes_rejected,
            "no_experiment": m.no_experiment,
            "bad_requests": dict(m.bad_requests),
            "shadow": [[e, v, r, n] for (e, v, r), n in m.shadow.items()],
            "shadow_dropped": [[e, reason, n] for (e, reason), n in m.shadow_dropped.items()],
            "eventlog": dataclasses.asdict(s.eventlog),
            "connections": dataclasses.asdict(s.connections),
            "retired_pids": list(s.retired_pids),
        }
    )


def from_json(text: str) -> Snapshot:
    """The snapshot in `text` (ValueError, KeyError or TypeError when it is not one)."""
    d = json.loads(text)
    m = ProxyMetrics()
    for e, v, c, n in d["requests"]:
        m.requests[(str(e), str(v), str(c))] = int(n)
    for e, v, r, n in d["errors"]:
        m.errors[(str(e), str(v), str(r))] = int(n)
    for e, v, h in d["latency"]:
        m.latency[(str(e), str(v))] = _histogram_of(h)
    for e, v, h in d["first_byte"]:
        m.first_byte[(str(e), str(v))] = _histogram_of(h)
    for e, metric, n in d["outcomes"]:
        m.outcomes[(str(e), str(metric))] = int(n)
    m.outcomes_rejected = int(d["outcomes_rejected"])
    m.no_experiment = int(d["no_experiment"])
    for reason, n in d["bad_requests"].items():
        m.bad_requests[str(reason)] = int(n)
    for e, v, r, n in d.get("shadow", ()):  # [shadow] absent in a snapshot of an older worker
        m.shadow[(str(e), str(v), str(r))] = int(n)
    for e, reason, n in d.get("shadow_dropped", ()):
        m.shadow_dropped[(str(e), str(reason))] = int(n)
    conns = d["connections"]
    return Snapshot(
        worker=int(d["worker"]),
        pid=int(d["pid"]),
        written=float(d["written"]),
        metrics=m,
        eventlog=EventLogStats(**d["eventlog"]),
        connections=Connections(
            open=int(conns["open"]),
            refused=int(conns["refused"]),
            timeouts={str(k): int(n) for k, n in conns["timeouts"].items()},
        ),
        retired_pids=tuple(int(p) for p in d.get("retired_pids", ())),
    )


def _histogram_json(h: _Histogram) -> dict[str, Any]:
    return {"counts": h.counts, "total": h.total, "n": h.n}


def _histogram_of(d: Mapping[str, Any]) -> _Histogram:
    counts = [int(c) for c in d["counts"]]
    if len(counts) != len(BUCKETS_S) + 1 or not math.isfinite(float(d["total"])):
        raise ValueError("histogram of another bucket layout")
    return _Histogram(counts=counts, total=float(d["total"]), n=int(d["n"]))
