"""`abrouter demo`: the whole loop on one machine, every part real, all on 127.0.0.1.

It claims its directory (one demo at a time; an earlier demo's spill is removed, not
replayed), starts a private Redis (unless REDIS_URL is set), the model servers trained on
a synthetic world, and together the real `abrouter serve` in front of them, serving two
experiments on one port (`abrouter.demo.experiments`: each takes the requests for its
model name), and the real `abrouter analyze --every 2 --apply` looking at both, with the
file sink (so its ramps, promotions or rollbacks rewrite the weights the router follows).
Users start once the router is ready; the `--duration` clock starts at the analyzer's
first look at the main experiment, so a busy machine's slow start does not eat the test,
and the demo ends when the main experiment does. At the end it stops everything (also on
Ctrl-C), prints each experiment's decisions and writes the reports.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import shutil
import subprocess
import time
from pathlib import Path

import yaml

from abrouter import redisclient
from abrouter.demo import children, experiments, population, progress, servers, workdir, world
from abrouter.demo.looks import State
from abrouter.demo.options import Options
from abrouter.demo.population import Traffic
from abrouter.router.redis_server import RedisServer, free_port

#: The candidate is this much slower than the control: a heavier model.
CANDIDATE_DELAY_MS = 3.0


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
    out = options.out
    configs = [out / "experiment.yaml", out / "ranker.yaml"]
    progress.say(f"training the recommendation models on a synthetic world (seed {options.seed}) ...")
    w = await asyncio.to_thread(world.build, users=options.users, lift=options.lift, seed=options.seed)
    _say_truth(w)
    async with contextlib.AsyncExitStack() as stack:
        redis_url = os.environ.get("REDIS_URL") or stack.enter_context(RedisServer()).url
        await _flush_old(redis_url)
        urls = await stack.enter_async_context(servers.in_thread(w, candidate_delay_ms=CANDIDATE_DELAY_MS))
        for path, doc in zip(
            configs, (experiments.main(urls.control, urls.candidate), experiments.ranker(urls.ranker))
        ):
            path.write_text(yaml.safe_dump(doc, sort_keys=False))
        port = free_port()
        started = time.monotonic()
        progress.say("starting the router and the analyzer (each a real abrouter process) ...")
        # Started together: the analyzer's imports overlap the router's start.
        router = await stack.enter_async_context(
            children.process(_serve(configs, port, redis_url, out), log=out / "serve.log")
        )
        analyzer = await stack.enter_async_context(
            children.process(_analyze(configs, redis_url, options.every_s), log=out / "analyze.log")
        )
        base = f"http://127.0.0.1:{port}"
        await children.wait_ready(base, router, log=out / "serve.log")
        state = await _traffic_until_done(options, w, base, analyzer, started)
        report, reports = out / "report.html", out / "reports"
        progress.say(f"writing {report} and {reports}/ ...")
        await _report(configs, redis_url, reports, log=out / "report.log")
        # The main experiment's report where it always was (the README's quick start).
        shutil.copyfile(reports / f"{experiments.MAIN}.html", report)
    return progress.summary(state, report=report, reports=reports)


def _say_truth(w: world.World) -> None:
    control = w.expected_ctr("control")
    progress.say(
        f"ground truth: {experiments.MAIN}: control CTR {control:.4f}, candidate {w.expected_ctr('candidate'):.4f} "
        f"(true lift {w.true_lift:+.1%}); {experiments.RANKER}: control CTR {control:.4f}, candidate "
        f"{w.expected_ctr('explore'):.4f} (true lift {w.expected_ctr('explore') / control - 1:+.1%})"
    )


async def _traffic_until_done(
    options: Options, w: world.World, base: str, analyzer: asyncio.subprocess.Process, started: float
) -> State:
    """Users from now on; the clock of `options.duration_s` from the analyzer's first look."""
    state, traffic, ranked, stop = State(), population.Traffic(), population.Traffic(), asyncio.Event()
    users = asyncio.create_task(_users(options, w, base, stop=stop, traffic=traffic, ranked=ranked))
    reader = asyncio.create_task(_read_looks(analyzer, state))
    try:
        router_s = time.monotonic() - started
        progress.say(f"the router is ready after {router_s:.1f} s; users are on; waiting for the analyzer's first look")
        await _first_look(state, analyzer, log=options.out / "analyze.log")
        progress.say(
            f"the analyzer's first look came {time.monotonic() - started:.1f} s after the start: "
            f"the {options.duration_s:g} s begin now"
        )
        main = state.track(experiments.MAIN)
        await progress.show(state, traffic, duration_s=options.duration_s, until=main.finished, rps=options.rps,
                            ranker=ranked)  # fmt: skip
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


async def _users(
    options: Options, w: world.World, base: str, *, stop: asyncio.Event, traffic: Traffic, ranked: Traffic
) -> None:
    """Both experiments' users: `traffic` for the main model at --rps, `ranked` for the ranker at a share of it."""
    await asyncio.gather(
        population.run(w, base, model=servers.MODEL, rps=options.rps, seed=options.seed, stop=stop, traffic=traffic),
        population.run(w, base, model=servers.RANKER, rps=options.rps * experiments.RANKER_SHARE,
                       seed=options.seed + 1, stop=stop, traffic=ranked),
    )  # fmt: skip


async def _first_look(state: State, analyzer: asyncio.subprocess.Process, *, log: Path) -> None:
    deadline = time.monotonic() + children.START_TIMEOUT_S
    while state.track(experiments.MAIN).last is None:
        if analyzer.returncode is not None:
            raise children.ChildFailed(f"abrouter analyze exited with code {analyzer.returncode}: {children.tail(log)}")
        if time.monotonic() > deadline:
            raise children.ChildFailed(f"abrouter analyze made no look in {children.START_TIMEOUT_S:.0f} s: "
                                       f"{children.tail(log)}")  # fmt: skip
        await asyncio.sleep(0.1)


async def _flush_old(redis_url: str) -> None:
    """A demo starts from nothing: remove what an earlier demo left under its experiments' names."""
    client = await redisclient.connect(redis_url)
    try:
        for name in (experiments.MAIN, experiments.RANKER):
            keys = [k async for k in client.scan_iter(match=f"*{{{name}}}*")]
            if keys:
                await client.delete(*keys)
    finally:
        await client.aclose()


def _configs(configs: list[Path]) -> list[str]:
    return [arg for path in configs for arg in ("--config", str(path))]


def _serve(configs: list[Path], port: int, redis_url: str, out: Path) -> list[str]:
    return children.cli("serve", *_configs(configs), "--host", "127.0.0.1", "--port", str(port),
                        "--redis-url", redis_url, "--spill-dir", str(out / "spill"))  # fmt: skip


def _analyze(configs: list[Path], redis_url: str, every_s: float) -> list[str]:
    return children.cli("analyze", *_configs(configs), "--redis-url", redis_url, "--every", str(every_s),
                        "--apply", "--json")  # fmt: skip


async def _read_looks(analyzer: asyncio.subprocess.Process, state: State) -> None:
    assert analyzer.stdout is not None
    async for line in analyzer.stdout:
        state.read(line)


async def _report(configs: list[Path], redis_url: str, out: Path, *, log: Path) -> None:
    """Every experiment's report, and an index, in the directory `out`."""
    with log.open("w") as err:
        proc = await asyncio.create_subprocess_exec(
            *children.cli("report", *_configs(configs), "--redis-url", redis_url, "--out", str(out)),
            stdout=subprocess.DEVNULL, stderr=err, start_new_session=True,
        )  # fmt: skip
    try:
        code = await proc.wait()
    finally:
        await children.stop(proc)
    if code != 0:
        raise children.ChildFailed(f"abrouter report exited with code {code}: {children.tail(log)}")
