"""`abrouter demo`: the whole loop on one machine, every part real, all on 127.0.0.1.

It claims its directory (one demo at a time; an earlier demo's spill is removed, not
replayed), starts a private Redis (unless REDIS_URL is set), two model servers trained on
a synthetic world, and together the real `abrouter serve` in front of them and the real
`abrouter analyze --every 2 --apply` with the file sink (so its ramp, promotion or
rollback rewrite the weights the router follows). Users start once the router is ready;
the `--duration` clock starts at the analyzer's first look, so a busy machine's slow start
does not eat the test. At the end it stops everything (also on Ctrl-C), prints the
decision and writes the report.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import subprocess
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from abrouter import redisclient
from abrouter.demo import children, population, progress, servers, workdir, world
from abrouter.demo.options import Options
from abrouter.router.redis_server import RedisServer, free_port

EXPERIMENT = "demo-recsys"
#: The candidate is this much slower than the control: a heavier model.
CANDIDATE_DELAY_MS = 3.0


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
            # The step into the final one waits for the burn-in (a week by default, against
            # novelty effects); the demo lasts a minute.
            "burn_in": "4s",
            "guardrails": [
                {"metric": "errors", "direction": "decrease", "margin": 0.02},
                # The candidate is 3 ms slower by design (a heavier model). A busy machine slows
                # every request, so the tolerated harm grows with the control's own latency:
                # the larger of 50 ms and the control's mean (relative 1.0).
                {"metric": "latency_ms", "direction": "decrease", "margin": 1.0, "relative": True, "min_margin": 50},
            ],
        },
    }


async def run(options: Options) -> int:
    with workdir.claimed(options.out):
        left = workdir.clear_spill(options.out / "spill")
        if left:
            progress.say(
                f"removed {left} bytes of events an earlier demo left in {options.out / 'spill'}: they belong to "
                "its Redis, which is gone, and are not replayed into this one"
            )
        return await _run(options)


async def _run(options: Options) -> int:
    out, config = options.out, options.out / "experiment.yaml"
    progress.say(f"training two recommendation models on a synthetic world (seed {options.seed}) ...")
    w = await asyncio.to_thread(world.build, users=options.users, lift=options.lift, seed=options.seed)
    progress.say(
        f"ground truth: control CTR {w.expected_ctr('control'):.4f}, candidate {w.expected_ctr('candidate'):.4f} "
        f"(true lift {w.true_lift:+.1%})"
    )
    async with contextlib.AsyncExitStack() as stack:
        redis_url = os.environ.get("REDIS_URL") or stack.enter_context(RedisServer()).url
        await _flush_old(redis_url)
        urls = await stack.enter_async_context(servers.in_thread(w, candidate_delay_ms=CANDIDATE_DELAY_MS))
        config.write_text(yaml.safe_dump(spec(*urls), sort_keys=False))
        port = free_port()
        started = time.monotonic()
        progress.say("starting the router and the analyzer (each a real abrouter process) ...")
        # Started together: the analyzer's imports overlap the router's start.
        router = await stack.enter_async_context(
            children.process(_serve(config, port, redis_url, out), log=out / "serve.log")
        )
        analyzer = await stack.enter_async_context(
            children.process(_analyze(config, redis_url, options.every_s), log=out / "analyze.log")
        )
        base = f"http://127.0.0.1:{port}"
        await children.wait_ready(base, router, log=out / "serve.log")
        state = await _traffic_until_done(options, w, base, analyzer, started)
        report = out / "report.html"
        progress.say(f"writing {report} ...")
        await _report(config, redis_url, report, log=out / "report.log")
    return progress.summary(state, report=report)


async def _traffic_until_done(
    options: Options, w: world.World, base: str, analyzer: asyncio.subprocess.Process, started: float
) -> State:
    """Users from now on; the clock of `options.duration_s` from the analyzer's first look."""
    state, traffic, stop = State(), population.Traffic(), asyncio.Event()
    users = asyncio.create_task(population.run(w, base, rps=options.rps, seed=options.seed, stop=stop,
                                               traffic=traffic))  # fmt: skip
    reader = asyncio.create_task(_read_looks(analyzer, state))
    try:
        router_s = time.monotonic() - started
        progress.say(f"the router is ready after {router_s:.1f} s; users are on; waiting for the analyzer's first look")
        await _first_look(state, analyzer, log=options.out / "analyze.log")
        progress.say(
            f"the analyzer's first look came {time.monotonic() - started:.1f} s after the start: "
            f"the {options.duration_s:g} s begin now"
        )
        await progress.show(state, traffic, duration_s=options.duration_s, until=_finished(state), rps=options.rps)
    except BaseException:  # Ctrl-C (cancelled) or a child failed: no last look, no report
        stop.set()
        users.cancel()
        reader.cancel()
        raise
    stop.set()
    progress.say("the users stopped; their last requests and one more look over their outcomes ...")
    await users
    await asyncio.sleep(options.every_s + 1.0)
    reader.cancel()
    return state


async def _first_look(state: State, analyzer: asyncio.subprocess.Process, *, log: Path) -> None:
    deadline = time.monotonic() + children.START_TIMEOUT_S
    while state.last is None:
        if analyzer.returncode is not None:
            raise children.ChildFailed(f"abrouter analyze exited with code {analyzer.returncode}: {children.tail(log)}")
        if time.monotonic() > deadline:
            raise children.ChildFailed(f"abrouter analyze made no look in {children.START_TIMEOUT_S:.0f} s: "
                                       f"{children.tail(log)}")  # fmt: skip
        await asyncio.sleep(0.1)


async def _flush_old(redis_url: str) -> None:
    """A demo starts from nothing: remove what an earlier demo left under its name."""
    client = await redisclient.connect(redis_url)
    try:
        keys = [k async for k in client.scan_iter(match=f"*{{{EXPERIMENT}}}*")]
        if keys:
            await client.delete(*keys)
    finally:
        await client.aclose()


def _serve(config: Path, port: int, redis_url: str, out: Path) -> list[str]:
    return children.cli("serve", "--config", str(config), "--host", "127.0.0.1", "--port", str(port),
                        "--redis-url", redis_url, "--spill-dir", str(out / "spill"))  # fmt: skip


def _analyze(config: Path, redis_url: str, every_s: float) -> list[str]:
    return children.cli("analyze", "--config", str(config), "--redis-url", redis_url, "--every", str(every_s),
                        "--apply", "--json")  # fmt: skip


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


async def _report(config: Path, redis_url: str, out: Path, *, log: Path) -> None:
    with log.open("w") as err:
        proc = await asyncio.create_subprocess_exec(
            *children.cli("report", "--config", str(config), "--redis-url", redis_url, "--out", str(out)),
            stdout=subprocess.DEVNULL, stderr=err, start_new_session=True,
        )  # fmt: skip
    try:
        code = await proc.wait()
    finally:
        await children.stop(proc)
    if code != 0:
        raise children.ChildFailed(f"abrouter report exited with code {code}: {children.tail(log)}")
