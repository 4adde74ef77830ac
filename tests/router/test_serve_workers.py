"""`abrouter serve --workers 2` as a real process: two workers on one socket, one router to its users.

Real processes, sockets and Redis. The workers are told apart by keep-alive connections:
a connection stays with the worker that accepted it, and /abrouter/readyz names that worker.
"""

from __future__ import annotations

import asyncio
import os
import re
import signal
import socket
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import aiohttp
import pytest
import redis.asyncio

from abrouter.contract.keys import Keys, StratumSums, decode_agg
from abrouter.router.redis_server import free_port
from tests.router.served import two_arms, write_spec
from tests.router.upstreams import SLOW, model_app

ROOT = Path(__file__).resolve().parents[2]
#: Patient: a loaded 2-core machine starts processes slowly.
PATIENCE_S = 60.0
#: No single request may hang a test: one that takes this long fails it.
TIMEOUT = aiohttp.ClientTimeout(total=30)


def run_cli(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "abrouter", *args],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=60,
        env={**os.environ, **(env or {})},
    )


@pytest.mark.parametrize("value", ["0", "x", "-1"])
def test_a_bad_worker_count_is_one_line_and_exit_2(value: str):
    for result in (run_cli("serve", "--workers", value), run_cli("serve", env={"ABROUTER_WORKERS": value})):
        assert result.returncode == 2, result.stderr
        assert result.stderr.strip().count("\n") == 0 and "--workers must be" in result.stderr, result.stderr


def children_of(pid: int) -> set[int]:
    """The pids whose parent is `pid` (from /proc)."""
    found = set()
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            stat = Path(f"/proc/{entry}/stat").read_text()
        except OSError:
            continue
        if int(stat.rsplit(")", 1)[1].split()[1]) == pid:
            found.add(int(entry))
    return found


def requests_total(metrics_text: str) -> int:
    return sum(int(n) for n in re.findall(r"^abrouter_requests_total\{[^}]*\} (\d+)$", metrics_text, re.M))


class Pinned:
    """A keep-alive connection to one worker (the session has a single connection)."""

    def __init__(self, url: str) -> None:
        self.url = url
        self.session = aiohttp.ClientSession(
            connector=aiohttp.TCPConnector(limit=1, keepalive_timeout=300), timeout=TIMEOUT
        )
        self.worker: int | None = None

    async def which(self) -> tuple[int, dict[str, Any]]:
        async with self.session.get(f"{self.url}/abrouter/readyz") as resp:
            body = await resp.json()
        return body["worker"], body

    async def call(self, method: str, path: str, **kwargs: Any) -> tuple[int, dict[str, str], bytes]:
        """A request on this worker; asserts it was this worker before and after."""
        assert (await self.which())[0] == self.worker
        async with self.session.request(method, f"{self.url}{path}", **kwargs) as resp:
            result = resp.status, dict(resp.headers), await resp.read()
        assert (await self.which())[0] == self.worker, "the keep-alive connection moved"
        return result


async def pin_each_worker(url: str, count: int) -> dict[int, Pinned]:
    """One `Pinned` per worker, from fresh connections until every worker has accepted one."""
    pinned: dict[int, Pinned] = {}
    spare: list[Pinned] = []
    deadline = time.monotonic() + PATIENCE_S
    try:
        while len(pinned) < count:
            assert time.monotonic() < deadline, f"only workers {sorted(pinned)} accepted connections"
            p = Pinned(url)
            p.worker, _ = await p.which()
            if p.worker in pinned:
                spare.append(p)
            else:
                pinned[p.worker] = p
    finally:
        for p in spare:
            await p.session.close()
    return pinned


async def poll(check: Any, what: str | Callable[[], str]) -> Any:
    """`await check()` until it returns something true (patiently)."""
    deadline = time.monotonic() + PATIENCE_S
    while True:
        try:
            result = await check()
        except aiohttp.ClientConnectionError:
            result = None
        if result:
            return result
        assert time.monotonic() < deadline, f"timed out waiting for {what if isinstance(what, str) else what()}"
        await asyncio.sleep(0.1)


async def strata(redis_url: str, name: str) -> dict[tuple[int, str], StratumSums]:
    client = redis.asyncio.Redis.from_url(redis_url)
    try:
        return decode_agg(await client.hgetall(Keys(name).agg))
    finally:
        await client.aclose()


@pytest.fixture
async def fresh() -> AsyncIterator[aiohttp.ClientSession]:
    """A client whose every request opens a new connection (so the kernel picks any worker)."""
    async with aiohttp.ClientSession(
        connector=aiohttp.TCPConnector(limit=20, force_close=True), timeout=TIMEOUT
    ) as session:
        yield session


async def test_two_workers_serve_count_and_drain_as_one_router(
    aiohttp_server: Any, redis_url: str, experiment_name: str, tmp_path: Path, fresh: aiohttp.ClientSession
):
    model = model_app("control")
    gate = model[SLOW]
    base = str((await aiohttp_server(model)).make_url("")).rstrip("/")
    spec = two_arms(experiment_name, base, metrics=[{"name": "conversion", "kind": "binary"}],
                    covariate="prior_clicks", timeouts={"read": "20s"})  # fmt: skip
    config = write_spec(tmp_path, spec)
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    proc = subprocess.Popen(
        [
            *(sys.executable, "-m", "abrouter", "serve", "--workers", "2", "--config", str(config)),
            *("--redis-url", redis_url, "--host", "127.0.0.1", "--port", str(port)),
            *("--spill-dir", str(tmp_path / "spill"), "--flush-interval", "0.05"),
        ],
        cwd=ROOT,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        env={**os.environ, "ABROUTER_SECRET": "a-test-secret-shared-by-the-workers"},
    )
    pinned: dict[int, Pinned] = {}
    try:

        async def ready() -> bool:
            assert proc.poll() is None, "the router exited"
            async with fresh.get(f"{url}/abrouter/readyz") as resp:
                return resp.status == 200

        await poll(ready, "both workers ready")
        pinned = await pin_each_worker(url, 2)

        # Requests over many connections: every one answered, every one counted once.
        async def predict(i: int) -> dict[str, str]:
            async with fresh.post(f"{url}/predict", headers={"X-User-Id": f"u{i % 50}"}, data=b"{}") as resp:
                assert resp.status == 200, await resp.text()
                return dict(resp.headers)

        answers = await asyncio.gather(*(predict(i) for i in range(400)))
        assert {a["X-AB-Variant"] for a in answers} == {"control", "candidate"}

        async def summed(p: Pinned, n: int) -> bool:
            status, _, body = await p.call("GET", "/abrouter/metrics")
            return status == 200 and requests_total(body.decode()) == n

        for p in pinned.values():  # either worker's scrape is the sum over both
            await poll(lambda p=p: summed(p, 400), f"worker {p.worker}'s metrics to sum 400 requests")

        # A request id issued by one worker is accepted by the other.
        for issuer, taker in ((0, 1), (1, 0)):
            status, headers, _ = await pinned[issuer].call(
                "POST", "/predict", headers={"X-User-Id": f"cross-{issuer}"}, data=b"{}"
            )
            assert status == 200
            outcome = {"request_id": headers["X-AB-Request-Id"], "metric": "conversion", "value": 1}
            status, _, body = await pinned[taker].call("POST", "/abrouter/outcomes", json=outcome)
            assert status == 202, body

        async def all_exposed() -> bool:
            return sum(s.exposures for s in (await strata(redis_url, experiment_name)).values()) == 402

        await poll(all_exposed, "402 exposures in Redis")
        # Outcomes and covariates by unit: looked up in Redis by whichever worker takes them.
        for p in pinned.values():
            items = [
                {"unit": f"u{p.worker}", "metric": "conversion", "value": 1},
                {"unit": f"u{p.worker + 10}", "covariate": 3},
            ]
            status, _, body = await p.call("POST", "/abrouter/outcomes", json=items)
            assert status == 202 and b'"accepted": 2' in body, body

        async def outcomes_landed() -> bool:  # a SIGKILL loses what a worker has not flushed yet
            return sum(s.metrics["conversion"].events for s in (await strata(redis_url, experiment_name)).values()) == 4

        await poll(outcomes_landed, "4 outcomes in Redis")

        for p in pinned.values():  # every request is in every snapshot: a SIGKILL loses none of them
            await poll(lambda p=p: summed(p, 402), f"worker {p.worker}'s metrics to sum 402 requests")

        # One worker killed: the other says so, the supervisor restarts it, all ready again.
        for p in pinned.values():
            await p.session.close()
        pinned = {}
        workers_before = children_of(proc.pid)
        assert len(workers_before) == 2, workers_before
        victim = min(workers_before)
        os.kill(victim, signal.SIGKILL)

        async def not_ready() -> dict[str, Any] | None:
            async with fresh.get(f"{url}/abrouter/readyz") as resp:  # only the survivor accepts
                body = await resp.json()
            return body if resp.status == 503 else None

        body = await poll(not_ready, "readyz to report the killed worker")
        assert len(body["missing_workers"]) == 1 and body["missing_workers"] != [body["worker"]], body
        await poll(ready, "the restarted worker")
        workers_after = children_of(proc.pid)
        assert victim not in workers_after and len(workers_after) == 2, workers_after

        # The killed worker's requests still count: its last snapshot is retired, not dropped.
        seen: list[int] = []

        async def still_summed() -> bool:
            async with fresh.get(f"{url}/abrouter/metrics") as resp:
                seen.append(requests_total(await resp.text()))
            return seen[-1] == 402

        await poll(still_summed, lambda: f"the sum to keep the killed worker's requests: {seen[-5:]}")

        # SIGTERM with requests in flight on both workers: all answered, all logged, exit 0.
        calls = [
            asyncio.create_task(fresh.post(f"{url}/slow?gate=1", headers={"X-User-Id": f"s{i}"}, data=b"{}"))
            for i in range(20)
        ]
        await poll(lambda: _true(gate.arrived == 20), "20 requests to reach the upstream")
        proc.send_signal(signal.SIGTERM)
        await asyncio.sleep(0.3)  # the workers are draining, with all 20 in flight
        gate.open.set()
        responses = await asyncio.gather(*calls)
        assert [r.status for r in responses] == [200] * 20
        for r in responses:
            r.release()
        assert await asyncio.to_thread(proc.wait, PATIENCE_S) == 0
    finally:
        for p in pinned.values():
            await p.session.close()
        if proc.poll() is None:
            for pid in children_of(proc.pid):
                os.kill(pid, signal.SIGKILL)
            proc.kill()
        output = (await asyncio.to_thread(proc.communicate, timeout=PATIENCE_S))[0].decode()
    final = await strata(redis_url, experiment_name)
    assert sum(s.exposures for s in final.values()) == 422, output
    assert sum(s.metrics["conversion"].events for s in final.values()) == 4, output
    assert f"(pid {victim}) died unexpectedly (SIGKILL)" in output, output


async def _true(value: bool) -> bool:
    return value


async def test_the_bundled_example_starts_its_models_and_redis_once(tmp_path: Path, fresh: aiohttp.ClientSession):
    from abrouter.router.commands import EXAMPLE_PORTS

    for example_port in EXAMPLE_PORTS:
        with socket.socket() as probe:
            if probe.connect_ex(("127.0.0.1", example_port)) == 0:
                pytest.skip(f"port {example_port} of the example models is taken (another test run?)")
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    proc = subprocess.Popen(
        [sys.executable, "-m", "abrouter", "serve", "--workers", "2", "--port", str(port), "--host", "127.0.0.1"],
        cwd=tmp_path,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        env={**os.environ, "PYTHONPATH": str(ROOT)},
    )
    try:

        async def ready() -> bool:
            assert proc.poll() is None, "the router exited"
            async with fresh.get(f"{url}/abrouter/readyz") as resp:
                return resp.status == 200

        await poll(ready, "both workers ready")
        for i in range(20):
            async with fresh.post(f"{url}/predict", headers={"X-User-Id": f"u{i}"}, data=b"{}") as resp:
                assert resp.status == 200, await resp.text()
        names = sorted(Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")[0] for pid in children_of(proc.pid))
        # One redis-server, one process of example models, two workers (python): not a set per worker.
        assert len(names) == 4 and sum(b"redis-server" in n for n in names) == 1, names
        proc.send_signal(signal.SIGTERM)
        assert await asyncio.to_thread(proc.wait, PATIENCE_S) == 0
    finally:
        if proc.poll() is None:
            for pid in children_of(proc.pid):
                os.kill(pid, signal.SIGKILL)
            proc.kill()
        output = (await asyncio.to_thread(proc.communicate, timeout=PATIENCE_S))[0].decode()
    assert output.count("example models started") == 1 and "worker 1 started" in output, output
