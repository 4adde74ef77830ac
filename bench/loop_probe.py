"""Run ``abrouter`` with a loop-lag probe inside: how late a 1 ms timer wakes, and what ran meanwhile.

    python bench/loop_probe.py --out /tmp/probe.json -- serve --config exp.yaml ...

runs ``abrouter serve ...`` in this process, with, on its event loop, a task that sleeps 1 ms
again and again and records how late it wakes (the time the loop was held by something
else: a request's work, a flush round's slice, a garbage collection). It also records the
event log's flush rounds (start and end) and each step of their encoding (`encode_batch`'s
slices, timed), every garbage collection (`gc.callbacks`: generation, duration), and each
flush.lua call's wall time. On exit (SIGTERM) it writes it all as one JSON document to
``--out``; `summary` (imported by the benches) reduces a time window of it to the
largest and 99th-percentile lag, in and out of flush rounds, and what the largest lags
overlapped. A bench tool: it wraps a few functions of the event log from outside.
Works on any checkout on ``PYTHONPATH`` (``grpc_bench.py --before``).
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import json
import sys
import time
from pathlib import Path
from typing import Any

PERIOD_S = 0.001
#: Samples kept at most (about 15 minutes at one a millisecond): bounded memory.
MAX_SAMPLES = 1_000_000


class Probe:
    def __init__(self) -> None:
        self.lags: list[tuple[float, float, int]] = []  # (wake time, lateness s, rounds active or ended meanwhile)
        self.rounds: list[tuple[float, float]] = []  # flush rounds (start, end), perf_counter
        self.steps: list[tuple[float, float, str]] = []  # (start, duration, what): encode steps, evalsha calls
        self.gcs: list[tuple[float, float, int]] = []  # (start, duration, generation)
        self.active = 0
        self.touched = 0  # rounds active at some point since the probe's last wake
        self._gc_start = 0.0

    async def run(self) -> None:
        sleep, clock = asyncio.sleep, time.perf_counter
        while len(self.lags) < MAX_SAMPLES:
            self.touched = self.active
            due = clock() + PERIOD_S
            await sleep(PERIOD_S)
            now = clock()
            self.lags.append((now, now - due, self.touched))

    def on_gc(self, phase: str, info: dict[str, int]) -> None:
        if phase == "start":
            self._gc_start = time.perf_counter()
        else:
            self.gcs.append((self._gc_start, time.perf_counter() - self._gc_start, info["generation"]))

    def dump(self, path: Path) -> None:
        doc = {"lags": self.lags, "rounds": self.rounds, "steps": self.steps, "gcs": self.gcs}
        path.write_text(json.dumps(doc))


PROBE = Probe()


def instrument_serving() -> None:
    """Start the probe on the loop `abrouter serve` makes."""
    from abrouter.router import serving

    new_loop = serving.new_loop

    def probed_loop() -> asyncio.AbstractEventLoop:
        loop = new_loop()
        loop.call_soon(lambda: loop.create_task(PROBE.run()))
        return loop

    serving.new_loop = probed_loop  # type: ignore[assignment]


def instrument_eventlog() -> None:
    """Wrap the event log's round, encoding steps and script calls (whatever this checkout has)."""
    from abrouter.router.eventlog import log, script

    gc.callbacks.append(PROBE.on_gc)
    flush_round = log.EventLog.flush_round

    async def timed_round(self: Any) -> None:
        start = time.perf_counter()
        PROBE.active += 1
        PROBE.touched += 1
        try:
            await flush_round(self)
        finally:
            PROBE.active -= 1
            PROBE.rounds.append((start, time.perf_counter()))

    log.EventLog.flush_round = timed_round  # type: ignore[method-assign]

    # `log.encode_batch`, not `Aggregator.encode`: a compiled class's methods cannot be replaced.
    async def timed_encode_batch(agg: Any, *, producer: str, seq: int) -> Any:
        steps = agg.encode(producer=producer, seq=seq)
        while True:
            start = time.perf_counter()
            try:
                next(steps)
            except StopIteration as done:
                PROBE.steps.append((start, time.perf_counter() - start, "encode-last"))
                return done.value
            PROBE.steps.append((start, time.perf_counter() - start, "encode"))
            await asyncio.sleep(0)

    log.encode_batch = timed_encode_batch

    evalsha = script.FlushScript._evalsha

    async def timed_evalsha(self: Any, args: Any) -> Any:
        start = time.perf_counter()
        try:
            return await evalsha(self, args)
        finally:
            PROBE.steps.append((start, time.perf_counter() - start, "evalsha"))

    script.FlushScript._evalsha = timed_evalsha  # type: ignore[method-assign]
    _instrument_redis()


def _instrument_redis() -> None:
    """Time redis-py's synchronous parts of a command: packing it, and handing it to the transport."""
    import redis.asyncio.connection as rc

    pack = rc.AbstractConnection.pack_command

    def timed_pack(self: Any, *args: Any) -> Any:
        start = time.perf_counter()
        try:
            return pack(self, *args)
        finally:
            PROBE.steps.append((start, time.perf_counter() - start, "redis-pack"))

    rc.AbstractConnection.pack_command = timed_pack  # type: ignore[method-assign]
    send = rc.AbstractConnection._send_packed_command

    async def timed_send(self: Any, command: Any) -> None:
        writer = self._writer
        if writer is None:
            return await send(self, command)
        writelines = writer.writelines

        def timed_writelines(data: Any) -> None:
            start = time.perf_counter()
            try:
                writelines(data)
            finally:
                PROBE.steps.append((start, time.perf_counter() - start, "redis-write"))

        writer.writelines = timed_writelines
        try:
            return await send(self, command)
        finally:
            del writer.writelines

    rc.AbstractConnection._send_packed_command = timed_send  # type: ignore[method-assign]


def summary(doc: dict[str, Any], start: float, end: float) -> dict[str, Any]:
    """The probe's figures between perf_counter times `start` and `end` (the load's window)."""
    lags = [(t, lag, r) for t, lag, r in doc["lags"] if start <= t <= end]
    if not lags:
        return {}

    def pct(values: list[float], q: float) -> float:
        ordered = sorted(values)
        return round(1000 * ordered[min(len(ordered) - 1, int(q * len(ordered)))], 3) if ordered else 0.0

    during = [lag for _, lag, r in lags if r]
    outside = [lag for _, lag, r in lags if not r]
    rounds = [(s, e) for s, e in doc["rounds"] if start <= s <= end]
    steps = [x for x in doc["steps"] if start <= x[0] <= end]
    gcs = [x for x in doc["gcs"] if start <= x[0] <= end]
    encode = [d for _, d, what in steps if what.startswith("encode")]
    evalsha = [d for _, d, what in steps if what == "evalsha"]
    worst = sorted(lags, key=lambda x: -x[1])[:10]

    def overlaps(t: float, lag: float) -> list[str]:
        blocked = (t - lag - PERIOD_S, t)
        out = [f"gc{g} {1000 * d:.2f}ms" for s, d, g in gcs if s < blocked[1] and s + d > blocked[0]]
        out += [
            f"{w} {1000 * d:.2f}ms" for s, d, w in steps if s < blocked[1] and s + d > blocked[0] and w != "evalsha"
        ]
        out += ["round"] * any(s < blocked[1] and e > blocked[0] for s, e in rounds)
        return out

    return {
        "samples": len(lags),
        "lag_p50_ms": pct([x[1] for x in lags], 0.5),
        "lag_p99_ms": pct([x[1] for x in lags], 0.99),
        "lag_max_ms": pct([x[1] for x in lags], 1.0),
        "lag_in_rounds_p99_ms": pct(during, 0.99),
        "lag_in_rounds_max_ms": pct(during, 1.0),
        "lag_outside_p99_ms": pct(outside, 0.99),
        "lag_outside_max_ms": pct(outside, 1.0),
        "rounds": len(rounds),
        "round_wall_median_ms": pct([e - s for s, e in rounds], 0.5),
        "encode_steps_per_round": round(len(encode) / max(1, len(rounds)), 1),
        "encode_step_max_ms": pct(encode, 1.0),
        "encode_ms_per_round": round(1000 * sum(encode) / max(1, len(rounds)), 3),
        "evalsha_wall_median_ms": pct(evalsha, 0.5),
        "gc_counts": [sum(1 for *_, g in gcs if g == gen) for gen in range(3)],
        "gc_max_ms": [pct([d for _, d, g in gcs if g == gen], 1.0) for gen in range(3)],
        "worst": [[round(1000 * lag, 2), *overlaps(t, lag)] for t, lag, _ in worst],
    }


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", type=Path, required=True)
    p.add_argument("argv", nargs=argparse.REMAINDER, help="-- then abrouter's arguments")
    args = p.parse_args()
    argv = args.argv[1:] if args.argv[:1] == ["--"] else args.argv
    instrument_serving()
    instrument_eventlog()
    from abrouter.cli import main as abrouter

    try:
        code = abrouter(argv)
    finally:
        PROBE.dump(args.out)
    sys.exit(code)


if __name__ == "__main__":
    main()
