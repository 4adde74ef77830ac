"""What N experiments cost a router process that serves them, idle: its CPU, Redis's
commands and connections (the event logs' flush loops and clients; issue 15).

    .venv/bin/python bench/idle_lanes.py --experiments 50 --seconds 10
    PYTHONPATH=/tmp/main-src .venv/bin/python bench/idle_lanes.py ...   # the code of another ref

Starts a private Redis, opens the router's lanes with `abrouter.router.runtime.running`
(no listener, no traffic but one exposure per experiment so every event log has flushed
once), then measures for `--seconds`: the process's CPU time, the commands Redis
processed (``INFO stats``) and the clients connected to it. Prints one Markdown row.
"""

from __future__ import annotations

import argparse
import asyncio
import sys
import tempfile
import time
from pathlib import Path

import redis.asyncio

import abrouter
from abrouter.contract.experiment import parse
from abrouter.router.eventlog.events import Exposure
from abrouter.router.redis_server import RedisServer
from abrouter.router.runtime import running
from abrouter.router.settings import ServeSettings


def spec(i: int) -> dict[str, object]:
    return {
        "name": f"idle-{i}",
        "unit": {"header": "X-User-Id"},
        "match": {"model": f"m{i}"},
        "metrics": [{"name": "conversion", "kind": "binary"}],
        "variants": [{"name": v, "upstream": f"http://127.0.0.1:1/{v}", "weight": 50} for v in ("a", "b")],
    }


async def main(args: argparse.Namespace) -> None:
    experiments = [parse(spec(i)) for i in range(args.experiments)]
    with RedisServer() as server, tempfile.TemporaryDirectory() as tmp:
        client = redis.asyncio.Redis.from_url(server.url)
        settings = ServeSettings(redis_url=server.url, spill_dir=Path(tmp), flush_interval_s=args.interval)
        async with running(experiments, settings) as router:
            for lane in router.lanes:
                lane.eventlog.record_exposure(Exposure("r", "u", "a", 1, time.time(), 200, 1.0, False))
            await asyncio.gather(*(lane.eventlog.flush() for lane in router.lanes))
            await asyncio.sleep(1.0)
            stats = await client.info("stats")
            commands0, cpu0, t0 = int(stats["total_commands_processed"]), time.process_time(), time.monotonic()
            await asyncio.sleep(args.seconds)
            stats = await client.info("stats")
            cpu, elapsed = time.process_time() - cpu0, time.monotonic() - t0
            commands = int(stats["total_commands_processed"]) - commands0 - 1  # less this INFO
            clients = int((await client.info("clients"))["connected_clients"]) - 1  # less ours
            tasks = sum(1 for t in asyncio.all_tasks() if t.get_name().startswith("abrouter-eventlog"))
        await client.aclose()
    where = Path(abrouter.__file__).parent.parent
    print(f"code: {where}", file=sys.stderr)
    print("| experiments | flush tasks | Redis clients | router CPU, % of a core | Redis commands/s |")
    print("|---|---|---|---|---|")
    print(f"| {args.experiments} | {tasks} | {clients} | {100 * cpu / elapsed:.1f} | {commands / elapsed:,.0f} |")


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--experiments", type=int, default=50)
    parser.add_argument("--seconds", type=float, default=10.0)
    parser.add_argument("--interval", type=float, default=0.25, help="flush_interval_s (the router's default)")
    asyncio.run(main(parser.parse_args()))
