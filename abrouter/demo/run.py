"""`abrouter demo`: the whole loop on one machine, every part real, all on 127.0.0.1.

It starts a private Redis (unless REDIS_URL is set), two model servers trained on a
synthetic world, the real `abrouter serve` in front of them, the real `abrouter analyze
--every 2 --apply` with the file sink (so its ramp, promotion or rollback rewrite the
weights the router follows), and a population of users; it shows progress, and at the
end stops everything (also on Ctrl-C), prints the decision and writes the report.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import secrets
import signal
import subprocess
import sys
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
import yaml

from abrouter import redisclient
from abrouter.demo import population, progress, servers, world
from abrouter.router.redis_server import RedisServer, free_port

EXPERIMENT = "demo-recsys"
#: The candidate is this much slower than the control: a heavier model.
CANDIDATE_DELAY_MS = 3.0


@dataclass(frozen=True)
class Options:
    duration_s: float = 60.0
    seed: int = 1
    lift: float = 0.1
    users: int = 5000
    rps: float = 300.0
    out: Path = Path("abrouter-demo")
    every_s: float = 2.0


@dataclass
class State:
    """What the progress view shows; updated by the analyzer's JSON lines."""

    last: dict[str, Any] | None = None
    decisions: list[str] = field(default_factory=list)


def spec(control_url: str, candidate_url: str) -> dict[str, Any]:
    """The demo's experiment: CTR per impression, ramped 20% -> 50%, then promoted on evidence."""
    return {
        "name": EXPERIMENT,
        "unit": {"header": "X-User-Id"},
        "epoch": 1,
        "variants": [
            {"name": "control", "upstream": control_url, "weight": 80},
            {"name": "candidate", "upstream": candidate_url, "weight": 20},
        ],
        "metrics": [
            {"name": "ctr", "kind": "ratio", "numerator": "clicks", "denominator": "impressions"},
            {"name": "clicks", "kind": "continuous"},
            {"name": "impressions", "kind": "continuous"},
        ],
        "analysis": {
            "alpha": 0.05,
            "min_units_per_arm": 150,
            "expected_units_per_arm": 1500,
            "ramp": [20, 50],
            # The step into the final one waits for the burn-in (a day by default, against
            # novelty effects); the demo lasts a minute.
            "burn_in": "4s",
            "guardrails": [
                {"metric": "errors", "direction": "decrease", "margin": 0.02},
                # The candidate is a few ms slower by design; up to 50 ms more mean latency is
                # what we accept (on a busy machine the router's own latency varies that much).
                {"metric": "latency_ms", "direction": "decrease", "margin": 50},
            ],
        },
    }


async def run(options: Options) -> int:
    options.out.mkdir(parents=True, exist_ok=True)
    config = options.out / "experiment.yaml"
    progress.say(f"training two recommendation models on a synthetic world (seed {options.seed}) ...")
    w = await asyncio.to_thread(world.build, users=options.users, lift=options.lift, seed=options.seed)
    progress.say(
        f"ground truth: control CTR {w.expected_ctr('control'):.4f}, candidate {w.expected_ctr('candidate'):.4f} "
        f"(true lift {w.true_lift:+.1%})"
    )
    async with contextlib.AsyncExitStack() as stack:
        redis_url = os.environ.get("REDIS_URL") or stack.enter_context(RedisServer()).url
        await _flush_old(redis_url)
        urls = []
        for arm, version, delay in (("control", "popularity", 0.0), ("candidate", "mf", CANDIDATE_DELAY_MS)):
            runner, url = await servers.start(servers.model_app(w, arm, version=version, delay_ms=delay))
            stack.push_async_callback(runner.cleanup)
            urls.append(url)
        config.write_text(yaml.safe_dump(spec(*urls), sort_keys=False))
        port = free_port()
        router = await stack.enter_async_context(_process(_serve(config, port, redis_url, options.out)))
        base = f"http://127.0.0.1:{port}"
        await _wait_ready(base, router)
        analyzer = await stack.enter_async_context(_process(_analyze(config, redis_url, options.every_s)))
        state, traffic, stop = State(), population.Traffic(), asyncio.Event()
        users = asyncio.create_task(population.run(w, base, rps=options.rps, seed=options.seed, stop=stop,
                                                   traffic=traffic))  # fmt: skip
        reader = asyncio.create_task(_read_looks(analyzer, state))
        try:
            await progress.show(state, traffic, duration_s=options.duration_s, until=_finished(state))
        finally:
            stop.set()
            await users
            await asyncio.sleep(options.every_s + 1.0)  # one more look over the last outcomes
            reader.cancel()
        report = options.out / "report.html"
        await _report(config, redis_url, report)
    return progress.summary(state, report=report)


async def _flush_old(redis_url: str) -> None:
    """A demo starts from nothing: remove what an earlier demo left under its name."""
    client = await redisclient.connect(redis_url)
    try:
        keys = [k async for k in client.scan_iter(match=f"*{{{EXPERIMENT}}}*")]
        if keys:
            await client.delete(*keys)
    finally:
        await client.aclose()


def _cli(*args: str) -> list[str]:
    return [sys.executable, "-m", "abrouter", "--log-level", "WARNING", *args]


def _serve(config: Path, port: int, redis_url: str, out: Path) -> list[str]:
    return _cli("serve", "--config", str(config), "--host", "127.0.0.1", "--port", str(port),
                "--redis-url", redis_url, "--spill-dir", str(out / "spill"))  # fmt: skip


def _analyze(config: Path, redis_url: str, every_s: float) -> list[str]:
    return _cli("analyze", "--config", str(config), "--redis-url", redis_url, "--every", str(every_s),
                "--apply", "--json")  # fmt: skip


@contextlib.asynccontextmanager
async def _process(argv: list[str]) -> AsyncIterator[asyncio.subprocess.Process]:
    """A child process that is stopped (SIGTERM, then SIGKILL) whatever happens."""
    # A fresh secret per demo: request ids cannot be forged, and serve has nothing to warn about.
    env = {**os.environ, "ABROUTER_SECRET": os.environ.get("ABROUTER_SECRET") or secrets.token_hex(32)}
    proc = await asyncio.create_subprocess_exec(*argv, stdout=subprocess.PIPE, stderr=None, env=env)
    try:
        yield proc
    finally:
        if proc.returncode is None:
            proc.send_signal(signal.SIGTERM)
            try:
                await asyncio.wait_for(proc.wait(), 10)
            except TimeoutError:
                proc.kill()
                await proc.wait()


async def _wait_ready(base: str, router: asyncio.subprocess.Process) -> None:
    deadline = time.monotonic() + 30
    async with aiohttp.ClientSession() as s:
        while time.monotonic() < deadline:
            if router.returncode is not None:
                raise RuntimeError(f"abrouter serve exited with code {router.returncode}")
            with contextlib.suppress(aiohttp.ClientError):
                async with s.get(f"{base}/abrouter/readyz") as r:
                    if r.status == 200:
                        return
            await asyncio.sleep(0.1)
    raise RuntimeError("abrouter serve did not become ready within 30 s")


async def _read_looks(analyzer: asyncio.subprocess.Process, state: State) -> None:
    assert analyzer.stdout is not None
    async for line in analyzer.stdout:
        try:
            look = json.loads(line)
        except ValueError:
            continue
        before = (state.last or {}).get("decision", {}).get("weights")
        state.last = look
        decision = look.get("decision", {})
        # A decision that moved the weights (later looks repeat "already promoted").
        if decision.get("action") in ("ramp", "promote", "rollback") and decision.get("weights") != before:
            state.decisions.append(decision.get("reason", ""))


def _finished(state: State) -> Any:
    def done() -> bool:
        action = (state.last or {}).get("decision", {}).get("action")
        weights = (state.last or {}).get("decision", {}).get("weights", {})
        # Promoted (the winner holds 100%) or rolled back to the control alone.
        return action in ("promote", "rollback") and max(weights.values(), default=0) >= 100

    return done


async def _report(config: Path, redis_url: str, out: Path) -> None:
    proc = await asyncio.create_subprocess_exec(
        *_cli("report", "--config", str(config), "--redis-url", redis_url, "--out", str(out))
    )
    await proc.wait()
