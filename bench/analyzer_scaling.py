"""Analysis time vs traffic: the analyzer's cost from Redis for 10k and 10M logged events.

For each N in ``--events``, this starts a private `RedisServer` (loopback only), writes N
events of one experiment through the router's real write path, then times one look of
the analyzer against that Redis.

Write path: the events are built as the proxy and the outcome API build them
(`events.Exposure` / `events.Outcome`) and recorded with `EventLog.record_exposure` /
`record_outcome`; the `EventLog` folds them into an `events.Aggregator`, cuts a batch
every ``--batch`` events and applies it with ``flush.lua`` (EVALSHA). Nothing is written
to Redis any other way.

Traffic: ``--units`` distinct units (hashed with `keys.unit_hash`, assigned with the
router's `Assigner`) over the two variants of ``abrouter/router/examples/experiment.yaml``, in two
weight epochs (a ramp: epoch 1 at 95/5 for the first 20% of events, epoch 2 at 50/50).
Of the events, 90% are exposures (1% errors, latency 20-120 ms) and 10% outcomes of the
spec's metrics: conversion (binary, 70% of outcomes) and revenue (continuous, 30%), each
credited to a unit already exposed in the current epoch. Seeded: a run is reproducible.

Analysis: ``reader.read`` (one MULTI/EXEC with HGETALL agg + HGETALL epochs, decoded and
built into `ExperimentData`) and ``analyzer.analyze``, each timed ``--repeat`` times;
the table shows medians. The read is also split into the Redis round trip alone (the
same pipeline, raw) and the rest (decode + build). ``look`` is the CLI's full look
(`abrouter.analysis.service.look`: read, history, analyze, record the decision; dry-run sink).

    .venv/bin/python bench/analyzer_scaling.py --events 10000 10000000 --units 100000
"""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import hashlib
import json
import os
import platform
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import redis.asyncio

from abrouter.analysis import analyzer, reader, service
from abrouter.analysis.sinks.base import DryRunSink
from abrouter.contract import experiment as spec
from abrouter.contract import keys
from abrouter.router.assignment import Assigner
from abrouter.router.eventlog import log as eventlog
from abrouter.router.eventlog.events import Exposure, Outcome
from abrouter.router.eventlog.script import FLUSH_SCRIPT
from abrouter.router.redis_server import RedisServer

ROOT = Path(__file__).resolve().parent.parent
SPEC = ROOT / "abrouter" / "router" / "examples" / "experiment.yaml"

EXPOSURE_SHARE = 0.90
CONVERSION_SHARE = 0.07  # of all events; revenue gets the remaining 0.03
EPOCH1_SHARE = 0.20
EPOCH_WEIGHTS = {1: {"control": 95.0, "candidate": 5.0}, 2: {"control": 50.0, "candidate": 50.0}}


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument(
        "--events",
        type=int,
        nargs="+",
        default=[10_000, 10_000_000],
        help="logged events per run, one run (and one private Redis) each (default: 10k 10M)",
    )
    p.add_argument("--units", type=int, default=100_000, help="distinct units (default: 100000)")
    p.add_argument("--batch", type=int, default=50_000, help="events per flush.lua batch (default: 50000)")
    p.add_argument("--repeat", type=int, default=20, help="timed analyses per run (default: 20)")
    p.add_argument(
        "--appendfsync",
        choices=("everysec", "no", "always"),
        default="everysec",
        help="AOF fsync policy of the private Redis (AOF is always on; default: everysec)",
    )
    p.add_argument("--seed", type=int, default=1)
    p.add_argument("--json", type=Path, help="also write the results here as JSON")
    args = p.parse_args(argv)
    if min(args.events) < 1 or args.units < 2 or args.batch < 1 or args.repeat < 1:
        p.error("--events, --batch and --repeat must be >= 1 and --units >= 2")
    return args


def experiment_for(n_events: int) -> spec.Experiment:
    base = spec.load(SPEC)
    # A unique name per run (the Redis hash tag), and epoch 2: the ramp's second step.
    return spec.parse(
        spec.to_dict(dataclasses.replace(base, name=f"{base.name}-scaling-{n_events}", salt=base.salt, epoch=2))
    )


class Traffic:
    """Deterministic synthetic traffic, generated in chunks with numpy, recorded one event at a time."""

    def __init__(self, experiment: spec.Experiment, n_units: int, seed: int) -> None:
        self.rng = np.random.default_rng(seed)
        names = tuple(v.name for v in experiment.variants)
        self.hashes = [keys.unit_hash(f"user-{i}") for i in range(n_units)]
        self.variants: dict[int, list[str]] = {}
        for epoch, weights in EPOCH_WEIGHTS.items():
            assigner = Assigner(experiment.salt, names, tuple(weights[n] for n in names))
            ids = (f"user-{i}" for i in range(n_units))
            self.variants[epoch] = [names[assigner.assign(u)] for u in ids]
        self.seen = {epoch: bytearray(n_units) for epoch in EPOCH_WEIGHTS}
        self.rid_prefix = hashlib.sha256(str(seed).encode()).hexdigest()[:32]  # ids are 42 chars, like the router's

    def record(self, log: eventlog.EventLog, start: int, count: int, n_total: int, ts0: float) -> tuple[int, int]:
        """Record events start..start+count-1; returns (exposures, outcomes)."""
        rng = self.rng
        units = rng.integers(0, len(self.hashes), count).tolist()
        kinds = rng.random(count).tolist()
        lat = rng.uniform(20.0, 120.0, count).tolist()
        err = (rng.random(count) < 0.01).tolist()
        revenue = np.round(rng.lognormal(3.0, 1.0, count), 2).tolist()
        hashes, variants, seen = self.hashes, self.variants, self.seen
        boundary = int(n_total * EPOCH1_SHARE)
        prefix = self.rid_prefix
        exposures = outcomes = 0
        for k in range(count):
            i = start + k
            epoch = 1 if i < boundary else 2
            u = units[k]
            h, v = hashes[u], variants[epoch][u]
            ts = ts0 + i * 1e-3
            kind = kinds[k]
            if kind < EXPOSURE_SHARE or not seen[epoch][u]:
                e = err[k]
                log.record_exposure(
                    Exposure(
                        request_id=f"{prefix}{i:010d}",
                        unit_hash=h,
                        variant=v,
                        epoch=epoch,
                        ts=ts,
                        status=502 if e else 200,
                        latency_ms=lat[k],
                        error=e,
                    )
                )
                seen[epoch][u] = 1
                exposures += 1
            elif kind < EXPOSURE_SHARE + CONVERSION_SHARE:
                log.record_outcome(Outcome(unit_hash=h, variant=v, epoch=epoch, metric="conversion", value=1.0, ts=ts))
                outcomes += 1
            else:
                log.record_outcome(
                    Outcome(unit_hash=h, variant=v, epoch=epoch, metric="revenue", value=revenue[k], ts=ts)
                )
                outcomes += 1
        return exposures, outcomes


async def write(
    server: RedisServer, experiment: spec.Experiment, args: argparse.Namespace, n_events: int, spill_dir: Path
) -> dict[str, float]:
    traffic = Traffic(experiment, args.units, args.seed)
    log = eventlog.EventLog(
        redis_url=server.url,
        experiment=experiment,
        spill_dir=spill_dir,
        flush_interval_s=3600.0,
        max_events=args.batch,
        redis_timeout_s=120.0,
    )
    ts0 = time.time() - 86400.0
    await log.start()
    started = time.perf_counter()
    exposures = outcomes = 0
    pending: asyncio.Task[None] | None = None
    done = 0
    epoch_registered = set()
    boundary = int(n_events * EPOCH1_SHARE)
    while done < n_events:
        count = min(args.batch, n_events - done)
        # The ramp: each epoch's weights are registered before its first event, as the router does.
        for epoch, first in ((1, 0), (2, boundary)):
            if epoch not in epoch_registered and done + count > first:
                log.register_epoch(epoch, EPOCH_WEIGHTS[epoch], ts0 + first * 1e-3)
                epoch_registered.add(epoch)
        x, o = traffic.record(log, done, count, n_events, ts0)
        exposures, outcomes, done = exposures + x, outcomes + o, done + count
        # At most one batch in flight: Redis runs flush.lua on batch k while Python builds k+1.
        if pending is not None:
            await pending
        pending = asyncio.create_task(log.flush())
        for _ in range(50):
            await asyncio.sleep(0)  # loop iterations for the flusher to encode and send it (no waiting on Redis)
    if pending is not None:
        await pending
    await log.close()
    seconds = time.perf_counter() - started
    stats = log.stats
    if stats.spilled or stats.dropped or stats.flush_failures or stats.buffered:
        raise SystemExit(f"the event log did not deliver everything to Redis: {stats}")
    return {"write_s": seconds, "exposures": exposures, "outcomes": outcomes, "batches": stats.flushed_batches}


async def measure(client: redis.asyncio.Redis, experiment: spec.Experiment, repeat: int) -> dict[str, float]:
    k = keys.Keys(experiment.name)
    now = time.time()
    rng = np.random.default_rng(0)

    async def raw() -> None:
        async with client.pipeline(transaction=True) as pipe:
            pipe.hgetall(k.agg)
            pipe.hgetall(k.epochs)
            await pipe.execute()

    data = await reader.read(client, experiment)
    analyzer.analyze(data, now=now, rng=rng)  # warm-up: imports, caches
    t_raw, t_read, t_analyze, t_look = [], [], [], []
    for _ in range(repeat):
        t0 = time.perf_counter()
        await raw()
        t1 = time.perf_counter()
        data = await reader.read(client, experiment)
        t2 = time.perf_counter()
        result = analyzer.analyze(data, now=now, rng=rng)
        t3 = time.perf_counter()
        await service.look(client, experiment, sink=DryRunSink(), now=now)
        t4 = time.perf_counter()
        t_raw.append(t1 - t0)
        t_read.append(t2 - t1)
        t_analyze.append(t3 - t2)
        t_look.append(t4 - t3)
    ms = lambda xs: 1000.0 * statistics.median(xs)  # noqa: E731
    return {
        "redis_rtt_ms": ms(t_raw),
        "read_ms": ms(t_read),
        "decode_build_ms": ms(t_read) - ms(t_raw),
        "analyze_ms": ms(t_analyze),
        "read_analyze_ms": ms([a + b for a, b in zip(t_read, t_analyze)]),
        "look_ms": ms(t_look),
        "units_in_data": sum(a.units for a in data.arms),
        "decision": str(result.decision.action),
    }


async def inspect(client: redis.asyncio.Redis, experiment: spec.Experiment) -> dict[str, object]:
    k = keys.Keys(experiment.name)
    info = await client.info("memory")
    cmd = await client.info("commandstats")
    evalsha = cmd.get("cmdstat_evalsha", {})

    async def usage(key: str) -> int:
        return int(await client.memory_usage(key, samples=0) or 0)

    return {
        "used_memory_human": info["used_memory_human"],
        "used_memory": info["used_memory"],
        "hlen_agg": await client.hlen(k.agg),
        "hlen_units": await client.hlen(k.units),
        "xlen_events": await client.xlen(k.events),
        "mem_agg": await usage(k.agg),
        "mem_units": await usage(k.units),
        "mem_events": await usage(k.events),
        "lua_calls": int(evalsha.get("calls", 0)),
        "lua_s": float(evalsha.get("usec", 0)) / 1e6,
    }


async def run_one(n_events: int, args: argparse.Namespace) -> dict[str, object]:
    experiment = experiment_for(n_events)
    with RedisServer(appendfsync=args.appendfsync) as server, tempfile.TemporaryDirectory() as spill:
        print(f"[{n_events:,} events] writing to {server.url} ...", file=sys.stderr, flush=True)
        written = await write(server, experiment, args, n_events, Path(spill))
        print(
            f"[{n_events:,} events] written in {written['write_s']:.1f} s; analysing ...", file=sys.stderr, flush=True
        )
        client = redis.asyncio.Redis.from_url(server.url)
        try:
            facts = await inspect(client, experiment)
            timing = await measure(client, experiment, args.repeat)
        finally:
            await client.aclose()
    row: dict[str, object] = {"events": n_events, **written, **facts, **timing}
    row["events_per_s"] = n_events / written["write_s"]
    row["lua_events_per_s"] = n_events / facts["lua_s"] if facts["lua_s"] else float("nan")
    return row


def human_bytes(n: float) -> str:
    for unit in ("B", "KiB", "MiB", "GiB"):
        if n < 1024 or unit == "GiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return str(n)


def table(rows: list[dict[str, object]]) -> str:
    cols = [
        ("events", lambda r: f"{r['events']:,}"),
        ("units (Σ over epochs)", lambda r: f"{r['units_in_data']:,}"),
        ("batches", lambda r: f"{r['batches']}"),
        ("write s", lambda r: f"{r['write_s']:.1f}"),
        ("events/s (end to end)", lambda r: f"{r['events_per_s']:,.0f}"),
        ("events/s (flush.lua only)", lambda r: f"{r['lua_events_per_s']:,.0f}"),
        ("used_memory", lambda r: str(r["used_memory_human"])),
        ("HLEN agg", lambda r: f"{r['hlen_agg']}"),
        ("HLEN units", lambda r: f"{r['hlen_units']:,}"),
        (
            "agg / units / events stream",
            lambda r: f"{human_bytes(r['mem_agg'])} / {human_bytes(r['mem_units'])} / {human_bytes(r['mem_events'])}",
        ),
        ("Redis RTT ms", lambda r: f"{r['redis_rtt_ms']:.2f}"),
        ("read ms", lambda r: f"{r['read_ms']:.2f}"),
        ("analyze ms", lambda r: f"{r['analyze_ms']:.2f}"),
        ("read+analyze ms", lambda r: f"{r['read_analyze_ms']:.2f}"),
        ("full look ms", lambda r: f"{r['look_ms']:.2f}"),
    ]
    lines = ["| " + " | ".join(c for c, _ in cols) + " |", "|" + "|".join("---:" for _ in cols) + "|"]
    for r in rows:
        lines.append("| " + " | ".join(f(r) for _, f in cols) + " |")
    return "\n".join(lines)


def machine() -> str:
    model = "?"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return f"{os.cpu_count()} CPUs, {model}, Linux {platform.release()}, Python {platform.python_version()}"


async def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    rows = [await run_one(n, args) for n in args.events]
    lua = hashlib.sha1(FLUSH_SCRIPT.encode()).hexdigest()[:12]
    print(f"# analyzer scaling: {machine()}")
    print(
        f"# units={args.units:,} batch={args.batch:,} repeat={args.repeat} appendfsync={args.appendfsync} "
        f"seed={args.seed} flush.lua sha1={lua}"
    )
    print(table(rows))
    if args.json:
        args.json.write_text(
            json.dumps(
                {
                    "machine": machine(),
                    "args": {k: str(v) for k, v in vars(args).items()},
                    "flush_lua_sha1": lua,
                    "rows": rows,
                },
                indent=2,
                default=str,
            )
        )
    return 0


if __name__ == "__main__":
    sys.exit(asyncio.run(main()))
