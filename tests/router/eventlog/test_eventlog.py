"""The event log against a real Redis: exact aggregates, exactly-once, no loss in outages.

Every check compares what Redis holds with a straightforward recomputation, in Python,
from the raw events the test recorded (`expected_strata`).
"""

from __future__ import annotations

import asyncio
import dataclasses
import random
import time
from collections import defaultdict
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
import redis.asyncio
import redis.exceptions
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff

from abrouter.contract import experiment as model
from abrouter.contract import keys
from abrouter.router.errors import BatchRejected, EventLogError, EventLogUnavailable
from abrouter.router.eventlog import spill
from abrouter.router.eventlog.events import (
    Aggregator,
    Batch,
    Event,
    Exposure,
    Outcome,
    binary_metrics,
    decode_events,
    slow_ms,
)
from abrouter.router.eventlog.log import (
    APPLIED,
    DUPLICATE,
    GAP,
    EventLog,
    FlushScript,
)
from abrouter.router.redis_server import RedisServer, free_port

VARIANTS = ("control", "candidate")
#: The experiments' slow_request threshold: a request slower than this counts in slow_requests.
SLOW_MS = 100.0


def make_experiment(name: str, *, extra_metric: bool = False) -> model.Experiment:
    metrics = [{"name": "conversion", "kind": "binary"}, {"name": "revenue", "kind": "continuous"}]
    if extra_metric:
        metrics.append({"name": "clicks", "kind": "continuous"})
    return model.parse(
        {
            "name": name,
            "unit": {"header": "X-User-Id"},
            "metrics": metrics,
            "variants": [{"name": v, "upstream": f"http://{v}:8080", "weight": 50} for v in VARIANTS],
            "slow_request": f"{SLOW_MS:g}ms",
        }
    )


# ------------------------------------------------------------ the reference recomputation


@dataclass
class _Unit:
    n: int = 0
    x: dict[str, float] = field(default_factory=lambda: defaultdict(float))


def expected_strata(recorded: Iterable[Event], binary: frozenset[str]) -> dict[tuple[int, str], keys.StratumSums]:
    """The sufficient statistics, computed the obvious way from the raw events.

    Intent-to-treat: each unit is credited to the (epoch, variant) of its first exposure,
    with all its events; a unit also exposed to another variant is, besides, in the shadow
    stratum ``variant~mx`` (sums only, no event counts). An outcome whose event_id came
    earlier is not counted (all within the id window).
    """
    recorded = list(recorded)
    first: dict[str, tuple[int, str]] = {}
    multiple: set[str] = set()
    for ev in recorded:
        if isinstance(ev, Exposure):
            _, v0 = first.setdefault(ev.unit_hash, (ev.epoch, ev.variant))
            if ev.variant != v0:
                multiple.add(ev.unit_hash)
    units: dict[tuple[str, int, str], _Unit] = defaultdict(_Unit)
    counts: dict[tuple[int, str, str], int] = defaultdict(int)
    seen: set[str] = set()
    for ev in recorded:
        if isinstance(ev, Outcome) and ev.event_id is not None:
            if ev.event_id in seen:
                continue
            seen.add(ev.event_id)
        e, v = first.get(ev.unit_hash, (ev.epoch, ev.variant))
        u = units[(ev.unit_hash, e, v)]
        if isinstance(ev, Exposure):
            u.n += 1
            u.x["errors"] += float(ev.error)
            u.x["latency_ms"] += ev.latency_ms
            u.x["slow_requests"] += float(ev.latency_ms > SLOW_MS)
            counts[(e, v, "errors")] += 1
            counts[(e, v, "latency_ms")] += 1
            counts[(e, v, "slow_requests")] += 1
        else:
            u.x[ev.metric] = max(u.x[ev.metric], ev.value) if ev.metric in binary else u.x[ev.metric] + ev.value
            counts[(e, v, ev.metric)] += 1
    strata: dict[tuple[int, str], keys.StratumSums] = {}
    for (h, e, v), u in units.items():
        for variant in (v, v + "~mx") if h in multiple else (v,):
            s = strata.setdefault((e, variant), keys.StratumSums(epoch=e, variant=variant))
            s.units += u.n > 0
            s.exposures += u.n
            s.exposures_sq += u.n * u.n
            for m, x in u.x.items():
                s.metrics[m].sum += x
                s.metrics[m].sum_sq += x * x
                s.metrics[m].sum_xn += x * u.n
    for (e, v, m), count in counts.items():
        strata[(e, v)].metrics[m].events += count
    return strata


def assert_strata_equal(
    actual: dict[tuple[int, str], keys.StratumSums], expected: dict[tuple[int, str], keys.StratumSums]
) -> None:
    assert sorted(actual) == sorted(expected)
    for key, want in expected.items():
        got = actual[key]
        assert (got.units, got.exposures, got.exposures_sq) == (want.units, want.exposures, want.exposures_sq), key
        for m, w in want.metrics.items():
            g = got.metrics[m]
            assert g.events == w.events, (key, m)
            for stat in ("sum", "sum_sq", "sum_xn"):
                assert getattr(g, stat) == pytest.approx(getattr(w, stat), rel=1e-9, abs=1e-6), (key, m, stat)


async def read_strata(client: redis.asyncio.Redis, name: str) -> dict[tuple[int, str], keys.StratumSums]:
    return keys.decode_agg(await client.hgetall(keys.Keys(name).agg))


# ------------------------------------------------------------------ making events


def random_events(
    rng: random.Random,
    count: int,
    *,
    units: int = 40,
    epochs: tuple[int, ...] = (1, 2),
    metrics: tuple[str, ...] = ("conversion", "revenue"),
    prefix: str = "u",
    keyed: float = 0.0,
    event_ids: int = 50,
) -> list[Event]:
    """Random events; a share `keyed` of the outcomes carry one of `event_ids` ids, so repeat."""
    out: list[Event] = []
    exposed: set[str] = set()
    for i in range(count):
        unit, epoch, variant = f"{prefix}{rng.randrange(units)}", rng.choice(epochs), rng.choice(VARIANTS)
        # A unit's first event is an exposure: outcomes are credited to exposed units.
        if rng.random() < 0.6 or unit not in exposed:
            exposed.add(unit)
            out.append(
                Exposure(
                    request_id=f"r{i}",
                    unit_hash=unit,
                    variant=variant,
                    epoch=epoch,
                    ts=time.time(),
                    status=200,
                    latency_ms=rng.uniform(0.5, 250.0),
                    error=rng.random() < 0.1,
                )
            )
        else:
            metric = rng.choice(metrics)
            value = float(rng.random() < 0.5) if metric == "conversion" else round(rng.uniform(0, 100), 3)
            event_id = f"{prefix}ev{rng.randrange(event_ids)}" if rng.random() < keyed else None
            out.append(
                Outcome(
                    unit_hash=unit,
                    variant=variant,
                    epoch=epoch,
                    metric=metric,
                    value=value,
                    ts=time.time(),
                    event_id=event_id,
                )
            )
    return out


def record(log: EventLog, recorded: Iterable[Event]) -> None:
    for ev in recorded:
        if isinstance(ev, Exposure):
            log.record_exposure(ev)
        else:
            log.record_outcome(ev)


def down_url() -> str:
    return f"redis://127.0.0.1:{free_port()}/0"  # nothing listens there


MakeLog = Callable[..., Awaitable[EventLog]]


@pytest.fixture
async def make_log(tmp_path: Path, experiment_name: str) -> AsyncIterator[MakeLog]:
    """Build started EventLogs (closed at teardown if the test did not).

    Asks for `experiment_name` only to be torn down before it: a log that is still open
    when the keys are deleted would see its batches lost and re-send them.
    """
    logs: list[EventLog] = []

    async def make(url: str, experiment: model.Experiment, **options: Any) -> EventLog:
        options.setdefault("flush_interval_s", 60.0)  # tests flush explicitly unless they say otherwise
        log = EventLog(redis_url=url, experiment=experiment, spill_dir=tmp_path / "spill", **options)
        await log.start()
        logs.append(log)
        return log

    yield make
    for log in logs:
        await log.close()


async def eventually(predicate: Callable[[], Awaitable[bool]], timeout_s: float = 5.0) -> None:
    deadline = time.monotonic() + timeout_s
    while not await predicate():
        assert time.monotonic() < deadline, "condition not reached in time"
        await asyncio.sleep(0.02)


# ------------------------------------------------------------------------ aggregates


async def test_aggregates_equal_a_recomputation_from_raw_events(
    make_log: MakeLog, redis_url: str, redis_client: redis.asyncio.Redis, experiment_name: str
) -> None:
    exp = make_experiment(experiment_name)
    log = await make_log(redis_url, exp)
    rng = random.Random(7)
    recorded: list[Event] = []
    for _ in range(6):  # several batches; units and event ids recur across them, in both epochs and variants
        batch = random_events(rng, 300, keyed=0.3)
        record(log, batch)
        recorded += batch
        await log.flush()
    assert log.stats.flushed_batches == 6 and log.stats.buffered == 0
    assert_strata_equal(
        await read_strata(redis_client, experiment_name), expected_strata(recorded, binary_metrics(exp))
    )
    k = keys.Keys(experiment_name)
    entries = await redis_client.xrange(k.events)
    assert [int(f[b"seq"]) for _, f in entries] == [1, 2, 3, 4, 5, 6]
    assert [ev for _, f in entries for ev in decode_events(f[b"events"])] == recorded  # the audit copy
    assert await redis_client.get(k.metrics) == b'["errors","latency_ms","slow_requests","conversion","revenue"]'
    # The latency histograms: every request in its bucket, where it was served (not
    # intent-to-treat), exactly once.
    histograms: dict[tuple[int, str], list[int]] = defaultdict(lambda: [0] * keys.LATENCY_BUCKETS)
    for ev in recorded:
        if isinstance(ev, Exposure):
            histograms[(ev.epoch, ev.variant)][keys.latency_bucket(ev.latency_ms)] += 1
    stored = keys.decode_latency(await redis_client.hgetall(k.latency))
    assert stored == {key: tuple(counts) for key, counts in histograms.items()}


async def test_binary_metrics_keep_the_maximum_per_unit(
    make_log: MakeLog, redis_url: str, redis_client: redis.asyncio.Redis, experiment_name: str
) -> None:
    log = await make_log(redis_url, make_experiment(experiment_name))
    exposure = Exposure("r1", "u1", "control", 1, 0.0, 200, 10.0, False)
    for values in ([0.0, 1.0, 1.0], [1.0, 0.0]):  # two batches: the unit converted once
        log.record_exposure(exposure)
        for value in values:
            log.record_outcome(Outcome("u1", "control", 1, "conversion", value, 0.0))
        await log.flush()
    conversion = (await read_strata(redis_client, experiment_name))[(1, "control")].metrics["conversion"]
    assert (conversion.sum, conversion.sum_sq, conversion.sum_xn, conversion.events) == (1.0, 1.0, 2.0, 5.0)


async def test_producers_with_different_metric_lists_share_the_unit_states(
    make_log: MakeLog, redis_url: str, redis_client: redis.asyncio.Redis, experiment_name: str
) -> None:
    """A replica that reloaded a config with one more metric writes next to one that has not."""
    url = redis_url
    wide, narrow = make_experiment(experiment_name, extra_metric=True), make_experiment(experiment_name)
    new, old = await make_log(url, wide), await make_log(url, narrow)
    rng = random.Random(11)
    recorded: list[Event] = []
    for i in range(6):
        log, metrics = (new, ("conversion", "revenue", "clicks")) if i % 2 == 0 else (old, ("conversion", "revenue"))
        batch = random_events(rng, 200, units=15, metrics=metrics)
        record(log, batch)
        recorded += batch
        await log.flush()
    assert_strata_equal(
        await read_strata(redis_client, experiment_name), expected_strata(recorded, binary_metrics(wide))
    )


async def test_update_experiment_may_add_metrics_only(
    make_log: MakeLog, experiment_name: str, redis_url: str, redis_client: redis.asyncio.Redis
) -> None:
    log = await make_log(redis_url, make_experiment(experiment_name))
    log.record_exposure(Exposure("r1", "u1", "control", 1, 0.0, 200, 1.0, False))  # sums count exposed units
    log.record_outcome(Outcome("u1", "control", 1, "revenue", 2.0, 0.0))
    with pytest.raises(ValueError, match="unknown metric 'clicks'"):
        log.record_outcome(Outcome("u1", "control", 1, "clicks", 1.0, 0.0))
    with pytest.raises(ValueError, match="finite"):
        log.record_outcome(Outcome("u1", "control", 1, "revenue", float("nan"), 0.0))
    log.update_experiment(make_experiment(experiment_name, extra_metric=True))
    log.record_outcome(Outcome("u1", "control", 1, "clicks", 3.0, 0.0))
    await log.flush()
    strata = await read_strata(redis_client, experiment_name)
    assert strata[(1, "control")].metrics["clicks"].sum == 3.0
    assert strata[(1, "control")].metrics["revenue"].sum == 2.0
    with pytest.raises(EventLogError, match="only grow"):
        log.update_experiment(make_experiment(experiment_name))


async def test_register_epoch_is_written_once(
    make_log: MakeLog, experiment_name: str, redis_url: str, redis_client: redis.asyncio.Redis
) -> None:
    log = await make_log(redis_url, make_experiment(experiment_name))
    log.register_epoch(2, {"control": 0.9, "candidate": 0.1}, since=100.0)
    await log.flush()
    log.register_epoch(2, {"control": 0.5, "candidate": 0.5}, since=200.0)  # a late replica: ignored
    await log.flush()
    epochs = keys.decode_epochs(await redis_client.hgetall(keys.Keys(experiment_name).epochs))
    assert epochs[2].weights == {"control": 0.9, "candidate": 0.1} and epochs[2].since == 100.0


# ------------------------------------------------------------------------ exactly once


async def test_the_script_applies_each_producer_seq_once(
    redis_url: str, redis_client: redis.asyncio.Redis, experiment_name: str
) -> None:
    exp = make_experiment(experiment_name)
    script = FlushScript(redis_client, keys.Keys(experiment_name))
    await script.load()
    rng = random.Random(3)
    first, second = random_events(rng, 200, keyed=0.3, event_ids=30), random_events(rng, 200, keyed=0.3, event_ids=30)
    batch1, batch2, batch4 = (_batch(exp, events, seq) for events, seq in ((first, 1), (second, 2), (second, 4)))
    ids = [{e.event_id for e in events if isinstance(e, Outcome) and e.event_id} for events in (first, second)]
    assert ids[0] & ids[1]  # the second batch repeats ids of the first
    assert await script.apply(batch1, allow_gap=False) == (APPLIED, 0, 0)
    assert await script.apply(batch1, allow_gap=False) == (DUPLICATE, 1, 0)  # e.g. a re-send after a timeout
    assert await script.apply(batch2, allow_gap=False) == (APPLIED, 1, len(ids[0] & ids[1]))
    assert await script.apply(batch1, allow_gap=True) == (DUPLICATE, 2, 0)  # an older seq, out of order
    assert await script.apply(batch4, allow_gap=False) == (GAP, 2, 0)  # seq 3 is missing: refused
    assert_strata_equal(
        await read_strata(redis_client, experiment_name), expected_strata(first + second, binary_metrics(exp))
    )
    assert len(await redis_client.xrange(keys.Keys(experiment_name).events)) == 2


async def test_outcome_ids_are_remembered_for_the_window_only(
    redis_client: redis.asyncio.Redis, experiment_name: str
) -> None:
    exp = make_experiment(experiment_name)
    k = keys.Keys(experiment_name)
    script = FlushScript(redis_client, k, outcome_id_window_s=0.5)
    await script.load()

    def keyed(event_id: str) -> Outcome:
        return Outcome("u1", "control", 1, "revenue", 2.0, time.time(), event_id=event_id)

    exposed = Exposure("r1", "u1", "control", 1, time.time(), 200, 1.0, False)  # sums count exposed units
    repeated = []
    for seq, outcomes in enumerate([[exposed, keyed("x")], [keyed("y"), keyed("x")], [keyed("z")], [keyed("x")]], 1):
        if seq == 3:
            await asyncio.sleep(0.6)  # by Redis' clock, "x" and "y" leave the window
        repeated.append((await script.apply(_batch(exp, outcomes, seq), allow_gap=False))[2])
    # "x" repeats within the window, and counts again once it has left it.
    assert repeated == [0, 1, 0, 0]
    assert [m for m, _ in await redis_client.zrange(k.outcome_ids, 0, -1, withscores=True)] == [b"z", b"x"]
    revenue = (await read_strata(redis_client, experiment_name))[(1, "control")].metrics["revenue"]
    assert (revenue.events, revenue.sum) == (4, 8.0)


async def test_a_replica_whose_clock_is_days_ahead_does_not_wipe_outcome_dedup(
    redis_client: redis.asyncio.Redis, experiment_name: str
) -> None:
    """Issue 7 #8: the id window follows Redis' clock, not the newest producer timestamp."""
    exp = make_experiment(experiment_name)
    k = keys.Keys(experiment_name)
    honest, skewed = FlushScript(redis_client, k), FlushScript(redis_client, k)
    await honest.load()
    now = time.time()

    def keyed(event_id: str, ts: float) -> Outcome:
        return Outcome("u1", "control", 1, "revenue", 10.0, ts, event_id=event_id)

    exposed = Exposure("r1", "u1", "control", 1, now, 200, 1.0, False)  # sums count exposed units
    await honest.apply(_batch(exp, [exposed, keyed("a", now)], 1), allow_gap=False)
    ahead = _batch(exp, [keyed("b", now + 2 * 86_400)], 1)
    await skewed.apply(dataclasses.replace(ahead, producer="p-ahead"), allow_gap=False)
    # The client resends "a" (its 202 was lost): it must count once.
    assert (await honest.apply(_batch(exp, [keyed("a", now + 1)], 2), allow_gap=False))[2] == 1
    revenue = (await read_strata(redis_client, experiment_name))[(1, "control")].metrics["revenue"]
    assert (revenue.events, revenue.sum) == (2, 20.0)


def _batch(exp: model.Experiment, recorded: list[Event], seq: int) -> Batch:
    agg = Aggregator(keys.metric_order(exp), binary_metrics(exp), slow_ms=slow_ms(exp))
    for ev in recorded:
        agg.add_exposure(ev) if isinstance(ev, Exposure) else agg.add_outcome(ev)
    return agg.batch(producer="p-test", seq=seq)


# ------------------------------------------------------------------- Redis outages


async def test_redis_killed_during_recording_loses_and_duplicates_nothing(
    make_log: MakeLog, redis_server: RedisServer, tmp_path: Path
) -> None:
    exp = make_experiment("outage")
    log = await make_log(redis_server.url, exp, flush_interval_s=0.02, redis_timeout_s=0.5)
    rng = random.Random(5)
    recorded: list[Event] = []
    most_spilled = 0
    stop = asyncio.Event()

    async def traffic() -> None:
        nonlocal most_spilled
        while not stop.is_set():
            batch = random_events(rng, 20, units=200, keyed=0.3, event_ids=500)
            record(log, batch)
            recorded.extend(batch)
            most_spilled = max(most_spilled, log.stats.spilled)
            await asyncio.sleep(0.002)

    task = asyncio.create_task(traffic())
    await asyncio.sleep(0.3)
    redis_server.kill()
    await asyncio.sleep(0.4)
    await asyncio.to_thread(redis_server.restart)
    await asyncio.sleep(0.3)
    stop.set()
    await task
    await log.close()

    assert most_spilled > 0 and log.stats.flush_failures > 0 and log.stats.dropped == 0
    assert log.stats.spilled == 0 and not list((tmp_path / "spill").glob("*"))  # replayed and removed
    async with redis.asyncio.Redis.from_url(redis_server.url) as client:
        assert_strata_equal(await read_strata(client, "outage"), expected_strata(recorded, binary_metrics(exp)))


@pytest.mark.parametrize("noticed_by", ["flusher", "lookup"])
async def test_batches_lost_by_a_redis_restart_are_resent(
    make_log: MakeLog, redis_server: RedisServer, noticed_by: str, caplog: pytest.LogCaptureFixture
) -> None:
    """Redis acknowledged batches 2 and 3, then crashed before its AOF held them.

    Either the flusher trips over the dead connection (spill, reconnect, read back the
    last seq, re-send) or a lookup does, and the flusher's next batch, on a fresh
    connection, is refused for its gap and re-sends what is missing first.
    """
    exp = make_experiment("lost-window")
    log = await make_log(redis_server.url, exp)
    rng = random.Random(9)
    recorded: list[Event] = []
    aof = redis_server.data_dir / "appendonly.aof"
    for i in range(3):
        batch = random_events(rng, 200)
        record(log, batch)
        recorded += batch
        await log.flush()
        if i == 0:
            size_after_first = aof.stat().st_size  # Redis writes the AOF before it replies
    redis_server.kill()
    with open(aof, "r+b") as f:
        f.truncate(size_after_first)
    redis_server.restart()
    if noticed_by == "lookup":
        with pytest.raises(EventLogUnavailable):
            await log.lookup_units(["nobody"])  # takes the pool's dead connection out of play
    later = random_events(rng, 200)
    record(log, later)
    await eventually(lambda: _flushed_all(log))
    if noticed_by == "lookup":
        assert log.stats.flush_failures == 0 and "follows a gap" in caplog.text
    async with redis.asyncio.Redis.from_url(redis_server.url) as client:
        assert_strata_equal(
            await read_strata(client, "lost-window"), expected_strata(recorded + later, binary_metrics(exp))
        )


async def test_batches_lost_by_redis_are_resent_even_after_an_outage_longer_than_retention(
    make_log: MakeLog, redis_server: RedisServer
) -> None:
    """Retained batches age while Redis is down; they must be compared before pruned."""
    exp = make_experiment("long-outage")
    log = await make_log(redis_server.url, exp, retain_s=0.3)
    rng = random.Random(11)
    first, lost = random_events(rng, 100), random_events(rng, 100)
    record(log, first)
    await log.flush()
    size_after_first = (redis_server.data_dir / "appendonly.aof").stat().st_size
    record(log, lost)
    await log.flush()
    redis_server.kill()
    with open(redis_server.data_dir / "appendonly.aof", "r+b") as f:
        f.truncate(size_after_first)  # Redis comes back without the second batch
    await asyncio.sleep(0.6)  # down for twice the retention
    redis_server.restart()
    later = random_events(rng, 100)
    record(log, later)
    await eventually(lambda: _flushed_all(log))
    async with redis.asyncio.Redis.from_url(redis_server.url) as client:
        assert_strata_equal(
            await read_strata(client, "long-outage"), expected_strata(first + lost + later, binary_metrics(exp))
        )


async def test_a_timed_out_flush_that_redis_applied_later_counts_once(
    make_log: MakeLog, redis_server: RedisServer
) -> None:
    """The ambiguous failure: our call times out, yet Redis runs it once it is free."""
    exp = make_experiment("ambiguous")
    log = await make_log(redis_server.url, exp, redis_timeout_s=0.2)
    recorded = random_events(random.Random(12), 300)
    record(log, recorded)
    async with redis.asyncio.Redis.from_url(redis_server.url) as client:
        busy = asyncio.create_task(client.execute_command("DEBUG", "SLEEP", "0.6"))
        await eventually(lambda: _asleep(redis_server.url))
        await log.flush()  # times out while Redis sleeps: spilled
        await busy
        assert log.stats.flush_failures == 1 and log.stats.spilled == len(recorded)

        async def applied_after_all() -> bool:
            return await client.hget(keys.Keys("ambiguous").producers, log.producer) == b"1"

        await eventually(applied_after_all)
        await eventually(lambda: _flushed_all(log))  # the replay is a duplicate
        assert_strata_equal(await read_strata(client, "ambiguous"), expected_strata(recorded, binary_metrics(exp)))


async def _asleep(url: str) -> bool:
    """True while Redis does not answer a PING within 50 ms."""
    async with redis.asyncio.Redis.from_url(url, socket_timeout=0.05, retry=Retry(NoBackoff(), 0)) as probe:
        try:
            await probe.ping()
            return False
        except redis.exceptions.TimeoutError:
            return True


async def _flushed_all(log: EventLog) -> bool:
    await log.flush()
    s = log.stats
    return s.redis_up and s.spilled == 0 and s.buffered == 0


# ------------------------------------------------------------------------ quarantine


async def test_a_batch_redis_refuses_is_quarantined_whole_and_later_batches_flow(
    make_log: MakeLog, redis_url: str, redis_client: redis.asyncio.Redis, experiment_name: str, tmp_path: Path
) -> None:
    exp = make_experiment(experiment_name)
    units_key = keys.Keys(experiment_name).units
    log = await make_log(redis_url, exp)
    first = [Exposure(f"r{i}", f"u{i}", "control", 1, 0.0, 200, 5.0, False) for i in range(3)]
    record(log, first)
    await log.flush()

    good_state = await redis_client.hget(units_key, "u1|u")
    await redis_client.hset(units_key, "u1|u", "not a state")  # another program wrote here
    # Innocent units first, more than the script's chunk of 500 cells, then the corrupt one.
    poisoned: list[Event] = [Exposure(f"r-{i}", f"w{i}", "candidate", 1, 0.0, 200, 7.0, i % 2 == 0) for i in range(600)]
    poisoned += [
        Outcome("u2", "control", 1, "revenue", 4.0, 0.0),
        Exposure("r10", "u1", "control", 1, 0.0, 200, 6.0, False),
    ]
    record(log, poisoned)
    await log.flush()
    third = [Exposure("r11", "u3", "candidate", 1, 0.0, 200, 8.0, False)]
    record(log, third)
    await log.flush()

    # Nothing of the refused batch was written, not even its innocent part; the next one was.
    assert log.stats.quarantined == 602 and log.stats.spilled == 0 and log.stats.buffered == 0
    assert await redis_client.hget(units_key, "w0|u") is None
    assert_strata_equal(
        await read_strata(redis_client, experiment_name), expected_strata(first + third, binary_metrics(exp))
    )

    # Fixed, and the quarantine file renamed to a spill file: the next router replays it.
    await redis_client.hset(units_key, "u1|u", good_state)
    await log.close()
    (quarantined,) = (tmp_path / "spill").glob(f"*{spill.QUARANTINE_SUFFIX}")
    ((batch, _),) = spill.read_batches(quarantined)
    assert (batch.producer, batch.seq, batch.n_events) == (log.producer, 2, 602)  # its own identity
    copy = quarantined.with_name(quarantined.name.replace(spill.QUARANTINE_SUFFIX, ".copy" + spill.SUFFIX))
    copy.write_bytes(quarantined.read_bytes())
    quarantined.rename(quarantined.with_suffix(spill.SUFFIX))
    await (await make_log(redis_url, exp)).flush()
    # Replayed twice (two copies of the file): it applies once.
    assert_strata_equal(
        await read_strata(redis_client, experiment_name), expected_strata(first + poisoned + third, binary_metrics(exp))
    )
    assert not list((tmp_path / "spill").glob(f"*{spill.SUFFIX}"))


async def test_a_full_redis_is_an_outage_not_a_reason_to_quarantine(
    make_log: MakeLog, redis_server: RedisServer
) -> None:
    exp = make_experiment("full")
    log = await make_log(redis_server.url, exp)
    rng = random.Random(8)
    before = random_events(rng, 300, keyed=0.3)
    record(log, before)
    await log.flush()
    async with redis.asyncio.Redis.from_url(redis_server.url) as client:
        await client.config_set("maxmemory-policy", "noeviction")
        await client.config_set("maxmemory", "1")  # full: any write is refused
        during = random_events(rng, 300, keyed=0.3)
        record(log, during)
        await log.flush()
        assert log.stats.spilled == len(during) and log.stats.quarantined == 0  # waits for room
        assert_strata_equal(await read_strata(client, "full"), expected_strata(before, binary_metrics(exp)))
        await client.config_set("maxmemory", "0")
        await log.flush()
        assert log.stats.spilled == 0
        assert_strata_equal(await read_strata(client, "full"), expected_strata(before + during, binary_metrics(exp)))


@pytest.mark.parametrize(
    "damage",
    [
        "agg_is_a_string",
        "agg_field_is_not_a_number",
        "payload_is_not_json",
        "latency_is_a_string",
        "latency_count_is_x",
    ],
)
async def test_the_script_writes_nothing_when_it_cannot_apply_a_batch(
    redis_client: redis.asyncio.Redis, experiment_name: str, damage: str
) -> None:
    exp = make_experiment(experiment_name)
    k = keys.Keys(experiment_name)
    script = FlushScript(redis_client, k)
    await script.load()
    batch = _batch(exp, random_events(random.Random(4), 50), 1)
    if damage == "agg_is_a_string":
        await redis_client.set(k.agg, "x")
        message = "is a string, not a hash"
    elif damage == "agg_field_is_not_a_number":
        await redis_client.hset(k.agg, mapping={"1|control|units": "12", "1|control|exposures": "x"})
        message = r"corrupt value x in .* field 1\|control\|exposures"
    elif damage == "latency_is_a_string":
        await redis_client.set(k.latency, "x")
        message = "latency is a string, not a hash"
    elif damage == "latency_count_is_x":
        # every field the batch could increment
        await redis_client.hset(
            k.latency, mapping={f"{e}|{v}|{b}": "x" for e in (1, 2) for v in VARIANTS for b in range(60)}
        )
        message = r"corrupt value x in .*latency field"
    else:
        batch = dataclasses.replace(batch, payload="{not json")
        message = "flush.lua failed on batch 1"
    with pytest.raises(BatchRejected, match=message):
        await script.apply(batch, allow_gap=False)
    assert await redis_client.exists(k.units, k.producers, k.events, k.metrics, k.epochs) == 0
    if damage.startswith("latency"):
        assert await redis_client.exists(k.agg) == 0, "the histograms are checked before anything is written"
    if damage == "agg_field_is_not_a_number":
        assert await redis_client.hgetall(k.agg) == {b"1|control|units": b"12", b"1|control|exposures": b"x"}


async def test_a_new_log_replays_the_spill_file_of_a_dead_producer(
    make_log: MakeLog, redis_url: str, redis_client: redis.asyncio.Redis, experiment_name: str, tmp_path: Path
) -> None:
    exp = make_experiment(experiment_name)
    dead = await make_log(down_url(), exp)
    recorded = random_events(random.Random(1), 500)
    record(dead, recorded)
    await dead.close()  # Redis never came back: everything stays in its (now unlocked) file
    assert dead.stats.spilled == len(recorded)
    alive = spill.SpillFile(tmp_path / "spill", stem=spill.stem("abrouter", experiment_name), producer="alive")
    alive.append([_batch(exp, random_events(random.Random(2), 10), 1)])  # locked: a live producer's

    await make_log(redis_url, exp)

    assert_strata_equal(
        await read_strata(redis_client, experiment_name), expected_strata(recorded, binary_metrics(exp))
    )
    assert sorted(p.name for p in (tmp_path / "spill").iterdir()) == [alive.path.name]
    alive.clear()
    alive.close()


async def test_a_full_buffer_spills_at_once_while_redis_is_down(make_log: MakeLog) -> None:
    log = await make_log(down_url(), make_experiment("full"), max_events=50)
    record(log, random_events(random.Random(4), 50))

    async def spilled() -> bool:
        return log.stats.spilled == 50 and log.stats.buffered == 0

    await eventually(spilled, timeout_s=2.0)  # long before the 60 s flush interval


# ------------------------------------------------------------------ flushing, lookups


async def test_close_flushes_everything(
    redis_url: str, redis_client: redis.asyncio.Redis, experiment_name: str, tmp_path: Path
) -> None:
    exp = make_experiment(experiment_name)
    log = EventLog(redis_url=redis_url, experiment=exp, spill_dir=tmp_path, flush_interval_s=60)
    await log.start()
    recorded = random_events(random.Random(6), 400)
    record(log, recorded)
    await log.close()
    assert_strata_equal(
        await read_strata(redis_client, experiment_name), expected_strata(recorded, binary_metrics(exp))
    )


async def test_a_full_buffer_flushes_before_the_interval(
    make_log: MakeLog, experiment_name: str, redis_url: str, redis_client: redis.asyncio.Redis
) -> None:
    exp = make_experiment(experiment_name)
    log = await make_log(redis_url, exp, max_events=100)
    recorded = random_events(random.Random(8), 100)
    record(log, recorded)

    async def applied() -> bool:
        return await redis_client.hget(keys.Keys(experiment_name).producers, log.producer) == b"1"

    await eventually(applied, timeout_s=2.0)  # long before the 60 s flush interval
    assert log.stats.buffered == 0
    assert_strata_equal(
        await read_strata(redis_client, experiment_name), expected_strata(recorded, binary_metrics(exp))
    )


async def lookup(log: EventLog, unit_hash: str) -> tuple[int, str] | None:
    return (await log.lookup_units([unit_hash]))[unit_hash]


async def test_lookup_units_local_then_redis_then_unavailable(make_log: MakeLog, redis_server: RedisServer) -> None:
    exp = make_experiment("lookup")
    writer = await make_log(redis_server.url, exp)
    writer.record_exposure(Exposure("r1", "u1", "control", 1, 0.0, 200, 1.0, False))
    writer.record_exposure(Exposure("r2", "u1", "candidate", 2, 0.0, 200, 1.0, False))  # the latest counts
    assert await lookup(writer, "u1") == (2, "candidate")  # local, nothing flushed yet
    await writer.flush()
    reader = await make_log(redis_server.url, exp)  # another replica: an empty local memory
    assert await reader.lookup_units(["u1", "nobody"]) == {"u1": (2, "candidate"), "nobody": None}
    redis_server.kill()
    assert await lookup(writer, "u1") == (2, "candidate")  # still answered locally
    with pytest.raises(EventLogUnavailable):
        await lookup(reader, "u1")


async def test_lookup_prefers_a_later_epoch_seen_by_another_replica(
    make_log: MakeLog, redis_server: RedisServer
) -> None:
    exp = make_experiment("ramped")
    a = await make_log(redis_server.url, exp)
    b = await make_log(redis_server.url, exp)
    a.record_exposure(Exposure("r1", "u1", "control", 1, 0.0, 200, 1.0, False))
    await a.flush()
    b.record_exposure(Exposure("r2", "u1", "candidate", 2, 0.0, 200, 1.0, False))  # after a ramp, via b
    await b.flush()
    assert await lookup(a, "u1") == (2, "candidate")  # a's own memory is older
    assert await lookup(b, "u1") == (2, "candidate")


def test_a_torn_last_spill_line_is_skipped(tmp_path: Path) -> None:
    exp = make_experiment("torn")
    own = spill.SpillFile(tmp_path, stem="abrouter.torn", producer="p")
    batches = [_batch(exp, random_events(random.Random(seq), 20), seq) for seq in (1, 2)]
    own.append(batches)
    with open(own.path, "ab") as f:
        f.write(b'{"producer": "p", "seq": 3, "n"')  # a crash in the middle of an append
    assert [b for b, _ in spill.read_batches(own.path)] == batches
    own.clear()
    own.close()
    assert not own.path.exists()


def test_audit_rows_written_before_event_ids_still_decode() -> None:
    old = '[["outcome","r1","u1","control",1,5.0,"revenue",2.0]]'
    assert decode_events(old) == [Outcome("u1", "control", 1, "revenue", 2.0, 5.0, request_id="r1")]


async def test_the_local_memory_keeps_the_most_recently_exposed_units(
    make_log: MakeLog, redis_server: RedisServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    from abrouter.router.eventlog import log as eventlog_log

    monkeypatch.setattr(eventlog_log, "LRU_SIZE", 4)  # at most 4 units, at least the last 2
    exp = make_experiment("recent")
    writer = await make_log(redis_server.url, exp)
    # u1 exposed again: after u4, the last two are u1 and u4 (and u3, held with u1); u2 is forgotten
    for i, unit in enumerate(["u1", "u2", "u3", "u1", "u4"]):
        writer.record_exposure(Exposure(f"r{i}", unit, "control", 1, 0.0, 200, 1.0, False))
    redis_server.kill()  # only the local memory answers now
    assert await writer.lookup_units(["u1", "u3", "u4"]) == {"u1": (1, "control"), "u3": (1, "control"),
                                                             "u4": (1, "control")}  # fmt: skip
    with pytest.raises(EventLogUnavailable):
        await lookup(writer, "u2")
