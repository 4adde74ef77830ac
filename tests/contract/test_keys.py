"""The Redis key schema is a contract with data that already exists.

`data/redis-before-the-move.json` was written by the code of commit 9942304 (before the
package moved under `abrouter/`): a real event log flushed exposures and outcomes into a
real Redis, the analyzer took one look, and every key was dumped, together with what that
version's reader read back. Restored into a real Redis, it must read back the same today,
seed the next look, and accept new batches on top.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import redis.asyncio

from abrouter.analysis import history, reader
from abrouter.contract import experiment as model
from abrouter.contract import history as fmt
from abrouter.contract import keys
from abrouter.router.eventlog.events import Exposure
from abrouter.router.eventlog.log import EventLog

PINNED = json.loads((Path(__file__).parent / "data" / "redis-before-the-move.json").read_text())


async def restore(client: redis.asyncio.Redis, name: str) -> None:
    for key, item in PINNED["keys"].items():
        key = key.replace("{pinned}", f"{{{name}}}")
        value: Any = item["value"]
        if item["type"] == "hash":
            await client.hset(key, mapping=value)
        elif item["type"] == "string":
            await client.set(key, value)
        elif item["type"] == "zset":
            await client.zadd(key, {member: score for member, score in value})
        else:
            for fields in value:
                await client.xadd(key, fields)


def spec(name: str) -> model.Experiment:
    return model.parse({**PINNED["spec"], "name": name})


def test_the_key_names_are_the_ones_existing_data_uses() -> None:
    names = {k.replace("{pinned}", "{E}") for k in PINNED["keys"]}
    # meta (the empty-restart marker) and unit-seen (unit state expiry) came later (issue 7):
    # new keys, created by the first flush, so the pinned data has none.
    names |= {"abrouter:{E}:meta", "abrouter:{E}:unit-seen"}
    # latency (the per-arm latency histograms, issue 10) came later still.
    names |= {"abrouter:{E}:latency"}
    # events-n (the audit stream's per-entry event counts, issue 15) too.
    names |= {"abrouter:{E}:events-n"}
    assert names == {k.replace("{x}", "{E}") for k in keys.Keys("x").all()} | {"abrouter:{E}:decisions"}


async def test_data_written_before_the_move_reads_back_the_same(
    redis_client: redis.asyncio.Redis, experiment_name: str
) -> None:
    await restore(redis_client, experiment_name)
    data = await reader.read(redis_client, spec(experiment_name))
    read_back = {
        a.name: {
            "units": a.units,
            "strata": [
                {
                    "epoch": s.epoch,
                    "units": s.units,
                    "metrics": {
                        m: [x.n, x.sum, x.sum_sq, x.den_sum, x.den_sum_sq, x.sum_products]
                        for m, x in sorted(s.metrics.items())
                    },
                }
                for s in a.strata
            ],
        }
        for a in data.arms
    }
    assert read_back == PINNED["read_back"]
    last = await history.last(redis_client, keys.Keys(experiment_name))
    assert last is not None and last.units == sum(a["units"] for a in PINNED["read_back"].values())
    assert last.previous(last.units), "the old entry seeds the running minima of the next look"


async def test_a_new_router_adds_to_data_written_before_the_move(
    redis_url: str, redis_client: redis.asyncio.Redis, experiment_name: str, tmp_path: Path
) -> None:
    await restore(redis_client, experiment_name)
    experiment = spec(experiment_name)
    before = await reader.read(redis_client, experiment)
    log = EventLog(redis_url=redis_url, experiment=experiment, spill_dir=tmp_path)
    await log.start()
    log.record_exposure(Exposure("new", "a-new-unit", "control", 1, 1700000200.0, 200, 5.0, False))
    await log.close()
    assert log.stats.quarantined == 0 and log.stats.dropped == 0
    after = await reader.read(redis_client, experiment)
    assert after.arm("control").units == before.arm("control").units + 1
    assert after.arm("candidate").units == before.arm("candidate").units
    # The old data has no histograms; the new request is counted in one, in its bucket.
    assert before.arm("control").latency == {} and after.arm("candidate").latency == {}
    assert sum(after.arm("control").latency[1]) == 1
    assert after.arm("control").latency[1][keys.latency_bucket(5.0)] == 1


async def test_the_latency_histogram_layout(
    redis_url: str, redis_client: redis.asyncio.Redis, experiment_name: str, tmp_path: Path
) -> None:
    # abrouter:{E}:latency is a hash "epoch|variant|bucket" -> requests, bucket per
    # keys.LATENCY_EDGES_MS: existing data depends on the name, the fields and the edges.
    k = keys.Keys(experiment_name)
    assert k.latency == f"abrouter:{{{experiment_name}}}:latency" and k.all()[-2] == k.latency
    log = EventLog(redis_url=redis_url, experiment=spec(experiment_name), spill_dir=tmp_path)
    await log.start()
    for i, ms in enumerate((0.05, 5.0, 5.0, 70_000.0)):
        log.record_exposure(Exposure(f"r{i}", f"u{i}", "candidate", 1, 1700000200.0, 200, ms, False))
    await log.close()
    stored = await redis_client.hgetall(k.latency)
    assert stored == {b"1|candidate|0": b"1", b"1|candidate|17": b"2", b"1|candidate|59": b"1"}


def test_history_entries_carry_latency_quantiles_and_older_ones_read_without() -> None:
    arm = fmt.ArmEntry("candidate", 50.0, 10, 12, latency_p50_ms=8.5, latency_p95_ms=41.0)
    entry = fmt.DecisionEntry(1.7e9, 1, "continue", "r", {"candidate": 50.0}, False, 10, arms=(arm,))
    assert fmt.decode(fmt.encode(entry)).arms == (arm,)
    old = json.loads(fmt.encode(entry))
    for a in old["arms"]:
        del a["latency_p50_ms"], a["latency_p95_ms"]  # as written before the quantiles existed
    (read,) = fmt.decode(json.dumps(old)).arms
    assert (read.latency_p50_ms, read.latency_p95_ms, read.units) == (None, None, 10)


def test_a_unit_hash_is_blake2b_of_the_unit_with_our_person_each_time_afresh():
    """The stored identity of a unit, whatever came before it (each hash starts from the same state)."""
    import hashlib

    units = ["user-1", "user-1", "", "üser-\udcff", "user-2"]
    expected = [
        hashlib.blake2b(u.encode("utf-8", "surrogatepass"), digest_size=8, person=b"abrouter-unit").hexdigest()
        for u in units
    ]
    assert [keys.unit_hash(u) for u in units] == expected
    assert keys.unit_hash("user-1") == "4b2356ac816ef107"  # as stored by every router so far
