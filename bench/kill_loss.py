"""What a router SIGKILLed under load loses: answered requests whose exposures never reach Redis.

    .venv/bin/python bench/kill_loss.py                  # 3 kills, ~1 min
    .venv/bin/python bench/kill_loss.py --kills 5 --seconds 8 --concurrency 64

Each round starts a private Redis, two example model servers and `abrouter serve`
(defaults: 250 ms flush interval), drives it with `--concurrency` client loops, each
request a new unit (so Redis' exposure count is the number of logged requests), SIGKILLs
the router after `--seconds`, and compares the requests answered 200 with the exposures
in Redis. The lost ones are the last answered (batches go to Redis in order), so the
window is the time from the answer of the first lost request to the kill. Prints a
Markdown table.
"""

from __future__ import annotations

import argparse
import asyncio
import signal
import sys
import tempfile
import time
from pathlib import Path

import aiohttp
import redis.asyncio
import yaml

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench" / "soak"))

from soak import spawn, wait_http  # noqa: E402

from abrouter.contract import keys  # noqa: E402
from abrouter.router.redis_server import RedisServer, free_port  # noqa: E402


async def drive(base: str, until: asyncio.Event, concurrency: int, answered: list[float]) -> None:
    counter = iter(range(10**9))

    async def loop(s: aiohttp.ClientSession) -> None:
        while not until.is_set():
            try:
                async with s.post(f"{base}/predict", headers={"X-User-Id": f"u{next(counter)}"}, data=b"{}") as r:
                    await r.read()
                    if r.status == 200:
                        answered.append(time.monotonic())
            except (TimeoutError, aiohttp.ClientError):
                return  # the router is gone

    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=concurrency)) as s:
        await asyncio.gather(*(loop(s) for _ in range(concurrency)))


async def one_kill(seconds: float, concurrency: int) -> tuple[int, int, float, float]:
    """(answered, lost, the lost window in ms, requests/s)."""
    work = Path(tempfile.mkdtemp(prefix="abrouter-kill-"))
    ports = {v: free_port() for v in ("control", "candidate", "router")}
    with RedisServer() as server:
        models = [
            spawn(["example-model", "--name", v, "--host", "127.0.0.1", "--port", str(ports[v])], work / f"{v}.log")
            for v in ("control", "candidate")
        ]
        config = work / "exp.yaml"
        variants = [
            {"name": v, "upstream": f"http://127.0.0.1:{ports[v]}", "weight": 50} for v in ("control", "candidate")
        ]
        metrics = [{"name": "revenue", "kind": "continuous"}]
        spec = {"name": "kill", "unit": {"header": "X-User-Id"}, "variants": variants, "metrics": metrics}
        config.write_text(yaml.safe_dump(spec))
        router = spawn(
            ["serve", "--config", str(config), "--redis-url", server.url, "--host", "127.0.0.1",
             "--port", str(ports["router"]), "--spill-dir", str(work / "spill")],
            work / "router.log",
        )  # fmt: skip
        try:
            base = f"http://127.0.0.1:{ports['router']}"
            await wait_http(f"{base}/abrouter/readyz")
            answered: list[float] = []
            stop = asyncio.Event()
            load = asyncio.create_task(drive(base, stop, concurrency, answered))
            start = time.monotonic()
            await asyncio.sleep(seconds)
            router.send_signal(signal.SIGKILL)
            killed = time.monotonic()
            stop.set()
            await load
            router.wait()
        finally:
            for p in [router, *models]:
                p.kill()
                p.wait()
        async with redis.asyncio.Redis.from_url(server.url) as client:
            strata = keys.decode_agg(await client.hgetall(keys.Keys("kill").agg))
        logged = sum(s.exposures for s in strata.values())
    answered.sort()
    lost = len(answered) - logged
    window = (killed - answered[logged]) * 1000 if 0 < lost <= len(answered) else 0.0
    return len(answered), lost, window, len(answered) / (killed - start)


async def main(args: argparse.Namespace) -> None:
    print(f"SIGKILL after {args.seconds:g} s of load, {args.concurrency} concurrent clients, flush interval 250 ms\n")
    print("| kill | answered | lost | lost window, ms | req/s |")
    print("|---|---|---|---|---|")
    for i in range(args.kills):
        answered, lost, window, rate = await one_kill(args.seconds, args.concurrency)
        print(f"| {i + 1} | {answered} | {lost} | {window:.0f} | {rate:.0f} |", flush=True)


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--kills", type=int, default=3)
    parser.add_argument("--seconds", type=float, default=5.0)
    parser.add_argument("--concurrency", type=int, default=32)
    asyncio.run(main(parser.parse_args()))
