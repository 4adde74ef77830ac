"""`abrouter analyze` says when Redis holds nothing, and reports exposures beside units."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import redis

from abrouter.contract import keys
from tests.analysis.test_commands import config_file, run, write_aggregates


def test_a_name_redis_does_not_know_is_reported_not_analysed(
    tmp_path: Path, redis_url: str, experiment_name: str, capsys: pytest.CaptureFixture[str]
) -> None:
    path = config_file(tmp_path, experiment_name)  # nothing written under this name
    assert run(["analyze", "--config", str(path), "--redis-url", redis_url]) == 1
    captured = capsys.readouterr()
    assert captured.out == ""
    (line,) = captured.err.splitlines()
    assert line.startswith(f"abrouter: error: nothing found for experiment '{experiment_name}'")
    client = redis.Redis.from_url(redis_url)
    try:  # and no history is started under the mistyped name
        assert client.exists(keys.Keys(experiment_name).decisions) == 0
    finally:
        client.close()


def test_exposures_per_arm_in_the_table_and_the_json(
    tmp_path: Path, redis_url: str, experiment_name: str, capsys: pytest.CaptureFixture[str]
) -> None:
    client = redis.Redis.from_url(redis_url)
    try:
        write_aggregates(client, experiment_name, control=(2_000, 100), candidate=(2_000, 110))
        k = keys.Keys(experiment_name)
        client.hset(k.agg, mapping={"1|control|exposures": 5_123, "1|candidate|exposures": 4_987})
        client.hset(k.agg, mapping={"1|control|exposures_sq": 20_000, "1|candidate|exposures_sq": 19_000})
    finally:
        client.close()
    path = config_file(tmp_path, experiment_name)
    assert run(["analyze", "--config", str(path), "--redis-url", redis_url, "--json"]) == 0
    doc = json.loads(capsys.readouterr().out)
    assert [(v["name"], v["units"], v["exposures"]) for v in doc["variants"]] == [
        ("control", 2_000, 5_123),
        ("candidate", 2_000, 4_987),
    ]
    assert run(["analyze", "--config", str(path), "--redis-url", redis_url]) == 0
    table = capsys.readouterr().out
    assert "exposures" in table.splitlines()[2] and "5123" in table
