"""`abrouter.router.workers`, without sockets or processes: the flag, the backoff, the sums, readiness."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest

from abrouter.router import workerfiles, workers
from abrouter.router.connections import ConnectionGuard, Limits, Phase
from abrouter.router.eventlog.disabled import DisabledEventLog
from abrouter.router.eventlog.stats import EventLogStats
from abrouter.router.metrics import ProxyMetrics, render
from abrouter.router.workers import Connections, Snapshot, WorkerSlot


def stats(**changes: object) -> EventLogStats:
    """An event log's stats: all zero (as `DisabledEventLog`'s), Redis up, and `changes`."""
    return dataclasses.replace(DisabledEventLog.stats, **{"redis_up": True, **changes})  # type: ignore[arg-type]


def metrics(requests: int, *, variant: str = "control", seconds: float = 0.003) -> ProxyMetrics:
    m = ProxyMetrics()
    for _ in range(requests):
        m.observe_request("exp", variant, 200, seconds, None, first_byte_s=seconds / 2)
    m.observe_request("exp", variant, 502, 0.2, "refused")
    m.outcomes[("exp", "conversion")] += requests
    m.outcomes_rejected += 1
    m.bad_requests["malformed"] += 1
    m.shadow[("exp", "next", "sent")] += requests  # [shadow]
    m.shadow_dropped[("exp", "queue_full")] += 1
    return m


def snapshot(worker: int, *, written: float = 100.0, requests: int = 3, **stat_changes: object) -> Snapshot:
    return Snapshot(
        worker=worker,
        pid=1000 + worker,
        written=written,
        metrics=metrics(requests),
        eventlog=stats(**stat_changes),
        connections=Connections(open=2, refused=1, timeouts={"header": 1, "body": 0, "idle": 4}),
    )


@pytest.mark.parametrize("text, n", [("1", 1), ("4", 4), (" 2 ", 2), ("auto", 6), ("AUTO", 6)])
def test_the_flag_takes_a_positive_count_or_auto(text: str, n: int):
    assert workers.parse_count(text, cpus=6) == n


@pytest.mark.parametrize(
    "text, message",
    [("0", "--workers must be >= 1 (or 'auto'), got 0"), ("-3", "got -3"), ("x", "--workers must be a positive")],
)
def test_a_bad_count_names_the_flag(text: str, message: str):
    with pytest.raises(ValueError, match="--workers") as caught:
        workers.parse_count(text, cpus=6)
    assert message in str(caught.value)


def test_backoff_doubles_from_half_a_second_to_a_cap():
    assert [workers.backoff_s(n) for n in (1, 2, 3, 4)] == [0.5, 1.0, 2.0, 4.0]
    assert workers.backoff_s(6) == workers.backoff_s(1000) == workers.BACKOFF_MAX_S


def test_total_sums_counters_histograms_and_gauges_over_live_workers():
    m, s, conns = workers.total(
        [snapshot(0, requests=3, buffered=5, spilled=1, dropped=2), snapshot(1, requests=4, buffered=7, spilled=3)]
    )
    assert m.requests == {("exp", "control", "2xx"): 7, ("exp", "control", "5xx"): 2}
    assert m.errors == {("exp", "control", "refused"): 2}
    assert m.latency[("exp", "control")].counts == [
        0,
        0,
        7,
        0,
        0,
        0,
        0,
        2,
        0,
        0,
        0,
        0,
        0,
        0,
    ]  # 3 ms: le 5 ms; 0.2 s: le 0.25 s
    assert m.first_byte[("exp", "control")].n == 7
    assert m.outcomes == {("exp", "conversion"): 7} and m.outcomes_rejected == 2 and m.bad_requests == {"malformed": 2}
    assert (s.buffered, s.spilled, s.dropped, s.redis_up) == (12, 4, 2, True)
    assert conns == Connections(open=4, refused=2, timeouts={"header": 2, "body": 0, "idle": 8})


def test_a_retired_worker_keeps_its_counters_and_drops_its_gauges():
    m, s, conns = workers.total([snapshot(0, requests=3)], [snapshot(1, requests=10, buffered=9, dropped=1)])
    assert m.requests[("exp", "control", "2xx")] == 13
    assert (s.buffered, s.dropped) == (0, 1)
    assert (conns.open, conns.refused) == (2, 2)


def test_redis_is_up_only_when_up_in_every_live_worker():
    assert workers.total([snapshot(0), snapshot(1, redis_up=False)])[1].redis_up is False
    assert workers.total([snapshot(0)], [snapshot(1, redis_up=False)])[1].redis_up is True
    latest = workers.total([snapshot(0, data_incomplete_since=5.0), snapshot(1, data_incomplete_since=9.0)])[1]
    assert latest.data_incomplete_since == 9.0


def test_the_sum_of_one_renders_as_that_worker_alone():
    one = snapshot(0)
    m, _, _ = workers.total([one])
    assert render(m, labels={"experiment": "e"}, extra={}) == render(one.metrics, labels={"experiment": "e"}, extra={})


def test_a_snapshot_survives_its_json():
    guard = ConnectionGuard(Limits())
    assert guard.admit() and guard.admit()
    guard.timeouts[Phase.IDLE] += 3
    s = dataclasses.replace(snapshot(1, buffered=4, spill_bytes=99), connections=workers.connections_of(guard))
    back = workers.from_json(workers.to_json(s))
    assert back == s
    assert back.connections == Connections(open=2, refused=0, timeouts={"header": 0, "body": 0, "idle": 3})
    with pytest.raises((ValueError, KeyError, TypeError)):
        workers.from_json('{"worker": 1}')


def test_ready_only_while_every_other_worker_has_a_fresh_snapshot(tmp_path: Path):
    slot = WorkerSlot(index=0, count=3, directory=tmp_path)
    fresh = {1: snapshot(1, written=100.0), 2: snapshot(2, written=99.0)}
    assert workers.missing(slot, fresh, now=101.0) == []
    assert workers.missing(slot, {1: fresh[1]}, now=101.0) == [2]
    assert workers.missing(slot, fresh, now=99.0 + workers.STALE_AFTER_S + 0.5) == [2]
    assert workers.missing(slot, {}, now=0.0) == [1, 2]  # this worker itself is serving: it answers


def test_a_dead_workers_counters_move_to_the_retired_sum_at_once(tmp_path: Path):
    workerfiles.write(tmp_path, snapshot(0, requests=3))
    workerfiles.write(tmp_path, snapshot(1, requests=4))
    (tmp_path / "worker-9.json").write_text("half a snap")  # unreadable: skipped
    live, retired = workerfiles.read(tmp_path)
    assert sorted(live) == [0, 1] and retired == []

    workerfiles.retire(tmp_path, 1, pid=1001)
    workerfiles.retire(tmp_path, 1, pid=1001)  # again: nothing more
    live, retired = workerfiles.read(tmp_path)
    assert sorted(live) == [0] and [r.retired_pids for r in retired] == [(1001,)]
    assert workers.total(live.values(), retired)[0].requests[("exp", "control", "2xx")] == 7

    # The restarted worker (a new pid) counts afresh beside what its predecessor counted.
    workerfiles.write(tmp_path, dataclasses.replace(snapshot(1, requests=2), pid=2001))
    workerfiles.retire(tmp_path, 0, pid=4242)  # not the pid that wrote worker 0's file: kept
    live, retired = workerfiles.read(tmp_path)
    assert sorted(live) == [0, 1]
    assert workers.total(live.values(), retired)[0].requests[("exp", "control", "2xx")] == 9


def test_a_retired_file_wins_over_a_live_file_of_the_same_pid(tmp_path: Path):
    """The moment between the supervisor's two steps: the sum names the pid, its file is still there."""
    dead = snapshot(1, requests=4)
    workerfiles.write(tmp_path, dead)
    (tmp_path / workerfiles.RETIRED).write_text(workers.to_json(workers.retire(None, dead)))
    live, retired = workerfiles.read(tmp_path)
    assert live == {} and workers.total(live.values(), retired)[0].requests[("exp", "control", "2xx")] == 4
