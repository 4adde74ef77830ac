"""Issue 15: no loss that goes unreported, and the right numbers whatever the order of batches.

Each test reproduces one case of the issue against a real Redis (quarantine replay of
many gaps, a Redis that came back with older data, outcomes and covariates that reach
Redis before their exposure or out of report order across two routers, anonymous
requests whose outcome comes in a later batch) and fails on the code before the fix.
"""

from __future__ import annotations

import asyncio
import dataclasses
import json
import secrets
import shutil
import time
from pathlib import Path

import pytest
import redis
import redis.asyncio

from abrouter import cli
from abrouter.contract import experiment as spec
from abrouter.contract import keys
from abrouter.router.eventlog.events import (
    Aggregator,
    Batch,
    Exposure,
    Outcome,
    binary_metrics,
    column_rules,
    ratio_pairs,
)
from abrouter.router.eventlog.log import APPLIED, DUPLICATE, EventLog, FlushScript
from abrouter.router.redis_server import RedisServer
from tests.router.conftest import MakeRouter
from tests.router.eventlog.test_eventlog import _batch, eventually, make_experiment, read_strata, record


def exposure(unit: str, variant: str = "control", *, anonymous: bool = False) -> Exposure:
    return Exposure(f"r-{unit}", unit, variant, 1, time.time(), 200, 10.0, False, anonymous=anonymous)


def outcome(unit: str, metric: str, value: float, variant: str = "control", **kw: object) -> Outcome:
    return Outcome(unit, variant, 1, metric, value, time.time(), **kw)  # type: ignore[arg-type]


async def test_a_quarantine_replay_of_300_skipped_batches_applies_every_one(
    redis_client: redis.asyncio.Redis, experiment_name: str
) -> None:
    """Before: only the newest 256 gap ranges were kept, so 44 replays were taken for duplicates."""
    exp = make_experiment(experiment_name)
    script = FlushScript(redis_client, keys.Keys(experiment_name))
    await script.load()
    # Odd seqs reach Redis; each even one was quarantined, leaving a gap of one seq.
    for seq in range(1, 602, 2):
        assert (await script.apply(_batch(exp, [exposure(f"u{seq}")], seq), allow_gap=True))[0] == APPLIED
    replays = [
        (await script.apply(_batch(exp, [exposure(f"u{seq}")], seq), allow_gap=True))[0] for seq in range(2, 601, 2)
    ]
    assert replays == [APPLIED] * 300
    strata = await read_strata(redis_client, experiment_name)
    assert strata[(1, "control")].units == 601
    # A second replay of the quarantine file counts nothing.
    assert (await script.apply(_batch(exp, [exposure("u2")], 2), allow_gap=True))[0] == DUPLICATE
    assert not await redis_client.hexists(keys.Keys(experiment_name).producers, "p-test|gaps")


async def apply_as(script: FlushScript, producer: str, batch: Batch, *, allow_gap: bool = True) -> int:
    return (await script.apply(dataclasses.replace(batch, producer=producer), allow_gap=allow_gap))[0]


async def test_an_outcome_that_reaches_redis_before_its_exposure_is_held_then_credited_once(
    redis_client: redis.asyncio.Redis, experiment_name: str
) -> None:
    """Router B flushes the outcome (by request id) before router A flushes the exposure.

    Before: the stratum's binary sum was 1 with 0 units, and ``abrouter analyze`` died
    with "binary metric: need 0 <= sum <= n".
    """
    exp = make_experiment(experiment_name)
    script = FlushScript(redis_client, keys.Keys(experiment_name))
    await script.load()
    await apply_as(script, "router-a", _batch(exp, [exposure("seen")], 1))
    assert await apply_as(script, "router-b", _batch(exp, [outcome("late", "conversion", 1.0)], 1)) == APPLIED
    held = (await read_strata(redis_client, experiment_name))[(1, "control")]
    assert (held.units, held.metrics["conversion"].sum) == (1, 0.0)  # held, not in a stratum without its unit
    assert held.metrics["conversion"].events == 1  # the event is counted where it arrived
    await apply_as(script, "router-a", _batch(exp, [exposure("late"), exposure("late")], 2))
    s = (await read_strata(redis_client, experiment_name))[(1, "control")]
    conversion = s.metrics["conversion"]
    assert (s.units, s.exposures, s.exposures_sq) == (2, 3, 1 + 4)
    assert (conversion.sum, conversion.sum_sq, conversion.sum_xn) == (1.0, 1.0, 2.0)


async def test_an_anonymous_outcome_in_a_later_batch_keeps_its_sum_xn(
    redis_client: redis.asyncio.Redis, experiment_name: str
) -> None:
    """Before: the later outcome met no state, took n_u = 0, and sum_xn lost its x_u."""
    exp = make_experiment(experiment_name)
    script = FlushScript(redis_client, keys.Keys(experiment_name))
    await script.load()
    batches = [
        [exposure("anon1", anonymous=True), exposure("anon2", anonymous=True)],
        [outcome("anon1", "revenue", 5.0, anonymous=True)],  # after its exposure's batch
        [outcome("anon1", "revenue", 2.0, anonymous=True, event_id="k1")],  # keyed: folded by the script
    ]
    for seq, events in enumerate(batches, start=1):
        assert await apply_as(script, "router-a", _batch(exp, events, seq)) == APPLIED
    # Another router flushed this anonymous request's outcome before its exposure landed.
    assert await apply_as(script, "router-b", _batch(exp, [outcome("anon3", "revenue", 4.0, anonymous=True)], 1)) == 1
    assert await apply_as(script, "router-a", _batch(exp, [exposure("anon3", anonymous=True)], 4)) == APPLIED
    s = (await read_strata(redis_client, experiment_name))[(1, "control")]
    revenue = s.metrics["revenue"]
    assert (s.units, s.exposures, s.exposures_sq) == (3, 3, 3)
    assert (revenue.sum, revenue.sum_sq, revenue.sum_xn) == (11.0, 49.0 + 16.0, 11.0)
    assert s.metrics["latency_ms"].sum_xn == 30.0  # 10 ms each, n_u = 1


async def test_through_the_router_an_anonymous_requests_later_outcome_counts_with_n_1(make_router: MakeRouter) -> None:
    """The request id carries "no unit id", so the outcome endpoint can say so to the event log."""
    r = await make_router(weights={"control": 100, "candidate": 0})
    resp = await r.client.post("/predict", data=b"{}")  # no X-User-Id: its own unit
    assert resp.status == 200
    request_id = resp.headers["X-AB-Request-Id"]
    resp.release()
    await r.settle()  # the exposure lands in its own batch, without unit state
    resp = await r.client.post("/abrouter/outcomes", json={"request_id": request_id, "metric": "revenue", "value": 7})
    assert resp.status == 202, await resp.text()
    await r.settle()
    s = (await r.strata())[(1, "control")]
    assert (s.units, s.exposures) == (1, 1)
    assert (s.metrics["revenue"].sum, s.metrics["revenue"].sum_xn) == (7.0, 7.0)


async def test_a_redis_that_comes_back_with_an_older_aof_is_detected_and_the_hole_counted(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """Before: the producer re-sent what it retained (nothing, after 10 s) and allowed the gap; no
    metric, no readyz field, no DATA INCOMPLETE, and the analyzer took the rest for the whole."""
    name = f"t-older-aof-{secrets.token_hex(4)}"
    exp = make_experiment(name)
    with RedisServer(appendfsync="always") as server:
        log = EventLog(
            redis_url=server.url, experiment=exp, spill_dir=tmp_path / "spill", flush_interval_s=60, retain_s=0.05
        )
        await log.start()
        try:
            record(log, [exposure(f"kept{i}") for i in range(100)])
            await log.flush()
            backup = tmp_path / "appendonly.aof"
            shutil.copy(server.data_dir / "appendonly.aof", backup)  # the older copy Redis will come back with
            for round_, count in enumerate((50, 70)):
                record(log, [exposure(f"lost{round_}-{i}") for i in range(count)])
                await log.flush()
            await asyncio.sleep(0.1)
            await log.flush()  # idle: compares with Redis (nothing lost yet) and drops the retained copies
            assert log.stats.lost_events == 0 and log.stats.redis_resets == 0

            await back_with_older_data(server, backup, log)
            stats = log.stats
            assert (stats.lost_events, stats.redis_resets, stats.dropped) == (120, 1, 0)
            assert stats.data_incomplete_since is not None
        finally:
            await log.close()
        with redis.Redis.from_url(server.url) as client:
            strata = keys.decode_agg(client.hgetall(keys.Keys(name).agg))
        assert strata[(1, "control")].units == 100 + 30
        path = tmp_path / "experiment.yaml"
        path.write_text(json.dumps(spec.to_dict(exp)))
        argv = ["analyze", "--config", str(path), "--redis-url", server.url, "--json"]
        assert await asyncio.to_thread(cli.main, argv) == 0  # asyncio.run needs a thread without a loop
        lost = json.loads(capsys.readouterr().out)["data_lost"]
        assert lost["events"] == 120 and lost["from"] <= lost["to"] <= time.time()


async def test_the_covariate_kept_is_the_earliest_reported_not_the_first_flushed(
    redis_client: redis.asyncio.Redis, experiment_name: str
) -> None:
    """Router B flushes a later report first. Before: B's value stayed (first to reach Redis)."""
    exp = cuped_spec(experiment_name)
    script = FlushScript(redis_client, keys.Keys(experiment_name))
    await script.load()
    u = "unit-1"

    def cov(value: float, ts: float) -> Outcome:
        return Outcome(u, "control", 1, "prior_clicks", value, ts)

    revenue = Outcome(u, "control", 1, "revenue", 10.0, 1000.0)
    assert await apply_as(script, "router-a", cuped_batch(exp, [exposure(u), revenue], 1)) == APPLIED
    assert await apply_as(script, "router-b", cuped_batch(exp, [cov(7.0, 2000.0)], 1)) == APPLIED
    assert await apply_as(script, "router-a", cuped_batch(exp, [cov(3.0, 1500.0), cov(5.0, 1200.0)], 2)) == APPLIED
    assert await apply_as(script, "router-b", cuped_batch(exp, [cov(9.0, 1300.0)], 2)) == APPLIED  # later than 1200
    s = (await read_strata(redis_client, experiment_name))[(1, "control")]
    prior = s.metrics["prior_clicks"]
    assert (prior.sum, prior.sum_sq) == (5.0, 25.0)  # the report of time 1200, the earliest
    assert s.metrics["revenue"].sum_xy["prior_clicks"] == 50.0
    assert s.metrics["prior_clicks~set"].sum == 1


def cuped_spec(name: str) -> spec.Experiment:
    doc = spec.to_dict(make_experiment(name))
    doc["covariate"] = "prior_clicks"
    return spec.parse(doc)


def cuped_batch(exp: spec.Experiment, recorded: list[Exposure | Outcome], seq: int) -> Batch:
    agg = Aggregator(keys.metric_order(exp), binary_metrics(exp), ratio_pairs(exp), **column_rules(exp))
    for ev in recorded:
        agg.add_exposure(ev) if isinstance(ev, Exposure) else agg.add_outcome(ev)
    return agg.batch(producer="p-test", seq=seq)


async def test_an_empty_restart_while_every_router_restarted_is_caught_by_the_analyzers_witness(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """Before: 300 -> 50 exposures and no DATA INCOMPLETE (no router had seen the old marker)."""
    name = f"t-empty-all-{secrets.token_hex(4)}"
    exp = make_experiment(name)
    path = tmp_path / "experiment.yaml"
    path.write_text(json.dumps(spec.to_dict(exp)))
    argv = ["analyze", "--config", str(path), "--json", "--apply"]

    async def router_run(url: str, units: range) -> None:  # a router process: start, serve, stop
        log = EventLog(redis_url=url, experiment=exp, spill_dir=tmp_path / "spill", flush_interval_s=60)
        await log.start()
        record(log, [exposure(f"u{i}") for i in units])
        await log.close()

    async def look(url: str) -> dict:
        assert await asyncio.to_thread(cli.main, [*argv, "--redis-url", url]) == 0
        return json.loads(capsys.readouterr().out)

    with RedisServer() as server:
        await router_run(server.url, range(300))
        first = await look(server.url)
        assert first["data_incomplete_since"] is None
        server.kill()
        (server.data_dir / "appendonly.aof").unlink()  # no persistence: it comes back empty
        server.start()
        await router_run(server.url, range(1000, 1050))  # a new router, which never saw the old data
        second = await look(server.url)
        assert sum(v["units"] for v in second["variants"]) == 50
        assert second["data_incomplete_since"] is not None
        assert (await look(server.url))["data_incomplete_since"] == second["data_incomplete_since"]  # it stays


async def test_batches_are_cut_small_and_a_backlog_beyond_max_events_is_shed_and_counted(
    redis_url: str, experiment_name: str, tmp_path: Path
) -> None:
    """Before: one batch grew to max_events (a 50k-event call held Redis 360+ ms) and waiting batches had no bound."""
    exp = make_experiment(experiment_name)
    log = EventLog(
        redis_url=redis_url, experiment=exp, spill_dir=tmp_path, flush_interval_s=60, max_events=250, batch_events=100
    )
    await log.start()
    try:
        # Recorded while no flush round runs: the cut batches wait, like behind a slow Redis.
        record(log, [exposure(f"u{i}") for i in range(400)])
        stats = log.stats
        assert stats.shed == 400 - 300 and stats.dropped == 100  # the third cut found 300 >= 250 waiting
        await log.flush()
        assert log.stats.flushed_batches == 3  # 100 events each
        record(log, [exposure(f"v{i}") for i in range(50)])  # caught up: logged again
        await log.flush()
        assert log.stats.shed == 100
    finally:
        await log.close()


async def test_unit_ages_are_refreshed_once_per_granule_and_never_score_a_field_early(
    redis_client: redis.asyncio.Redis, experiment_name: str
) -> None:
    """Ages are refreshed once per granule (ttl/8) with the granule's end: a field expires late, never early."""
    doc = spec.to_dict(make_experiment(experiment_name))
    doc["outcome_ttl"] = "8000s"  # a granule of 1000 s: the batches below share one
    exp = spec.parse(doc)
    k = keys.Keys(experiment_name)
    script = FlushScript(redis_client, k, unit_ttl_s=exp.outcome_ttl_s)
    await script.load()
    seconds, micros = await redis_client.time()
    before = seconds + micros / 1e6
    await apply_as(script, "router-a", _batch(exp, [exposure("u1")], 1))
    first = dict(await redis_client.zrange(k.unit_seen, 0, -1, withscores=True))
    assert set(first) == {b"u1|u"}  # one member per unit: it stands for all the unit's fields
    assert min(first.values()) >= before  # never earlier than the write
    assert max(first.values()) <= before + 1000 + 1  # at most a granule later
    await apply_as(script, "router-a", _batch(exp, [exposure("u1"), exposure("u2")], 2))
    second = dict(await redis_client.zrange(k.unit_seen, 0, -1, withscores=True))
    assert {m: second[m] for m in first} == first  # u1 is fresh in this granule: no ZADD for it
    assert set(second) == {b"u1|u", b"u2|u"}


async def test_a_units_granule_is_read_from_its_record_not_from_unit_seen(
    redis_client: redis.asyncio.Redis, experiment_name: str
) -> None:
    """A unit's record names the granule it was last scored in, so freshness costs no read
    of unit_seen: a unit scored in this granule is not scored again even when its member is
    gone; a unit stored before records (h|f "e|v", no granule) is rewritten, and scored."""
    doc = spec.to_dict(make_experiment(experiment_name))
    doc["outcome_ttl"] = "8000s"  # a granule of 1000 s: the batches below share one
    exp = spec.parse(doc)
    k = keys.Keys(experiment_name)
    script = FlushScript(redis_client, k, unit_ttl_s=exp.outcome_ttl_s)
    await script.load()
    await apply_as(script, "router-a", _batch(exp, [exposure("u1")], 1))
    score = await redis_client.zscore(k.unit_seen, "u1|u")
    record = keys.decode_unit_record(await redis_client.hget(k.units, "u1|u"))
    assert record.granule == score and record.first is not None
    await redis_client.zrem(k.unit_seen, "u1|u")
    first = "|".join(map(str, record.first))
    await redis_client.hset(k.units, mapping={"u2|f": first, "u2": first})  # as written before records
    await redis_client.zadd(k.unit_seen, {"u2|f": score})
    await apply_as(script, "router-a", _batch(exp, [exposure("u1"), exposure("u2")], 2))
    assert await redis_client.zscore(k.unit_seen, "u1|u") is None  # fresh by its record: not scored again
    assert await redis_client.zrange(k.unit_seen, 0, -1, withscores=True) == [(b"u2|u", score)]
    assert keys.decode_unit_record(await redis_client.hget(k.units, "u2|u")).state[0] == 1
    assert await redis_client.hget(k.units, "u2|f") is None


async def test_the_audit_stream_is_trimmed_by_raw_events_not_by_the_last_batchs_size(
    redis_client: redis.asyncio.Redis, experiment_name: str
) -> None:
    """Before: MAXLEN = cap / n of the current batch, so one large batch cut the stream far below the cap."""
    exp = make_experiment(experiment_name)
    k = keys.Keys(experiment_name)
    script = FlushScript(redis_client, k, stream_events=100)
    await script.load()
    for seq in range(1, 6):  # 5 batches of 10 events
        await script.apply(_batch(exp, [exposure(f"u{seq}-{i}") for i in range(10)], seq), allow_gap=False)
    await script.apply(_batch(exp, [exposure(f"big-{i}") for i in range(60)], 6), allow_gap=False)
    entries = await redis_client.xrange(k.events)
    assert [int(fields[b"n"]) for _, fields in entries] == [10, 10, 10, 10, 60]  # the oldest went: 100 kept
    assert await redis_client.hget(k.meta, "stream_events") == b"100"
    assert await redis_client.llen(k.events_n) == 5


async def back_with_older_data(server: RedisServer, backup: Path, log: EventLog) -> None:
    """Redis killed and started again from the AOF in `backup` (older than what it acknowledged),
    30 more exposures recorded, and the event log's flushes run until it reports the loss."""
    server.kill()
    shutil.copy(backup, server.data_dir / "appendonly.aof")
    server.start()
    record(log, [exposure(f"after{i}") for i in range(30)])

    async def reported() -> bool:
        await log.flush()
        return log.stats.lost_events > 0 and log.stats.buffered == 0 and log.stats.spilled == 0

    await eventually(reported, timeout_s=30)
