"""Nothing lost: Redis killed under load, and SIGTERM with requests in flight."""

from __future__ import annotations

import asyncio
import signal
import subprocess
import sys
import time
from pathlib import Path

import aiohttp
import redis.asyncio

from abrouter.contract.keys import Keys, decode_agg
from abrouter.router.redis_server import RedisServer, free_port
from tests.router.conftest import MakeRouter
from tests.router.served import two_arms, write_spec

ROOT = Path(__file__).resolve().parents[2]


async def test_redis_sigkill_under_load_loses_and_doubles_nothing(make_router: MakeRouter, redis_server: RedisServer):
    # About Redis, not timeouts: a loaded machine's pause must not turn a request into a 504.
    r = await make_router(redis=redis_server.url, timeouts={"connect": 5, "read": 10})
    sent = accepted = 0
    failures: list[int] = []
    gate = asyncio.Semaphore(20)

    async def one(i: int) -> None:
        nonlocal sent, accepted
        async with gate:
            resp = await r.client.post("/predict", headers={"X-User-Id": f"user-{i % 300}"}, data=b"{}")
            resp.release()
            if resp.status != 200:
                failures.append(resp.status)
                return
            sent += 1
            if i % 3 == 0:
                body = {"request_id": resp.headers["X-AB-Request-Id"], "metric": "revenue", "value": 1.5}
                out = await r.client.post("/abrouter/outcomes", json=body)
                assert out.status == 202, await out.text()
                accepted += 1

    async def chaos() -> None:
        while sent < 500:
            await asyncio.sleep(0.01)
        redis_server.kill()
        while sent < 1500:
            await asyncio.sleep(0.01)
        assert not r.lane.eventlog.stats.redis_up and r.lane.eventlog.stats.spilled > 0
        ready = await (await r.client.get("/abrouter/readyz")).json()
        assert ready == {**ready, "status": "ready", "redis": "degraded"}
        await asyncio.to_thread(redis_server.restart)

    await asyncio.gather(chaos(), *(one(i) for i in range(3000)))
    assert failures == [] and sent == 3000
    await r.settle(timeout_s=30)
    strata = await r.strata()
    assert sum(s.exposures for s in strata.values()) == sent
    assert sum(s.metrics["revenue"].events for s in strata.values()) == accepted == 1000
    assert sum(s.metrics["revenue"].sum for s in strata.values()) == 1.5 * accepted
    assert sum(s.units for s in strata.values()) == 300


async def test_sigterm_drains_200_in_flight_requests_and_logs_them_all(
    aiohttp_server, redis_url: str, experiment_name: str, tmp_path: Path
):
    from tests.router.upstreams import SLOW, model_app

    model = model_app("control")
    gate = model[SLOW]
    upstream = await aiohttp_server(model)
    base = str(upstream.make_url("")).rstrip("/")
    config = write_spec(tmp_path, two_arms(experiment_name, base, timeouts={"read": "10s"}))
    port = free_port()
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "abrouter",
            "serve",
            "--config",
            str(config),
            "--redis-url",
            redis_url,
            "--host",
            "127.0.0.1",
            "--port",
            str(port),
            "--spill-dir",
            str(tmp_path / "spill"),
        ],
        cwd=ROOT,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
    )
    try:
        url = f"http://127.0.0.1:{port}"
        async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=0)) as session:
            await _wait_ready(session, url, proc)
            calls = [
                asyncio.create_task(session.post(f"{url}/slow?gate=1", headers={"X-User-Id": f"u{i}"}, data=b"{}"))
                for i in range(200)
            ]
            deadline = time.monotonic() + 30
            while gate.arrived < 200:  # a loaded machine may take a while to connect all 200
                assert time.monotonic() < deadline, f"only {gate.arrived} of 200 reached the upstream"
                await asyncio.sleep(0.02)
            proc.send_signal(signal.SIGTERM)
            await asyncio.sleep(0.3)  # the router is now draining, with all 200 still in flight
            gate.open.set()
            responses = await asyncio.gather(*calls)
            assert [resp.status for resp in responses] == [200] * 200
            for resp in responses:
                resp.release()
        assert await asyncio.to_thread(proc.wait, 20) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
        proc.wait()  # reaped, so Popen.__del__ has nothing to warn about
        output = proc.stdout.read().decode() if proc.stdout else ""
        if proc.stdout:
            proc.stdout.close()
    client = redis.asyncio.Redis.from_url(redis_url)
    try:
        strata = decode_agg(await client.hgetall(Keys(experiment_name).agg))
    finally:
        await client.aclose()
    assert sum(s.exposures for s in strata.values()) == 200, output


async def _wait_ready(session: aiohttp.ClientSession, url: str, proc: subprocess.Popen) -> None:
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        assert proc.poll() is None, proc.stdout.read().decode() if proc.stdout else "router exited"
        try:
            async with session.get(f"{url}/abrouter/readyz") as resp:
                if resp.status == 200:
                    return
        except aiohttp.ClientConnectionError:
            pass
        await asyncio.sleep(0.1)
    raise AssertionError("router did not become ready")
