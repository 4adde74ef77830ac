"""Weights sinks: the config file rewritten atomically, a dry run that writes nothing."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from abrouter.analysis.decision import Decision
from abrouter.analysis.errors import ConflictError
from abrouter.analysis.sinks.base import DryRunSink, WeightsSink
from abrouter.analysis.sinks.file import FileSink
from abrouter.contract import experiment as spec
from abrouter.router import examples

EXAMPLE = examples.EXPERIMENT_PATH


@pytest.fixture
def config(tmp_path: Path) -> Path:
    path = tmp_path / "experiment.yaml"
    shutil.copy(EXAMPLE, path)
    path.chmod(0o640)
    return path


def ramp(control: float, candidate: float) -> Decision:
    return Decision(action="ramp", reason="ramp: test", weights={"control": control, "candidate": candidate})


async def test_file_sink_writes_new_weights_and_the_next_epoch(config: Path) -> None:
    before = spec.load(config)
    sink: WeightsSink = FileSink(config)
    assert await sink.apply(ramp(75.0, 25.0), epoch=before.epoch) is True
    after = spec.load(config)
    assert after.weights == (0.75, 0.25)
    assert after.epoch == before.epoch + 1
    # Everything but the weights and the epoch survives the rewrite.
    assert spec.to_dict(after) == spec.to_dict(spec.with_weights(before, {"control": 75.0, "candidate": 25.0}))
    assert config.read_text().startswith("# Written by `abrouter analyze --apply`")
    assert config.stat().st_mode & 0o777 == 0o640
    assert [p.name for p in config.parent.iterdir()] == [config.name]  # no temp file left behind


async def test_unchanged_weights_write_nothing(config: Path) -> None:
    text = config.read_text()
    assert await FileSink(config).apply(ramp(50.0, 50.0), epoch=1) is False
    assert config.read_text() == text


async def test_newer_weights_are_never_overwritten(config: Path) -> None:
    sink = FileSink(config)
    await sink.apply(ramp(75.0, 25.0), epoch=1)
    with pytest.raises(ConflictError, match="the weights changed since the analysis"):
        await sink.apply(ramp(50.0, 50.0), epoch=1)
    assert spec.load(config).weights == (0.75, 0.25)


async def test_dry_run_records_and_writes_nothing(config: Path) -> None:
    text = config.read_text()
    sink = DryRunSink()
    assert await sink.apply(ramp(75.0, 25.0), epoch=1) is False
    assert sink.decisions == [ramp(75.0, 25.0)]
    assert config.read_text() == text
