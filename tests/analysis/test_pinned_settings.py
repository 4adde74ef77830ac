"""Defect 6 (issue 9): alpha and expected_units_per_arm are pinned at the first look.

The running minima of the sequential p were computed under the first look's τ² and level;
an edit mid-experiment must not apply to them silently.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import redis

from tests.analysis.test_commands import config_file, json_lines, run, write_aggregates


def edit(path: Path, **analysis: float) -> None:
    doc = json.loads(path.read_text())
    doc["analysis"].update(analysis)
    path.write_text(json.dumps(doc))


def test_an_edit_of_alpha_mid_experiment_is_ignored_visibly(
    tmp_path: Path, redis_url: str, experiment_name: str, capsys: pytest.CaptureFixture[str]
) -> None:
    client = redis.Redis.from_url(redis_url)
    try:
        write_aggregates(client, experiment_name, control=(2_000, 100), candidate=(2_000, 120))
    finally:
        client.close()
    path = config_file(tmp_path, experiment_name)
    argv = ["analyze", "--config", str(path), "--redis-url", redis_url, "--json"]
    assert run(argv) == 0
    first = json_lines(capsys.readouterr().out)[0]
    assert first["pinned"] == {"alpha": 0.05, "expected_units_per_arm": 10_000}
    assert first["ignored_settings"] == {}

    edit(path, alpha=0.2, expected_units_per_arm=500)
    assert run(argv) == 0
    second = json_lines(capsys.readouterr().out)[0]
    assert second["pinned"] == {"alpha": 0.05, "expected_units_per_arm": 10_000}
    assert second["ignored_settings"] == {"alpha": 0.2, "expected_units_per_arm": 500.0}
    # Same data, same pinned settings: the same sequential evidence as the first look.
    assert second["comparisons"][0]["sequential_p_value"] == first["comparisons"][0]["sequential_p_value"]

    assert run(argv[:-1]) == 0  # the table says so too
    assert "the spec's alpha 0.2, expected_units_per_arm 500 is ignored" in capsys.readouterr().out
