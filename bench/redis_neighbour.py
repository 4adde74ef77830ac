"""What the event log's Redis work does to gRPC calls that never touch the router.

`grpc_bench.py` runs the router's private redis-server on the load core (core 1) with the echo
upstream and the load generator. Each flush round runs flush.lua there for a few milliseconds,
which the upstream and the load generator then wait for: latency a direct call (no proxy at
all) pays as well. This starts the upstream and a redis-server on `--load-cpus`, then
alternates, `--rounds` times, `grpc_load.py --rate R` straight to the upstream (no proxy):

- ``alone``: nothing else runs;
- ``beside a flushing event log``: `bench/eventlog_feed.py` on `--proxy-cpus` (where the router
  runs) records R exposures a second into an `EventLog` against that Redis meanwhile, as the
  router at R calls a second does, and reports its own event-loop lag.

Prints a Markdown table (direct calls' p50/p90/p99/p99.9 per round) and the feed's JSON lines.

    .venv/bin/python bench/redis_neighbour.py --rate 1000 --seconds 10 --rounds 2
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import grpc_bench as gb


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--rate", type=float, default=1000.0)
    p.add_argument("--seconds", type=float, default=10.0)
    p.add_argument("--rounds", type=int, default=2)
    p.add_argument("--proxy-cpus", default="0")
    p.add_argument("--load-cpus", default="1")
    args = p.parse_args()
    from abrouter.router.redis_server import find_binary

    tmp = Path(tempfile.mkdtemp(prefix="redis-neighbour-"))
    a, b, redis_port = (gb.free_port() for _ in range(3))
    upstream = [gb.PY, str(gb.HERE / "grpc_load.py"), "--serve", f"{a},{b}"]
    redis = [find_binary(), "--bind", "127.0.0.1", "--port", str(redis_port), "--save", "", "--appendonly", "no",
             "--dir", str(tmp)]  # fmt: skip
    url = f"redis://127.0.0.1:{redis_port}/0"
    feed = ["taskset", "-c", args.proxy_cpus, gb.PY, str(gb.HERE / "eventlog_feed.py"), "--redis-url", url]
    feed += ["--rate", str(args.rate), "--seconds", str(args.seconds + 2)]  # covers the load's window
    rows: list[str] = []
    with (
        gb.process(upstream, args.load_cpus, tmp / "upstream.log") as up,
        gb.process(redis, args.load_cpus, tmp / "redis.log") as rd,
    ):
        for port, proc in ((a, up), (b, up), (redis_port, rd)):
            gb.wait_port(port, proc)
        target = f"127.0.0.1:{a}"
        gb.load(target, args.load_cpus, "--seconds", "2", "--concurrency", "64")
        for round_ in range(args.rounds):
            for name in ("alone", "beside a flushing event log"):
                side = None
                if name != "alone":
                    side = subprocess.Popen(feed, stdout=subprocess.PIPE, text=True, cwd=gb.ROOT)
                    time.sleep(1.5)  # its warm-up second
                r = gb.load(target, args.load_cpus, "--seconds", str(args.seconds), "--rate", str(args.rate))
                load = os.getloadavg()[0]
                cells = " | ".join(f"{r[k]:.2f}" for k in ("p50_ms", "p90_ms", "p99_ms", "p999_ms"))
                rows.append(f"| {round_ + 1} | {name} | {cells} | {r['errors']:.0f} | {load:.1f} |")
                if side is not None:
                    out, _ = side.communicate(timeout=120)
                    print(f"round {round_ + 1} feed: {out.strip()}", file=sys.stderr, flush=True)
                print(rows[-1], file=sys.stderr, flush=True)
    print(f"Direct calls (no proxy) at {args.rate:g}/s, {args.seconds:g} s each:\n")
    print("| round | direct calls | p50 ms | p90 ms | p99 ms | p99.9 ms | errors | load average |")
    print("|---|---|---|---|---|---|---|---|")
    print("\n".join(rows))
    print(json.dumps({"rate": args.rate, "seconds": args.seconds}))


if __name__ == "__main__":
    main()
