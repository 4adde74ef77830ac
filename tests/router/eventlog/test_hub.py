"""Several experiments' event logs on one Redis client and one flush loop (`EventLogHub`).

Against a real Redis (a single server, and the 3-master cluster): every experiment's
events land in its own keys under its own producer and seqs, exactly; the process holds
one client and one flush task however many experiments it serves; a Redis outage spills
each experiment to its own file and the replay restores each exactly.
"""

from __future__ import annotations

import asyncio
import random
from pathlib import Path

import pytest

from abrouter import redisclient
from abrouter.contract import keys
from abrouter.contract.experiment import parse
from abrouter.contract.serialise import to_dict
from abrouter.router.errors import EventLogError
from abrouter.router.eventlog.events import Event, binary_metrics
from abrouter.router.eventlog.hub import EventLogHub
from abrouter.router.eventlog.log import EventLog
from abrouter.router.redis_cluster import LocalCluster
from abrouter.router.redis_server import RedisServer
from abrouter.router.runtime import running
from abrouter.router.settings import ServeSettings
from tests.conftest import forget
from tests.router.eventlog.test_eventlog import (
    assert_strata_equal,
    eventually,
    expected_strata,
    make_experiment,
    random_events,
    record,
)
from tests.router.eventlog.test_shards import per_unit_ids


def flush_tasks() -> list[asyncio.Task[object]]:
    return [t for t in asyncio.all_tasks() if t.get_name().startswith("abrouter-eventlog")]


async def shards_of(client: redisclient.Client, name: str) -> list[keys.Keys]:
    """The experiment's shard keys (one, unsharded, on a single server; 16 on the cluster)."""
    k = keys.Keys(name)
    return keys.shard_keys(k, keys.parse_layout(await client.get(k.layout)))


async def strata(url: str, name: str) -> dict[tuple[int, str], keys.StratumSums]:
    client = await redisclient.connect(url)
    try:
        return keys.decode_agg(keys.merge_sums([await client.hgetall(p.agg) for p in await shards_of(client, name)]))
    finally:
        await client.aclose()


async def producers(url: str, name: str) -> list[dict[bytes, bytes]]:
    """Each shard's producers hash."""
    client = await redisclient.connect(url)
    try:
        return [dict(await client.hgetall(p.producers)) for p in await shards_of(client, name)]
    finally:
        await client.aclose()


@pytest.mark.parametrize("where", ["single", "cluster"])
async def test_experiments_share_one_client_and_one_loop_and_keep_their_own_keys_and_seqs(
    where: str, request: pytest.FixtureRequest, redis_url: str, tmp_path: Path
) -> None:
    url = redis_url if where == "single" else request.getfixturevalue("redis_cluster").url
    names = [f"t-hub-{where}-{i}-{random.Random().getrandbits(32):08x}" for i in range(4)]
    hub = EventLogHub(url)
    logs = [
        EventLog(redis_url=url, experiment=make_experiment(n), spill_dir=tmp_path, flush_interval_s=0.05, hub=hub)
        for n in names
    ]
    recorded: dict[str, list[Event]] = {n: [] for n in names}
    try:
        for log in logs:
            await log.start()
        assert len(hub) == 4 and len(flush_tasks()) == 1  # not one task per experiment
        client = await hub.client()
        assert all(log._delivery.client is client for log in logs)
        for round_ in range(3):
            for i, (name, log) in enumerate(zip(names, logs, strict=True)):
                # The same unit names in every experiment, different events: data sent to
                # another experiment's keys would show in both sums.
                events = per_unit_ids(random_events(random.Random(100 * i + round_), 150, keyed=0.2))
                record(log, events)
                recorded[name] += events

            async def flushed(want: int = round_ + 1) -> bool:  # by the hub's own loop, no flush()
                return all(log.stats.flushed_batches >= want and log.stats.buffered == 0 for log in logs)

            await eventually(flushed, timeout_s=30)
        for name, log in zip(names, logs, strict=True):
            exp = make_experiment(name)
            assert_strata_equal(await strata(url, name), expected_strata(recorded[name], binary_metrics(exp)))
            # Its own producer and seqs (per shard): one per experiment, 3 batches each.
            assert await producers(url, name) == [{log.producer.encode(): b"3"}] * (1 if where == "single" else 16)
            assert log.stats.dropped == 0 and log.stats.spilled == 0 and log.stats.redis_up
        assert len({log.producer for log in logs}) == 4
    finally:
        for log in logs:
            await log.close()
        assert len(hub) == 0
        await hub.aclose()
        assert flush_tasks() == []
        if where == "single":
            forget(url, names)
        else:
            cluster = request.getfixturevalue("redis_cluster")
            assert isinstance(cluster, LocalCluster)
            c = await redisclient.connect(cluster.url)
            try:
                for name in names:
                    for part in await shards_of(c, name):
                        await c.delete(*part.all())
                    await c.delete(keys.Keys(name).layout)
            finally:
                await c.aclose()


async def test_an_outage_spills_each_experiment_to_its_own_file_and_the_replay_restores_each(
    redis_server: RedisServer, tmp_path: Path
) -> None:
    names = ["hub-a", "hub-b", "hub-c"]
    hub = EventLogHub(redis_server.url, redis_timeout_s=0.5)
    logs = [
        EventLog(
            redis_url=redis_server.url,
            experiment=make_experiment(n),
            spill_dir=tmp_path,
            flush_interval_s=60,  # rounds by flush() only
            redis_timeout_s=0.5,
            hub=hub,
        )
        for n in names
    ]
    recorded: dict[str, list[Event]] = {n: [] for n in names}

    def traffic(seed: int) -> None:
        for i, (name, log) in enumerate(zip(names, logs, strict=True)):
            events = random_events(random.Random(seed + i), 120 + 40 * i, keyed=0.3)
            record(log, events)
            recorded[name] += events

    try:
        for log in logs:
            await log.start()
        traffic(1)
        await asyncio.gather(*(log.flush() for log in logs))
        redis_server.kill()
        traffic(10)
        await asyncio.gather(*(log.flush() for log in logs))
        for log, name in zip(logs, names, strict=True):
            # Each its own spill file, with its own events of the outage.
            assert log.stats.spilled == len(recorded[name]) - (120 + 40 * names.index(name)), log.stats
            assert not log.stats.redis_up
        spills = sorted(p.name for p in tmp_path.glob("*.spill"))
        assert len(spills) == 3 and all(any(n in s for s in spills) for n in names)
        await asyncio.to_thread(redis_server.restart)
        traffic(20)
        await asyncio.gather(*(log.flush() for log in logs))
    finally:
        for log in logs:
            await log.close()
        await hub.aclose()
    for log, name in zip(logs, names, strict=True):
        assert log.stats.spilled == 0 and log.stats.dropped == 0
        exp = make_experiment(name)
        assert_strata_equal(await strata(redis_server.url, name), expected_strata(recorded[name], binary_metrics(exp)))
    assert not list(tmp_path.glob("*.spill"))


async def test_a_log_refuses_a_hub_for_another_redis(redis_url: str, tmp_path: Path) -> None:
    hub = EventLogHub("redis://127.0.0.1:1/0")
    with pytest.raises(EventLogError, match="hub"):
        EventLog(redis_url=redis_url, experiment=make_experiment("x"), spill_dir=tmp_path, hub=hub)
    await hub.aclose()


async def test_a_router_serving_several_experiments_runs_one_client_and_one_flush_loop(
    redis_url: str, tmp_path: Path
) -> None:
    names = [f"t-hub-router-{i}-{random.Random().getrandbits(32):08x}" for i in range(3)]
    specs = [parse({**to_dict(make_experiment(n)), "match": {"model": f"m{i}"}}) for i, n in enumerate(names)]
    settings = ServeSettings(redis_url=redis_url, spill_dir=tmp_path, flush_interval_s=0.05)
    recorded: dict[str, list[Event]] = {}
    try:
        async with running(specs, settings) as router:
            logs = [lane.eventlog for lane in router.lanes]
            assert len(logs) == 3 and all(isinstance(log, EventLog) for log in logs)
            assert len(flush_tasks()) == 1
            for i, lane in enumerate(router.lanes):
                assert isinstance(lane.eventlog, EventLog)
                events = random_events(random.Random(i), 100)
                record(lane.eventlog, events)
                recorded[lane.name] = events
            await asyncio.gather(*(log.flush() for log in logs))
            clients = {id(log._delivery.client) for log in logs if isinstance(log, EventLog)}
            assert len(clients) == 1 and None not in clients
        assert flush_tasks() == []  # closed with the router, after every lane's final flush
        for name in names:
            want = expected_strata(recorded[name], binary_metrics(make_experiment(name)))
            assert_strata_equal(await strata(redis_url, name), want)
    finally:
        forget(redis_url, names)


class StuckRound:
    """An experiment whose round hangs (a Redis timeout, a long spill replay), until released."""

    interval_s = 0.02

    def __init__(self) -> None:
        self.started = 0
        self.release = asyncio.Event()

    async def flush_round(self) -> None:
        self.started += 1
        await self.release.wait()


async def test_a_stuck_round_holds_back_no_other_experiment_and_is_not_started_twice(
    redis_url: str, experiment_name: str, tmp_path: Path
) -> None:
    hub = EventLogHub(redis_url)
    stuck = StuckRound()
    exp = make_experiment(experiment_name)
    log = EventLog(redis_url=redis_url, experiment=exp, spill_dir=tmp_path, flush_interval_s=0.02, hub=hub)
    try:
        hub.add(stuck)
        await log.start()
        await eventually(lambda: asyncio.sleep(0, stuck.started == 1))
        recorded = random_events(random.Random(3), 200)
        record(log, recorded)
        await eventually(lambda: asyncio.sleep(0, log.stats.flushed_batches >= 1 and log.stats.buffered == 0))
        hub.wake(stuck)
        await asyncio.sleep(0.1)  # several intervals: the stuck round is still the only one
        assert stuck.started == 1
        stuck.release.set()
        await eventually(lambda: asyncio.sleep(0, stuck.started >= 2))
    finally:
        stuck.release.set()
        hub.remove(stuck)
        await log.close()
        await hub.aclose()
    assert_strata_equal(await strata(redis_url, experiment_name), expected_strata(recorded, binary_metrics(exp)))


async def test_twenty_experiments_flushing_at_once_hold_at_most_max_connections_to_redis(
    redis_server: RedisServer, tmp_path: Path
) -> None:
    from abrouter.router.eventlog.hub import MAX_CONNECTIONS

    names = [f"hub-many-{i}" for i in range(20)]
    hub = EventLogHub(redis_server.url)
    logs = [
        EventLog(
            redis_url=redis_server.url, experiment=make_experiment(n), spill_dir=tmp_path, flush_interval_s=60, hub=hub
        )
        for n in names
    ]
    recorded = {n: random_events(random.Random(i), 80) for i, n in enumerate(names)}
    observer = await redisclient.connect(redis_server.url)
    try:
        await asyncio.gather(*(log.start() for log in logs))
        for name, log in zip(names, logs, strict=True):
            record(log, recorded[name])
        await asyncio.gather(*(log.flush() for log in logs))  # twenty rounds at once
        clients = await observer.client_list()
        assert 1 < len(clients) - 1 <= MAX_CONNECTIONS < len(names)
        for log in logs:
            assert log.stats.flushed_batches == 1 and log.stats.spilled == 0 and log.stats.dropped == 0, log.stats
    finally:
        for log in logs:
            await log.close()
        await hub.aclose()
        await observer.aclose()
    for name in names:
        want = expected_strata(recorded[name], binary_metrics(make_experiment(name)))
        assert_strata_equal(await strata(redis_server.url, name), want)
