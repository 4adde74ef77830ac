"""One experiment over several hash tags (shards), on one real Redis: exact sums, exactly once per shard.

The cluster side (the shards spread over three masters) is in tests/router/test_cluster.py.
"""

from __future__ import annotations

import asyncio
import dataclasses
import json
import random
import secrets
import shutil
import zlib
from pathlib import Path

import pytest
import redis.asyncio

from abrouter import redisclient
from abrouter.analysis import reader
from abrouter.contract import experiment as model
from abrouter.contract import keys
from abrouter.router.eventlog import cells as cells_
from abrouter.router.eventlog import shards
from abrouter.router.eventlog.events import Aggregator, Batch, Event, Exposure, Outcome, binary_metrics, slow_ms
from abrouter.router.eventlog.log import EventLog
from abrouter.router.eventlog.shards import ShardedFlush
from abrouter.router.redis_server import RedisServer
from abrouter.router.settings import ServeSettings
from tests.router.eventlog.test_eventlog import (
    _batch,
    assert_strata_equal,
    expected_strata,
    make_experiment,
    random_events,
    record,
)
from tests.router.eventlog.test_loss import back_with_older_data, exposure
from tests.router.served import serve, two_arms, write_spec


def per_unit_ids(recorded: list[Event]) -> list[Event]:
    """The events with each event_id made the unit's own: a client's retry carries its unit, and
    sharded, an id is remembered in its unit's shard (the same id for two units counts twice)."""
    return [
        dataclasses.replace(e, event_id=f"{e.unit_hash}:{e.event_id}")
        if isinstance(e, Outcome) and e.event_id is not None
        else e
        for e in recorded
    ]


async def shard_strata(client: redis.asyncio.Redis, name: str, n: int) -> dict[tuple[int, str], keys.StratumSums]:
    """The experiment's sums: every shard's `agg`, added."""
    replies = [await client.hgetall(k.agg) for k in keys.shard_keys(keys.Keys(name), n)]
    return keys.decode_agg(keys.merge_sums(replies))


async def test_a_sharded_experiment_sums_to_the_recomputation_and_the_analyzer_reads_it(
    redis_url: str, redis_client: redis.asyncio.Redis, experiment_name: str, tmp_path: Path
) -> None:
    exp = make_experiment(experiment_name)
    log = EventLog(redis_url=redis_url, experiment=exp, spill_dir=tmp_path, flush_interval_s=60, shards=4)
    await log.start()
    log.register_epoch(1, {"control": 50, "candidate": 50}, since=1000.0)
    log.register_epoch(2, {"control": 25, "candidate": 75}, since=2000.0)
    rng = random.Random(4)
    recorded: list[Event] = []
    for _ in range(3):
        events = per_unit_ids(random_events(rng, 300, keyed=0.2))
        record(log, events)
        recorded += events
        await log.flush()
    assert (await log.lookup_units(["u1"]))["u1"] is not None  # the pointer, found in u1's shard
    await log.close()
    assert log.stats.flushed_batches == 3 and log.stats.quarantined == 0

    k = keys.Keys(experiment_name)
    assert await redis_client.get(k.layout) == b"4"
    assert not await redis_client.exists(k.agg)  # nothing under the unsharded tag
    parts = keys.shard_keys(k, 4)
    assert all([await redis_client.hlen(p.agg) for p in parts])  # every shard holds some
    assert await redis_client.hlen(parts[0].epochs) and not await redis_client.exists(parts[1].epochs)
    want = expected_strata(recorded, binary_metrics(exp))
    assert_strata_equal(await shard_strata(redis_client, experiment_name, 4), want)

    data = await reader.read(redis_client, exp)
    read = {(s.epoch, a.name): (s.units, s.exposures) for a in data.arms for s in a.strata}
    assert read == {k: (s.units, s.exposures) for k, s in want.items() if not k[1].endswith(keys.MULTIPLE_SUFFIX)}
    assert [(e.epoch, e.since) for e in data.epochs] == [(1, 1000.0), (2, 2000.0)]


async def test_a_batch_applied_by_some_shards_only_applies_once_everywhere(
    redis_url: str, redis_client: redis.asyncio.Redis, experiment_name: str
) -> None:
    """A call that failed part-way (shard 0 applied, the others not): the re-send completes it, exactly once."""
    exp = make_experiment(experiment_name)
    recorded = random_events(random.Random(9), 200)
    batch = _batch(exp, recorded, 1)
    client = redis.asyncio.Redis.from_url(redis_url)
    try:
        flush = ShardedFlush(client, keys.Keys(experiment_name), shards=3)
        await flush.load()
        payload, raw, packed = next(shards.split(batch.payload, batch.events, 3, batch.cells))
        await flush.parts[0].apply(Batch("p-test", 1, payload, raw, batch.n_events, cells=packed), allow_gap=False)
        assert await flush.apply(batch, allow_gap=False) == (shards.APPLIED, 0, 0)
        assert (await flush.apply(batch, allow_gap=False))[0] == shards.DUPLICATE
        assert (await flush.last_seqs(["p-test"]))[0] == {"p-test": 1}
    finally:
        await client.aclose()
    assert_strata_equal(
        await shard_strata(redis_client, experiment_name, 3), expected_strata(recorded, binary_metrics(exp))
    )


async def test_the_layout_in_redis_wins_over_what_a_router_asks(
    redis_url: str, redis_client: redis.asyncio.Redis, experiment_name: str, tmp_path: Path
) -> None:
    exp = make_experiment(experiment_name)
    first = EventLog(redis_url=redis_url, experiment=exp, spill_dir=tmp_path / "a", shards=2)
    await first.start()
    record(first, random_events(random.Random(1), 50))
    await first.close()
    second = EventLog(redis_url=redis_url, experiment=exp, spill_dir=tmp_path / "b", shards=5)
    await second.start()
    record(second, random_events(random.Random(2), 50, prefix="v"))
    await second.close()
    assert await redis_client.get(keys.Keys(experiment_name).layout) == b"2"
    assert not await redis_client.exists(keys.shard_keys(keys.Keys(experiment_name), 5)[4].agg)


async def test_one_server_by_default_keeps_the_unsharded_layout(
    redis_url: str, redis_client: redis.asyncio.Redis, experiment_name: str, tmp_path: Path
) -> None:
    log = EventLog(redis_url=redis_url, experiment=make_experiment(experiment_name), spill_dir=tmp_path)
    await log.start()
    record(log, random_events(random.Random(3), 20))
    await log.close()
    k = keys.Keys(experiment_name)
    assert await redis_client.get(k.layout) == b"1" and await redis_client.exists(k.agg)


def test_split_sends_each_unit_to_its_shard_and_the_rest_to_shard_0() -> None:
    exp = make_experiment("split")
    recorded = random_events(random.Random(5), 100, keyed=0.5)
    batch = _batch(exp, recorded, 1)
    parts = list(shards.split(batch.payload, batch.events, 3, batch.cells))
    docs = [json.loads(p) for p, _, _ in parts]
    whole = json.loads(batch.payload)
    cells = [cells_.cells_of(d, packed) for d, (_, _, packed) in zip(docs, parts)]
    assert sorted(map(json.dumps, (c for part in cells for c in part))) == sorted(
        map(json.dumps, cells_.cells_of(whole, batch.cells))
    )
    assert [d["ncells"] for d in docs] == [len(part) for part in cells]
    assert all(keys.shard_of(c[0], 3) == i for i, part in enumerate(cells) for c in part)
    assert all(keys.shard_of(r[1], 3) == i for i, d in enumerate(docs) for r in d["keyed"])
    assert docs[0]["epochs"] == whole["epochs"] and docs[0]["n"] == whole["n"] and parts[0][1] == batch.events
    assert all(d["epochs"] == [] and d["n"] == 0 and d["latency"] == [] for d in docs[1:])


@pytest.mark.parametrize("version", [2, 4, 5])
def test_split_of_an_older_batch_keeps_its_layout(version: int) -> None:
    """A spill file of a router from before packed cells, replayed into a sharded experiment:
    each part is in the batch's own layout, and the parts hold the same cells as the whole."""
    exp = make_experiment("split")
    batch = _batch(exp, random_events(random.Random(6), 100), 1)
    payload, _ = cells_.as_version(batch.payload, batch.cells, version)
    parts = list(shards.split(payload, batch.events, 3))
    docs = [json.loads(p) for p, _, packed in parts if packed == b""]
    assert len(docs) == 3 and all(d["v"] == version and "ncells" not in d for d in docs)
    assert all(("width" in d) == (version == 5) for d in docs)
    got = [c for d in docs for c in cells_.cells_of(d)]
    assert sorted(map(json.dumps, got)) == sorted(map(json.dumps, cells_.cells_of(json.loads(payload))))
    assert all(keys.shard_of(c[0], 3) == i for i, d in enumerate(docs) for c in cells_.cells_of(d))


def test_an_aggregator_that_knows_the_shards_encodes_the_parts_split_would_make() -> None:
    """`Batch.parts`, built from the rows as they are encoded, are `split`'s parts of the same
    batch (no JSON decode and re-encode on the event loop), and the whole payload still splits
    into them (a batch replayed from the spill file, which keeps the payload only)."""
    exp = make_experiment("split")
    recorded = random_events(random.Random(5), 300, keyed=0.5)
    agg = Aggregator(keys.metric_order(exp), binary_metrics(exp), slow_ms=slow_ms(exp), shards=3)
    for ev in recorded:
        agg.add_exposure(ev) if isinstance(ev, Exposure) else agg.add_outcome(ev)
    batch = agg.batch(producer="p-test", seq=1)
    assert len(batch.parts) == 3 and all(json.loads(p)["ncells"] for p in batch.parts) and all(batch.part_cells)
    split = list(shards.split(batch.payload, batch.events, 3, batch.cells))
    assert [json.loads(p) for p in batch.parts] == [json.loads(p) for p, _, _ in split]
    assert list(batch.part_cells) == [packed for _, _, packed in split]
    unsplit = _batch(exp, recorded, 1)  # one shard: no parts, the same cells in another order
    got = cells_.cells_of(json.loads(unsplit.payload), unsplit.cells)
    assert unsplit.parts == () and sorted(map(json.dumps, got)) == sorted(
        json.dumps(c) for p, _, packed in split for c in cells_.cells_of(json.loads(p), packed)
    )


def test_combine_reports_a_gap_from_any_shard_with_the_lowest_last_seq() -> None:
    assert shards.combine([(1, 4, 1), (0, 5, 0), (-1, 3, 2)]) == (shards.GAP, 3, 3)
    assert shards.combine([(1, 4, 0), (0, 5, 0)]) == (shards.APPLIED, 4, 0)
    assert shards.combine([(0, 5, 0), (0, 5, 0)]) == (shards.DUPLICATE, 5, 0)


def test_shard_tags_spread_over_the_slots_and_bad_counts_are_refused() -> None:
    tags = [k.tag for k in keys.shard_keys(keys.Keys("exp"), 16)]
    assert [keys.key_slot(t) * 16 // 16384 for t in tags] == list(range(16))
    assert keys.shard_keys(keys.Keys("exp"), 1) == (keys.Keys("exp"),)
    for bad in (0, keys.MAX_SHARDS + 1):
        with pytest.raises(ValueError, match="shards must be"):
            keys.shard_keys(keys.Keys("exp"), bad)


async def test_a_sharded_experiment_on_a_redis_back_with_an_older_aof_counts_the_hole(tmp_path: Path) -> None:
    """The acks and holes across shards: Redis lost two batches of every shard; the router counts them,
    re-registers, and the analyzer reads the hole from shard 0's marker and the sums of the rest."""
    name = f"t-shards-aof-{secrets.token_hex(4)}"
    exp = make_experiment(name)
    with RedisServer(appendfsync="always") as server:
        log = EventLog(
            redis_url=server.url,
            experiment=exp,
            spill_dir=tmp_path / "spill",
            flush_interval_s=60,
            retain_s=0.05,
            shards=3,
        )
        await log.start()
        try:
            record(log, [exposure(f"kept{i}") for i in range(100)])
            await log.flush()
            backup = tmp_path / "appendonly.aof"
            shutil.copy(server.data_dir / "appendonly.aof", backup)
            for round_, count in enumerate((50, 70)):
                record(log, [exposure(f"lost{round_}-{i}") for i in range(count)])
                await log.flush()
            await asyncio.sleep(0.1)
            await log.flush()  # idle: compares with Redis (nothing lost yet) and drops the retained copies
            await back_with_older_data(server, backup, log)
            assert (log.stats.lost_events, log.stats.redis_resets, log.stats.dropped) == (120, 1, 0)
        finally:
            await log.close()
        client = redis.asyncio.Redis.from_url(server.url)
        try:
            data = await reader.read(client, exp)
        finally:
            await client.aclose()
    assert data.lost_events == 120 and data.lost_between is not None
    assert sum(a.units for a in data.arms) == 100 + 30


async def test_serves_shard_count_reaches_a_new_experiments_layout(
    redis_url: str,
    redis_client: redis.asyncio.Redis,
    experiment_name: str,
    tmp_path: Path,
    upstream_urls: dict[str, str],
) -> None:
    """`abrouter serve --shards 3` (ServeSettings.shards): the event log spreads a new experiment over 3 tags."""
    spec = two_arms(experiment_name, upstream_urls["control"], upstream_urls["candidate"])
    settings = ServeSettings(redis_url=redis_url, spill_dir=tmp_path / "spill", flush_interval_s=0.05, shards=3)
    client = await serve(model.load(write_spec(tmp_path, spec)), settings)
    try:
        for i in range(20):
            async with client.post("/predict", headers={"X-User-Id": f"u{i}"}, data=b"{}") as resp:
                assert resp.status == 200
        await client.lane.eventlog.flush()
    finally:
        await client.close()
    k = keys.Keys(experiment_name)
    assert await redis_client.get(k.layout) == b"3"
    exposures = keys.decode_agg(keys.merge_sums([await redis_client.hgetall(p.agg) for p in keys.shard_keys(k, 3)]))
    assert sum(s.exposures for s in exposures.values()) == 20


# ------------------------------------------------------------------ [ramped] a ramp step, sharded


def sticky_events(
    rng: random.Random, count: int, epoch: int, exposed: set[str], *, units: int = 120, prefix: str = "u"
) -> list[Event]:
    """Events of units that keep their variant (as a ramp step that moves none of them), in
    `epoch`; a unit's first event is an exposure (`exposed`: the units that had one)."""
    out: list[Event] = []
    for i in range(count):
        unit = f"{prefix}{rng.randrange(units)}"
        variant = ("control", "candidate")[zlib.crc32(unit.encode()) % 2]
        if rng.random() < 0.7 or unit not in exposed:
            exposed.add(unit)
            out.append(Exposure(f"{prefix}-{epoch}-{i}", unit, variant, epoch, 0.0, 200, rng.uniform(1, 80), False))
        else:
            out.append(Outcome(unit, variant, epoch, "revenue", round(rng.uniform(0, 50), 2), 0.0))
    return out


async def check_a_ramp_step(urls: list[str], name: str, tmp_path: Path, *, shards: int | None) -> None:
    """Two routers (through `urls[0]` and `urls[-1]`) log epoch 1, then the same units in epoch 2
    (a ramp step): the sums over the shards are the recomputation's (intent-to-treat), and the
    returning units' records are in the ramped form, first exposure in epoch 1, latest in epoch
    2, each unit's pointer its epoch-2 stratum. Revenue has two decimals: compared by
    `assert_strata_equal`."""
    exp = make_experiment(name)
    logs = [
        EventLog(redis_url=url, experiment=exp, spill_dir=tmp_path / f"r{i}", flush_interval_s=60, shards=shards)
        for i, url in enumerate((urls[0], urls[-1]))
    ]
    rng = random.Random(7)
    recorded: list[Event] = []
    exposed: set[str] = set()
    client = await redisclient.connect(urls[0])
    try:
        for log in logs:
            await log.start()
        for epoch in (1, 2, 2):
            for i, log in enumerate(logs):
                events_ = sticky_events(rng, 300, epoch, exposed, prefix=f"r{i}-")
                record(log, events_)
                recorded += events_
            await asyncio.gather(*(log.flush() for log in logs))
        assert all(log.stats.flushed_batches == 3 and log.stats.quarantined == 0 for log in logs)
        k = keys.Keys(name)
        parts = keys.shard_keys(k, keys.parse_layout(await client.get(k.layout)))
        assert len(parts) == (shards or keys.CLUSTER_SHARDS)
        got = keys.decode_agg(keys.merge_sums([await client.hgetall(p.agg) for p in parts]))
        assert_strata_equal(got, expected_strata(recorded, binary_metrics(exp)))
        units: dict[bytes, bytes] = {}
        for p in parts:
            units.update(await client.hgetall(p.units))
    finally:
        for log in logs:
            await log.close()
        await client.aclose()
    both = {e.unit_hash for e in recorded if e.epoch == 1} & {e.unit_hash for e in recorded if e.epoch == 2}
    exposed = {e.unit_hash for e in recorded if isinstance(e, Exposure) and e.epoch == 2}
    ramped = 0
    for h in both & exposed:
        raw = units[f"{h}|u".encode()]
        record_ = keys.decode_unit_record(raw)
        variant = ("control", "candidate")[zlib.crc32(h.encode()) % 2]
        assert 0x80 <= raw[3] < 0xC0 and not record_.multiple, h  # the ramped form
        assert record_.first == (1, variant) and record_.latest == (2, variant)
        assert units[h.encode()] == f"2|{variant}".encode()
        ramped += 1
    assert ramped > 100


async def test_a_ramp_step_over_shards_sums_exactly_and_stores_the_ramped_form(
    redis_url: str, experiment_name: str, tmp_path: Path
) -> None:
    await check_a_ramp_step([redis_url], experiment_name, tmp_path, shards=4)
