"""`abrouter analyze` over several experiments in one process (`--config` several times)."""

from __future__ import annotations

import argparse
import asyncio
import json
import signal
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import redis
import redis.asyncio

from abrouter import cli
from abrouter.analysis import many
from abrouter.analysis.connection import RedisConnection
from abrouter.analysis.specfiles import SpecFiles
from abrouter.contract import experiment as spec
from abrouter.contract import keys
from abrouter.router.redis_server import RedisServer
from tests import processes
from tests.analysis.test_commands import config_file, json_lines, run, write_arms
from tests.conftest import forget

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture
def names(redis_url: str, experiment_name: str) -> Iterator[tuple[str, str]]:
    """Two experiment names, their keys deleted afterwards."""
    pair = (f"{experiment_name}-a", f"{experiment_name}-b")
    yield pair
    forget(redis_url, list(pair))


def seed(redis_url: str, name: str, arms: dict[str, tuple[int, int, float]]) -> None:
    client = redis.Redis.from_url(redis_url)
    try:
        write_arms(client, name, arms, weights={"control": 50, "candidate": 50})
    finally:
        client.close()


def config(tmp_path: Path, name: str) -> Path:
    folder = tmp_path / name
    folder.mkdir()
    return config_file(folder, name, burn_in=0)


def test_two_experiments_in_one_process_are_each_reported_exactly(
    tmp_path: Path, redis_url: str, names: tuple[str, str], capsys: pytest.CaptureFixture[str]
) -> None:
    a, b = names
    seed(redis_url, a, {"control": (20_000, 1000, 20.0), "candidate": (20_000, 1300, 21.0)})
    seed(redis_url, b, {"control": (8_000, 800, 30.0), "candidate": (9_000, 450, 35.0)})
    paths = [config(tmp_path, a), config(tmp_path, b)]

    argv = ["analyze", "--config", str(paths[0]), "--config", str(paths[1]), "--redis-url", redis_url, "--json"]
    assert run(argv) == 0
    results = {r["experiment"]: r for r in json_lines(capsys.readouterr().out)}
    assert set(results) == {a, b}
    expected = {
        a: {"control": (20_000, 1000, 20.0), "candidate": (20_000, 1300, 21.0)},
        b: {"control": (8_000, 800, 30.0), "candidate": (9_000, 450, 35.0)},
    }
    for name, arms in expected.items():
        r = results[name]
        assert {v["name"]: v["units"] for v in r["variants"]} == {k: u for k, (u, _, _) in arms.items()}
        means = {(c["metric"], "control"): c["control_mean"] for c in r["comparisons"]}
        means |= {(c["metric"], c["variant"]): c["mean"] for c in r["comparisons"]}
        for arm, (units, conversions, latency) in arms.items():
            assert means["conversion", arm] == pytest.approx(conversions / units, rel=1e-12)
            assert means["latency_ms", arm] == pytest.approx(latency, rel=1e-12)
    assert results[a]["decision"]["action"] == "promote", results[a]["decision"]["reason"]
    assert results[b]["decision"]["action"] == "rollback", results[b]["decision"]["reason"]
    # Without --apply nothing but each experiment's own history is written.
    client = redis.Redis.from_url(redis_url)
    try:
        assert [client.xlen(keys.Keys(n).decisions) for n in (a, b)] == [1, 1]
    finally:
        client.close()
    assert [spec.load(p).epoch for p in paths] == [1, 1]


def test_one_failing_experiment_does_not_stop_the_other_and_sets_the_exit_code(
    tmp_path: Path, redis_url: str, names: tuple[str, str], capsys: pytest.CaptureFixture[str]
) -> None:
    a, b = names
    seed(redis_url, b, {"control": (2000, 100, 20.0), "candidate": (2000, 100, 20.0)})
    paths = [config(tmp_path, a), config(tmp_path, b)]  # `a` has nothing in Redis
    argv = ["analyze", "--config", str(paths[0]), "--config", str(paths[1]), "--redis-url", redis_url, "--json"]
    assert run(argv) == 1
    out, err = capsys.readouterr()
    assert [r["experiment"] for r in json_lines(out)] == [b]
    assert f"nothing found for experiment {a!r}" in err


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        (["--selector", "team=a"], "--selector: needs --experiments NAMESPACE"),
        (["--lease", "x"], "--lease: needs --experiments NAMESPACE and --every SECONDS"),
        (["--dry-run"], "--kubeconfig and --dry-run need --experiment NAMESPACE/NAME or --experiments NAMESPACE"),
        (["--experiments", "ns"], "argument --experiments: not allowed with argument --config"),
    ],
)
def test_misused_flags_are_one_line_and_exit_code_2(
    tmp_path: Path, extra: list[str], message: str, capsys: pytest.CaptureFixture[str]
) -> None:
    path = config(tmp_path, "x")
    assert cli.main(["analyze", "--config", str(path), *extra]) == 2
    err = capsys.readouterr().err
    assert message in err and len(err.strip().splitlines()) == 1, err


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["--experiments", "Bad_NS"], "--experiments: must be a namespace (a lowercase DNS label), got 'Bad_NS'"),
        (["--experiments", "ns", "--selector", "a=(b"], "--selector: is not a label selector"),
        (["--experiments", "ns", "--lease", "x"], "--lease: needs --experiments NAMESPACE and --every SECONDS"),
        (["--experiments", "ns", "--every", "5", "--lease", "A"], "--lease: must be a Lease name"),
    ],
)
def test_bad_experiments_flags_are_exit_code_2(
    argv: list[str], message: str, capsys: pytest.CaptureFixture[str]
) -> None:
    assert cli.main(["analyze", *argv]) == 2
    assert message in capsys.readouterr().err


def test_two_files_of_one_experiment_are_refused(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    first = config(tmp_path, "same")
    second = tmp_path / "copy.yaml"
    second.write_text(first.read_text())
    assert cli.main(["analyze", "--config", str(first), "--config", str(second)]) == 2
    assert f"--config: {first} and {second} both name experiment 'same'" in capsys.readouterr().err


async def test_every_looks_at_each_on_its_own_schedule_a_failing_one_backs_off_and_sigterm_stops_it(
    tmp_path: Path, redis_url: str, names: tuple[str, str], redis_client: redis.asyncio.Redis
) -> None:
    a, b = names
    seed(redis_url, b, {"control": (2000, 100, 20.0), "candidate": (2000, 100, 20.0)})
    paths = [config(tmp_path, a), config(tmp_path, b)]  # `a` has no data: every look of it fails
    argv = ["--config", str(paths[0]), "--config", str(paths[1]), "--redis-url", redis_url, "--every", "0.2", "--json"]
    async with processes.abrouter("analyze", *argv) as proc:
        assert proc.stderr is not None
        errors = asyncio.create_task(proc.stderr.read())
        deadline = time.monotonic() + 60
        while await redis_client.xlen(keys.Keys(b).decisions) < 4:  # `b` keeps being looked at
            assert time.monotonic() < deadline, "the healthy experiment is not looked at again and again"
            assert proc.returncode is None
            await asyncio.sleep(0.05)
        proc.send_signal(signal.SIGTERM)
        assert await asyncio.wait_for(proc.wait(), 30) == 0
    err = (await errors).decode()
    assert "Traceback" not in err
    assert f"nothing found for experiment {a!r}" in err
    assert f"{paths[0]}: look failed (1 in a row" in err
    assert "stopped after" in err
    assert await redis_client.xlen(keys.Keys(a).decisions) == 0


def test_a_spec_file_is_parsed_again_only_when_it_changed(tmp_path: Path) -> None:
    path = config(tmp_path, "cached")
    files = SpecFiles()
    first = files.load(path)
    assert files.load(path) is first and files.parses == 1
    doc = spec.to_dict(first)
    doc["variants"][1]["weight"] = 25
    path.write_text(json.dumps(doc))  # an edit in place (same inode), of another size
    assert files.load(path).weights != first.weights and files.parses == 2
    path.unlink()
    with pytest.raises(spec.ConfigError, match="cannot read"):
        files.load(path)


async def test_a_look_that_hangs_is_abandoned_and_the_loop_goes_on(
    tmp_path: Path, redis_server: RedisServer, caplog: pytest.LogCaptureFixture
) -> None:
    name = "hung"
    seed(redis_server.url, name, {"control": (2000, 100, 20.0), "candidate": (2000, 100, 20.0)})
    path = config(tmp_path, name)
    args = argparse.Namespace(config=[path], every=0.2, apply=False, json=True, experiments=None)
    out = many.Output(RedisConnection(redis_server.url), redis_server.url, True)
    fleet = many.build(args, out, None, SpecFiles())
    fleet.look_timeout_s = 0.5
    stop = asyncio.Event()
    process = redis_server._process
    assert process is not None
    process.send_signal(signal.SIGSTOP)  # Redis stops answering, connections stay open
    running = asyncio.create_task(fleet.run(stop))
    try:
        deadline = time.monotonic() + 60
        while fleet.schedule.failed < 2:
            assert time.monotonic() < deadline, "a hung look stops the loop"
            await asyncio.sleep(0.05)
        process.send_signal(signal.SIGCONT)
        looked = fleet.schedule.looked
        while fleet.schedule.entries[str(path)].failures:  # the next look after Redis is back succeeds
            assert time.monotonic() < deadline, "no look succeeds after Redis answers again"
            await asyncio.sleep(0.05)
        assert fleet.schedule.looked > looked
    finally:
        process.send_signal(signal.SIGCONT)
        stop.set()
        await asyncio.wait_for(running, 30)
        await out.redis.aclose()
    assert f"{path}: the look took longer than 0.5 s; abandoned" in caplog.text
