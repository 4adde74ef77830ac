"""`abrouter analyze --experiments NAMESPACE`: every Experiment of a namespace, followed live, one leader acting.

Against our API test server (the real client over HTTP) and a real Redis; the fleets run
in this process so that the tests can count each one's looks.
"""

from __future__ import annotations

import argparse
import asyncio
import signal
import time
from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import redis
import redis.asyncio

from abrouter import cli
from abrouter.analysis import commands, many
from abrouter.analysis.connection import RedisConnection
from abrouter.analysis.fleet import Fleet
from abrouter.analysis.specfiles import SpecFiles
from abrouter.contract import keys
from abrouter.kube.client import GROUP, PLURAL, VERSION, KubeClient
from abrouter.kube.election import ElectionSettings
from abrouter.kube.leader import LeaderElector
from tests import processes
from tests.analysis.test_commands import json_lines, write_aggregates
from tests.conftest import forget
from tests.kube.apiserver import NAMESPACE, KubeApiServer
from tests.kube.conftest import experiment_object, run

#: Frequent tries, so that a takeover after a release happens within the test; a lease
#: duration long enough that a stall of the loaded machine does not pass for a dead leader.
FAST = ElectionSettings(lease="analyzer", lease_duration_s=10.0, renew_deadline_s=8.0, retry_period_s=0.2)


@pytest.fixture
def names(redis_url: str, experiment_name: str) -> Iterator[list[str]]:
    """Three experiment names, their keys deleted afterwards."""
    found = [f"{experiment_name}-{i}" for i in range(3)]
    yield found
    forget(redis_url, found)


def add(kube_api: KubeApiServer, redis_url: str, name: str, *, labels: dict[str, str] | None = None) -> None:
    client = redis.Redis.from_url(redis_url)
    try:
        write_aggregates(client, name, control=(2000, 100), candidate=(2000, 100))
    finally:
        client.close()
    obj = experiment_object(name)
    if labels:
        obj["metadata"]["labels"] = labels
    kube_api.put(PLURAL, NAMESPACE, obj)


def test_one_look_at_every_experiment_of_the_namespace_or_those_the_selector_picks(
    kube_api: KubeApiServer, kubeconfig: Path, redis_url: str, names: list[str], capsys: pytest.CaptureFixture[str]
) -> None:
    add(kube_api, redis_url, names[0], labels={"team": "search"})
    add(kube_api, redis_url, names[1], labels={"team": "ads"})
    base = ["analyze", "--experiments", NAMESPACE, "--kubeconfig", str(kubeconfig), "--redis-url", redis_url, "--json"]
    assert run(base) == 0
    assert sorted(r["experiment"] for r in json_lines(capsys.readouterr().out)) == names[:2]
    assert run([*base, "--selector", "team=ads"]) == 0
    assert [r["experiment"] for r in json_lines(capsys.readouterr().out)] == [names[1]]
    assert run([*base, "--selector", "team in (nobody)"]) == 0
    assert "no Experiment in namespace abrouter-test matching 'team in (nobody)'" in capsys.readouterr().err


def test_a_forbidden_list_is_one_line_and_exit_code_1(
    kube_api: KubeApiServer, kubeconfig: Path, redis_url: str, capsys: pytest.CaptureFixture[str]
) -> None:
    kube_api.allow("experiments", "get")
    argv = ["analyze", "--experiments", NAMESPACE, "--kubeconfig", str(kubeconfig), "--redis-url", redis_url]
    assert cli.main(argv) == 1
    assert "forbidden: cannot list experiments.abrouter.io in namespace abrouter-test" in capsys.readouterr().err


# ------------------------------------------------------------------- running fleets


def parse(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="abrouter")
    commands.register(parser.add_subparsers(dest="command", required=True))
    return parser.parse_args(argv)


@pytest.fixture
async def fleets(kubeconfig: Path, redis_url: str) -> AsyncIterator[Callable[..., Any]]:
    """Starts in-process fleets as `analyze --experiments NS --every 0.3` builds them; stops them all after."""
    running: list[tuple[asyncio.Event, list[asyncio.Task[None]], KubeClient, RedisConnection]] = []

    async def start(*, identity: str | None = None) -> tuple[Fleet, asyncio.Event, list[asyncio.Task[None]]]:
        argv = ["analyze", "--experiments", NAMESPACE, "--kubeconfig", str(kubeconfig), "--redis-url", redis_url]
        args = parse([*argv, "--every", "0.3", "--json"])
        kube = KubeClient.from_config(kubeconfig, role="analyzer")
        out = many.Output(RedisConnection(redis_url), redis_url, True)
        fleet = many.build(args, out, kube, SpecFiles())
        stop = asyncio.Event()
        tasks = []
        if identity is not None:
            elector = LeaderElector(kube, NAMESPACE, identity=identity, settings=FAST)
            fleet.leader = elector
            tasks.append(asyncio.create_task(elector.run(stop)))
        tasks.append(asyncio.create_task(fleet.run(stop)))
        running.append((stop, tasks, kube, out.redis))
        return fleet, stop, tasks

    try:
        yield start
    finally:
        for stop, tasks, kube, connection in running:
            stop.set()
            await asyncio.wait_for(asyncio.gather(*tasks), 30)
            await connection.aclose()
            kube.close()


async def until(condition: Callable[[], Any], what: str, timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while not await condition():
        assert time.monotonic() < deadline, what
        await asyncio.sleep(0.05)


def history(client: redis.asyncio.Redis, name: str) -> Callable[[], Any]:
    async def length() -> int:
        return int(await client.xlen(keys.Keys(name).decisions))

    return length


async def test_an_added_experiment_is_looked_at_and_a_deleted_one_no_more(
    kube_api: KubeApiServer,
    kube: KubeClient,
    redis_url: str,
    redis_client: redis.asyncio.Redis,
    names: list[str],
    fleets: Callable[..., Any],
) -> None:
    first, second = names[:2]
    add(kube_api, redis_url, first)
    fleet, _, _ = await fleets()
    looks_of = {n: history(redis_client, n) for n in (first, second)}

    async def looked(name: str, more_than: int = 0) -> bool:
        return await looks_of[name]() > more_than

    await until(lambda: looked(first), "the first Experiment is never looked at")
    add(kube_api, redis_url, second)  # added while the analyzer runs
    await until(lambda: looked(second), "the added Experiment is never looked at")

    await asyncio.to_thread(kube.custom.delete_namespaced_custom_object, GROUP, VERSION, NAMESPACE, PLURAL, first)

    async def dropped() -> bool:
        return f"{NAMESPACE}/{first}" not in fleet.targets

    await until(dropped, "the deleted Experiment is still followed")
    before = await looks_of[first]()
    now_second = await looks_of[second]()
    await until(lambda: looked(second, now_second + 2), "the remaining Experiment is no longer looked at")
    assert await looks_of[first]() == before, "the deleted Experiment is still looked at"


async def test_of_two_analyzers_only_the_leader_acts_and_the_other_takes_over_when_it_stops(
    kube_api: KubeApiServer, redis_url: str, redis_client: redis.asyncio.Redis, names: list[str], fleets: Any
) -> None:
    name = names[0]
    add(kube_api, redis_url, name)
    started = {who: await fleets(identity=who) for who in ("a", "b")}
    looks = history(redis_client, name)

    async def looked(more_than: int) -> bool:
        return await looks() > more_than

    await until(lambda: looked(3), "no analyzer looks")
    counts = {who: fleet.schedule.looked for who, (fleet, _, _) in started.items()}
    leader = max(counts, key=lambda who: counts[who])
    standby = "b" if leader == "a" else "a"
    assert counts[leader] > 0 and counts[standby] == 0, f"both acted: {counts}"
    lease = kube_api.get("leases", NAMESPACE, FAST.lease)
    assert lease is not None and lease["spec"]["holderIdentity"] == leader

    # The leader stops (SIGTERM): it finishes its look, releases the Lease, and the other takes over.
    fleet, stop, tasks = started[leader]
    stop.set()
    await asyncio.wait_for(asyncio.gather(*tasks), 30)
    done = fleet.schedule.looked
    other = started[standby][0]

    async def took_over() -> bool:
        return other.schedule.looked > 0

    await until(took_over, "the standby never takes over")
    before = await looks()
    await until(lambda: looked(before + 1), "the new leader does not keep looking")
    assert fleet.schedule.looked == done
    lease = kube_api.get("leases", NAMESPACE, FAST.lease)
    assert lease is not None and lease["spec"]["holderIdentity"] == standby
    assert lease["spec"]["leaseTransitions"] == 1


async def test_a_leader_whose_lease_is_taken_stops_looking(
    kube_api: KubeApiServer, redis_url: str, redis_client: redis.asyncio.Redis, names: list[str], fleets: Any
) -> None:
    name = names[0]
    add(kube_api, redis_url, name)
    fleet, _, _ = await fleets(identity="a")
    looks = history(redis_client, name)

    async def looked() -> bool:
        return await looks() > 1

    await until(looked, "the only analyzer does not look")
    lease = kube_api.get("leases", NAMESPACE, FAST.lease)
    assert lease is not None
    lease["spec"] |= {"holderIdentity": "someone-else", "renewTime": "2026-12-05T00:00:00.000000Z"}
    kube_api.put("leases", NAMESPACE, lease)  # taken over, as after an expiry seen by another replica
    assert fleet.leader is not None

    async def stood_down() -> bool:
        return not fleet.leader.leading()  # type: ignore[union-attr]

    await until(stood_down, "the leader keeps acting on a Lease it lost")
    # At most the look already under way ends; none starts after it.
    await asyncio.sleep(0)
    settled = fleet.schedule.looked
    for _ in range(20):  # several of its slots (0.3 s) pass by: it stands by until the Lease is free again
        await asyncio.sleep(FAST.retry_period_s / 2)
        if fleet.leader.leading():  # type: ignore[union-attr]
            break  # "someone-else" never renews: after the lease duration, it may lead again
        assert fleet.schedule.looked <= settled + 1


async def test_the_cli_leads_looks_and_on_sigterm_stops_and_releases_the_lease(
    kube_api: KubeApiServer, kubeconfig: Path, redis_url: str, redis_client: redis.asyncio.Redis, names: list[str]
) -> None:
    name = names[0]
    add(kube_api, redis_url, name)
    argv = ["--experiments", NAMESPACE, "--kubeconfig", str(kubeconfig), "--redis-url", redis_url]
    async with processes.abrouter("analyze", *argv, "--every", "0.3", "--lease", "abrouter-analyzer", "--json") as proc:
        assert proc.stderr is not None
        errors = asyncio.create_task(proc.stderr.read())
        looks = history(redis_client, name)

        async def looked() -> bool:
            assert proc.returncode is None
            return await looks() >= 2

        await until(looked, "the analyzer does not look")
        lease = kube_api.get("leases", NAMESPACE, "abrouter-analyzer")
        assert lease is not None and lease["spec"]["holderIdentity"]
        proc.send_signal(signal.SIGTERM)
        assert await asyncio.wait_for(proc.wait(), 30) == 0
    err = (await errors).decode()
    assert "Traceback" not in err
    assert "is now the leader (Lease abrouter-test/abrouter-analyzer)" in err
    assert "released the Lease" in err and "stopped after" in err
    lease = kube_api.get("leases", NAMESPACE, "abrouter-analyzer")
    assert lease is not None and not lease["spec"].get("holderIdentity")
