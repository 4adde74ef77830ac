"""Events/s of one experiment on a 3-master Redis Cluster, unsharded against sharded, in one run.

    .venv/bin/python bench/flush_cluster.py                      # ~1 min
    .venv/bin/python bench/flush_cluster.py --shards 16 --batches 20 --batch 2000

A private `LocalCluster` (3 masters on 127.0.0.1, the redis-server of `find_binary`).
The same router-made batches (`bench/flush_cost.py`'s events: 70% exposures, 30%
outcomes of returning units) are applied through the event log's `ShardedFlush`, once
with one shard (the experiment in one slot, so on one master) and once with `--shards`
(spread over the slots, so over the masters), to two experiments, interleaved over
`--rounds`. Redis CPU is the ``INFO cpu`` delta of each master. A Redis core is the
bottleneck, so one experiment's capacity is events / the busiest master's CPU seconds:
with one shard that master does all the work, sharded each does about a third.
"""

from __future__ import annotations

import argparse
import asyncio
import random
import statistics
import sys
from pathlib import Path

import redis.asyncio

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))

import flush_cost  # noqa: E402

from abrouter import redisclient  # noqa: E402
from abrouter.contract import keys  # noqa: E402
from abrouter.router.eventlog import events  # noqa: E402
from abrouter.router.eventlog.shards import ShardedFlush  # noqa: E402
from abrouter.router.redis_cluster import LocalCluster  # noqa: E402


async def cpu(urls: list[str]) -> list[float]:
    out = []
    for url in urls:
        node = redis.asyncio.Redis.from_url(url)
        info = await node.info("cpu")
        out.append(float(info["used_cpu_user"]) + float(info["used_cpu_sys"]))
        await node.aclose()
    return out


async def apply_all(flush: ShardedFlush, batches: list[events.Batch]) -> None:
    for b in batches:
        status, _, _ = await flush.apply(b, allow_gap=True)
        assert status == 1, status


async def main(args: argparse.Namespace) -> None:
    rng = random.Random(15)
    with LocalCluster(3) as cluster:
        client = await redisclient.connect(cluster.url, socket_timeout=120)
        flushes = {}
        for label, shards in (("one slot", 1), (f"{args.shards} shards", args.shards)):
            name = f"bench-cluster-{shards}"
            flush = ShardedFlush(client, keys.Keys(name), shards=shards, unit_ttl_s=7 * 86_400.0)
            await flush.load()
            flushes[label] = (name, flush)
        recorded = [flush_cost.make_events(rng, args.batch, args.units) for _ in range(args.batches)]
        busiest: dict[str, list[float]] = {label: [] for label in flushes}
        total: dict[str, list[float]] = {label: [] for label in flushes}
        for r in range(args.rounds):
            for label, (name, flush) in flushes.items():
                exp = flush_cost.experiment(name)
                batches = [flush_cost.batch_of(exp, c, r * args.batches + i + 1) for i, c in enumerate(recorded)]
                before = await cpu(cluster.urls)
                await apply_all(flush, batches)
                used = [a - b for a, b in zip(await cpu(cluster.urls), before)]
                busiest[label].append(max(used))
                total[label].append(sum(used))
        await client.aclose()
    n = args.batch * args.batches
    print(f"{n} events per round in batches of {args.batch}, {args.units} units, {args.rounds} rounds, 3 masters")
    print("(Redis CPU from INFO cpu of each master, median of rounds)\n")
    print("| layout | Redis CPU µs/event, all masters | busiest master µs/event | events/s of one experiment |")
    print("|---|---|---|---|")
    for label in flushes:
        all_us = statistics.median(total[label]) / n * 1e6
        top_us = statistics.median(busiest[label]) / n * 1e6
        print(f"| {label} | {all_us:.2f} | {top_us:.2f} | {1e6 / top_us:,.0f} |")


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--shards", type=int, default=keys.CLUSTER_SHARDS)
    parser.add_argument("--batch", type=int, default=2000)
    parser.add_argument("--batches", type=int, default=20)
    parser.add_argument("--units", type=int, default=20_000)
    parser.add_argument("--rounds", type=int, default=3)
    asyncio.run(main(parser.parse_args()))
