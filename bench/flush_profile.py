"""Where flush.lua's Redis CPU goes: the script with one part stubbed out at a time (issue 15).

    .venv/bin/python bench/flush_profile.py [--redis-server /path/to/redis-server] [--rounds 5] [--ramp]

A profiling aid, not a measurement of anything shipped: each variant is flush.lua with one
text substitution (`VARIANTS`) that skips a part (its result is then wrong), applied to the
same router-made batches as `bench/flush_cost.py`, each round interleaved with the
pipelined-HINCRBY floor. What a part costs is the full script's Redis CPU minus the
variant's, same run (medians of rounds).
"""

from __future__ import annotations

import argparse
import asyncio
import hashlib
import random
import statistics
import sys
from pathlib import Path

import redis.asyncio

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))

import flush_cost  # noqa: E402

from abrouter.contract import keys  # noqa: E402
from abrouter.router.eventlog import events, script  # noqa: E402
from abrouter.router.redis_server import RedisServer  # noqa: E402

_CELLS = (
    "    local ok, seg = pcall(function() return {struct.unpack('<' .. (m == SEG and whole or string.rep(cell, m)),"
    " blob, pos)} end)"
)

# name -> (text to find, its replacement, ...); () is the script as it is.
VARIANTS: dict[str, tuple[str, ...]] = {
    "full": (),
    # A part removed (its cost: full - variant) where that leaves the rest as it was...
    "no agg write": ("\nwrite_increments(increments)", "\n"),
    "no stream": ("append_stream(tonumber(ARGV[6]), tonumber(ARGV[7]), ARGV[2], ARGV[5])", ""),
    # ... else done twice (its cost: variant - full).
    "record moved twice (move_record, its result dropped)": (
        "      rec, pointer, was_stale = move_record(cu, b, C)",
        "      move_record(cu, b, C); rec, pointer, was_stale = move_record(cu, b, C)",
    ),
    "HMGET twice": (
        "local raws = nh > 0 and redis.call('HMGET', units, unpack(names)) or {}",
        "local raws = nh > 0 and redis.call('HMGET', units, unpack(names)) or {}; "
        "if nh > 0 then redis.call('HMGET', units, unpack(names)) end",
    ),
    "records HSET twice": (
        "  redis.call('HSET', units, unpack(records, first, math.min(first + 2 * CHUNK - 1, #records)))",
        "  redis.call('HSET', units, unpack(records, first, math.min(first + 2 * CHUNK - 1, #records)))\n"
        "  redis.call('HSET', units, unpack(records, first, math.min(first + 2 * CHUNK - 1, #records)))",
    ),
    # ... or another chunk size (cells per HMGET and per HSET).
    "move_record compiled twice (loadstring)": (
        "record_mover = function(ramped) return loadstring(move_record_source(ramped), 'move_record') end",
        "record_mover = function(ramped) loadstring(move_record_source(ramped), 'move_record');"
        " return loadstring(move_record_source(ramped), 'move_record') end",
    ),
    "cells unpacked twice": (
        _CELLS,
        _CELLS + "; pcall(function() return {struct.unpack('<' .. (m == SEG and whole or string.rep(cell, m)),"
        " blob, pos)} end)",
    ),
    "no expiry": ("\nexpire_units(now, ttl)\n", "\n"),
    "CHUNK 1000": ("local CHUNK = 500", "local CHUNK = 1000"),
    "a field name built per unit (as for batch format 6)": (
        "      names[nh] = h\n",
        "      names[nh] = h\n      local _ = h .. '|x'\n",
    ),
}


async def apply(client: redis.asyncio.Redis, sha: str, k: keys.Keys, batches: list[events.Batch]) -> None:
    for b in batches:
        reply = await client.evalsha(sha, len(k.all()), *k.all(), *flush_cost.script_args(b))
        assert int(reply[0]) == 1, reply


async def main(args: argparse.Namespace) -> None:
    rng = random.Random(15)
    sources = {}
    for name, subs in VARIANTS.items():
        text = script.FLUSH_SCRIPT
        for find, replace in zip(subs[::2], subs[1::2], strict=True):
            if text.count(find) != 1:
                raise SystemExit(f"variant {name!r}: {find!r} is not once in flush.lua")
            text = text.replace(find, replace)
        sources[name] = text
    with RedisServer(binary=args.redis_server or None) as server:
        client = redis.asyncio.Redis.from_url(server.url, socket_timeout=120)
        print(f"redis-server {(await client.info('server'))['redis_version']}")
        shas = {name: await client.script_load(text) for name, text in sources.items()}
        assert all(shas[n] == hashlib.sha1(t.encode()).hexdigest() for n, t in sources.items())
        recorded = [flush_cost.make_events(rng, args.batch, args.units) for _ in range(args.batches)]
        results: dict[str, list[float]] = {"floor": [], **{n: [] for n in sources}}
        for r in range(args.rounds):
            for name in sources:
                exp_name = f"prof-{list(sources).index(name)}"
                k = keys.Keys(exp_name)
                exp = flush_cost.experiment(exp_name)
                batches = [
                    flush_cost.batch_of(
                        exp, flush_cost.after_ramp(c) if args.ramp and r > 0 else c, r * args.batches + i + 1
                    )
                    for i, c in enumerate(recorded)
                ]
                used, _ = await flush_cost.measured(client, lambda s=shas[name], k=k, b=batches: apply(client, s, k, b))
                results[name].append(used)
            used, _ = await flush_cost.measured(
                client, lambda: flush_cost.floor(client, "prof-floor", recorded), slowlog=False
            )
            results["floor"].append(used)
        n = args.batch * args.batches
        floor_us = statistics.median(results["floor"]) / n * 1e6
        full_us = statistics.median(results["full"]) / n * 1e6
        print("| variant | Redis CPU µs/event | × floor | full - variant, µs/event | lowest round, µs/event |")
        print("|---|---|---|---|---|")
        for name, runs in results.items():
            us = statistics.median(runs) / n * 1e6
            print(f"| {name} | {us:.2f} | {us / floor_us:.2f} | {full_us - us:.2f} | {min(runs) / n * 1e6:.2f} |")
        await client.aclose()


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--batch", type=int, default=2000)
    parser.add_argument("--batches", type=int, default=20)
    parser.add_argument("--units", type=int, default=20_000)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--redis-server", default="")
    parser.add_argument(
        "--ramp",
        action="store_true",
        help="rounds after the first in epoch 2, as flush_cost.py --ramp (ramped records)",
    )
    asyncio.run(main(parser.parse_args()))
