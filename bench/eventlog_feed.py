"""The event log alone at a router's pace: its CPU per event and the event-loop lag it causes, no gRPC.

One `EventLog` (the spec of `bench/grpc_bench.py`) against ``--redis-url``, fed `--rate` exposures a
second for `--seconds` (a new random unit of 1..1,000,000 each, as `grpc_load.py` sends), flushing
every 0.25 s as ``abrouter serve`` does, on uvloop, after `serving.settle_heap` (gc.freeze). A 1 ms
ticker records how late it wakes, in and out of flush rounds. Prints one JSON line: this
process's CPU per event (``time.process_time``: recording, encoding, redis-py; Redis is
another process), the encoding's share (each step of `Aggregator.encode` timed), the
ticker's lag and the flush.lua calls' wall time. ``--record-only`` records without a log
(the hot path's cost alone: `disabled.py`'s is nothing).

    .venv/bin/python bench/eventlog_feed.py --redis-url redis://127.0.0.1:6379/0 --rate 1000 --seconds 10

`bench/redis_neighbour.py` runs it beside a gRPC call path to see what Redis's share of a
core does to calls that never touch the router.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import random
import tempfile
import time
from pathlib import Path

import loop_probe

from abrouter.contract import experiment as model
from abrouter.contract import keys
from abrouter.router import serving
from abrouter.router.eventlog.events import Exposure
from abrouter.router.eventlog.log import EventLog

SPEC = """\
name: grpc-bench
unit: {header: X-User-Id}
variants:
  - {name: control, upstream: "http://127.0.0.1:9", weight: 50}
  - {name: candidate, upstream: "http://127.0.0.1:9", weight: 50}
metrics:
  - {name: conversion, kind: binary}
"""


def exposure(i: int) -> Exposure:
    unit = keys.unit_hash(f"user-{random.randint(1, 1_000_000)}")
    return Exposure(f"req-{i}", unit, "control" if i % 2 else "candidate", 1, time.time(), 200, 1.2, False)


async def feed(log: EventLog | None, rate: float, seconds: float) -> int:
    """Record `rate` exposures a second, due times kept (a late tick records what it owes)."""
    began, sent = time.perf_counter(), 0
    total = int(rate * seconds)
    while sent < total:
        due = int((time.perf_counter() - began) * rate) + 1
        for i in range(sent, min(due, total)):
            e = exposure(i)
            if log is not None:
                log.record_exposure(e)
        sent = max(sent, min(due, total))
        await asyncio.sleep(0.001)
    return sent


async def main(args: argparse.Namespace) -> None:
    tmp = Path(tempfile.mkdtemp(prefix="eventlog-feed-"))
    (tmp / "exp.yaml").write_text(SPEC)
    experiment = model.load(tmp / "exp.yaml")
    log = None
    if not args.record_only:
        log = EventLog(redis_url=args.redis_url, experiment=experiment, spill_dir=tmp, flush_interval_s=0.25)
        await log.start()
    serving.settle_heap()
    probe = loop_probe.PROBE
    ticker = asyncio.create_task(probe.run())
    await feed(log, args.rate, 1.0)  # warm: connections, the script loaded, a few rounds
    cpu0, t0 = time.process_time(), time.perf_counter()
    events = await feed(log, args.rate, args.seconds)
    cpu1, t1 = time.process_time(), time.perf_counter()
    ticker.cancel()
    if log is not None:
        await log.close()
        assert log.stats.dropped == 0 and log.stats.spilled == 0, log.stats
    doc = {"lags": probe.lags, "rounds": probe.rounds, "steps": probe.steps, "gcs": probe.gcs}
    summary = loop_probe.summary(doc, t0, t1)
    if args.dump is not None:
        args.dump.write_text(json.dumps(doc))
    encode_s = sum(d for s, d, w in probe.steps if t0 <= s <= t1 and w.startswith("encode"))
    print(
        json.dumps(
            {
                "events": events,
                "cpu_us_per_event": round((cpu1 - cpu0) / events * 1e6, 2),
                "encode_us_per_event": round(encode_s / events * 1e6, 2),
                **{k: v for k, v in summary.items() if k != "worst"},
            }
        )
    )


if __name__ == "__main__":
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--redis-url", default="redis://127.0.0.1:6379/0")
    p.add_argument("--rate", type=float, default=1000.0)
    p.add_argument("--seconds", type=float, default=10.0)
    p.add_argument("--record-only", action="store_true", help="record into nothing: the feed's own cost")
    p.add_argument("--dump", type=Path, help="write the probe's records (loop_probe.Probe) to this file")
    p.add_argument(
        "--slow-ms",
        type=float,
        help="asyncio's own loop in debug mode instead of uvloop: log every callback that held it longer (stderr)",
    )
    a = p.parse_args()
    loop_probe.instrument_eventlog()
    loop = serving.new_loop() if a.slow_ms is None else asyncio.new_event_loop()
    if a.slow_ms is not None:
        logging.basicConfig(level=logging.WARNING)
        loop.set_debug(True)
        loop.slow_callback_duration = a.slow_ms / 1000
    loop.run_until_complete(main(a))
    loop.close()
