"""The event log and the analyzer on a real 3-master Redis Cluster (`LocalCluster`, 127.0.0.1).

Each client is given a node that does *not* own the experiment's slot, so every command
that arrives works only because the cluster client was detected and follows MOVED; the
resharding test moves a slot while a router flushes, which sends it ASK and TRYAGAIN too.
Aggregates are compared with the straightforward recomputation of the event log tests.
"""

from __future__ import annotations

import asyncio
import json
import os
import random
import secrets
import subprocess
import sys
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest
import redis
import redis.cluster

from abrouter import cli, redisclient
from abrouter.analysis import reader
from abrouter.contract import experiment as spec
from abrouter.contract import keys
from abrouter.router.eventlog.events import Event, binary_metrics
from abrouter.router.eventlog.log import EventLog
from abrouter.router.redis_cluster import LocalCluster
from tests.router.conftest import MakeRouter
from tests.router.eventlog.test_eventlog import (
    assert_strata_equal,
    eventually,
    expected_strata,
    make_experiment,
    random_events,
    record,
)
from tests.router.eventlog.test_shards import check_a_ramp_step, per_unit_ids


@pytest.fixture
def cluster(redis_cluster: LocalCluster) -> Iterator[redis.cluster.RedisCluster]:
    client = redis.cluster.RedisCluster.from_url(redis_cluster.url.removesuffix("/0"))
    try:
        yield client
    finally:
        client.close()


@pytest.fixture
async def logs(tmp_path: Path) -> AsyncIterator[list[EventLog]]:
    """EventLogs a test starts, closed at teardown."""
    started: list[EventLog] = []
    yield started
    for log in started:
        await log.close()


def owner_port(cluster: redis.cluster.RedisCluster, name: str) -> int:
    """The port of the master that owns experiment `name`'s slot."""
    node = cluster.nodes_manager.get_node_from_slot(cluster.keyslot(keys.Keys(name).agg))
    return int(node.port)


def names_on_every_master(cluster: redis.cluster.RedisCluster, ports: list[int], per_master: int = 1) -> list[str]:
    """Experiment names, `per_master` whose slot each master owns."""
    wanted = {p: per_master for p in ports}
    out = []
    while any(wanted.values()):
        name = f"t-cluster-{secrets.token_hex(4)}"
        port = owner_port(cluster, name)
        if wanted.get(port):
            wanted[port] -= 1
            out.append(name)
    return out


def not_owner_url(redis_cluster: LocalCluster, cluster: redis.cluster.RedisCluster, name: str) -> str:
    return next(u for n, u in zip(redis_cluster.nodes, redis_cluster.urls) if n.port != owner_port(cluster, name))


async def strata_of(url: str, name: str) -> dict[tuple[int, str], keys.StratumSums]:
    """The experiment's sums: its shards' (`keys.Keys.layout`; one, unsharded, when absent), added."""
    client = await redisclient.connect(url)
    try:
        k = keys.Keys(name)
        parts = keys.shard_keys(k, keys.parse_layout(await client.get(k.layout)))
        return keys.decode_agg(keys.merge_sums([await client.hgetall(p.agg) for p in parts]))
    finally:
        await client.aclose()


async def test_the_client_factory_detects_a_cluster_from_any_node_and_a_single_server(
    redis_cluster: LocalCluster, redis_url: str
) -> None:
    for url in redis_cluster.urls:
        client = await redisclient.connect(url)
        assert isinstance(client, redis.asyncio.cluster.RedisCluster)
        await client.aclose()
    single = await redisclient.connect(redis_url)
    assert isinstance(single, redis.asyncio.Redis)
    await single.aclose()


async def test_experiments_on_every_master_flush_and_are_read_back_exactly(
    redis_cluster: LocalCluster, cluster: redis.cluster.RedisCluster, logs: list[EventLog], tmp_path: Path
) -> None:
    names = names_on_every_master(cluster, [n.port for n in redis_cluster.nodes if n.port is not None])
    rng = random.Random(15)
    recorded: dict[str, list[Event]] = {name: [] for name in names}
    for name in names:
        url = not_owner_url(redis_cluster, cluster, name)  # MOVED on every command
        exp = make_experiment(name)
        log = EventLog(redis_url=url, experiment=exp, spill_dir=tmp_path / name, flush_interval_s=60, shards=1)
        await log.start()
        logs.append(log)
    for _ in range(3):
        for name, log in zip(names, logs):
            events = random_events(rng, 200, keyed=0.2, prefix=name)
            record(log, events)
            recorded[name] += events
        await asyncio.gather(*(log.flush() for log in logs))
    for name, log in zip(names, logs):
        assert log.stats.flushed_batches == 3 and log.stats.spilled == 0 and log.stats.redis_up, log.stats
        exp = make_experiment(name)
        want = expected_strata(recorded[name], binary_metrics(exp))
        assert_strata_equal(await strata_of(redis_cluster.url, name), want)
        # The analyzer's read (one MULTI/EXEC in the experiment's slot), from yet another node.
        client = await redisclient.connect(redis_cluster.urls[-1])
        try:
            data = await reader.read(client, exp)
        finally:
            await client.aclose()
        assert data.found and sum(a.units for a in data.arms) > 0


def test_analyze_reads_a_cluster_through_a_node_that_does_not_own_the_slot(
    redis_cluster: LocalCluster, cluster: redis.cluster.RedisCluster, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    (name,) = names_on_every_master(cluster, [owner_port(cluster, "x")])
    k = keys.Keys(name)
    for variant, units, conversions in (("control", 20_000, 1000), ("candidate", 20_000, 1300)):
        cluster.hset(k.agg, mapping={f"1|{variant}|units": units, f"1|{variant}|conversion|sum": conversions})
    cluster.hset(k.epochs, "1", keys.encode_epoch({"control": 50, "candidate": 50}, since=0.0))
    doc = spec.to_dict(make_experiment(name))
    path = tmp_path / "experiment.yaml"
    path.write_text(json.dumps(doc))
    url = not_owner_url(redis_cluster, cluster, name)
    try:
        assert cli.main(["analyze", "--config", str(path), "--redis-url", url, "--json"]) == 0
        result = json.loads(capsys.readouterr().out)
        assert [a["units"] for a in result["variants"]] == [20_000, 20_000]
        assert cluster.xlen(k.decisions) == 1  # the history was appended through the cluster client too
    finally:
        cluster.delete(*[key for key in k.all() if cluster.exists(key)], k.decisions)


def move_slot(cluster: redis.cluster.RedisCluster, slot: int, to_port: int, *, keys_first: int | None = None) -> None:
    """Migrate `slot` to the master on `to_port`, as redis-cli --cluster reshard does.

    With `keys_first`, stop after moving that many keys: the slot is left half-migrated
    (MIGRATING on the source, IMPORTING on the target), so clients get ASK and TRYAGAIN.
    Call again without it to finish.
    """
    source_node = cluster.nodes_manager.get_node_from_slot(slot)
    source = redis.Redis(host="127.0.0.1", port=int(source_node.port))
    target = redis.Redis(host="127.0.0.1", port=to_port)
    masters = [redis.Redis(host="127.0.0.1", port=int(n.port)) for n in cluster.get_primaries()]
    try:
        source_id, target_id = (r.execute_command("CLUSTER", "MYID").decode() for r in (source, target))
        target.execute_command("CLUSTER", "SETSLOT", slot, "IMPORTING", source_id)
        source.execute_command("CLUSTER", "SETSLOT", slot, "MIGRATING", target_id)
        moved = 0
        while batch := source.execute_command("CLUSTER", "GETKEYSINSLOT", slot, 1 if keys_first else 100):
            if keys_first is not None and moved >= keys_first:
                return
            source.execute_command("MIGRATE", "127.0.0.1", to_port, "", 0, 10_000, "KEYS", *batch)
            moved += len(batch)
        for r in [target, source, *masters]:
            r.execute_command("CLUSTER", "SETSLOT", slot, "NODE", target_id)
    finally:
        for r in [source, target, *masters]:
            r.close()


async def test_a_resharding_while_the_router_flushes_loses_and_doubles_nothing(
    redis_cluster: LocalCluster, cluster: redis.cluster.RedisCluster, logs: list[EventLog], tmp_path: Path
) -> None:
    name = f"t-cluster-reshard-{secrets.token_hex(4)}"
    exp = make_experiment(name)
    slot = cluster.keyslot(keys.Keys(name).agg)
    source = owner_port(cluster, name)
    target = next(n.port for n in redis_cluster.nodes if n.port not in (source, None))
    assert target is not None
    log = EventLog(
        redis_url=redis_cluster.url, experiment=exp, spill_dir=tmp_path / "spill", flush_interval_s=60, shards=1
    )
    await log.start()
    logs.append(log)
    rng = random.Random(3)
    recorded: list[Event] = []

    async def round_of(count: int) -> None:
        events = random_events(rng, count, keyed=0.2)
        record(log, events)
        recorded.extend(events)
        await log.flush()

    await round_of(300)
    move_slot(cluster, slot, target, keys_first=3)  # half-way: ASK for moved keys, TRYAGAIN for the script
    await round_of(300)
    move_slot(cluster, slot, target)
    await round_of(300)

    async def drained() -> bool:
        await log.flush()
        return log.stats.spilled == 0 and log.stats.buffered == 0 and log.stats.redis_up

    await eventually(drained, timeout_s=60)
    assert owner_port(redis.cluster.RedisCluster.from_url(redis_cluster.url.removesuffix("/0")), name) == target
    assert log.stats.dropped == 0 and log.stats.quarantined == 0
    assert_strata_equal(await strata_of(redis_cluster.urls[0], name), expected_strata(recorded, binary_metrics(exp)))


async def test_the_router_app_logs_to_a_cluster_through_any_node(
    redis_cluster: LocalCluster, cluster: redis.cluster.RedisCluster, make_router: MakeRouter, experiment_name: str
) -> None:
    r = await make_router(redis=not_owner_url(redis_cluster, cluster, experiment_name))
    for i in range(20):
        resp = await r.client.post("/predict", headers={"X-User-Id": f"user{i}"}, data=b"{}")
        assert resp.status == 200
        resp.release()
    await r.settle()
    strata = await strata_of(redis_cluster.url, experiment_name)
    assert sum(s.units for s in strata.values()) == 20
    ready = await (await r.client.get("/abrouter/readyz")).json()
    assert ready["redis"] == "up"


@pytest.mark.slow
def test_the_demo_runs_on_a_cluster(redis_cluster: LocalCluster, tmp_path: Path) -> None:
    env = {**os.environ, "REDIS_URL": redis_cluster.urls[1]}
    argv = [sys.executable, "-m", "abrouter", "demo", "--out", str(tmp_path / "out"), "--duration", "15", "--seed", "3"]
    done = subprocess.run(argv, env=env, capture_output=True, text=True, timeout=240)
    assert done.returncode == 0, done.stderr[-2000:]
    assert "final decision:" in done.stdout
    assert (tmp_path / "out" / "report.html").stat().st_size > 0


async def test_one_experiment_is_sharded_over_every_master_by_default_and_read_back_exactly(
    redis_cluster: LocalCluster, cluster: redis.cluster.RedisCluster, logs: list[EventLog], tmp_path: Path
) -> None:
    """On a cluster the default layout is `keys.CLUSTER_SHARDS` hash tags, which cover every master."""
    name = f"t-cluster-shards-{secrets.token_hex(4)}"
    exp = make_experiment(name)
    for i, url in enumerate(redis_cluster.urls[:2]):  # two routers, through two nodes
        log = EventLog(redis_url=url, experiment=exp, spill_dir=tmp_path / f"r{i}", flush_interval_s=60)
        await log.start()
        logs.append(log)
    rng = random.Random(16)
    recorded: list[Event] = []
    for _ in range(3):
        for i, log in enumerate(logs):
            events = per_unit_ids(random_events(rng, 400, units=200, keyed=0.2, prefix=f"r{i}-"))
            record(log, events)
            recorded += events
        await asyncio.gather(*(log.flush() for log in logs))
    assert all(log.stats.flushed_batches == 3 and log.stats.quarantined == 0 for log in logs)

    k = keys.Keys(name)
    assert cluster.get(k.layout) == str(keys.CLUSTER_SHARDS).encode()
    parts = keys.shard_keys(k, keys.CLUSTER_SHARDS)
    masters = {int(n.port) for n in cluster.get_primaries()}
    used = {
        int(cluster.nodes_manager.get_node_from_slot(cluster.keyslot(p.agg)).port)
        for p in parts
        if cluster.exists(p.agg)
    }
    assert used == masters  # one experiment, every master
    assert_strata_equal(await strata_of(redis_cluster.urls[2], name), expected_strata(recorded, binary_metrics(exp)))
    client = await redisclient.connect(redis_cluster.urls[-1])  # the analyzer, through a third node
    try:
        data = await reader.read(client, exp)
    finally:
        await client.aclose()
    assert data.found and sum(a.units for a in data.arms) == len({e.unit_hash for e in recorded})


async def test_a_ramp_step_on_a_cluster_sums_exactly_and_stores_the_ramped_form(
    redis_cluster: LocalCluster, tmp_path: Path
) -> None:
    """The ramped unit record (docs/storage.md) on the default layout's shards over three masters."""
    await check_a_ramp_step(redis_cluster.urls, f"t-cluster-ramp-{secrets.token_hex(4)}", tmp_path, shards=None)
