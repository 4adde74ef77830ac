"""The longest event-loop stall while the event log encodes and flushes a full batch, and replays its spill.

A ticker task measures the gap between two of its turns on the loop (``await
asyncio.sleep(0)``) while, against a private redis-server:

1. ``flush``: a batch of `--events` exposures (every unit new: one cell each) plus
   outcomes is cut, encoded and sent to Redis;
2. ``spill replay``: an event log whose Redis is unreachable spills such a batch and
   closes; a new event log replays that spill file as it starts.

The longest gap is what a request that arrived at the worst moment waited on top of its
own latency. Run from the repository root::

    PYTHONPATH=. .venv/bin/python bench/loop_stall.py [--events 50000] [--rounds 5]
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import json
import statistics
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable
from pathlib import Path

from abrouter.contract import experiment as model
from abrouter.contract import keys
from abrouter.router import examples
from abrouter.router.eventlog import events, spill
from abrouter.router.eventlog.events import Exposure, Outcome
from abrouter.router.eventlog.log import EventLog

try:
    from abrouter.router.eventlog.log import encode_batch
    from abrouter.router.eventlog.slices import SLICE
except ImportError:  # a tree from before the sliced encoding (to measure "before" with this script)
    encode_batch, SLICE = None, 0  # type: ignore[assignment]
from abrouter.router.redis_server import RedisServer, free_port


class Ticker:
    """The longest time between two turns of a task that only yields."""

    def __init__(self) -> None:
        self.longest = 0.0
        self._task: asyncio.Task[None] | None = None

    async def _run(self) -> None:
        last = time.perf_counter()
        while True:
            await asyncio.sleep(0)
            now = time.perf_counter()
            self.longest = max(self.longest, now - last)
            last = now

    async def measure(self, work: Callable[[], Awaitable[None]]) -> float:
        self.longest = 0.0
        self._task = asyncio.create_task(self._run())
        await asyncio.sleep(0.01)
        try:
            await work()
            await asyncio.sleep(0.005)  # the ticker's first turn after the work measures its last stretch
        finally:
            self._task.cancel()
        return self.longest


def fill(log: EventLog, n: int, round_no: int) -> None:
    now = time.time()
    for i in range(n):
        unit = f"r{round_no}-u{i}"
        log.record_exposure(
            Exposure(
                request_id=f"id-{round_no}-{i}",
                unit_hash=unit,
                variant="control" if i % 2 else "candidate",
                epoch=1,
                ts=now,
                status=200,
                latency_ms=1.5,
                error=False,
            )
        )
        if i % 10 == 0:
            log.record_outcome(
                Outcome(
                    unit_hash=unit,
                    variant="control" if i % 2 else "candidate",
                    epoch=1,
                    metric="conversion",
                    value=1.0,
                    ts=now,
                )
            )


def aggregator(experiment: model.Experiment, n: int) -> events.Aggregator:
    agg = events.Aggregator(keys.metric_order(experiment), events.binary_metrics(experiment))
    for i in range(n):
        agg.add_exposure(Exposure(f"id-{i}", f"u{i}", "control", 1, time.time(), 200, 1.5, False))
        if i % 10 == 0:
            agg.add_outcome(Outcome(f"u{i}", "control", 1, "conversion", 1.0, time.time()))
    return agg


async def strategies(experiment: model.Experiment, n: int, rounds: int) -> None:
    """Encoding alone, three ways: inline (one piece), in a thread, in slices on the loop."""
    agg = aggregator(experiment, n)
    ticker = Ticker()
    line_before = _old_spill_line(agg.batch(producer="p", seq=1))
    line_now = spill.encode(agg.batch(producer="p", seq=1))

    async def inline() -> None:
        agg.batch(producer="p", seq=1)

    async def thread() -> None:
        await asyncio.to_thread(agg.batch, producer="p", seq=1)

    async def sliced() -> None:
        if encode_batch is not None:
            await encode_batch(agg, producer="p", seq=1)

    async def decode_before() -> None:
        json.loads(line_before)

    async def decode_before_thread() -> None:
        await asyncio.to_thread(json.loads, line_before)

    async def decode_now() -> None:
        spill.decode(line_now)

    async def nothing() -> None:
        await asyncio.sleep(0.3)

    print(f"encoding one batch of {n} exposures + {n // 10} outcomes alone ({rounds} rounds):")
    print("| strategy | longest loop stall, median (ms) | worst (ms) | wall time, median (ms) |")
    print("|---|---|---|---|")
    for name, work in (
        ("nothing, 0.3 s (the machine's own noise)", nothing),
        ("encode inline, one piece (before)", inline),
        ("encode in a thread (asyncio.to_thread)", thread),
        (f"encode in slices of {SLICE} rows on the loop (now)", sliced),
        ("decode a spill line, one JSON object (before)", decode_before),
        ("decode that line in a thread", decode_before_thread),
        ("decode a spill line, header + raw texts (now)", decode_now),
    ):
        stalls, walls = [], []
        for _ in range(rounds):
            start = time.perf_counter()
            stalls.append(await ticker.measure(work))
            walls.append(time.perf_counter() - start - 0.015)
        print(
            f"| {name} | {1000 * statistics.median(stalls):.1f} | {1000 * max(stalls):.1f} "
            f"| {1000 * statistics.median(walls):.0f} |"
        )
    print()


def _old_spill_line(batch: events.Batch) -> bytes:
    doc = {"producer": batch.producer, "seq": batch.seq, "n": batch.n_events, "payload": batch.payload}
    return (json.dumps({**doc, "events": batch.events}, separators=(",", ":")) + "\n").encode()


async def main(n: int, rounds: int, *, skip_redis: bool, skip_strategies: bool) -> None:
    experiment = model.load(examples.EXPERIMENT_PATH)
    if not skip_strategies:
        await strategies(experiment, n, rounds)
    if skip_redis:
        return
    events = n
    flushes: list[float] = []
    replays: list[float] = []
    with RedisServer() as redis, tempfile.TemporaryDirectory() as spill_dir:

        def event_log(url: str) -> EventLog:
            return EventLog(
                redis_url=url,
                experiment=experiment,
                spill_dir=Path(spill_dir),
                flush_interval_s=3600,  # only our explicit flushes
                max_events=events * 2,  # no flush forced by size: fill() adds ~1.1 x events
                redis_timeout_s=30.0,  # the script takes ~1 s for 50k new units on a loaded box
            )

        log = event_log(redis.url)
        await log.start()
        ticker = Ticker()
        for r in range(rounds):
            fill(log, events, 2 * r)
            flushes.append(await ticker.measure(log.flush))
            assert log.stats.redis_up and log.stats.buffered == 0, log.stats
            # A router whose Redis is unreachable spills a batch and exits; the next one to
            # start replays that spill file (the same read, decode and send as a spill of its own).
            dead = event_log(f"redis://127.0.0.1:{free_port()}/0")
            await dead.start()
            fill(dead, events, 2 * r + 1)
            await dead.close()
            assert dead.stats.spilled > 0, dead.stats
            heir = event_log(redis.url)
            replays.append(await ticker.measure(heir.start))
            assert heir.stats.redis_up and not list(Path(spill_dir).glob("*.spill"))[1:], heir.stats
            await heir.close()
        await log.close()
    print(f"the event log against a private redis-server: {events} exposures + {events // 10} outcomes per batch")
    print("| phase | longest loop stall, median of rounds (ms) | worst round (ms) |")
    print("|---|---|---|")
    for name, values in (("flush (cut, encode, send)", flushes), ("spill replay (read, decode, send)", replays)):
        print(f"| {name} | {1000 * statistics.median(values):.1f} | {1000 * max(values):.1f} |")


if __name__ == "__main__":
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--events", type=int, default=50_000)
    p.add_argument("--rounds", type=int, default=5)
    p.add_argument("--no-redis", action="store_true", help="only the encoding strategies, no event log")
    p.add_argument("--no-strategies", action="store_true", help="only the event log")
    p.add_argument("--no-gc", action="store_true", help="with the garbage collector off (to see its share)")
    a = p.parse_args()
    if a.no_gc:
        gc.disable()
    asyncio.run(main(a.events, a.rounds, skip_redis=a.no_redis, skip_strategies=a.no_strategies))
    sys.exit(0)
