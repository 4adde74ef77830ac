"""Soak: a router under steady load with outcomes for N minutes, Redis SIGKILLed and
restarted *empty* half-way. Not a CI test (issue 7).

What it checks and prints (one JSON object on stdout, progress on stderr):
- the router's RSS and open fds, and Redis' used_memory, at the start and at the end;
- the requests and outcomes the router answered 200/202;
- what Redis holds at the end (exposures, revenue events), and what `abrouter analyze
  --json` says: its ``data_incomplete_since`` must explain any gap (Redis lost what was
  flushed before the empty restart; the router re-sends what it still retains).

Run::

    python bench/soak/soak.py                    # 10 minutes at 200 req/s
    python bench/soak/soak.py --minutes 1 --rate 100
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import aiohttp
import redis.asyncio
import yaml

from abrouter.contract import keys
from abrouter.router.redis_server import RedisServer, free_port

ROOT = Path(__file__).resolve().parents[2]


def proc_stats(pid: int) -> dict[str, int]:
    rss = 0
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            rss = int(line.split()[1]) * 1024
    return {"rss_bytes": rss, "fds": len(os.listdir(f"/proc/{pid}/fd"))}


async def redis_memory(url: str) -> int:
    async with redis.asyncio.Redis.from_url(url) as client:
        return int((await client.info("memory"))["used_memory"])


def spawn(args: list[str], log: Path) -> subprocess.Popen[bytes]:
    out = open(log, "ab")
    env = {**os.environ, "PYTHONPATH": str(ROOT), "ABROUTER_SECRET": "soak-secret-0123456789abcdef"}
    return subprocess.Popen([sys.executable, "-m", "abrouter", *args], stdout=out, stderr=out, env=env, cwd=ROOT)


async def wait_http(url: str, timeout_s: float = 20.0) -> None:
    deadline = time.monotonic() + timeout_s
    async with aiohttp.ClientSession() as s:
        while True:
            try:
                async with s.get(url) as r:
                    if r.status == 200:
                        return
            except aiohttp.ClientError:
                pass
            if time.monotonic() > deadline:
                raise RuntimeError(f"{url} did not come up")
            await asyncio.sleep(0.1)


class Load:
    def __init__(self, base: str, rate: float, users: int) -> None:
        self.base, self.rate, self.users = base, rate, users
        self.sent = self.ok = self.outcomes = self.failed = 0
        self.stop = False

    async def one(self, s: aiohttp.ClientSession, i: int) -> None:
        try:
            async with s.post(f"{self.base}/predict", headers={"X-User-Id": f"u{i % self.users}"}, data=b"{}") as r:
                await r.read()
                if r.status != 200:
                    self.failed += 1
                    return
                self.ok += 1
                rid = r.headers["X-AB-Request-Id"]
            if i % 3 == 0:
                body = {"request_id": rid, "metric": "revenue", "value": 1.0}
                async with s.post(f"{self.base}/abrouter/outcomes", json=body) as r:
                    await r.read()
                    if r.status == 202:
                        self.outcomes += 1
                    else:
                        self.failed += 1
        except aiohttp.ClientError:
            self.failed += 1

    async def run(self) -> None:
        tasks: set[asyncio.Task[None]] = set()
        start = time.monotonic()
        async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=64)) as s:
            while not self.stop:
                due = int((time.monotonic() - start) * self.rate)
                while self.sent < due:
                    t = asyncio.create_task(self.one(s, self.sent))
                    tasks.add(t)
                    t.add_done_callback(tasks.discard)
                    self.sent += 1
                await asyncio.sleep(0.005)
            await asyncio.gather(*tasks)


async def soak(args: argparse.Namespace) -> dict[str, object]:
    work = Path(tempfile.mkdtemp(prefix="abrouter-soak-"))
    name = "soak"
    server = RedisServer().start()
    procs: list[subprocess.Popen[bytes]] = []
    try:
        ports = {v: free_port() for v in ("control", "candidate", "router")}
        for v in ("control", "candidate"):
            procs.append(
                spawn(["example-model", "--name", v, "--host", "127.0.0.1", "--port", str(ports[v])], work / f"{v}.log")
            )
        config = work / "exp.yaml"
        config.write_text(
            yaml.safe_dump(
                {
                    "name": name,
                    "unit": {"header": "X-User-Id"},
                    "variants": [
                        {"name": v, "upstream": f"http://127.0.0.1:{ports[v]}", "weight": 50}
                        for v in ("control", "candidate")
                    ],
                    "metrics": [{"name": "revenue", "kind": "continuous"}],
                }
            )
        )
        serve = ["serve", "--config", str(config), "--host", "127.0.0.1", "--port", str(ports["router"])]
        serve += ["--redis-url", server.url, "--spill-dir", str(work / "spill")]
        router = spawn(serve, work / "router.log")
        procs.append(router)
        base = f"http://127.0.0.1:{ports['router']}"
        await wait_http(f"{base}/abrouter/readyz")
        load = Load(base, args.rate, args.users)
        runner = asyncio.create_task(load.run())
        await asyncio.sleep(5)  # warm
        start = {**proc_stats(router.pid), "redis_used_memory": await redis_memory(server.url), "t": time.time()}
        print(f"start {start}", file=sys.stderr, flush=True)
        half = args.minutes * 30.0
        await asyncio.sleep(half)
        server.kill()
        killed_at = time.time()
        print(f"redis SIGKILLed at {killed_at:.0f}, sent {load.sent}", file=sys.stderr, flush=True)
        await asyncio.sleep(args.down_s)
        for path in server.data_dir.iterdir():  # restart empty, like an emptyDir after a reschedule
            if path.is_dir():
                shutil.rmtree(path)
            elif path.suffix in (".aof", ".rdb"):
                path.unlink()
        await asyncio.to_thread(server.restart)
        print(f"redis restarted empty, sent {load.sent}", file=sys.stderr, flush=True)
        await asyncio.sleep(half - args.down_s)
        load.stop = True
        await runner
        await asyncio.sleep(3)  # the last flushes land
        end = {**proc_stats(router.pid), "redis_used_memory": await redis_memory(server.url), "t": time.time()}
        async with aiohttp.ClientSession() as s, s.get(f"{base}/abrouter/readyz") as r:
            ready = await r.json()
        async with redis.asyncio.Redis.from_url(server.url) as client:
            strata = keys.decode_agg(await client.hgetall(keys.Keys(name).agg))
        analyze = subprocess.run(
            [sys.executable, "-m", "abrouter", "analyze", "--config", str(config), "--redis-url", server.url, "--json"],
            capture_output=True,
            text=True,
            cwd=ROOT,
            env={**os.environ, "PYTHONPATH": str(ROOT)},
            check=False,
        )
        result = json.loads(analyze.stdout) if analyze.returncode == 0 else {"error": analyze.stderr}
        router.send_signal(signal.SIGTERM)
        router.wait(30)
        return {
            "minutes": args.minutes,
            "rate": args.rate,
            "start": start,
            "end": end,
            "requests_ok": load.ok,
            "outcomes_accepted": load.outcomes,
            "failed": load.failed,
            "redis_killed_at": killed_at,
            "redis_exposures": sum(s.exposures for s in strata.values()),
            "redis_revenue_events": sum(s.metrics["revenue"].events for s in strata.values()),
            "readyz": ready,
            "analyze_data_incomplete_since": result.get("data_incomplete_since"),
            "analyze_units": sum(v["units"] for v in result.get("variants", [])),
        }
    finally:
        for p in procs:
            if p.poll() is None:
                p.terminate()
                p.wait(10)
        server.close()
        shutil.rmtree(work, ignore_errors=True)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--minutes", type=float, default=10.0)
    parser.add_argument("--rate", type=float, default=200.0, help="requests per second (a third get an outcome)")
    parser.add_argument("--users", type=int, default=5000)
    parser.add_argument("--down-s", type=float, default=5.0, help="seconds Redis stays down")
    args = parser.parse_args()
    print(json.dumps(asyncio.run(soak(args)), indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
